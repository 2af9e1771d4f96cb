//! `--timeout` end to end, phase by phase: a scripted server that answers normally
//! up to one command and then says nothing. The message fails as
//! `timeout:<phase>`, no sooner than the timeout and well before the test's bound.

mod common;

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use common::{config, run};

/// Serves sessions that go silent at the first command starting with `stall_at`
/// (holding the socket open), answering everything before it.
async fn silent_from(stall_at: &'static str) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (r, mut w) = sock.into_split();
                let mut r = BufReader::new(r);
                let _ = w.write_all(b"220 scripted ESMTP\r\n").await;
                let mut line = String::new();
                loop {
                    line.clear();
                    if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                        return;
                    }
                    if line.to_ascii_uppercase().starts_with(stall_at) {
                        // Silent, but the socket stays open until the client goes.
                        let mut rest = String::new();
                        let _ = r.read_line(&mut rest).await;
                        return;
                    }
                    let reply: &[u8] = match line.get(..4) {
                        Some("EHLO") => b"250-scripted\r\n250 8BITMIME\r\n",
                        Some("DATA") => b"354 go on\r\n",
                        _ => b"250 ok\r\n",
                    };
                    if w.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_server_silent_past_the_timeout_fails_the_message_as_timeout_in_that_phase() {
    const TIMEOUT: Duration = Duration::from_millis(300);
    for (stall_at, phase) in [
        ("EHLO", "ehlo"),
        ("MAIL", "mail"),
        ("RCPT", "rcpt"),
        ("DATA", "data"),
    ] {
        let addr = silent_from(stall_at).await;
        let started = Instant::now();
        let r = run(config(
            &[addr],
            &[
                "--messages",
                "1",
                "--workers",
                "1",
                "--timeout",
                "300ms",
                "--no-preflight",
            ],
        ))
        .await;
        let took = started.elapsed();
        let m = &r.metrics;
        let key = format!("timeout:{phase}");
        assert_eq!(m.error_breakdown.get(&key), Some(&1), "{stall_at}: {m:?}");
        assert_eq!((m.timeouts, m.failed_messages), (1, 1), "{stall_at}: {m:?}");
        assert!(took >= TIMEOUT, "{stall_at}: gave up after {took:?}");
        assert!(took < Duration::from_secs(5), "{stall_at}: took {took:?}");
    }
}
