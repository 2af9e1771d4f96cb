//! smtp-server checked by a client nobody here wrote: swaks (Debian's package: Perl
//! with Net::SSLeay, so OpenSSL on the client side) for STARTTLS, implicit TLS, AUTH
//! PLAIN and LOGIN, wrong passwords, the brute-force guard and the TLS and AUTH
//! refusals.
//!
//! Each test starts its own server in process on an ephemeral loopback port and runs
//! swaks against it, bounded by swaks' `--timeout` per step and a hard limit per run.
//! Without swaks the tests print `SKIP: swaks not installed` and pass, unless
//! `STAMPEDE_REQUIRE_SWAKS=1` (set in CI), where a missing swaks fails them.

mod common;

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use common::{start_with, stop, wait_until};
use server::{Config, RunningServer};

/// swaks' own limit for each SMTP step (`--timeout`).
const SWAKS_STEP_TIMEOUT: &str = "10s";
/// The hard limit for one whole swaks run, after which it is killed.
const SWAKS_RUN_LIMIT: Duration = Duration::from_secs(60);

const USER: &str = "alice";
const PASSWORD: &str = "wonder land:42";
const HASHED_USER: &str = "bob";
const HASHED_PASSWORD: &str = "b0b's-secret";

/// Whether swaks can be run; prints the SKIP line when it cannot (and fails instead
/// when `STAMPEDE_REQUIRE_SWAKS=1`).
fn swaks_installed() -> bool {
    let found = std::process::Command::new("sh")
        .args(["-c", "command -v swaks"])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("STAMPEDE_REQUIRE_SWAKS").as_deref() != Ok("1"),
            "swaks not installed but STAMPEDE_REQUIRE_SWAKS=1"
        );
        println!("SKIP: swaks not installed");
    }
    found
}

/// Runs swaks against `addr` with a complete envelope plus `options`.
async fn swaks<I>(addr: SocketAddr, options: I) -> Transcript
where
    I: IntoIterator,
    I::Item: AsRef<OsStr>,
{
    let server = addr.to_string();
    let child = tokio::process::Command::new("swaks")
        .args(["--server", &server, "--timeout", SWAKS_STEP_TIMEOUT])
        .args(["--helo", "client.test", "--from", "sender@client.test"])
        .args(["--to", "rcpt@test.example"])
        .args(["--header", "Subject: swaks interop"])
        .args(options)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start swaks");
    let output = tokio::time::timeout(SWAKS_RUN_LIMIT, child.wait_with_output())
        .await
        .expect("swaks finishes within the run limit")
        .expect("swaks output");
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    Transcript {
        code: output.status.code(),
        text,
    }
}

/// What one swaks run left: its exit code and everything it printed.
///
/// swaks marks each line: `<-` a server reply in clear, `<~` one under TLS (`<**`,
/// `<~*` when it was not the expected reply), ` ->` / ` ~>` what it sent, `===` and
/// `***` its own notes.
struct Transcript {
    code: Option<i32>,
    text: String,
}

impl Transcript {
    /// The server's reply lines with their TLS flag, marker removed.
    fn replies(&self) -> impl Iterator<Item = (bool, &str)> {
        self.text.lines().filter_map(|line| {
            let (marker, reply) = line.strip_prefix('<')?.split_once(' ')?;
            Some((marker.starts_with('~'), reply.trim_start()))
        })
    }

    fn server_said(&self, reply_start: &str) -> bool {
        self.replies().any(|(_, r)| r.starts_with(reply_start))
    }

    /// Whether an EHLO reply, in clear or under TLS as asked, lists `extension`.
    fn advertised(&self, extension: &str, under_tls: bool) -> bool {
        self.replies()
            .filter(|&(tls, _)| tls == under_tls)
            .any(|(_, r)| {
                r.strip_prefix("250-")
                    .or_else(|| r.strip_prefix("250 "))
                    .and_then(|rest| rest.split_whitespace().next())
                    .is_some_and(|name| name.eq_ignore_ascii_case(extension))
            })
    }

