//! `smtp-server`: command line, logging, signals. Everything else is in the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{ArgMatches, Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use server::{Config, ConfigError};

/// Stampede's reference ESMTP server.
///
/// Every setting can be given as a flag, as an environment variable `SMTP_<KEY>`
/// or in the TOML file given by --config (in the section its heading names);
/// precedence is flag > env > file > default. Durations accept `150ms`, `30s`, `2m`,
/// `1h30m` or plain seconds; sizes accept bytes or `64KiB`, `10MiB`, `1GiB` (binary)
/// and `10MB` (decimal).
#[derive(Parser, Debug)]
#[command(name = "smtp-server", version, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Probe the admin /health endpoint; exit 0 when it answers 200, 1 otherwise
    /// (2 on a bad configuration).
    ///
    /// Where to probe comes from the server's own configuration, read the way the
    /// server reads it (file, SMTP_* variables, flags): a fixed admin port is probed
    /// on loopback (or admin_bind); with admin_port `auto`, the address the running
    /// server wrote to admin_addr_file.
    Healthcheck(HealthcheckArgs),
    /// Read a password from stdin (its first line) and print its argon2id PHC hash,
    /// for a `user:<hash>` line of the auth_users file.
    ///
    /// Example: `printf '%s' "$PASSWORD" | smtp-server hash-password`
    HashPassword,
}

#[derive(Args, Debug)]
struct HealthcheckArgs {
    /// The server's TOML configuration file.
    #[arg(long, env = "SMTP_CONFIG")]
    config: Option<PathBuf>,
    /// Full URL to probe instead (http only), e.g. http://127.0.0.1:8080/health.
    #[arg(long)]
    url: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, default_value = "2s", value_parser = units::parse_duration)]
    timeout: Duration,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// The settings that are not configuration keys; the keys are added by
/// `server::Config::add_args`.
#[derive(Args, Debug)]
struct RunArgs {
    /// TOML configuration file ([server], [resources], [memory], [tls], [auth] sections).
    #[arg(long, env = "SMTP_CONFIG")]
    config: Option<PathBuf>,
    /// Log format. The filter comes from RUST_LOG (default: info).
    #[arg(long, env = "SMTP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

/// The whole command line: the fixed arguments plus one flag per configuration key,
/// on the server and on `healthcheck` alike.
fn command() -> clap::Command {
    Config::add_args(Cli::command()).mut_subcommand("healthcheck", Config::add_args)
}

/// Exit code for a bad configuration (DESIGN: 0 clean stop, 1 runtime failure).
const BAD_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let matches = match command().try_get_matches() {
        Ok(matches) => matches,
        Err(e) => match ConfigError::from_clap(&e) {
            Some(e) => {
                eprintln!("smtp-server: {e}");
                return ExitCode::from(BAD_CONFIG);
            }
            None => e.exit(),
        },
    };
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Some(Command::Healthcheck(args)) => {
            let Some(("healthcheck", sub)) = matches.subcommand() else {
                unreachable!("clap parsed the healthcheck subcommand");
            };
            return healthcheck(&args, sub);
        }
        Some(Command::HashPassword) => return hash_password(),
        None => {}
    }
    init_tracing(cli.run.log_format);
    // An error that ends the process is said once, on stderr: logging it as well
    // would print it a second time (the log goes to stdout, which a terminal or
    // `docker logs` shows beside stderr).
    let config = match Config::load(cli.run.config.as_deref(), &matches) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("smtp-server: {e}");
            return ExitCode::from(BAD_CONFIG);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        // A certificate, key or users file that cannot be used is found at start.
        Err(e) if e.downcast_ref::<ConfigError>().is_some() => {
            eprintln!("smtp-server: {e:#}");
            ExitCode::from(BAD_CONFIG)
        }
        Err(e) => {
            eprintln!("smtp-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(args: &HealthcheckArgs, matches: &ArgMatches) -> ExitCode {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => {
            let config = match Config::load(args.config.as_deref(), matches) {
                Ok(config) => config,
                Err(e) => {
                    eprintln!("smtp-server healthcheck: {e}");
                    return ExitCode::from(BAD_CONFIG);
                }
            };
            match server::health_url(&config) {
                Ok(url) => url,
                Err(e) => {
                    println!("unhealthy: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    };
    match server::probe_health(&url, args.timeout) {
        Ok(200) => {
            println!("healthy: {url} answered 200");
            ExitCode::SUCCESS
        }
        Ok(code) => {
            println!("unhealthy: {url} answered {code}");
            ExitCode::FAILURE
        }
        Err(e) => {
            println!("unhealthy: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `smtp-server hash-password`: the password is read from stdin so that it never
/// shows in the process list or the shell history.
fn hash_password() -> ExitCode {
    let mut line = String::new();
    if let Err(e) = std::io::stdin().read_line(&mut line) {
        eprintln!("smtp-server hash-password: cannot read the password from stdin: {e}");
        return ExitCode::FAILURE;
    }
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    if password.is_empty() {
        eprintln!("smtp-server hash-password: empty password (give it on stdin)");
        return ExitCode::from(BAD_CONFIG);
    }
    match server::auth::hash_password(password) {
        Ok(hash) => {
            println!("{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("smtp-server hash-password: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stdout().is_terminal());
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

#[tokio::main]
async fn run(config: Config) -> anyhow::Result<()> {
    // Installed before the "listening" line: a SIGTERM sent as soon as that line
    // appears must drain, not kill the process with the default action.
    let signals = ShutdownSignals::install().context("cannot install signal handlers")?;
    let running = server::start(config).await?;
    let admin = running
        .admin_addr()
        .map_or_else(|| "disabled".to_string(), |a| a.to_string());
    let implicit_tls = running
        .implicit_tls_addr()
        .map_or_else(|| "disabled".to_string(), |a| a.to_string());
    tracing::info!(
        smtp_addr = %running.smtp_addr(),
        implicit_tls_addr = %implicit_tls,
        admin_addr = %admin,
        "smtp-server listening"
    );
    signals.received().await;
    tracing::info!("shutdown requested, draining sessions");
    running.shutdown();
    running.wait().await
}

/// SIGTERM and SIGINT, caught from the moment of installation.
struct ShutdownSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl ShutdownSignals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn received(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
