//! `loadgen limits` end to end: the whole suite against the reference server with
//! small limits (every case must run and pass, and the server's counters must agree
//! with the client), against a server that closes refused connections without a
//! reply (the case must fail and say so), and bad usage (exit 2, the flag named).

use std::net::SocketAddr;
use std::process::Output;
use std::time::Duration;

use report::limits::{LimitCase, LimitsDocument, Verdict};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

const LOADGEN: &str = env!("CARGO_BIN_EXE_loadgen");

async fn loadgen(args: &[&str]) -> Output {
    let run = tokio::process::Command::new(LOADGEN)
        .args(args)
        .env_remove("LOADGEN_SOURCE_IPS")
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the suite finishes within two minutes")
        .expect("loadgen runs")
}

fn text(o: &Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The reference server with limits small enough that the suite takes seconds.
async fn small_limits_server() -> server::RunningServer {
    let mut c = server::Config::for_local_testing();
    c.admin_port = Some(0);
    c.max_connections = 6;
    c.max_connections_per_ip = 3;
    c.rate_limit_window = Duration::from_secs(2);
    c.max_requests_per_window = 12;
    c.max_requests_per_window_per_ip = 4;
    c.idle_timeout = Duration::from_secs(1);
    c.session_timeout = Duration::from_secs(3);
    c.max_message_size = 64 * 1024;
    c.max_recipients = 3;
    server::start(c).await.expect("reference server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_suite_passes_against_the_reference_server_and_its_counters_agree() {
    let server = small_limits_server().await;
    let dir = tempfile::tempdir().unwrap();
    let doc_path = dir.path().join("limits.json");
    let smtp = server.smtp_addr().to_string();
    let admin = format!("http://{}", server.admin_addr().expect("admin listener"));
    let out = loadgen(&[
        "limits",
        "--server",
        &smtp,
        "--admin",
        &admin,
        "-o",
        doc_path.to_str().unwrap(),
    ])
    .await;
    server.shutdown();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let doc = LimitsDocument::load(&doc_path).expect("the document is written");
    assert_eq!(doc.cases.len(), LimitCase::ALL.len());
    for c in &doc.cases {
        assert_eq!(c.verdict, Verdict::Pass, "{:?}\n{}", c, text(&out));
    }
    // The expectations came from the server itself.
    assert_eq!(doc.expectations.max_connections, Some(6));
    assert_eq!(doc.expectations.sources["max_connections"], "admin");
    let global = &doc.cases[0];
    assert_eq!(global.replies["220"], 6);
    assert_eq!(global.replies["421 4.7.0"], 1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("10 passed, 0 failed, 0 skipped"),
        "{stdout}"
    );
}

/// Answers the first `sessions` connections with a banner and 250 to every line
/// (221 to QUIT); closes every later one at once, without a word: a server that
/// enforces a limit but does not say so.
async fn silent_refuser(sessions: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let open = std::sync::Arc::new(tokio::sync::Semaphore::new(sessions));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let Ok(permit) = open.clone().try_acquire_owned() else {
                drop(stream);
                continue;
            };
            tokio::spawn(async move {
                let _permit = permit;
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                if write.write_all(b"220 silent ESMTP\r\n").await.is_err() {
                    return;
                }
                while let Ok(Some(line)) = lines.next_line().await {
                    let quit = line.eq_ignore_ascii_case("QUIT");
                    let reply: &[u8] = if quit { b"221 bye\r\n" } else { b"250 ok\r\n" };
                    if write.write_all(reply).await.is_err() || quit {
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_refusal_without_a_421_fails_the_case_as_closed_without_reply() {
    let addr = silent_refuser(3).await.to_string();
    let dir = tempfile::tempdir().unwrap();
    let doc_path = dir.path().join("limits.json");
    let out = loadgen(&[
        "limits",
        "--server",
        &addr,
        "--expect-max-connections",
        "3",
        "-q",
        "-o",
        doc_path.to_str().unwrap(),
    ])
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let doc = LimitsDocument::load(&doc_path).unwrap();
    let global = &doc.cases[0];
    assert_eq!(global.case, LimitCase::GlobalConnections);
    assert_eq!(global.verdict, Verdict::Fail);
    assert!(
        global
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("closed without reply"),
        "{global:?}"
    );
    assert_eq!(global.replies["220"], 3);
    assert_eq!(global.replies["closed without reply"], 1);
    // Nothing else was expected, so nothing else ran.
    assert!(
        doc.cases[1..].iter().all(|c| c.verdict == Verdict::Skip),
        "{:?}",
        doc.cases
    );
}

#[tokio::test]
async fn bad_usage_exits_2_naming_the_flag() {
    for (args, flag) in [
        (&["limits", "--server", "127.0.0.1"][..], "--server"),
        (
            &["limits", "--server", "127.0.0.1:25", "--expect-rate", "5"][..],
            "--expect-rate",
        ),
        (
            &[
                "limits",
                "--server",
                "127.0.0.1:25",
                "--source-ips",
                "127.0.0.9-127.0.0.2",
            ][..],
            "--source-ips",
        ),
        (
            &["limits", "--server", "127.0.0.1:25", "--admin", "ftp://x"][..],
            "--admin",
        ),
        (&["limits"][..], "--server"),
    ] {
        let out = loadgen(args).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(flag),
            "{args:?}: {}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn loadgen_help_lists_the_limits_command() {
    let out = loadgen(&["--help"]).await;
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("limits"),
        "{}",
        text(&out)
    );
    let out = loadgen(&["limits", "--help"]).await;
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--expect-max-connections-per-ip"), "{help}");
    assert!(help.contains("--max-case-time"), "{help}");
    assert!(
        help.contains("Usage: loadgen limits [OPTIONS] --server <SERVER>"),
        "{help}"
    );
}
