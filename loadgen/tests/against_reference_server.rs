//! The generator against the real reference server, started in-process.

mod common;

use std::collections::HashSet;

use common::{config, run};

async fn start(servers: usize) -> Vec<server::RunningServer> {
    let mut v = Vec::new();
    for _ in 0..servers {
        v.push(
            server::start(server::Config::for_local_testing())
                .await
                .unwrap(),
        );
    }
    v
}

fn header<'a>(data: &'a str, name: &str) -> Option<&'a str> {
    data.split("\r\n\r\n")
        .next()?
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

#[tokio::test]
async fn every_message_arrives_once_split_round_robin() {
    let servers = start(3).await;
    let addrs: Vec<_> = servers.iter().map(|s| s.smtp_addr()).collect();
    let r = run(config(
        &addrs,
        &[
            "--messages",
            "150",
            "--workers",
            "6",
            "--size",
            "small",
            "--msgs-per-conn",
            "5",
            "--rcpts",
            "2",
            "--pipelining",
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!(
        (m.total_messages, m.successful_messages, m.failed_messages),
        (150, 150, 0)
    );
    let mut seqs = HashSet::new();
    for (s, per) in servers.iter().zip(&r.per_server) {
        let stored = s.stored_messages();
        assert_eq!(stored.len(), 50);
        assert_eq!(per.successful_messages, 50);
        assert_eq!(s.stats().messages_accepted, 50);
        for msg in stored {
            assert_eq!(msg.rcpt_to.len(), 2);
            let text = String::from_utf8(msg.data.clone()).unwrap();
            let seq: u64 = header(&text, "X-Stampede-Seq:").unwrap().parse().unwrap();
            assert!(seqs.insert(seq), "seq {seq} twice");
            assert!(header(&text, "Message-ID:").is_some());
            let err = (msg.data.len() as f64 - 1024.0).abs() / 1024.0;
            assert!(err < 0.01, "{} bytes", msg.data.len());
        }
    }
    assert_eq!(seqs.len(), 150);
    for s in servers {
        s.shutdown();
        s.wait().await.unwrap();
    }
}

#[tokio::test]
async fn sustained_load_on_the_reference_server_meets_the_rate() {
    let servers = start(1).await;
    let r = run(config(
        &[servers[0].smtp_addr()],
        &[
            "--mode",
            "sustained",
            "--rate",
            "100",
            "--duration",
            "2",
            "--size",
            "medium",
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!(m.successful_messages, 200);
    assert!(
        (m.messages_per_second - 100.0).abs() < 1.0,
        "{}",
        m.messages_per_second
    );
    assert_eq!(servers[0].stats().messages_accepted, 200);
}

#[tokio::test]
async fn the_101st_recipient_is_refused_and_counted() {
    let servers = start(1).await;
    let r = run(config(
        &[servers[0].smtp_addr()],
        &[
            "--messages",
            "3",
            "--workers",
            "1",
            "--rcpts",
            "101",
            "--size",
            "small",
        ],
    ))
    .await;
    assert_eq!(r.metrics.failed_messages, 3);
    assert_eq!(r.metrics.error_breakdown.get("452"), Some(&3));
    assert_eq!(servers[0].stats().messages_accepted, 0);
}
