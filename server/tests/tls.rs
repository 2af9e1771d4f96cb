//! STARTTLS and implicit TLS over real sockets, with a rustls client that verifies
//! the server's generated certificate against the CA written to `tls_ca_out`.

mod common;

use std::time::Duration;

use common::tls::{Negotiated, client_config, connector, start_tls_with};
use common::{Client, body_of_size, http_get, stop, wait_until};

fn offers(reply: &common::Reply, extension: &str) -> bool {
    reply.lines.iter().any(|l| l == extension)
}

#[tokio::test]
async fn starttls_resets_the_session_and_a_message_is_accepted_over_tls() {
    let tls = start_tls_with(|_| {}).await;
    let connector = connector(&tls.ca_file);
    let mut c = Client::connect_greeted(tls.server.smtp_addr()).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(offers(&ehlo, "STARTTLS"), "{ehlo:?}");
    c.cmd("MAIL FROM:<before@client.test>")
        .await
        .assert(250, "2.1.0");
    // Not inside a transaction.
    c.cmd("STARTTLS").await.assert(503, "5.5.1");
    c.cmd("RSET").await.assert(250, "2.0.0");

    let (mut c, negotiated) = c.start_tls(&connector).await;
    assert_eq!(
        negotiated.version,
        Some(rustls::ProtocolVersion::TLSv1_3),
        "{negotiated:?}"
    );
    // RFC 3207 4.2: the server forgets the EHLO; no banner is sent again.
    c.cmd("MAIL FROM:<a@client.test>")
        .await
        .assert(503, "5.5.1");
    let ehlo = c.cmd("EHLO client.test").await;
    assert_eq!(ehlo.code, 250);
    assert!(
        !offers(&ehlo, "STARTTLS"),
        "offered again under TLS: {ehlo:?}"
    );
    c.cmd("STARTTLS").await.assert(503, "5.5.1");
    c.send_message(&body_of_size(1024))
        .await
        .assert(250, "2.0.0");
    c.cmd("QUIT").await.assert(221, "2.0.0");
    assert!(c.is_closed().await);

    assert_eq!(tls.server.stored_messages().len(), 1);
    let stats = tls.server.stats();
    assert_eq!(stats.tls.handshakes["ok"], 1);
    assert_eq!(stats.tls.versions["TLSv1.3"], 1);
    assert!(
        tls.server
            .tls_certificate_sha256()
            .is_some_and(|f| f.len() == 64)
    );
    stop(tls.server).await;
}

/// The STARTTLS command injection class (CVE-2011-0411): commands sent in plaintext
/// right behind STARTTLS must not be executed inside the TLS session.
#[tokio::test]
async fn commands_pipelined_after_starttls_are_discarded_not_executed() {
    let tls = start_tls_with(|_| {}).await;
    let connector = connector(&tls.ca_file);
    let mut c = Client::ready(tls.server.smtp_addr()).await;
    c.send(
        "STARTTLS\r\nMAIL FROM:<injected@evil.test>\r\nRCPT TO:<victim@test.example>\r\n\
         DATA\r\nSubject: injected\r\n\r\n.\r\n",
    )
    .await;
    c.reply().await.assert(220, "2.0.0");
    let (stream, negotiated) = {
        // The handshake runs on what is left of the stream: the server must not have
        // answered anything else in plaintext.
        let stream = c.into_stream();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls_stream = tokio::time::timeout(common::REPLY_WAIT, connector.connect(name, stream))
            .await
            .expect("handshake in time")
            .expect("handshake succeeds: no injected reply in the way");
        let version = tls_stream.get_ref().1.protocol_version();
        (tls_stream, version)
    };
    assert!(negotiated.is_some());
    let mut c = Client::over(stream);
    c.cmd("EHLO client.test").await;
    // Had the injected MAIL run after the handshake, RCPT would be accepted.
    c.cmd("RCPT TO:<x@test.example>").await.assert(503, "5.5.1");
    c.cmd("DATA").await.assert(503, "5.5.1");
    c.cmd("QUIT").await.assert(221, "2.0.0");
    assert!(tls.server.stored_messages().is_empty());
    stop(tls.server).await;
}

#[tokio::test]
async fn a_message_over_implicit_tls_is_accepted() {
    let tls = start_tls_with(|c| c.implicit_tls_port = Some(0)).await;
    let connector = connector(&tls.ca_file);
    let addr = tls
        .server
        .implicit_tls_addr()
        .expect("implicit TLS listener");
    assert_ne!(addr.port(), 0);
    assert_ne!(addr, tls.server.smtp_addr());
    let (mut c, _) = Client::connect_tls(addr, &connector).await;
    c.reply().await.assert(220, "");
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!offers(&ehlo, "STARTTLS"), "{ehlo:?}");
    c.cmd("STARTTLS").await.assert(503, "5.5.1");
    c.send_message(&body_of_size(1024))
        .await
        .assert(250, "2.0.0");
    c.cmd("QUIT").await.assert(221, "2.0.0");
    assert_eq!(tls.server.stored_messages().len(), 1);
    assert_eq!(tls.server.stats().tls.handshakes["ok"], 1);
    stop(tls.server).await;
}

