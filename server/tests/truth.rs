//! What the server says about itself: the limits it reports on `/api/stats`, and
//! counters that move by exactly what a client observes over a real socket.

mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use clap::Command;
use common::{Client, http_get, stop};
use server::{Config, RunningServer};

/// `/api/stats` parsed as JSON.
async fn stats_json(admin: SocketAddr) -> serde_json::Value {
    let (status, body) = http_get(admin, "/api/stats").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).expect("stats are JSON")
}

/// The config `smtp-server --config FILE` would run with, on loopback ports of its own.
fn config_from_file(path: &str) -> Config {
    let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    let matches = Config::add_args(Command::new("smtp-server"))
        .try_get_matches_from(["smtp-server"])
        .expect("no flags");
    let mut config = Config::load(Some(&file), &matches)
        .unwrap_or_else(|e| panic!("{} loads: {e}", file.display()));
    config.bind = "127.0.0.1".parse().unwrap();
    config.port = 0;
    config.admin_port = Some(0);
    config.admin_addr_file = None;
    config
}

#[tokio::test]
async fn api_stats_reports_the_limits_profile_as_numbers() {
    let server = server::start(config_from_file("../docker/stress-test-limits.toml"))
        .await
        .expect("server starts with the limits profile");
    let admin = server.admin_addr().expect("admin listener");
    let stats = stats_json(admin).await;
    assert_eq!(
        stats["limits"],
        serde_json::json!({
            "max_connections": 20,
            "max_connections_per_ip": 5,
            "rate_limit_window_s": 10.0,
            "max_requests_per_window": 30,
            "max_requests_per_window_per_ip": 10,
            "idle_timeout_s": 5.0,
            "session_timeout_s": 15.0,
            "max_message_size": 1048576,
            "max_recipients": 10,
        }),
        "{stats:#}"
    );
    stop(server).await;
}

#[tokio::test]
async fn api_stats_limits_follow_the_configuration_including_fractions() {
    let server = common::start_with(|c| {
        c.admin_port = Some(0);
        c.max_connections = 7;
        c.max_connections_per_ip = 3;
        c.rate_limit_window = Duration::from_millis(2500);
        c.max_requests_per_window = 11;
        c.max_requests_per_window_per_ip = 4;
        c.idle_timeout = Duration::from_millis(1500);
        c.session_timeout = Duration::from_secs(90);
        c.max_message_size = 12345;
        c.max_recipients = 2;
    })
    .await;
    let limits = &stats_json(server.admin_addr().unwrap()).await["limits"];
    assert_eq!(limits["max_connections"], 7);
    assert_eq!(limits["max_connections_per_ip"], 3);
    assert_eq!(limits["rate_limit_window_s"], 2.5);
    assert_eq!(limits["max_requests_per_window"], 11);
    assert_eq!(limits["max_requests_per_window_per_ip"], 4);
    assert_eq!(limits["idle_timeout_s"], 1.5);
    assert_eq!(limits["session_timeout_s"], 90.0);
    assert_eq!(limits["max_message_size"], 12345);
    assert_eq!(limits["max_recipients"], 2);
    stop(server).await;
}

// ---------------------------------------------------------------------------------
// Monitoring truth: every counter the server exposes, before and after, against
// what the client saw.
// ---------------------------------------------------------------------------------

/// Every counter series, named as `/metrics` names it (`name_total{label="value"}`).
type Counters = BTreeMap<String, u64>;

/// The counters of a `/api/stats` document, under their `/metrics` names: the two
/// endpoints must expose the same counters with the same values.
fn counters_of_stats(stats: &serde_json::Value) -> Counters {
    let mut out = Counters::new();
    for (key, series) in [
        ("connections_accepted", "smtp_connections_accepted_total"),
        ("messages_accepted", "smtp_messages_accepted_total"),
        ("bytes_received", "smtp_bytes_received_total"),
    ] {
        let value = stats[key].as_u64();
        out.insert(series.into(), value.unwrap_or_else(|| panic!("{key}")));
    }
    let families: [(&[&str], &str, &str); 7] = [
        (
            &["connections_rejected"],
            "smtp_connections_rejected_total",
            "reason",
        ),
        (&["sessions_closed"], "smtp_sessions_closed_total", "reason"),
        (
            &["messages_rejected"],
            "smtp_messages_rejected_total",
            "reason",
        ),
        (
            &["recipients_rejected"],
            "smtp_recipients_rejected_total",
            "reason",
        ),
        (
            &["tls", "handshakes"],
            "smtp_tls_handshakes_total",
            "result",
        ),
        (&["tls", "versions"], "smtp_tls_sessions_total", "version"),
        (&["auth"], "smtp_auth_attempts_total", "result"),
    ];
    for (path, series, label) in families {
        let family = path.iter().fold(stats, |v, key| &v[key]);
        let family = family
            .as_object()
            .unwrap_or_else(|| panic!("{path:?} is an object in {stats:#}"));
        for (value, count) in family {
            let count = count.as_u64().unwrap_or_else(|| panic!("{path:?}.{value}"));
            out.insert(format!("{series}{{{label}=\"{value}\"}}"), count);
        }
    }
    out
}

