//! AUTH PLAIN and LOGIN over real sockets, under STARTTLS and implicit TLS, with a
//! users file holding a clear password and an argon2 hash.

mod common;

use std::path::PathBuf;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::tls::{TlsServer, connector, start_tls_with};
use common::{Client, http_get, stop, wait_until};
use server::Config;

fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

fn plain(user: &str, password: &str) -> String {
    b64(format!("\0{user}\0{password}").as_bytes())
}

/// Writes a users file: `alice` in clear, `bob` as an argon2id PHC string.
fn users_file(dir: &std::path::Path) -> PathBuf {
    let path = dir.join("users");
    let hash = server::auth::hash_password("hunter2").expect("hash");
    std::fs::write(&path, format!("# users\nalice:secret\n\nbob:{hash}\n")).unwrap();
    path
}

/// A TLS server with the users file; `f` adjusts the rest.
async fn start_auth(
    f: impl FnOnce(&mut Config) + Send + 'static,
) -> (TlsServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let tls = start_tls_with(move |c| {
        c.auth_users = Some(users);
        f(c);
    })
    .await;
    (tls, dir)
}

/// Connects, STARTTLS, EHLO again; returns the client and the EHLO reply under TLS.
async fn over_starttls(tls: &TlsServer) -> (Client, common::Reply) {
    let c = Client::ready(tls.server.smtp_addr()).await;
    let (mut c, _) = c.start_tls(&connector(&tls.ca_file)).await;
    let ehlo = c.cmd("EHLO client.test").await;
    (c, ehlo)
}

#[tokio::test]
async fn auth_plain_under_starttls_then_a_message_with_require_auth() {
    let (tls, _dir) = start_auth(|c| c.require_auth = true).await;
    let mut c = Client::ready(tls.server.smtp_addr()).await;
    let (mut c, ehlo) = {
        // Before TLS: not offered, refused with 538, MAIL refused with 530.
        let ehlo = c.cmd("EHLO client.test").await;
        assert!(
            !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
            "{ehlo:?}"
        );
        c.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")))
            .await
            .assert(538, "5.7.11");
        c.cmd("MAIL FROM:<a@client.test>")
            .await
            .assert(530, "5.7.0");
        let (mut c, _) = c.start_tls(&connector(&tls.ca_file)).await;
        let ehlo = c.cmd("EHLO client.test").await;
        (c, ehlo)
    };
    assert!(
        ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"),
        "{ehlo:?}"
    );
    c.cmd("MAIL FROM:<a@client.test>")
        .await
        .assert(530, "5.7.0");
    c.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")))
        .await
        .assert(235, "2.7.0");
    c.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")))
        .await
        .assert(503, "5.5.1");
    c.send_message(b"Subject: authenticated\r\n\r\nhello\r\n")
        .await
        .assert(250, "2.0.0");
    assert_eq!(tls.server.stored_messages().len(), 1);
    assert_eq!(tls.server.stats().auth["success"], 1);
    stop(tls.server).await;
}

#[tokio::test]
async fn auth_login_with_an_argon2_hashed_password_over_implicit_tls() {
    let (tls, _dir) = start_auth(|c| c.implicit_tls_port = Some(0)).await;
    let addr = tls.server.implicit_tls_addr().unwrap();
    let (mut c, _) = Client::connect_tls(addr, &connector(&tls.ca_file)).await;
    c.reply().await.assert(220, "");
    c.cmd("EHLO client.test").await;
    let r = c.cmd("AUTH LOGIN").await;
    assert_eq!((r.code, r.text()), (334, "VXNlcm5hbWU6".to_string()));
    let r = c.cmd(&b64(b"bob")).await;
    assert_eq!((r.code, r.text()), (334, "UGFzc3dvcmQ6".to_string()));
    c.cmd(&b64(b"hunter2")).await.assert(235, "2.7.0");
    // PLAIN without an initial response: an empty 334, then the response.
    let (mut c2, _) = Client::connect_tls(addr, &connector(&tls.ca_file)).await;
    c2.reply().await;
    c2.cmd("EHLO client.test").await;
    let r = c2.cmd("AUTH PLAIN").await;
    assert_eq!((r.code, r.text()), (334, String::new()));
    c2.cmd(&plain("bob", "hunter2")).await.assert(235, "2.7.0");
    assert_eq!(tls.server.stats().auth["success"], 2);
    stop(tls.server).await;
}

