//! The analyzer on results of real runs: the load generator against two reference
//! servers on 127.0.0.1, results written the way `loadgen` writes them.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use common::{analyze, row, s};

async fn start_servers(n: usize) -> Vec<server::RunningServer> {
    let mut servers = Vec::new();
    for _ in 0..n {
        servers.push(start_server(server::Config::for_local_testing()).await);
    }
    servers
}

async fn start_server(config: server::Config) -> server::RunningServer {
    server::start(config)
        .await
        .expect("reference server starts")
}

async fn stop_servers(servers: Vec<server::RunningServer>) {
    for srv in servers {
        srv.shutdown();
        srv.wait().await.expect("server exits cleanly");
    }
}

/// One generator run against `addrs`, saved as `dir/name`.
async fn loadgen_run(addrs: &[SocketAddr], extra: &[&str], dir: &Path, name: &str) -> PathBuf {
    let list = addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let mut args = vec!["loadgen", "--servers", &list, "--quiet", "--timeout", "5"];
    args.extend_from_slice(extra);
    let config = loadgen::Config::from_cli(args).expect("valid loadgen flags");
    let result = loadgen::run(config, tokio_util::sync::CancellationToken::new())
        .await
        .expect("the run completes");
    let path = dir.join(name);
    result.save(&path).expect("result saved");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_runs_are_shown_gated_compared_charted_and_merged() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_servers(2).await;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.smtp_addr()).collect();
    let burst = &["--messages", "200", "--workers", "4", "--size", "small"];
    let a = loadgen_run(&addrs, burst, dir.path(), "a.json").await;
    let b = loadgen_run(&addrs, burst, dir.path(), "b.json").await;
    stop_servers(servers).await;
    // The same load where one of the two servers refuses every message as too big.
    let refusing = vec![
        start_server(server::Config::for_local_testing()).await,
        start_server(server::Config {
            max_message_size: 200,
            ..server::Config::for_local_testing()
        })
        .await,
    ];
    let refusing_addrs: Vec<SocketAddr> = refusing.iter().map(|s| s.smtp_addr()).collect();
    let worse = loadgen_run(&refusing_addrs, burst, dir.path(), "worse.json").await;
    stop_servers(refusing).await;

    // show: the counts the servers saw, split round-robin.
    let out = analyze(&["show", s(&a)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert_eq!(row(&out.stdout, "total"), ["total", "200"]);
    assert_eq!(row(&out.stdout, "successful"), ["successful", "200"]);
    assert_eq!(
        row(&out.stdout, "success rate"),
        ["success rate", "100.00%"]
    );
    for addr in &addrs {
        let cells = row(&out.stdout, &addr.to_string());
        assert_eq!(cells[1..3], ["100", "100"], "{cells:?}");
    }
    assert_eq!(row(&out.stdout, "250")[1], "200");

    // check: a gate the run meets and one no run on loopback can meet.
    let out = analyze(&[
        "check",
        s(&a),
        "--require",
        "success_rate>=100",
        "--require",
        "successful_messages==200",
    ]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = analyze(&["check", s(&a), "--require", "p99<=1us"]);
    assert_eq!(out.code, 1, "{}", out.stdout);

    // compare: a run against itself never regresses; half the messages refused is a
    // regression in the success rate, and the exit code says so.
    let out = analyze(&["compare", s(&a), s(&a), "--threshold", "1%"]);
    assert_eq!(out.code, 0, "{}{}", out.stdout, out.stderr);
    let out = analyze(&["compare", s(&a), s(&worse)]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    let success = row(&out.stdout, "success rate (%)");
    assert_eq!((success[1], success[2]), ("100.00", "50.00"), "{success:?}");
    assert_eq!(success.last(), Some(&"REGRESSION"), "{success:?}");
    assert_eq!(row(&out.stdout, "failed")[1..3], ["0", "100"]);

    // chart: the real histograms and timeline draw.
    let charts = dir.path().join("charts");
    let out = analyze(&["chart", s(&a), s(&b), "--out", s(&charts)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for name in ["throughput", "latency", "spectrum", "servers"] {
        let png = charts.join(format!("{name}.png"));
        let len = std::fs::metadata(&png).map(|m| m.len()).unwrap_or(0);
        assert!(len > 1000, "{} is {len} bytes", png.display());
    }

    // merge: two generators' runs become one of 400 messages, still split evenly.
    let merged = dir.path().join("merged.json");
    let out = analyze(&["merge", s(&a), s(&b), "-o", s(&merged)]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let m = report::load(&merged).expect("merged result loads");
    assert_eq!(
        (m.metrics.total_messages, m.metrics.successful_messages),
        (400, 400)
    );
    assert!(m.per_server.iter().all(|p| p.successful_messages == 200));
}

/// One grammar: the gates `loadgen --require` recorded, checked again by
/// `analyze check` on the figures the result names, get the same verdicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analyze_check_agrees_with_the_gates_loadgen_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let servers = start_servers(1).await;
    let addrs: Vec<SocketAddr> = servers.iter().map(|s| s.smtp_addr()).collect();
    let sustained = &[
        "--mode",
        "sustained",
        "--rate",
        "50",
        "--duration",
        "1s",
        "--size",
        "small",
        "--require",
        "p99<=10s",
        "--require",
        "p50<=1us",
        "--require",
        "success_rate>=99.9",
    ];
    let path = loadgen_run(&addrs, sustained, dir.path(), "gated.json").await;
    stop_servers(servers).await;
    let recorded = report::load(&path).unwrap().gates.expect("gates recorded");
    let verdicts: Vec<(&str, bool)> = recorded
        .iter()
        .map(|g| (g.figure.as_str(), g.passed))
        .collect();
    assert_eq!(
        verdicts,
        [
            ("corrected_p99", true),
            ("corrected_p50", false),
            ("success_rate", true)
        ]
    );
    let mut args = vec!["check".to_string(), s(&path).to_string()];
    for g in &recorded {
        args.push("--require".into());
        args.push(format!("{}{}{}", g.figure, g.op.symbol(), g.limit));
    }
    args.extend(["--format".into(), "json".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = analyze(&args);
    assert_eq!(out.code, 1, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    for (i, g) in recorded.iter().enumerate() {
        assert_eq!(v["gates"][i]["passed"], g.passed, "{}", g.gate);
        assert_eq!(v["gates"][i]["observed"], serde_json::json!(g.observed));
    }
}