/// Every series of every counter family in a Prometheus/OpenMetrics text.
fn counters_of_metrics(text: &str) -> Counters {
    let counter_families: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    assert!(!counter_families.is_empty(), "no counters in:\n{text}");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let name = series.split('{').next()?;
            let family = name.strip_suffix("_total")?;
            counter_families.contains(&family).then(|| {
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("counter value: {l}"));
                (series.to_string(), value)
            })
        })
        .collect()
}

/// Reads both endpoints and checks they agree: same counters, same values.
async fn counters(admin: SocketAddr) -> Counters {
    let from_stats = counters_of_stats(&stats_json(admin).await);
    let (status, text) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    let from_metrics = counters_of_metrics(&text);
    assert_eq!(
        from_stats, from_metrics,
        "/api/stats and /metrics disagree (left: stats, right: metrics)"
    );
    from_stats
}

/// The counters that moved between two readings, and by how much.
fn moved(before: &Counters, after: &Counters) -> Counters {
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        after.keys().collect::<Vec<_>>(),
        "the set of series changed"
    );
    after
        .iter()
        .filter_map(|(series, &now)| {
            let was = before[series];
            assert!(now >= was, "{series} went down: {was} -> {now}");
            (now > was).then(|| (series.clone(), now - was))
        })
        .collect()
}

/// The expected movements: every other counter must stay where it was.
fn expect(rows: &[(&str, u64)]) -> Counters {
    rows.iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| (s.to_string(), *n))
        .collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("an address")
}

/// A server for the audit: in process, with its admin listener.
async fn audited(f: impl FnOnce(&mut Config)) -> (RunningServer, SocketAddr, SocketAddr) {
    let server = common::start_with(|c| {
        c.admin_port = Some(0);
        f(c);
    })
    .await;
    let (smtp, admin) = (server.smtp_addr(), server.admin_addr().expect("admin"));
    (server, smtp, admin)
}

/// Connects from `from` and reads the first reply: `None` when the server closed
/// without one.
async fn first_reply(from: IpAddr, smtp: SocketAddr) -> (Option<common::Reply>, Client) {
    let mut c = Client::connect_from(from, smtp).await;
    (c.try_reply().await, c)
}

#[tokio::test]
async fn max_connections_refusals_are_counted_once_each_and_never_as_accepted() {
    let (server, smtp, admin) = audited(|c| c.max_connections = 3).await;
    let before = counters(admin).await;
    let mut held = Vec::new();
    for i in 0..3 {
        let (r, c) = first_reply(ip(&format!("127.0.1.{}", i + 1)), smtp).await;
        r.expect("a banner").assert(220, "");
        held.push(c);
    }
    for i in 0..4 {
        let (r, mut c) = first_reply(ip(&format!("127.0.1.{}", i + 10)), smtp).await;
        r.expect("a refusal, not a silent close")
            .assert(421, "4.7.0");
        assert!(c.is_closed().await);
    }
    assert_eq!(
        moved(&before, &counters(admin).await),
        expect(&[
            ("smtp_connections_accepted_total", 3),
            (
                "smtp_connections_rejected_total{reason=\"max_connections\"}",
                4
            ),
        ])
    );
    // Ending sessions (QUIT, a client that just goes) moves no counter.
    let before = counters(admin).await;
    held[0].cmd("QUIT").await.assert(221, "2.0.0");
    held.truncate(0);
    common::wait_until("the sessions to end", || {
        server.stats().active_connections == 0
    })
    .await;
    assert_eq!(moved(&before, &counters(admin).await), Counters::new());
    stop(server).await;
}