    fn under_tls_from_the_banner(&self) -> bool {
        self.replies()
            .next()
            .is_some_and(|(tls, r)| tls && r.starts_with("220 "))
    }

    /// The protocol swaks reports for the session (`TLSv1.3`), if TLS started.
    fn tls_protocol(&self) -> Option<&str> {
        let line = self
            .text
            .lines()
            .find_map(|l| l.strip_prefix("=== TLS started with cipher "))?;
        line.split(':').next()
    }

    #[track_caller]
    fn assert_code(&self, expected: i32) {
        assert_eq!(self.code, Some(expected), "swaks exit code:\n{}", self.text);
    }

    #[track_caller]
    fn assert_server_said(&self, reply_start: &str) {
        assert!(
            self.server_said(reply_start),
            "the server never replied {reply_start:?}:\n{}",
            self.text
        );
    }

    #[track_caller]
    fn assert_contains(&self, needle: &str) {
        assert!(
            self.text.contains(needle),
            "transcript lacks {needle:?}:\n{}",
            self.text
        );
    }
}

/// swaks options: STARTTLS, verifying the certificate against the generated CA.
fn starttls_verified(scratch: &Scratch) -> Vec<String> {
    let ca = scratch.ca().to_string_lossy().into_owned();
    ["--tls", "--tls-verify", "--tls-ca-path", &ca]
        .map(String::from)
        .to_vec()
}

/// swaks options: authenticate with `mechanism` only.
fn auth(mechanism: &str, user: &str, password: &str) -> Vec<String> {
    [
        "--auth",
        mechanism,
        "--auth-user",
        user,
        "--auth-password",
        password,
    ]
    .map(String::from)
    .to_vec()
}

/// A scratch directory for the users file and the CA the server generates.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    /// A users file with one clear-text user.
    fn new() -> Self {
        Self::with_users(&format!("# swaks interop users\n{USER}:{PASSWORD}\n"))
    }

    /// Also a user stored as an argon2id PHC hash at the real (default) cost, as a
    /// production users file holds it. Seconds of CPU in a debug build, so only where
    /// the hash is the point.
    fn with_hashed_user() -> Self {
        let hashed = server::auth::hash_password(HASHED_PASSWORD).expect("hash a password");
        Self::with_users(&format!("{USER}:{PASSWORD}\n{HASHED_USER}:{hashed}\n"))
    }

    fn with_users(users: &str) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("users"), users).expect("write users file");
        Scratch { dir }
    }

    fn users(&self) -> PathBuf {
        self.dir.path().join("users")
    }

    fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }
}

/// A server with a generated certificate (its CA written for swaks to verify with),
/// the users file, and `adjust` applied last.
async fn tls_server(scratch: &Scratch, adjust: impl FnOnce(&mut Config)) -> RunningServer {
    let ca = scratch.ca();
    let users = scratch.users();
    start_with(move |c| {
        c.tls_self_signed = true;
        c.tls_ca_out = Some(ca);
        c.auth_users = Some(users);
        adjust(c);
    })
    .await
}

#[tokio::test]
async fn starttls_message_is_accepted_with_a_verified_certificate() {
    if !swaks_installed() {
        return;
    }
    let scratch = Scratch::new();
    let server = tls_server(&scratch, |_| {}).await;

    let run = swaks(server.smtp_addr(), starttls_verified(&scratch)).await;

    run.assert_code(0);
    run.assert_server_said("220 2.0.0");
    assert_eq!(run.tls_protocol(), Some("TLSv1.3"), "{}", run.text);
    // RFC 3207: STARTTLS offered in clear only; AUTH offered under TLS only.
    assert!(run.advertised("STARTTLS", false), "{}", run.text);
    assert!(!run.advertised("STARTTLS", true), "{}", run.text);
    assert!(!run.advertised("AUTH", false), "{}", run.text);
    assert!(run.advertised("AUTH", true), "{}", run.text);
    assert!(
        run.replies()
            .any(|(tls, r)| tls && r.starts_with("250 2.0.0"))
    );
    let stored = server.stored_messages();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].rcpt_to, ["rcpt@test.example"]);
    let tls = server.stats().tls;
    assert_eq!(tls.handshakes.get("ok"), Some(&1), "{tls:?}");
    assert_eq!(tls.versions.get("TLSv1.3"), Some(&1), "{tls:?}");
    stop(server).await;
}

