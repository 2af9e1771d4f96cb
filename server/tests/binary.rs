//! The `smtp-server` binary: startup line, configuration precedence, bad
//! configuration, SIGTERM, the healthcheck subcommand.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Client;

const BIN: &str = env!("CARGO_BIN_EXE_smtp-server");

struct Server {
    child: Child,
    lines: mpsc::Receiver<String>,
    smtp: SocketAddr,
    admin: Option<SocketAddr>,
    /// The line that announced the listen addresses, as printed.
    startup: String,
    /// The lines logged before it.
    before_startup: Vec<String>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The smtp-server command with a clean environment (no inherited SMTP_* settings).
fn command(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear().env("RUST_LOG", "info").args(args);
    cmd
}

/// How long a command that should exit at once (a refused configuration, a health
/// probe) may run before the test calls it a hang.
const EXIT_WAIT: Duration = Duration::from_secs(20);

/// The server command for a configuration it must refuse: should a regression accept
/// it, the server listens on a free loopback port only (never 0.0.0.0:2525) and
/// [`output`] kills it after [`EXIT_WAIT`] instead of hanging the suite.
fn refused_command(args: &[&str]) -> Command {
    let mut cmd = command(args);
    cmd.args(["--bind", "127.0.0.1", "--port", "0", "--admin-port", "0"]);
    cmd
}

/// Runs `cmd` to its end like [`Command::output`], but fails the test when it is still
/// running after [`EXIT_WAIT`] (and kills it).
fn output(mut cmd: Command) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn smtp-server");
    let read_all = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().unwrap()));
    let stderr = read_all(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + EXIT_WAIT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} still running after {EXIT_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(name)? + name.len();
    let rest = &line[start..];
    let rest = rest.trim_start_matches(['"', ':', '=']);
    Some(rest.split(['"', ' ', ',', '}']).next().unwrap_or(rest))
}

/// Starts the binary on free ports and waits for its startup line.
fn spawn(mut cmd: Command) -> Server {
    let child = cmd
        .args(["--bind", "127.0.0.1", "--port", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn smtp-server");
    let (tx, lines) = mpsc::channel();
    // From here on the guard kills and reaps the child on every path.
    let mut server = Server {
        child,
        lines,
        smtp: SocketAddr::from(([0, 0, 0, 0], 0)),
        admin: None,
        startup: String::new(),
        before_startup: Vec::new(),
    };
    let stdout = server.child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let line = server
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("startup line with smtp_addr");
        if line.contains("smtp_addr") {
            server.smtp = field(&line, "smtp_addr")
                .unwrap()
                .parse()
                .expect("smtp_addr");
            server.admin = field(&line, "admin_addr").unwrap().parse().ok();
            server.startup = line;
            return server;
        }
        server.before_startup.push(line);
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "process did not exit in time");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn sigterm(child: &Child) {
    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill with a valid signal number on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
}

async fn banner_domain(addr: SocketAddr) -> String {
    let mut c = Client::connect(addr).await;
    let r = c.reply().await;
    assert_eq!(r.code, 220);
    r.lines[0].split_whitespace().next().unwrap().to_string()
}

#[tokio::test]
async fn sigterm_drains_sessions_answers_421_4_3_2_and_exits_0() {
    let mut server = spawn(command(&["--admin-port", "0", "--shutdown-grace", "300ms"]));
    assert_eq!(
        server.admin, None,
        "admin port 0 disables the admin listener"
    );
    let mut c = Client::ready(server.smtp).await;
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    sigterm(&server.child);
    c.reply().await.assert(421, "4.3.2");
    let status = wait_exit(&mut server.child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0));
    let rest: Vec<String> = server.lines.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.contains("connection closed")),
        "close event logged: {rest:?}"
    );
}

#[tokio::test]
async fn healthcheck_exits_0_when_healthy_and_1_when_unreachable() {
    let server = spawn(command(&["--admin-port", "auto", "--admin-addr-file", ""]));
    let admin = server.admin.expect("admin listener on a free port");
    let ok = output(command(&[
        "healthcheck",
        "--admin-port",
        &admin.port().to_string(),
    ]));
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let url = format!("http://{admin}/health");
    let ok = output(command(&["healthcheck", "--url", &url]));
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");

    // A port nobody listens on.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let bad = output(command(&["healthcheck", "--admin-port", &free.to_string()]));
    assert_eq!(bad.status.code(), Some(1), "{bad:?}");
}