#[tokio::test]
async fn per_ip_connection_refusals_are_counted_under_their_own_reason() {
    let (server, smtp, admin) = audited(|c| {
        c.max_connections = 100;
        c.max_connections_per_ip = 2;
    })
    .await;
    let before = counters(admin).await;
    let busy = ip("127.0.2.1");
    let mut held = Vec::new();
    for _ in 0..2 {
        let (r, c) = first_reply(busy, smtp).await;
        r.expect("a banner").assert(220, "");
        held.push(c);
    }
    for _ in 0..3 {
        let (r, _) = first_reply(busy, smtp).await;
        r.expect("a refusal").assert(421, "4.7.0");
    }
    let (r, _other) = first_reply(ip("127.0.2.2"), smtp).await;
    r.expect("another address is served").assert(220, "");
    assert_eq!(
        moved(&before, &counters(admin).await),
        expect(&[
            ("smtp_connections_accepted_total", 3),
            (
                "smtp_connections_rejected_total{reason=\"max_connections_per_ip\"}",
                3
            ),
        ])
    );
    stop(server).await;
}

#[tokio::test]
async fn rate_refusals_global_and_per_ip_are_counted_apart() {
    let (server, smtp, admin) = audited(|c| {
        c.rate_limit_window = Duration::from_secs(3600);
        c.max_requests_per_window = 6;
        c.max_requests_per_window_per_ip = 2;
    })
    .await;
    let before = counters(admin).await;
    let mut seen = Vec::new();
    // Three from one address: two admitted, one over its own bucket.
    for _ in 0..3 {
        let (r, mut c) = first_reply(ip("127.0.3.1"), smtp).await;
        let r = r.expect("a reply, not a silent close");
        if r.code == 220 {
            c.cmd("QUIT").await.assert(221, "2.0.0");
        }
        seen.push(r.code);
    }
    assert_eq!(seen, [220, 220, 421]);
    // Then one each from six more addresses: the global bucket has four tokens left.
    let mut seen = Vec::new();
    for i in 2..8 {
        let (r, _) = first_reply(ip(&format!("127.0.3.{i}")), smtp).await;
        seen.push(r.expect("a reply").code);
    }
    assert_eq!(seen, [220, 220, 220, 220, 421, 421]);
    assert_eq!(
        moved(&before, &counters(admin).await),
        expect(&[
            ("smtp_connections_accepted_total", 6),
            (
                "smtp_connections_rejected_total{reason=\"rate_limit_per_ip\"}",
                1
            ),
            ("smtp_connections_rejected_total{reason=\"rate_limit\"}", 2),
        ])
    );
    stop(server).await;
}

#[tokio::test]
async fn memory_critical_refusals_of_connections_and_transactions_are_counted() {
    const BUDGET: u64 = 1 << 40; // far above any real RSS: only accounted bytes count
    let (server, smtp, admin) = audited(|c| c.max_memory_usage = BUDGET).await;
    let mut c = Client::ready(smtp).await;
    let before = counters(admin).await;
    let critical = server.hold_memory(BUDGET / 100 * 95);
    c.cmd("MAIL FROM:<a@b.example>").await.assert(452, "4.3.1");
    for _ in 0..2 {
        let (r, _) = first_reply(ip("127.0.4.1"), smtp).await;
        r.expect("a refusal").assert(452, "4.3.1");
    }
    assert_eq!(
        moved(&before, &counters(admin).await),
        expect(&[
            (
                "smtp_connections_rejected_total{reason=\"memory_critical\"}",
                2
            ),
            (
                "smtp_messages_rejected_total{reason=\"memory_critical\"}",
                1
            ),
        ])
    );
    drop(critical);
    stop(server).await;
}