#[tokio::test]
async fn wrong_passwords_malformed_responses_and_unknown_mechanisms_get_their_replies() {
    let (tls, _dir) = start_auth(|_| {}).await;
    let (mut c, _) = over_starttls(&tls).await;
    c.cmd(&format!("AUTH PLAIN {}", plain("alice", "wrong")))
        .await
        .assert(535, "5.7.8");
    c.cmd(&format!("AUTH PLAIN {}", plain("nobody", "secret")))
        .await
        .assert(535, "5.7.8");
    c.cmd("AUTH PLAIN not*base64").await.assert(501, "5.5.2");
    c.cmd("AUTH LOGIN").await;
    c.cmd("*").await.assert(501, "5.5.2");
    c.cmd("AUTH CRAM-MD5").await.assert(504, "5.5.4");
    c.cmd("MAIL FROM:<a@client.test>")
        .await
        .assert(250, "2.1.0");
    c.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")))
        .await
        .assert(503, "5.5.1");
    let auth = tls.server.stats().auth;
    assert_eq!(
        (auth["failure"], auth["malformed"], auth["success"]),
        (2, 2, 0)
    );
    stop(tls.server).await;
}

#[tokio::test]
async fn auth_over_plaintext_only_when_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let users = users_file(dir.path());
    let server = common::start_with(move |c| {
        c.auth_users = Some(users);
        c.auth_allow_plaintext = true;
    })
    .await;
    let mut c = Client::connect_greeted(server.smtp_addr()).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(
        ehlo.lines.iter().any(|l| l == "AUTH PLAIN LOGIN"),
        "{ehlo:?}"
    );
    c.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")))
        .await
        .assert(235, "2.7.0");
    stop(server).await;
}

/// The brute-force defence: the failure that reaches auth_max_failures gets 421 and
/// the connection is closed; the address's next AUTH, on a new connection, too.
#[tokio::test]
async fn repeated_failures_from_one_address_get_421_and_close() {
    let (tls, _dir) = start_auth(|c| {
        c.auth_max_failures = 3;
        c.admin_port = Some(0);
    })
    .await;
    let (mut c, _) = over_starttls(&tls).await;
    for _ in 0..2 {
        c.cmd(&format!("AUTH PLAIN {}", plain("alice", "guess")))
            .await
            .assert(535, "5.7.8");
    }
    c.cmd(&format!("AUTH PLAIN {}", plain("alice", "guess")))
        .await
        .assert(421, "4.7.0");
    assert!(c.is_closed().await);
    // The right password from the same address is refused within the window.
    let (mut c, _) = over_starttls(&tls).await;
    c.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")))
        .await
        .assert(421, "4.7.0");
    assert!(c.is_closed().await);
    // Another loopback address is not blocked.
    let other = std::net::IpAddr::from([127, 0, 0, 2]);
    let c = Client::connect_from(other, tls.server.smtp_addr()).await;
    let mut c = {
        let mut c = c;
        c.reply().await.assert(220, "");
        c.cmd("EHLO client.test").await;
        let (mut c, _) = c.start_tls(&connector(&tls.ca_file)).await;
        c.cmd("EHLO client.test").await;
        c
    };
    c.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")))
        .await
        .assert(235, "2.7.0");

    let server = &tls.server;
    wait_until("auth_failures closes counted", || {
        server.stats().sessions_closed["auth_failures"] == 2
    })
    .await;
    let (_, metrics) = http_get(tls.server.admin_addr().unwrap(), "/metrics").await;
    for line in [
        "smtp_auth_attempts_total{result=\"failure\"} 3",
        "smtp_auth_attempts_total{result=\"blocked\"} 1",
        "smtp_auth_attempts_total{result=\"success\"} 1",
        "smtp_auth_attempts_total{result=\"malformed\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing in:\n{metrics}");
    }
    let (_, stats) = http_get(tls.server.admin_addr().unwrap(), "/api/stats").await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["auth"]["blocked"], 1, "{stats}");
    assert_eq!(stats["auth"]["failure"], 3, "{stats}");
    stop(tls.server).await;
}

#[tokio::test]
async fn without_a_users_file_auth_is_not_implemented() {
    let tls = start_tls_with(|_| {}).await;
    let (mut c, ehlo) = over_starttls(&tls).await;
    assert!(
        !ehlo.lines.iter().any(|l| l.starts_with("AUTH")),
        "{ehlo:?}"
    );
    c.cmd(&format!("AUTH PLAIN {}", plain("alice", "secret")))
        .await
        .assert(502, "5.5.1");
    stop(tls.server).await;
}