#[test]
fn healthcheck_finds_an_auto_admin_port_through_the_address_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("run").join("admin.addr");
    let file_arg = file.to_str().unwrap();
    let config = dir.path().join("smtp.toml");
    std::fs::write(
        &config,
        format!("[server]\nadmin_port = \"auto\"\nadmin_addr_file = {file_arg:?}\n"),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let mut server = spawn(command(&["--config", config_arg]));
    let admin = server.admin.expect("admin listener on a free port");
    assert_eq!(
        std::fs::read_to_string(&file).unwrap().trim(),
        admin.to_string()
    );

    // The same settings, from the environment or from the file.
    let by_env = || {
        let mut cmd = command(&["healthcheck"]);
        cmd.env("SMTP_ADMIN_PORT", "auto")
            .env("SMTP_ADMIN_ADDR_FILE", file_arg);
        output(cmd)
    };
    for out in [
        by_env(),
        output(command(&["healthcheck", "--config", config_arg])),
    ] {
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains(&admin.to_string()), "{stdout}");
    }

    // A clean stop removes the file; the probe then says where it looked.
    sigterm(&server.child);
    assert_eq!(
        wait_exit(&mut server.child, Duration::from_secs(10)).code(),
        Some(0)
    );
    assert!(!file.exists(), "address file removed at stop");
    let out = by_env();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(file_arg),
        "{out:?}"
    );
}

#[test]
fn healthcheck_with_the_admin_listener_disabled_says_so() {
    let mut cmd = command(&["healthcheck"]);
    cmd.env("SMTP_ADMIN_PORT", "0");
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("admin listener is disabled"), "{stdout}");
}

#[tokio::test]
async fn flag_beats_env_beats_file_beats_default() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("smtp.toml");
    std::fs::write(
        &file,
        "[server]\ndomain = \"file.example\"\nadmin_port = 0\n\n[resources]\nmax_connections = 5\n",
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let server = spawn(command(&["--admin-port", "0"]));
    assert_eq!(banner_domain(server.smtp).await, "localhost");
    drop(server);

    let server = spawn(command(&["--config", file]));
    assert_eq!(banner_domain(server.smtp).await, "file.example");
    drop(server);

    let mut cmd = command(&["--config", file]);
    cmd.env("SMTP_DOMAIN", "env.example");
    let server = spawn(cmd);
    assert_eq!(banner_domain(server.smtp).await, "env.example");
    drop(server);

    let mut cmd = command(&["--config", file, "--domain", "flag.example"]);
    cmd.env("SMTP_DOMAIN", "env.example");
    let server = spawn(cmd);
    assert_eq!(banner_domain(server.smtp).await, "flag.example");
}

#[test]
fn unknown_config_key_is_a_startup_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("smtp.toml");
    std::fs::write(&file, "[resources]\nmax_conections = 5\n").unwrap();
    let out = output(refused_command(&["--config", file.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("resources.max_conections"), "{stderr}");
}

#[test]
fn invalid_values_from_flag_env_and_file_name_their_key() {
    let out = output(refused_command(&["--idle-timeout", "forever"]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("idle_timeout"));

    let mut cmd = refused_command(&[]);
    cmd.env("SMTP_MAX_CONNECTIONS", "lots");
    let out = output(cmd);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_connections"));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("smtp.toml");
    std::fs::write(&file, "[memory]\nmemory_critical_threshold = 1.5\n").unwrap();
    let out = output(refused_command(&["--config", file.to_str().unwrap()]));
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("memory_critical_threshold"));
}

/// How many times `needle` appears in what the process printed, stdout and stderr.
fn printed(out: &std::process::Output, needle: &str) -> usize {
    [&out.stdout, &out.stderr]
        .iter()
        .map(|b| String::from_utf8_lossy(b).matches(needle).count())
        .sum()
}

/// A configuration error is said once, on stderr, with exit 2; a startup failure
/// (the port is taken) once, with exit 1. Each used to be logged on stdout too.
#[test]
fn an_error_that_stops_the_server_is_printed_once_on_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[resources]\nmax_connections = \"lots\"\n").unwrap();
    let bad = bad.to_str().unwrap();
    let cases: [(&[&str], &str); 3] = [
        (&["--max-connections", "abc"], "max_connections"),
        (
            &["--config", "/nonexistent/smtp.toml"],
            "cannot read config file /nonexistent/smtp.toml",
        ),
        (&["--config", bad], "resources.max_connections"),
    ];
    for (args, says) in cases {
        let out = output(refused_command(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_eq!(
            printed(&out, says),
            1,
            "{args:?} printed more than once: {out:?}"
        );
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    // RUST_LOG=info (from `command`): the log is on, and still says nothing of it.
    let out = output(command(&[
        "--bind",
        "127.0.0.1",
        "--port",
        &port,
        "--admin-port",
        "0",
    ]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = stderr
        .lines()
        .find(|l| l.starts_with("smtp-server: "))
        .expect("the error on stderr");
    assert_eq!(
        printed(&out, line.trim_start_matches("smtp-server: ")),
        1,
        "{out:?}"
    );
}

#[tokio::test]
async fn json_logs_carry_the_listen_addresses_as_fields() {
    let server = spawn(command(&[
        "--log-format",
        "json",
        "--admin-port",
        "auto",
        "--admin-addr-file",
        "",
    ]));
    let admin = server.admin.expect("admin listener on a free port");
    let startup: serde_json::Value = serde_json::from_str(&server.startup)
        .unwrap_or_else(|e| panic!("startup line is not JSON ({e}): {}", server.startup));
    assert_eq!(startup["smtp_addr"], server.smtp.to_string(), "{startup}");
    assert_eq!(startup["admin_addr"], admin.to_string(), "{startup}");
    assert_eq!(startup["level"], "INFO", "{startup}");
    let mut c = Client::ready(server.smtp).await;
    c.cmd("QUIT").await.assert(221, "2.0.0");
    // Every later line, the session's close event included, is JSON too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let line = server
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the session's close event is logged");
        let event: serde_json::Value = serde_json::from_str(&line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
        if line.contains("connection closed") {
            assert!(event["message"].is_string(), "{event}");
            break;
        }
    }
}

/// A server over its memory budget answers `/health` with 503; the probe a container
/// health check runs must then exit 1.
#[tokio::test]
async fn healthcheck_exits_1_when_health_answers_503() {
    let server = spawn(command(&[
        "--admin-port",
        "auto",
        "--admin-addr-file",
        "",
        "--max-memory-usage",
        "64KiB",
    ]));
    let admin = server.admin.expect("admin listener on a free port");
    let (status, body) = common::http_get(admin, "/health").await;
    assert_eq!(status, 503, "{body}");
    let out = output(command(&[
        "healthcheck",
        "--admin-port",
        &admin.port().to_string(),
    ]));
    assert_eq!(out.status.code(), Some(1), "{out:?}");
}

/// TLS and AUTH keys that cannot work, alone or together, are configuration errors
/// (exit 2) naming the key, and the file when one is involved.
#[test]
fn unusable_tls_and_auth_settings_are_configuration_errors_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let not_pem = dir.path().join("not.pem");
    std::fs::write(&not_pem, "hello\n").unwrap();
    let not_pem = not_pem.to_str().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "# users\nalice:secret\nbob\n").unwrap();
    let users = users.to_str().unwrap();
    let cases: [(&[&str], &[&str]); 9] = [
        (&["--require-tls"], &["require_tls", "tls_cert"]),
        (&["--tls-cert", not_pem], &["tls_cert", "tls_key"]),
        (
            &["--tls-cert", "/nonexistent/cert.pem", "--tls-key", not_pem],
            &["tls_cert", "/nonexistent/cert.pem"],
        ),
        (
            &["--tls-cert", not_pem, "--tls-key", not_pem],
            &["tls_cert", "no PEM CERTIFICATE", "not.pem"],
        ),
        (&["--implicit-tls-port", "0"], &["implicit_tls_port"]),
        (&["--require-auth"], &["require_auth", "auth_users"]),
        (
            &["--tls-ca-out", not_pem],
            &["tls_ca_out", "tls_self_signed"],
        ),
        (
            &["--auth-users", users],
            &["auth_users", "auth_allow_plaintext"],
        ),
        (
            &["--auth-users", users, "--tls-self-signed"],
            &["auth_users", "users:3"],
        ),
    ];
    for (args, says) in cases {
        let out = output(refused_command(args));
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for needle in says {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle} not in {stderr}"
            );
        }
    }
}

