//! Admission limits, timeouts and the memory budget, provoked over real sockets.

mod common;

use std::time::{Duration, Instant};

use common::{Client, start_with, stop};

#[tokio::test]
async fn global_connection_limit_gets_421_4_7_0() {
    let server = start_with(|c| c.max_connections = 2).await;
    let addr = server.smtp_addr();
    let _a = Client::connect_greeted(addr).await;
    let _b = Client::connect_greeted(addr).await;
    let mut refused = Client::connect(addr).await;
    let r = refused.reply().await;
    r.assert(421, "4.7.0");
    assert!(r.text().contains("test.example"), "names the server: {r:?}");
    assert!(refused.is_closed().await);
    assert_eq!(server.stats().connections_rejected["max_connections"], 1);
    // A slot frees up when a session ends.
    drop(_a);
    common::wait_until("the session to end", || {
        server.stats().active_connections == 1
    })
    .await;
    let _c = Client::connect_greeted(addr).await;
    stop(server).await;
}

#[tokio::test]
async fn per_ip_connection_limit_gets_421_4_7_0() {
    let server = start_with(|c| {
        c.max_connections = 100;
        c.max_connections_per_ip = 1;
    })
    .await;
    let addr = server.smtp_addr();
    let _a = Client::connect_greeted(addr).await;
    let mut refused = Client::connect(addr).await;
    refused.reply().await.assert(421, "4.7.0");
    assert!(refused.is_closed().await);
    assert_eq!(
        server.stats().connections_rejected["max_connections_per_ip"],
        1
    );
    stop(server).await;
}

#[tokio::test]
async fn per_ip_rate_limit_gets_421_4_7_0() {
    let server = start_with(|c| {
        c.rate_limit_window = Duration::from_secs(60);
        c.max_requests_per_window = 1000;
        c.max_requests_per_window_per_ip = 3;
    })
    .await;
    let addr = server.smtp_addr();
    for _ in 0..3 {
        let mut c = Client::connect_greeted(addr).await;
        c.cmd("QUIT").await.assert(221, "2.0.0");
    }
    let mut refused = Client::connect(addr).await;
    refused.reply().await.assert(421, "4.7.0");
    assert_eq!(server.stats().connections_rejected["rate_limit_per_ip"], 1);
    stop(server).await;
}

#[tokio::test]
async fn global_rate_limit_gets_421_4_7_0_and_refills_over_the_window() {
    let server = start_with(|c| {
        c.rate_limit_window = Duration::from_millis(600);
        c.max_requests_per_window = 2;
        c.max_requests_per_window_per_ip = 100;
    })
    .await;
    let addr = server.smtp_addr();
    for _ in 0..2 {
        Client::connect_greeted(addr).await;
    }
    let mut refused = Client::connect(addr).await;
    let r = refused.reply().await;
    r.assert(421, "4.7.0");
    assert!(r.text().contains("rate"), "{r:?}");
    assert_eq!(server.stats().connections_rejected["rate_limit"], 1);
    // One token comes back every window / 2.
    tokio::time::sleep(Duration::from_millis(400)).await;
    Client::connect_greeted(addr).await;
    stop(server).await;
}

#[tokio::test]
async fn idle_timeout_gets_421_4_4_2() {
    let server = start_with(|c| c.idle_timeout = Duration::from_millis(200)).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    let started = Instant::now();
    c.reply().await.assert(421, "4.4.2");
    assert!(started.elapsed() >= Duration::from_millis(150));
    assert!(c.is_closed().await);
    assert_eq!(server.stats().sessions_closed["idle_timeout"], 1);
    stop(server).await;
}