#[tokio::test]
async fn require_tls_refuses_mail_before_starttls_with_530() {
    let tls = start_tls_with(|c| c.require_tls = true).await;
    let connector = connector(&tls.ca_file);
    let mut c = Client::ready(tls.server.smtp_addr()).await;
    c.cmd("MAIL FROM:<a@client.test>")
        .await
        .assert(530, "5.7.0");
    let (mut c, _) = c.start_tls(&connector).await;
    c.cmd("EHLO client.test").await;
    c.send_message(b"Subject: x\r\n\r\nover TLS\r\n")
        .await
        .assert(250, "2.0.0");
    stop(tls.server).await;
}

#[tokio::test]
async fn without_a_certificate_starttls_is_neither_offered_nor_accepted() {
    let server = common::start_with(|_| {}).await;
    let mut c = Client::connect_greeted(server.smtp_addr()).await;
    let ehlo = c.cmd("EHLO client.test").await;
    assert!(!offers(&ehlo, "STARTTLS"), "{ehlo:?}");
    c.cmd("STARTTLS").await.assert(502, "5.5.1");
    assert!(server.implicit_tls_addr().is_none());
    stop(server).await;
}

#[tokio::test]
async fn a_stalled_handshake_is_closed_after_the_handshake_timeout_and_counted() {
    let tls = start_tls_with(|c| {
        c.implicit_tls_port = Some(0);
        c.tls_handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let addr = tls.server.implicit_tls_addr().unwrap();
    // Implicit port: connect and send nothing.
    let mut silent = Client::connect(addr).await;
    assert!(
        silent.is_closed().await,
        "closed after the handshake timeout"
    );
    // STARTTLS, then nothing.
    let mut c = Client::ready(tls.server.smtp_addr()).await;
    c.cmd("STARTTLS").await.assert(220, "2.0.0");
    assert!(c.is_closed().await);
    let server = &tls.server;
    wait_until("two handshake timeouts counted", || {
        server.stats().tls.handshakes["timeout"] == 2
    })
    .await;
    wait_until("sessions gone", || server.stats().active_connections == 0).await;
    stop(tls.server).await;
}

#[tokio::test]
async fn garbage_instead_of_a_client_hello_is_a_failed_handshake_and_the_server_carries_on() {
    let tls = start_tls_with(|c| c.implicit_tls_port = Some(0)).await;
    let connector = connector(&tls.ca_file);
    let addr = tls.server.implicit_tls_addr().unwrap();
    // Plain SMTP on the implicit port.
    let mut plain = Client::connect(addr).await;
    plain.send("EHLO client.test\r\n").await;
    assert!(plain.closes_after_any_output().await);
    // Binary noise after STARTTLS, including a record header announcing a huge
    // length.
    let mut c = Client::ready(tls.server.smtp_addr()).await;
    c.cmd("STARTTLS").await.assert(220, "2.0.0");
    c.send(b"\x16\x03\x01\xff\xff\x00\x01\x02garbage\r\n\x00\xff")
        .await;
    assert!(c.closes_after_any_output().await);
    let server = &tls.server;
    wait_until("two failed handshakes counted", || {
        server.stats().tls.handshakes["failed"] == 2
    })
    .await;
    // Both sessions are gone and a real client is still served.
    wait_until("sessions gone", || server.stats().active_connections == 0).await;
    let (mut ok, _) = Client::connect_tls(addr, &connector).await;
    ok.reply().await.assert(220, "");
    assert_eq!(tls.server.stats().tls.handshakes["ok"], 1);
    stop(tls.server).await;
}

#[tokio::test]
async fn a_client_that_does_not_trust_the_certificate_fails_and_the_server_counts_it() {
    let tls = start_tls_with(|c| c.implicit_tls_port = Some(0)).await;
    let other = start_tls_with(|_| {}).await;
    // The other server's CA does not sign this server's certificate.
    let wrong = connector(&other.ca_file);
    let stream = tokio::net::TcpStream::connect(tls.server.implicit_tls_addr().unwrap())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let err = wrong.connect(name, stream).await.expect_err("untrusted");
    assert!(err.to_string().contains("certificate"), "{err}");
    let server = &tls.server;
    wait_until("failed handshake counted", || {
        server.stats().tls.handshakes["failed"] == 1
    })
    .await;
    stop(tls.server).await;
    stop(other.server).await;
}

#[tokio::test]
async fn tls_1_2_clients_are_served_and_counted_by_version() {
    let tls = start_tls_with(|c| c.implicit_tls_port = Some(0)).await;
    let config = client_config(&tls.ca_file, &[&rustls::version::TLS12]);
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));
    let (mut c, negotiated) =
        Client::connect_tls(tls.server.implicit_tls_addr().unwrap(), &connector).await;
    assert_eq!(negotiated.version, Some(rustls::ProtocolVersion::TLSv1_2));
    c.reply().await.assert(220, "");
    c.cmd("QUIT").await.assert(221, "2.0.0");
    assert_eq!(tls.server.stats().tls.versions["TLSv1.2"], 1);
    stop(tls.server).await;
}