#[tokio::test]
async fn a_self_signed_server_logs_its_fingerprint_and_implicit_tls_address() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let mut cmd = command(&[
        "--admin-port",
        "0",
        "--tls-self-signed",
        "--tls-ca-out",
        ca.to_str().unwrap(),
        "--implicit-tls-port",
        "0",
    ]);
    cmd.env("SMTP_REQUIRE_TLS", "true");
    let server = spawn(cmd);
    let implicit: SocketAddr = field(&server.startup, "implicit_tls_addr")
        .expect("implicit_tls_addr logged")
        .parse()
        .expect("an address");
    assert_ne!(implicit.port(), 0);
    let pem = std::fs::read_to_string(&ca).expect("CA written");
    assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    let fingerprint = server
        .before_startup
        .iter()
        .find_map(|l| field(l, "tls_certificate_sha256"))
        .expect("tls_certificate_sha256 logged at start");
    assert!(
        fingerprint.len() == 64 && fingerprint.bytes().all(|b| b.is_ascii_hexdigit()),
        "{fingerprint}"
    );
    // SMTP_REQUIRE_TLS=true took effect.
    let mut c = Client::ready(server.smtp).await;
    c.cmd("MAIL FROM:<a@b.example>").await.assert(530, "5.7.0");
}

/// `hash-password` prints a PHC string that the users file accepts, and a server
/// started with it authenticates the password.
#[tokio::test]
async fn hash_password_output_works_in_the_users_file() {
    use std::io::Write;
    let mut child = command(&["hash-password"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"s3cret pass\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("s3cret"), "{hash}");
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, format!("carol:{hash}\n")).unwrap();
    let server = common::start_with(move |c| {
        c.auth_users = Some(users);
        c.auth_allow_plaintext = true;
    })
    .await;
    let mut c = Client::ready(server.smtp_addr()).await;
    use base64::Engine;
    let plain = base64::engine::general_purpose::STANDARD.encode(b"\0carol\0s3cret pass");
    c.cmd(&format!("AUTH PLAIN {plain}"))
        .await
        .assert(235, "2.7.0");
    common::stop(server).await;
}