#[tokio::test]
async fn size_and_recipient_refusals_and_accepted_messages_move_by_what_the_client_saw() {
    let (server, smtp, admin) = audited(|c| {
        c.max_message_size = 4000;
        c.max_recipients = 2;
    })
    .await;
    let before = counters(admin).await;
    let mut c = Client::ready(smtp).await;
    // 552 at MAIL, from the declared size.
    c.cmd("MAIL FROM:<a@b.example> SIZE=5000")
        .await
        .assert(552, "5.3.4");
    // 552 after the final dot, from the content; the session goes on.
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    c.cmd("RCPT TO:<r@test.example>").await.assert(250, "2.1.5");
    c.cmd("DATA").await.assert(354, "");
    c.send(common::body_of_size(6000)).await;
    c.send(".\r\n").await;
    c.reply().await.assert(552, "5.3.4");
    c.cmd("RSET").await.assert(250, "2.0.0");
    // 452 on the recipient beyond the limit, and the transaction still delivers.
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    c.cmd("RCPT TO:<r1@test.example>")
        .await
        .assert(250, "2.1.5");
    c.cmd("RCPT TO:<r2@test.example>")
        .await
        .assert(250, "2.1.5");
    c.cmd("RCPT TO:<r3@test.example>")
        .await
        .assert(452, "4.5.3");
    c.cmd("RCPT TO:<r4@test.example>")
        .await
        .assert(452, "4.5.3");
    c.cmd("DATA").await.assert(354, "");
    let body = common::body_of_size(1000);
    c.send(&body).await;
    c.send(".\r\n").await;
    c.reply().await.assert(250, "2.0.0");
    let second = b"Subject: two\r\n\r\nsecond\r\n";
    c.send_message(second).await.assert(250, "2.0.0");
    // A malformed recipient is a syntax error, not a refusal by a limit.
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    c.cmd("RCPT TO:<no at sign>").await.assert(501, "5.1.3");
    c.cmd("QUIT").await.assert(221, "2.0.0");
    assert_eq!(
        moved(&before, &counters(admin).await),
        expect(&[
            ("smtp_connections_accepted_total", 1),
            ("smtp_messages_rejected_total{reason=\"size\"}", 2),
            (
                "smtp_recipients_rejected_total{reason=\"max_recipients\"}",
                2
            ),
            ("smtp_messages_accepted_total", 2),
            (
                "smtp_bytes_received_total",
                (body.len() + second.len()) as u64
            ),
        ])
    );
    stop(server).await;
}