/// A client that keeps its session (as loadgen's `--tls-resume on` does) resumes on
/// the next connection, with TLS 1.3 tickets and with TLS 1.2.
#[tokio::test]
async fn a_second_connection_resumes_the_tls_session() {
    let tls = start_tls_with(|c| c.implicit_tls_port = Some(0)).await;
    let addr = tls.server.implicit_tls_addr().unwrap();
    for versions in [&[&rustls::version::TLS13][..], &[&rustls::version::TLS12]] {
        let config = std::sync::Arc::new(client_config(&tls.ca_file, versions));
        let connector = tokio_rustls::TlsConnector::from(config);
        let mut kinds = Vec::new();
        for _ in 0..2 {
            let (mut c, Negotiated { resumed, .. }) = Client::connect_tls(addr, &connector).await;
            // TLS 1.3 tickets arrive after the handshake: read the banner first.
            c.reply().await.assert(220, "");
            c.cmd("QUIT").await.assert(221, "2.0.0");
            assert!(c.is_closed().await);
            kinds.push(resumed);
        }
        assert_eq!(kinds, [false, true], "{versions:?}");
    }
    stop(tls.server).await;
}

#[tokio::test]
async fn tls_metrics_and_stats_move() {
    let tls = start_tls_with(|c| {
        c.implicit_tls_port = Some(0);
        c.admin_port = Some(0);
    })
    .await;
    let connector = connector(&tls.ca_file);
    let admin = tls.server.admin_addr().unwrap();
    let (_, before) = http_get(admin, "/metrics").await;
    assert!(
        before.contains("smtp_tls_handshakes_total{result=\"ok\"} 0"),
        "{before}"
    );
    let (mut c, _) = Client::connect_tls(tls.server.implicit_tls_addr().unwrap(), &connector).await;
    c.reply().await.assert(220, "");
    c.cmd("QUIT").await.assert(221, "2.0.0");
    let mut bad = Client::connect(tls.server.implicit_tls_addr().unwrap()).await;
    bad.send("not tls\r\n").await;
    assert!(bad.closes_after_any_output().await);
    let server = &tls.server;
    wait_until("failure counted", || {
        server.stats().tls.handshakes["failed"] == 1
    })
    .await;
    let (_, metrics) = http_get(admin, "/metrics").await;
    for line in [
        "smtp_tls_handshakes_total{result=\"ok\"} 1",
        "smtp_tls_handshakes_total{result=\"failed\"} 1",
        "smtp_tls_handshakes_total{result=\"timeout\"} 0",
        "smtp_tls_sessions_total{version=\"TLSv1.3\"} 1",
        "smtp_tls_sessions_total{version=\"TLSv1.2\"} 0",
    ] {
        assert!(metrics.contains(line), "{line} missing in:\n{metrics}");
    }
    let (_, stats) = http_get(admin, "/api/stats").await;
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["tls"]["handshakes"]["ok"], 1, "{stats}");
    assert_eq!(stats["tls"]["handshakes"]["failed"], 1, "{stats}");
    assert_eq!(stats["tls"]["versions"]["TLSv1.3"], 1, "{stats}");
    stop(tls.server).await;
}

/// The implicit port is under the same admission as the SMTP port: beyond
/// max_connections a connection is closed there without a handshake.
#[tokio::test]
async fn the_implicit_tls_port_shares_the_connection_limit() {
    let tls = start_tls_with(|c| {
        c.implicit_tls_port = Some(0);
        c.max_connections = 1;
    })
    .await;
    let connector = connector(&tls.ca_file);
    let _holder = Client::connect_greeted(tls.server.smtp_addr()).await;
    let stream = tokio::net::TcpStream::connect(tls.server.implicit_tls_addr().unwrap())
        .await
        .unwrap();
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let refused = tokio::time::timeout(common::REPLY_WAIT, connector.connect(name, stream))
        .await
        .expect("refused at once");
    assert!(refused.is_err(), "handshake on a refused connection");
    assert_eq!(
        tls.server.stats().connections_rejected["max_connections"],
        1
    );
    assert_eq!(tls.server.stats().tls.handshakes["ok"], 0);
    stop(tls.server).await;
}

#[tokio::test]
async fn shutdown_closes_the_implicit_tls_listener_too() {
    let tls = start_tls_with(|c| c.implicit_tls_port = Some(0)).await;
    let addr = tls.server.implicit_tls_addr().unwrap();
    // `stop` returns once the accept loops have ended and dropped their sockets.
    stop(tls.server).await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "implicit TLS port still accepting after shutdown"
    );
}
