//! The generator against the real reference server at its limits: the 421 a
//! refused connection gets at the banner, and the 421 4.4.2 an idle session gets
//! between two messages of a reused connection, as the result counts them.

mod common;

use std::time::Duration;

use tokio::io::AsyncReadExt;

use common::{config, run, start_reference as start, stop_reference as stop};

#[tokio::test]
async fn a_server_at_its_connection_limit_is_counted_as_421_at_the_banner() {
    let server = start(|c| c.max_connections = 1).await;
    // The one slot, taken and held by someone else.
    let mut holder = tokio::net::TcpStream::connect(server.smtp_addr())
        .await
        .unwrap();
    let mut banner = [0u8; 3];
    holder.read_exact(&mut banner).await.unwrap();
    assert_eq!(&banner, b"220");

    let r = run(config(
        &[server.smtp_addr()],
        &["--messages", "5", "--workers", "1", "--no-preflight"],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!((m.successful_messages, m.failed_messages), (0, 5), "{m:?}");
    assert_eq!(m.error_breakdown.get("421"), Some(&5), "{m:?}");
    assert_eq!(r.per_server[0].error_breakdown.get("421"), Some(&5));
    assert_eq!(server.stats().connections_rejected["max_connections"], 5);
    drop(holder);
    stop(server).await;
}

#[tokio::test]
async fn a_rate_limited_generator_sees_421_after_its_allowance() {
    let server = start(|c| {
        c.rate_limit_window = Duration::from_secs(60);
        c.max_requests_per_window = 1000;
        c.max_requests_per_window_per_ip = 3;
    })
    .await;
    let r = run(config(
        &[server.smtp_addr()],
        &[
            "--messages",
            "10",
            "--workers",
            "1",
            "--msgs-per-conn",
            "1",
            "--no-preflight",
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!((m.successful_messages, m.failed_messages), (3, 7), "{m:?}");
    assert_eq!(m.error_breakdown.get("421"), Some(&7), "{m:?}");
    assert_eq!(server.stats().connections_rejected["rate_limit_per_ip"], 7);
    assert_eq!(server.stats().messages_accepted, 3);
    stop(server).await;
}

/// One message a second on a connection kept for several, against a server that
/// closes a session idle for 200 ms: by each second message the server has said
/// `421 4.4.2` and closed, so that message fails with 421 and the next one opens a
/// new connection and succeeds.
#[tokio::test]
async fn an_idle_timeout_between_messages_of_a_reused_connection_is_a_421() {
    let server = start(|c| c.idle_timeout = Duration::from_millis(200)).await;
    let r = run(config(
        &[server.smtp_addr()],
        &[
            "--mode",
            "sustained",
            "--rate",
            "1",
            "--duration",
            "3",
            "--workers",
            "1",
            "--msgs-per-conn",
            "10",
            "--no-preflight",
            "--size",
            "small",
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!((m.successful_messages, m.failed_messages), (2, 1), "{m:?}");
    assert_eq!(m.error_breakdown.get("421"), Some(&1), "{m:?}");
    assert!(server.stats().sessions_closed["idle_timeout"] >= 1);
    assert_eq!(server.stats().connections_accepted, 2);
    stop(server).await;
}