/// Commands every fifth of the idle timeout keep a session alive for three idle
/// periods; once they stop, the 421 comes no sooner than one idle period after the
/// last command. The margins (a 200 ms pause against 1 s) hold on a loaded machine,
/// and every bound is measured from what the client did, not from wall-clock hopes.
#[tokio::test]
async fn idle_timeout_is_reset_by_each_command() {
    const IDLE: Duration = Duration::from_secs(1);
    let server = start_with(|c| c.idle_timeout = IDLE).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    let started = Instant::now();
    let mut last_sent = Instant::now();
    while started.elapsed() < IDLE * 3 {
        tokio::time::sleep(IDLE / 5).await;
        let silence = last_sent.elapsed();
        let sent = Instant::now();
        let r = c.cmd("NOOP").await;
        assert_eq!(
            r.code,
            250,
            "NOOP {:?} into the session, after {silence:?} of silence (idle timeout \
             {IDLE:?}): {r:?}",
            started.elapsed()
        );
        last_sent = sent;
    }
    // The server saw the last NOOP no earlier than `last_sent`, so its idle period
    // cannot end before `last_sent + IDLE`.
    c.reply().await.assert(421, "4.4.2");
    let waited = last_sent.elapsed();
    assert!(waited >= IDLE, "421 only {waited:?} after the last command");
    assert!(c.is_closed().await);
    assert_eq!(server.stats().sessions_closed["idle_timeout"], 1);
    stop(server).await;
}