#[tokio::test]
async fn starttls_with_tls12_is_accepted() {
    if !swaks_installed() {
        return;
    }
    let scratch = Scratch::new();
    let server = tls_server(&scratch, |_| {}).await;
    let mut options = starttls_verified(&scratch);
    options.extend(["--tls-protocol".into(), "tlsv1_2".into()]);

    let run = swaks(server.smtp_addr(), options).await;

    run.assert_code(0);
    assert_eq!(run.tls_protocol(), Some("TLSv1.2"), "{}", run.text);
    assert_eq!(server.stored_messages().len(), 1);
    let tls = server.stats().tls;
    assert_eq!(tls.versions.get("TLSv1.2"), Some(&1), "{tls:?}");
    stop(server).await;
}

#[tokio::test]
async fn starttls_fails_when_swaks_cannot_verify_the_certificate() {
    if !swaks_installed() {
        return;
    }
    let scratch = Scratch::new();
    let server = tls_server(&scratch, |_| {}).await;

    // The system roots only, which do not hold the generated CA: proves that the
    // tests passing --tls-ca-path really verify.
    let run = swaks(server.smtp_addr(), ["--tls", "--tls-verify"]).await;

    run.assert_code(29);
    assert_eq!(run.tls_protocol(), None, "{}", run.text);
    assert!(server.stored_messages().is_empty());
    // The client's alert reaches the server after swaks has given up.
    wait_until("the refused handshake is counted", || {
        server.stats().tls.handshakes.get("failed") == Some(&1)
    })
    .await;
    stop(server).await;
}

#[tokio::test]
async fn implicit_tls_message_is_accepted() {
    if !swaks_installed() {
        return;
    }
    let scratch = Scratch::new();
    let server = tls_server(&scratch, |c| c.implicit_tls_port = Some(0)).await;
    let implicit = server.implicit_tls_addr().expect("implicit TLS listener");
    let ca = scratch.ca().to_string_lossy().into_owned();

    let run = swaks(implicit, ["--tlsc", "--tls-verify", "--tls-ca-path", &ca]).await;

    run.assert_code(0);
    assert!(run.under_tls_from_the_banner(), "{}", run.text);
    assert!(!run.advertised("STARTTLS", true), "{}", run.text);
    assert!(run.advertised("AUTH", true), "{}", run.text);
    run.assert_server_said("250 2.0.0");
    assert_eq!(server.stored_messages().len(), 1);
    stop(server).await;
}

#[tokio::test]
async fn auth_plain_with_an_argon2_hashed_password_is_accepted() {
    if !swaks_installed() {
        return;
    }
    let scratch = Scratch::with_hashed_user();
    let server = tls_server(&scratch, |c| c.require_auth = true).await;
    let mut options = starttls_verified(&scratch);
    options.extend(auth("PLAIN", HASHED_USER, HASHED_PASSWORD));

    let run = swaks(server.smtp_addr(), options).await;

    run.assert_code(0);
    assert!(
        run.replies()
            .any(|(tls, r)| tls && r == "235 2.7.0 Authentication successful")
    );
    assert_eq!(server.stored_messages().len(), 1);
    assert_eq!(server.stats().auth.get("success"), Some(&1));
    stop(server).await;
}

#[tokio::test]
async fn auth_login_is_accepted() {
    if !swaks_installed() {
        return;
    }
    let scratch = Scratch::new();
    let server = tls_server(&scratch, |c| c.require_auth = true).await;
    let mut options = starttls_verified(&scratch);
    options.extend(auth("LOGIN", USER, PASSWORD));

    let run = swaks(server.smtp_addr(), options).await;

    run.assert_code(0);
    // The two LOGIN prompts, "Username:" and "Password:".
    run.assert_server_said("334 VXNlcm5hbWU6");
    run.assert_server_said("334 UGFzc3dvcmQ6");
    run.assert_server_said("235 2.7.0");
    assert_eq!(server.stored_messages().len(), 1);
    stop(server).await;
}

