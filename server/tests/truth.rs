//! What the server says about itself: the limits it reports on `/api/stats`, and
//! counters that move by exactly what a client observes over a real socket.

mod common;

use std::time::Duration;

use clap::Command;
use common::{http_get, stop};
use server::Config;

/// `/api/stats` parsed as JSON.
async fn stats_json(admin: std::net::SocketAddr) -> serde_json::Value {
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
