//! `smtp-server`: command line, logging, signals. Everything else is in the library.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use server::config::{self, Config};

/// Stampede's reference ESMTP server.
///
/// Every setting can be given as a flag, as an environment variable `SMTP_<KEY>`
/// or in the TOML file given by --config; precedence is flag > env > file > default.
/// Durations accept `150ms`, `30s`, `2m`, `1h` or plain seconds; sizes accept bytes
/// or `64KiB`, `10MiB`, `1GiB` (and decimal `10MB`).
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
    Healthcheck(HealthcheckArgs),
}

/// Where to probe comes from the server's own configuration (file and SMTP_*
/// variables): a fixed admin port is probed on loopback (or admin_bind); with
/// admin_port `auto` the address the running server wrote to admin_addr_file.
#[derive(Args, Debug)]
struct HealthcheckArgs {
    /// The server's TOML configuration file, for its admin settings.
    #[arg(long, env = "SMTP_CONFIG")]
    config: Option<PathBuf>,
    /// Admin port: a number, `auto` (read admin_addr_file) or 0 (disabled) [default: 8080].
    #[arg(long, env = "SMTP_ADMIN_PORT")]
    admin_port: Option<String>,
    /// Address the admin listener binds to [default: same as --bind].
    #[arg(long, env = "SMTP_ADMIN_BIND")]
    admin_bind: Option<String>,
    /// Address the SMTP listener binds to [default: 0.0.0.0].
    #[arg(long, env = "SMTP_BIND")]
    bind: Option<String>,
    /// File holding the admin address when admin_port is `auto`
    /// [default: /tmp/smtp-server-admin.addr].
    #[arg(long, env = "SMTP_ADMIN_ADDR_FILE")]
    admin_addr_file: Option<String>,
    /// Full URL to probe instead (http only), e.g. http://127.0.0.1:8080/health.
    #[arg(long)]
    url: Option<String>,
    /// How long to wait for the answer.
    #[arg(long, default_value = "2s", value_parser = parse_duration_arg)]
    timeout: Duration,
}