#[tokio::test]
async fn timeouts_are_counted_once_per_421_and_by_their_own_reason() {
    let (server, smtp, admin) = audited(|c| {
        c.connection_timeout = Duration::from_millis(1000);
        c.idle_timeout = Duration::from_millis(1000);
        c.session_timeout = Duration::from_millis(2500);
    })
    .await;
    let before = counters(admin).await;
    let never_says_hello = async {
        let mut c = Client::connect_greeted(smtp).await;
        let r = c.try_reply().await.expect("a 421 before the close");
        (r, c.is_closed().await)
    };
    let idle = async {
        let mut c = Client::ready(smtp).await;
        let r = c.try_reply().await.expect("a 421 before the close");
        (r, c.is_closed().await)
    };
    let busy = async {
        let mut c = Client::ready(smtp).await;
        let started = tokio::time::Instant::now();
        // Active well inside the idle timeout, until the session's time is up.
        loop {
            let r = c.cmd("NOOP").await;
            if r.code != 250 {
                return (r, c.is_closed().await, started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let quits = async {
        let mut c = Client::ready(smtp).await;
        c.cmd("QUIT").await.assert(221, "2.0.0");
    };
    let goes_away = async {
        drop(Client::ready(smtp).await);
    };
    let ((hello, hello_closed), (idle, idle_closed), (busy, busy_closed, lasted), (), ()) =
        tokio::join!(never_says_hello, idle, busy, quits, goes_away);
    hello.assert(421, "4.4.2");
    idle.assert(421, "4.4.2");
    busy.assert(421, "4.4.2");
    assert!(hello_closed && idle_closed && busy_closed);
    assert!(hello.text().contains("EHLO/HELO"), "{hello:?}");
    assert!(idle.text().contains("Idle"), "{idle:?}");
    assert!(
        busy.text().contains("Session") && lasted >= Duration::from_secs(2),
        "{busy:?} after {lasted:?}"
    );
    common::wait_until("every session to end", || {
        server.stats().active_connections == 0
    })
    .await;
    assert_eq!(
        moved(&before, &counters(admin).await),
        expect(&[
            ("smtp_connections_accepted_total", 5),
            (
                "smtp_sessions_closed_total{reason=\"connection_timeout\"}",
                1
            ),
            ("smtp_sessions_closed_total{reason=\"idle_timeout\"}", 1),
            ("smtp_sessions_closed_total{reason=\"session_timeout\"}", 1),
        ])
    );
    stop(server).await;
}

#[tokio::test]
async fn a_shutdown_421_is_counted_once_per_session_it_closes() {
    let (server, smtp, admin) = audited(|c| c.shutdown_grace = Duration::from_secs(5)).await;
    let mut idle = Client::ready(smtp).await;
    let mut in_transaction = Client::ready(smtp).await;
    in_transaction
        .cmd("MAIL FROM:<a@b.example>")
        .await
        .assert(250, "2.1.0");
    let before = counters(admin).await;
    server.shutdown();
    idle.reply().await.assert(421, "4.3.2");
    // A MAIL during the drain is refused and closes the session: one more 421.
    in_transaction.cmd("RSET").await.assert(250, "2.0.0");
    in_transaction
        .cmd("MAIL FROM:<a@b.example>")
        .await
        .assert(421, "4.3.2");
    // The admin listener stops with the server; the in-process figures are the same.
    let after = counters_of_stats(&serde_json::to_value(server.stats()).unwrap());
    assert_eq!(
        moved(&before, &after),
        expect(&[("smtp_sessions_closed_total{reason=\"shutdown\"}", 2)])
    );
    drop((idle, in_transaction));
    server.wait().await.expect("stops");
}

/// What one client of a flood saw first.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    banners: u64,
    too_busy: u64,
    rate_limited: u64,
    silent_closes: u64,
}

#[tokio::test]
async fn in_a_flood_over_many_addresses_every_counter_matches_the_clients_tally() {
    // Small limits of every kind at once: 160 clients from 16 addresses in 8 waves of
    // 20 at the same time, a quarter of them holding their session to the end (the
    // connection slots run out) and the rest leaving at once (the rate buckets run
    // out too). Which limit refuses whom depends on timing; the totals must not.
    let (server, smtp, admin) = audited(|c| {
        c.max_connections = 20;
        c.max_connections_per_ip = 3;
        c.rate_limit_window = Duration::from_secs(3600);
        // 16 addresses × 5 exceed 70: both buckets can run out.
        c.max_requests_per_window = 70;
        c.max_requests_per_window_per_ip = 5;
    })
    .await;
    let before = counters(admin).await;
    let mut clients = Vec::new();
    for wave in 0..8 {
        let wave: Vec<_> = (wave * 20..wave * 20 + 20)
            .map(|i| {
                let from = ip(&format!("127.0.5.{}", i % 16 + 1));
                tokio::spawn(async move {
                    let (reply, mut client) = first_reply(from, smtp).await;
                    let code = reply.map(|r| (r.code, r.status().to_string(), r.text()));
                    let greeted = code.as_ref().is_some_and(|(c, _, _)| *c == 220);
                    if greeted && i % 4 != 0 {
                        client.cmd("QUIT").await.assert(221, "2.0.0");
                        return (code, None);
                    }
                    (code, Some(client))
                })
            })
            .collect();
        for client in wave {
            clients.push(client.await.expect("client task"));
        }
    }
    // Every client has its first reply: the counters must already show each one.
    let during = counters(admin).await;
    let mut seen = Seen::default();
    for (first, _held) in clients {
        match first {
            Some((220, _, _)) => seen.banners += 1,
            Some((421, status, text)) if status == "4.7.0" && text.contains("Too many") => {
                seen.too_busy += 1
            }
            Some((421, status, text)) if status == "4.7.0" && text.contains("rate") => {
                seen.rate_limited += 1
            }
            None => seen.silent_closes += 1,
            other => panic!("unexpected first reply: {other:?}"),
        }
    }
    let m = moved(&before, &during);
    let get = |series: &str| m.get(series).copied().unwrap_or(0);
    let reason = |r: &str| {
        get(&format!(
            "smtp_connections_rejected_total{{reason=\"{r}\"}}"
        ))
    };
    assert_eq!(
        seen,
        Seen {
            banners: get("smtp_connections_accepted_total"),
            too_busy: reason("max_connections") + reason("max_connections_per_ip"),
            rate_limited: reason("rate_limit") + reason("rate_limit_per_ip"),
            silent_closes: 0,
        },
        "client tally against the counters {m:?}"
    );
    assert!(
        seen.banners <= 70 && seen.banners > 0,
        "{seen:?}: at most the global bucket admitted"
    );
    assert_eq!(
        m.keys()
            .filter(|s| !s.starts_with("smtp_connections_"))
            .count(),
        0,
        "only connection counters moved: {m:?}"
    );
    eprintln!("flood: {seen:?}, counters moved: {m:?}");
    stop(server).await;
}