#[tokio::test]
async fn a_wrong_password_gets_535_and_swaks_fails() {
    if !swaks_installed() {
        return;
    }
    let scratch = Scratch::new();
    let server = tls_server(&scratch, |c| c.require_auth = true).await;
    for mechanism in ["PLAIN", "LOGIN"] {
        let mut options = starttls_verified(&scratch);
        options.extend(auth(mechanism, USER, "not-it"));

        let run = swaks(server.smtp_addr(), options).await;

        run.assert_code(28);
        run.assert_server_said("535 5.7.8");
        assert!(!run.server_said("235"), "{}", run.text);
    }
    assert!(server.stored_messages().is_empty());
    assert_eq!(server.stats().auth.get("failure"), Some(&2));
    stop(server).await;
}

#[tokio::test]
async fn repeated_failures_from_one_address_get_421() {
    if !swaks_installed() {
        return;
    }
    let scratch = Scratch::new();
    let server = tls_server(&scratch, |c| c.auth_max_failures = 2).await;
    let attempt = |password: &str| {
        let mut options = starttls_verified(&scratch);
        options.extend(auth("PLAIN", USER, password));
        swaks(server.smtp_addr(), options)
    };

    let first = attempt("guess-1").await;
    first.assert_code(28);
    first.assert_server_said("535 5.7.8");
    // The failure that reaches the limit is answered 421 and the connection closed.
    let second = attempt("guess-2").await;
    second.assert_code(28);
    second.assert_server_said("421 4.7.0");
    // From then on, even the right password is refused from this address.
    let blocked = attempt(PASSWORD).await;
    blocked.assert_code(28);
    blocked.assert_server_said("421 4.7.0");
    assert!(!blocked.server_said("235"), "{}", blocked.text);

    assert!(server.stored_messages().is_empty());
    let auth = server.stats().auth;
    let counts = ["failure", "blocked", "success"].map(|r| auth.get(r).copied());
    assert_eq!(counts, [Some(2), Some(1), Some(0)], "{auth:?}");
    stop(server).await;
}

#[tokio::test]
async fn require_tls_refuses_mail_without_starttls() {
    if !swaks_installed() {
        return;
    }
    let scratch = Scratch::new();
    let server = tls_server(&scratch, |c| c.require_tls = true).await;

    let run = swaks(server.smtp_addr(), Vec::<String>::new()).await;

    run.assert_code(23);
    run.assert_server_said("530 5.7.0 Must issue a STARTTLS command first");
    assert_eq!(run.tls_protocol(), None, "{}", run.text);
    assert!(server.stored_messages().is_empty());
    stop(server).await;
}

#[tokio::test]
async fn auth_is_not_offered_before_tls() {
    if !swaks_installed() {
        return;
    }
    let scratch = Scratch::new();
    let server = tls_server(&scratch, |_| {}).await;

    let run = swaks(server.smtp_addr(), auth("PLAIN", USER, PASSWORD)).await;

    // AUTH is advertised only under TLS, so swaks gives up before sending it (a client
    // that sends it anyway gets 538: the server's own tests cover that).
    run.assert_code(28);
    run.assert_contains("*** Host did not advertise authentication");
    assert!(run.advertised("STARTTLS", false), "{}", run.text);
    assert!(!run.advertised("AUTH", false), "{}", run.text);
    assert!(server.stored_messages().is_empty());
    stop(server).await;
}

#[tokio::test]
async fn auth_in_clear_works_when_allowed() {
    if !swaks_installed() {
        return;
    }
    let scratch = Scratch::new();
    let server = tls_server(&scratch, |c| c.auth_allow_plaintext = true).await;

    let run = swaks(server.smtp_addr(), auth("PLAIN", USER, PASSWORD)).await;

    run.assert_code(0);
    assert_eq!(run.tls_protocol(), None, "{}", run.text);
    assert!(run.advertised("AUTH", false), "{}", run.text);
    run.assert_server_said("235 2.7.0");
    assert_eq!(server.stored_messages().len(), 1);
    stop(server).await;
}
