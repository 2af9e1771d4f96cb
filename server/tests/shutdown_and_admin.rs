//! Graceful shutdown, the admin endpoints and the spool store, in process.

mod common;

use std::time::{Duration, Instant};

use common::{Client, body_of_size, http_get, start_spooling, start_with, stop};

#[tokio::test]
async fn shutdown_lets_a_transaction_finish_and_closes_idle_sessions_with_421_4_3_2() {
    let server = start_with(|c| {
        c.shutdown_grace = Duration::from_secs(5);
        c.admin_port = Some(0);
    })
    .await;
    let addr = server.smtp_addr();
    let admin = server.admin_addr().unwrap();
    let mut busy = Client::ready(addr).await;
    let mut idle = Client::ready(addr).await;
    busy.cmd("MAIL FROM:<a@b.example>")
        .await
        .assert(250, "2.1.0");
    busy.cmd("RCPT TO:<r@test.example>")
        .await
        .assert(250, "2.1.5");
    busy.cmd("DATA").await.assert(354, "");
    busy.send("Subject: in flight\r\n\r\nfirst half\r\n").await;

    let started = Instant::now();
    server.shutdown();
    // A session with no transaction open has nothing to finish.
    idle.reply().await.assert(421, "4.3.2");
    assert!(idle.is_closed().await);
    let (status, body) = http_get(admin, "/health").await;
    assert_eq!(status, 503, "draining server reports unhealthy");
    assert_eq!(body, r#"{"status":"draining"}"#);
    // No new sessions while draining.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let refused = tokio::net::TcpStream::connect(addr).await;
    if let Ok(stream) = refused {
        let mut buf = [0u8; 64];
        let n = tokio::time::timeout(Duration::from_secs(2), async {
            use tokio::io::AsyncReadExt;
            let mut s = stream;
            s.read(&mut buf).await.unwrap_or(0)
        })
        .await
        .unwrap_or(0);
        assert_eq!(n, 0, "no banner after shutdown began");
    }

    // The transaction in flight completes normally.
    busy.send("second half\r\n.\r\nQUIT\r\n").await;
    busy.reply().await.assert(250, "2.0.0");
    busy.reply().await.assert(221, "2.0.0");
    tokio::time::timeout(Duration::from_secs(3), server.wait())
        .await
        .expect("stops as soon as the sessions are done, well before the grace period")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn a_session_lingering_past_the_grace_period_gets_421_4_3_2() {
    let server = start_with(|c| c.shutdown_grace = Duration::from_millis(300)).await;
    let mut lingering = Client::ready(server.smtp_addr()).await;
    lingering
        .cmd("MAIL FROM:<a@b.example>")
        .await
        .assert(250, "2.1.0");
    let started = Instant::now();
    server.shutdown();
    let r = lingering.reply().await;
    r.assert(421, "4.3.2");
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "not before the grace period"
    );
    assert!(lingering.is_closed().await);
    tokio::time::timeout(Duration::from_secs(5), server.wait())
        .await
        .expect("stops after the grace period")
        .unwrap();
}

#[tokio::test]
async fn mail_during_drain_gets_421_4_3_2() {
    let server = start_with(|c| c.shutdown_grace = Duration::from_secs(5)).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    c.cmd("RCPT TO:<r@test.example>").await.assert(250, "2.1.5");
    c.cmd("DATA").await.assert(354, "");
    server.shutdown();
    // The message in flight is accepted, a new transaction pipelined after it is not.
    c.send("Subject: x\r\n\r\ny\r\n.\r\nMAIL FROM:<again@b.example>\r\n")
        .await;
    c.reply().await.assert(250, "2.0.0");
    c.reply().await.assert(421, "4.3.2");
    assert!(c.is_closed().await);
    server.wait().await.unwrap();
}

#[tokio::test]
async fn admin_endpoints_report_health_metrics_and_stats() {
    let server = start_with(|c| {
        c.admin_port = Some(0);
        c.max_connections = 2;
    })
    .await;
    let admin = server.admin_addr().expect("admin listener enabled");
    let (status, body) = http_get(admin, "/health").await;
    assert_eq!(status, 200, "{body}");

    let mut c = Client::ready(server.smtp_addr()).await;
    let body_bytes = body_of_size(2000);
    c.send_message(&body_bytes).await.assert(250, "2.0.0");
    let _second = Client::connect_greeted(server.smtp_addr()).await;
    let mut refused = Client::connect(server.smtp_addr()).await;
    refused.reply().await.assert(421, "4.7.0");

    let (status, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    for expected in [
        "smtp_connections_accepted_total 2".to_string(),
        "smtp_connections_rejected_total{reason=\"max_connections\"} 1".to_string(),
        "smtp_messages_accepted_total 1".to_string(),
        format!("smtp_bytes_received_total {}", body_bytes.len()),
        "smtp_active_connections 2".to_string(),
        "smtp_messages_rejected_total{reason=\"size\"} 0".to_string(),
        "smtp_memory_rss_bytes".to_string(),
        "smtp_memory_accounted_bytes".to_string(),
    ] {
        assert!(
            metrics.contains(&expected),
            "{expected} missing in:\n{metrics}"
        );
    }

    let (status, stats) = http_get(admin, "/api/stats").await;
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).expect("stats are JSON");
    assert_eq!(stats["messages_accepted"], 1);
    assert_eq!(stats["active_connections"], 2);
    assert_eq!(stats["connections_rejected"]["max_connections"], 1);
    assert_eq!(stats["bytes_received"], body_bytes.len() as u64);
    assert!(stats["memory"]["rss_bytes"].as_u64().unwrap() > 0);
    assert_eq!(stats["rate_limit"]["max_requests_per_window"], u32::MAX);

    let (status, _) = http_get(admin, "/nope").await;
    assert_eq!(status, 404);
    stop(server).await;
}

#[tokio::test]
async fn spooled_message_is_on_disk_and_complete_when_250_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let server = start_spooling(&spool).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    let body = body_of_size(100_000);
    c.send_message(&body).await.assert(250, "2.0.0");
    // Checked right after the 250, with the session still open.
    let files: Vec<_> = std::fs::read_dir(spool.join("new"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0].extension().unwrap(), "eml");
    let content = std::fs::read(&files[0]).unwrap();
    assert!(content.starts_with(b"Return-Path: <sender@client.test>\r\n"));
    assert!(
        content.ends_with(&body),
        "spooled file holds the whole message"
    );
    assert_eq!(
        std::fs::read_dir(spool.join("tmp")).unwrap().count(),
        0,
        "no partial files left behind"
    );
    c.send_message(b"Subject: 2\r\n\r\nsecond\r\n")
        .await
        .assert(250, "2.0.0");
    assert_eq!(std::fs::read_dir(spool.join("new")).unwrap().count(), 2);
    stop(server).await;
}

#[test]
fn a_server_whose_runtime_is_gone_stops_listening() {
    // The accept loop runs on its own thread; it must not outlive the runtime that
    // runs the sessions (a test that ends without a graceful stop).
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let addr = runtime.block_on(async { start_with(|_| {}).await.smtp_addr() });
    drop(runtime);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpStream::connect(addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(
                    Instant::now() < deadline,
                    "{addr} still accepts connections"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