#[tokio::test]
async fn session_timeout_gets_421_4_4_2_even_for_a_busy_client() {
    let server = start_with(|c| {
        c.session_timeout = Duration::from_millis(400);
        c.idle_timeout = Duration::from_secs(10);
    })
    .await;
    let mut c = Client::ready(server.smtp_addr()).await;
    let started = Instant::now();
    loop {
        let r = c.cmd("NOOP").await;
        if r.code == 421 {
            r.assert(421, "4.4.2");
            assert!(r.text().contains("Session"), "{r:?}");
            break;
        }
        r.assert(250, "2.0.0");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "never timed out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.stats().sessions_closed["session_timeout"], 1);
    stop(server).await;
}

#[tokio::test]
async fn connection_timeout_closes_a_client_that_never_says_hello() {
    let server = start_with(|c| {
        c.connection_timeout = Duration::from_millis(200);
        c.idle_timeout = Duration::from_secs(10);
    })
    .await;
    let mut c = Client::connect_greeted(server.smtp_addr()).await;
    let r = c.reply().await;
    r.assert(421, "4.4.2");
    assert!(c.is_closed().await);
    // Commands other than EHLO/HELO do not extend the handshake deadline.
    let mut chatty = Client::connect_greeted(server.smtp_addr()).await;
    let started = Instant::now();
    loop {
        let r = chatty.cmd("NOOP").await;
        if r.code == 421 {
            r.assert(421, "4.4.2");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "never timed out"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(server.stats().sessions_closed["connection_timeout"], 2);
    stop(server).await;
}

#[tokio::test]
async fn memory_over_budget_refuses_new_connections_with_452_4_3_1() {
    // Any process has more RSS than this budget, so memory is critical from the start.
    let server = start_with(|c| c.max_memory_usage = 64 * 1024).await;
    let mut c = Client::connect(server.smtp_addr()).await;
    c.reply().await.assert(452, "4.3.1");
    assert!(c.is_closed().await);
    assert_eq!(server.stats().connections_rejected["memory_critical"], 1);
    stop(server).await;
}

#[tokio::test]
async fn memory_above_critical_refuses_new_transactions_but_warning_does_not() {
    const BUDGET: u64 = 1 << 40; // far above any real RSS: only accounted bytes count
    let server = start_with(|c| {
        c.max_memory_usage = BUDGET;
        c.admin_port = Some(0);
    })
    .await;
    let mut c = Client::ready(server.smtp_addr()).await;

    let warning = server.hold_memory(BUDGET / 100 * 80);
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    c.cmd("RSET").await.assert(250, "2.0.0");

    let critical = server.hold_memory(BUDGET / 100 * 15);
    c.cmd("MAIL FROM:<a@b.example>").await.assert(452, "4.3.1");
    let (status, _) = common::http_get(server.admin_addr().unwrap(), "/health").await;
    assert_eq!(status, 503);
    let mut refused = Client::connect(server.smtp_addr()).await;
    refused.reply().await.assert(452, "4.3.1");

    drop(critical);
    drop(warning);
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    let (status, _) = common::http_get(server.admin_addr().unwrap(), "/health").await;
    assert_eq!(status, 200);
    stop(server).await;
}

#[tokio::test]
async fn message_beyond_the_process_budget_gets_452_4_3_1_after_data() {
    const BUDGET: u64 = 1 << 40;
    let server = start_with(|c| {
        c.max_memory_usage = BUDGET;
        c.memory_critical_threshold = 1.0;
        c.memory_warning_threshold = 1.0;
    })
    .await;
    let mut c = Client::ready(server.smtp_addr()).await;
    // Leave less room in the budget than the message needs.
    let _held = server.hold_memory(BUDGET - 300 * 1024);
    let r = c.send_message(&common::body_of_size(1024 * 1024)).await;
    r.assert(452, "4.3.1");
    assert_eq!(server.stats().messages_rejected["memory_critical"], 1);
    stop(server).await;
}

#[tokio::test]
async fn every_connection_in_a_flood_is_answered_220_or_421() {
    let server = start_with(|c| c.max_connections = 5).await;
    let addr = server.smtp_addr();
    let clients = (0..60).map(|_| async move {
        let mut c = Client::connect(addr).await;
        let r = c.try_reply().await.map(|r| r.code);
        (r, c)
    });
    let results = futures_join_all(clients).await;
    let mut greeted = 0;
    let mut refused = 0;
    for (code, _client) in &results {
        match code {
            Some(220) => greeted += 1,
            Some(421) => refused += 1,
            other => panic!("connection not answered with 220/421: {other:?}"),
        }
    }
    assert_eq!(greeted, 5);
    assert_eq!(refused, 55);
    assert_eq!(server.stats().active_connections, 5);
    drop(results);
    stop(server).await;
}

/// Runs futures concurrently on the test runtime and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("client task"));
    }
    out
}

/// Raises this process's open-file limit to at least `wanted` (up to the hard limit),
/// so that a test can hold thousands of sockets on both ends of the connection.
fn raise_open_file_limit(wanted: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid resource and a pointer to a local.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < wanted {
            limit.rlim_cur = wanted.min(limit.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
    limit.rlim_cur
}

/// A storm of new connections at a server refusing most of them: more than the
/// kernel's former default accept queue (1024) at once, while the few admitted
/// sessions and the clients themselves keep the runtime busy. A server that refuses
/// must refuse fast: every connection is answered (220 or 421) within seconds; none
/// waits for a banner that never comes because its handshake was dropped from a full
/// accept queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_storm_is_answered_220_or_421_within_seconds() {
    const STORM: usize = 1500;
    let limit = raise_open_file_limit(4 * STORM as u64 + 256);
    assert!(
        limit >= 2 * STORM as u64 + 256,
        "this test needs {} open files (hard limit {limit})",
        2 * STORM + 256
    );
    let server = start_with(|c| {
        c.max_connections = 10;
        c.max_connections_per_ip = 10;
    })
    .await;
    let addr = server.smtp_addr();
    let started = Instant::now();
    let clients: Vec<_> = (0..STORM)
        .map(|_| {
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
                let mut reader = tokio::io::BufReader::new(stream);
                let mut line = String::new();
                use tokio::io::AsyncBufReadExt;
                tokio::time::timeout(Duration::from_secs(4), reader.read_line(&mut line))
                    .await
                    .ok()?
                    .ok()?;
                let code = line.get(..3)?.parse::<u16>().ok()?;
                Some((code, reader))
            })
        })
        .collect();
    let mut answered = std::collections::BTreeMap::<Option<u16>, usize>::new();
    let mut held = Vec::new();
    for client in clients {
        let result = client.await.expect("client task");
        *answered
            .entry(result.as_ref().map(|(code, _)| *code))
            .or_default() += 1;
        // Keep the admitted sessions open so the server stays at its limit.
        held.extend(result.map(|(_, reader)| reader));
    }
    let elapsed = started.elapsed();
    assert_eq!(
        answered.keys().copied().collect::<Vec<_>>(),
        vec![Some(220), Some(421)],
        "every connection answered 220 or 421: {answered:?}"
    );
    assert_eq!(answered[&Some(220)], 10, "{answered:?}");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");
    drop(held);
    stop(server).await;
}