fn parse_duration_arg(v: &str) -> Result<Duration, String> {
    config::parse_duration(v)
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Field names are the configuration keys (see `server::config::KEYS`).
#[derive(Args, Debug)]
struct RunArgs {
    /// TOML configuration file ([server], [resources], [memory] sections).
    #[arg(long, env = "SMTP_CONFIG")]
    config: Option<PathBuf>,
    /// Log format. The filter comes from RUST_LOG (default: info).
    #[arg(long, env = "SMTP_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Address to listen on for SMTP [default: 0.0.0.0].
    #[arg(long, env = "SMTP_BIND")]
    bind: Option<String>,
    /// SMTP port; 0 picks a free port (logged as smtp_addr=) [default: 2525].
    #[arg(long, env = "SMTP_PORT")]
    port: Option<String>,
    /// Queue of connections not yet accepted, capped by net.core.somaxconn [default: 4096].
    #[arg(long, env = "SMTP_LISTEN_BACKLOG")]
    listen_backlog: Option<String>,
    /// Admin HTTP port; 0 disables, `auto` picks a free port [default: 8080].
    #[arg(long, env = "SMTP_ADMIN_PORT")]
    admin_port: Option<String>,
    /// Address for the admin listener [default: same as --bind].
    #[arg(long, env = "SMTP_ADMIN_BIND")]
    admin_bind: Option<String>,
    /// With --admin-port auto, the file the bound admin address is written to, for
    /// `smtp-server healthcheck`; "" writes none [default: /tmp/smtp-server-admin.addr].
    #[arg(long, env = "SMTP_ADMIN_ADDR_FILE")]
    admin_addr_file: Option<String>,
    /// Host name in the banner and EHLO reply [default: localhost].
    #[arg(long, env = "SMTP_DOMAIN")]
    domain: Option<String>,
    /// What to do with accepted messages: discard, memory, spool [default: discard].
    #[arg(long, env = "SMTP_STORE")]
    store: Option<String>,
    /// Spool directory for --store spool [default: spool].
    #[arg(long, env = "SMTP_SPOOL_DIR")]
    spool_dir: Option<String>,
    /// Messages kept by --store memory [default: 1000].
    #[arg(long, env = "SMTP_MEMORY_STORE_CAPACITY")]
    memory_store_capacity: Option<String>,
    /// Time sessions get to finish after SIGTERM/SIGINT [default: 8s].
    #[arg(long, env = "SMTP_SHUTDOWN_GRACE")]
    shutdown_grace: Option<String>,

    /// Concurrent connections, all peers [default: 1000].
    #[arg(long, env = "SMTP_MAX_CONNECTIONS")]
    max_connections: Option<String>,
    /// Concurrent connections from one IP [default: 50].
    #[arg(long, env = "SMTP_MAX_CONNECTIONS_PER_IP")]
    max_connections_per_ip: Option<String>,
    /// Window of the connection-rate token buckets [default: 60s].
    #[arg(long, env = "SMTP_RATE_LIMIT_WINDOW")]
    rate_limit_window: Option<String>,
    /// New connections per window, all peers [default: 1000].
    #[arg(long, env = "SMTP_MAX_REQUESTS_PER_WINDOW")]
    max_requests_per_window: Option<String>,
    /// New connections per window from one IP [default: 1/10 of the global figure].
    #[arg(long, env = "SMTP_MAX_REQUESTS_PER_WINDOW_PER_IP")]
    max_requests_per_window_per_ip: Option<String>,
    /// Time from connect to EHLO/HELO [default: 30s].
    #[arg(long, env = "SMTP_CONNECTION_TIMEOUT")]
    connection_timeout: Option<String>,
    /// Time allowed between commands [default: 120s].
    #[arg(long, env = "SMTP_IDLE_TIMEOUT")]
    idle_timeout: Option<String>,
    /// Time allowed for a whole session [default: 300s].
    #[arg(long, env = "SMTP_SESSION_TIMEOUT")]
    session_timeout: Option<String>,
    /// Largest message accepted [default: 10MiB].
    #[arg(long, env = "SMTP_MAX_MESSAGE_SIZE")]
    max_message_size: Option<String>,
    /// Recipients per transaction [default: 100].
    #[arg(long, env = "SMTP_MAX_RECIPIENTS")]
    max_recipients: Option<String>,
    /// Bytes one session may hold [default: 50MiB].
    #[arg(long, env = "SMTP_PER_CONNECTION_MEMORY_LIMIT")]
    per_connection_memory_limit: Option<String>,

    /// Process memory budget [default: 512MiB].
    #[arg(long, env = "SMTP_MAX_MEMORY_USAGE")]
    max_memory_usage: Option<String>,
    /// Fraction of the budget that logs a warning [default: 0.75].
    #[arg(long, env = "SMTP_MEMORY_WARNING_THRESHOLD")]
    memory_warning_threshold: Option<String>,
    /// Fraction of the budget above which new work gets 452 4.3.1 [default: 0.90].
    #[arg(long, env = "SMTP_MEMORY_CRITICAL_THRESHOLD")]
    memory_critical_threshold: Option<String>,
    /// How often RSS is sampled [default: 1s].
    #[arg(long, env = "SMTP_MONITORING_INTERVAL")]
    monitoring_interval: Option<String>,
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    if let Some(Command::Healthcheck(args)) = cli.command {
        return healthcheck(&args);
    }
    init_tracing(cli.run.log_format);

    // Flag-or-env values (clap merges those two) override the file.
    let mut overrides = BTreeMap::new();
    for (_, key) in config::KEYS {
        if let Ok(Some(value)) = matches.try_get_one::<String>(key) {
            overrides.insert(key.to_string(), value.clone());
        }
    }
    let config = match Config::load(cli.run.config.as_deref(), &overrides) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("smtp-server: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("smtp-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn healthcheck(args: &HealthcheckArgs) -> ExitCode {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => match healthcheck_target(args) {
            Ok(url) => url,
            Err(HealthcheckError::Config(e)) => {
                eprintln!("smtp-server healthcheck: {e}");
                return ExitCode::from(2);
            }
            Err(HealthcheckError::Target(e)) => {
                println!("unhealthy: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    match server::healthcheck::probe(&url, args.timeout) {
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

enum HealthcheckError {
    Config(server::ConfigError),
    Target(server::healthcheck::TargetError),
}

/// The /health URL of the server that the configuration describes.
fn healthcheck_target(args: &HealthcheckArgs) -> Result<String, HealthcheckError> {
    let mut overrides = BTreeMap::new();
    for (key, value) in [
        ("admin_port", &args.admin_port),
        ("admin_bind", &args.admin_bind),
        ("bind", &args.bind),
        ("admin_addr_file", &args.admin_addr_file),
    ] {
        if let Some(value) = value {
            overrides.insert(key.to_string(), value.clone());
        }
    }
    let config =
        Config::load(args.config.as_deref(), &overrides).map_err(HealthcheckError::Config)?;
    server::healthcheck::health_url(&config).map_err(HealthcheckError::Target)
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
    let running = server::start(config).await?;
    let admin = running
        .admin_addr()
        .map_or_else(|| "disabled".to_string(), |a| a.to_string());
    tracing::info!(
        smtp_addr = %running.smtp_addr(),
        admin_addr = %admin,
        "smtp-server listening"
    );
    wait_for_signal()
        .await
        .context("cannot install signal handlers")?;
    tracing::info!("shutdown requested, draining sessions");
    running.shutdown();
    running.wait().await
}

async fn wait_for_signal() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
