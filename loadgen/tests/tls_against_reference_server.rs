//! The generator's TLS and AUTH against the real reference server's (started
//! in-process): the two sides were written apart, so this is where they must agree on
//! STARTTLS, implicit TLS, resumption and AUTH, and both must count the same things.
//! Certificate checking stays on: the server's throwaway CA is handed to `--tls-ca`.

mod common;

use std::path::PathBuf;

use common::{config, run};
use report::{Phase, RunResult};

/// A user whose password the server stores as an argon2 hash, and one in clear.
const USERS: [(&str, &str); 2] = [("alice", "wonderland"), ("bob", "builder")];

struct Fixture {
    server: server::RunningServer,
    ca: PathBuf,
    auth_file: PathBuf,
    _dir: tempfile::TempDir,
}

/// smtp-server with a generated certificate, an implicit TLS port, TLS and AUTH
/// required, and the two users.
async fn start_server() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    let users = dir.path().join("users");
    let hashed = server::auth::hash_password(USERS[0].1).unwrap();
    std::fs::write(
        &users,
        format!("{}:{hashed}\n{}:{}\n", USERS[0].0, USERS[1].0, USERS[1].1),
    )
    .unwrap();
    let auth_file = dir.path().join("logins");
    let logins: String = USERS.iter().map(|(u, p)| format!("{u}:{p}\n")).collect();
    std::fs::write(&auth_file, logins).unwrap();
    let config = server::Config {
        tls_self_signed: true,
        tls_ca_out: Some(ca.clone()),
        implicit_tls_port: Some(0),
        require_tls: true,
        auth_users: Some(users),
        require_auth: true,
        ..server::Config::for_local_testing()
    };
    let server = server::start(config).await.unwrap();
    Fixture {
        server,
        ca,
        auth_file,
        _dir: dir,
    }
}

fn phase_seen(r: &RunResult, phase: Phase) -> bool {
    r.metrics.phases_ms.contains_key(phase.as_str())
}

#[tokio::test]
async fn starttls_and_auth_plain_deliver_every_message_and_both_sides_agree() {
    let f = start_server().await;
    let ca = f.ca.to_str().unwrap();
    let auth_file = f.auth_file.to_str().unwrap();
    let r = run(config(
        &[f.server.smtp_addr()],
        &[
            "--messages",
            "60",
            "--workers",
            "4",
            "--msgs-per-conn",
            "3",
            "--pipelining",
            "--size",
            "small",
            "--tls",
            "starttls",
            "--tls-ca",
            ca,
            "--auth",
            "plain",
            "--auth-file",
            auth_file,
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!(
        (m.successful_messages, m.failed_messages),
        (60, 0),
        "{:?}",
        m.error_breakdown
    );
    let stats = f.server.stats();
    assert_eq!(stats.messages_accepted, 60);
    // At most 3 messages a connection, so at least 20 connections (more when a
    // worker's share does not divide by 3), each one handshake and one AUTH. Both
    // sides count the same ones; the server sees one handshake more, loadgen's check
    // before the run.
    let tls = r.tls.as_ref().expect("the result records TLS");
    assert_eq!(tls.mode, "starttls");
    assert!(tls.handshakes >= 20, "{tls:?}");
    assert_eq!(stats.tls.handshakes.get("ok"), Some(&(tls.handshakes + 1)));
    assert_eq!(
        stats.tls.versions.get("TLSv1.3"),
        Some(&(tls.handshakes + 1))
    );
    assert_eq!(tls.versions.get("TLSv1.3"), Some(&tls.handshakes));
    assert!(tls.resumed > 0, "later connections resume: {tls:?}");
    assert_eq!(stats.auth.get("success"), Some(&tls.handshakes));
    assert!(phase_seen(&r, Phase::Tls) && phase_seen(&r, Phase::Auth));
    assert_eq!(stats.auth.get("failure").copied().unwrap_or(0), 0);
}

#[tokio::test]
async fn implicit_tls_and_auth_login_hold_a_sustained_rate() {
    let f = start_server().await;
    let addr = f.server.implicit_tls_addr().expect("implicit TLS port");
    let r = run(config(
        &[addr],
        &[
            "--mode",
            "sustained",
            "--rate",
            "40",
            "--duration",
            "1",
            "--size",
            "small",
            "--tls",
            "implicit",
            "--tls-ca",
            f.ca.to_str().unwrap(),
            "--auth",
            "login",
            "--auth-user",
            USERS[1].0,
            "--auth-password",
            USERS[1].1,
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!(
        (m.successful_messages, m.failed_messages),
        (40, 0),
        "{:?}",
        m.error_breakdown
    );
    assert_eq!(f.server.stats().messages_accepted, 40);
    assert_eq!(r.tls.as_ref().map(|t| t.mode.as_str()), Some("implicit"));
    assert_eq!(f.server.stats().auth.get("success"), Some(&40));
}

#[tokio::test]
async fn a_wrong_password_is_counted_as_535_on_both_sides_and_nothing_is_delivered() {
    let f = start_server().await;
    let r = run(config(
        &[f.server.smtp_addr()],
        &[
            "--messages",
            "3",
            "--workers",
            "1",
            "--size",
            "small",
            "--tls",
            "starttls",
            "--tls-ca",
            f.ca.to_str().unwrap(),
            "--auth",
            "plain",
            "--auth-user",
            USERS[1].0,
            "--auth-password",
            "wrong",
        ],
    ))
    .await;
    assert_eq!(r.metrics.failed_messages, 3);
    assert_eq!(r.metrics.error_breakdown.get("535"), Some(&3));
    let stats = f.server.stats();
    assert_eq!(stats.messages_accepted, 0);
    assert_eq!(stats.auth.get("failure"), Some(&3));
}

#[tokio::test]
async fn without_tls_the_server_that_requires_it_refuses_mail_with_530() {
    let f = start_server().await;
    let r = run(config(
        &[f.server.smtp_addr()],
        &["--messages", "2", "--workers", "1", "--size", "small"],
    ))
    .await;
    assert_eq!(r.metrics.failed_messages, 2);
    assert_eq!(r.metrics.error_breakdown.get("530"), Some(&2));
    assert_eq!(f.server.stats().messages_accepted, 0);
}

#[tokio::test]
async fn a_client_that_does_not_know_the_servers_ca_fails_as_tls_certificate() {
    let f = start_server().await;
    let r = run(config(
        &[f.server.smtp_addr()],
        &[
            "--messages",
            "2",
            "--workers",
            "1",
            "--size",
            "small",
            "--tls",
            "starttls",
        ],
    ))
    .await;
    assert_eq!(r.metrics.failed_messages, 2);
    assert_eq!(
        r.metrics.error_breakdown.get("tls:certificate"),
        Some(&2),
        "{:?}",
        r.metrics.error_breakdown
    );
    // The server learns of each refusal from the client's alert, which may still be
    // on its way when the run ends: wait for it (bounded). Three: two messages and
    // loadgen's check before the run.
    let failed = || f.server.stats().tls.handshakes.get("failed").copied();
    for _ in 0..100 {
        if failed() == Some(3) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(failed(), Some(3));
}
