//! TLS (STARTTLS, implicit, resumption, certificate checking) and AUTH against the
//! scriptable test server, with certificates made for each test by a throwaway CA.

mod common;

use std::sync::atomic::Ordering;

use common::{Options, ServerTls, TestPki, TestServer, config, run};

fn tls_server(tls: ServerTls) -> Options {
    Options {
        tls: Some(tls),
        ..Options::default()
    }
}

fn with_auth(mut o: Options, users: &[(&'static str, &'static str)]) -> Options {
    o.auth = Some(users.to_vec());
    o
}

#[tokio::test]
async fn a_starttls_run_checks_the_certificate_and_records_the_handshakes() {
    let pki = TestPki::new();
    let server = TestServer::start_options(tls_server(ServerTls::starttls(&pki))).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run.json");
    let r = run(config(
        &[server.addr],
        &[
            "--messages",
            "5",
            "--workers",
            "1",
            "--size",
            "small",
            "--tls",
            "starttls",
            "--tls-ca",
            pki.ca_path(),
            "--no-preflight",
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!((m.successful_messages, m.failed_messages), (5, 0), "{m:?}");
    assert_eq!(server.messages().len(), 5);
    assert_eq!(server.seen.handshakes.load(Ordering::SeqCst), 5);
    assert!(m.phases_ms["tls"].p50 > 0.0, "the handshake is timed");
    assert!(m.phases_ms["ehlo"].p50 > 0.0);
    assert!(!m.phases_ms.contains_key("auth"), "no AUTH, no auth row");
    let tls = r.tls.as_ref().expect("a TLS run has a tls key");
    assert_eq!(tls.mode, "starttls");
    assert_eq!(tls.handshakes, 5);
    assert_eq!(tls.versions.get("TLSv1.3"), Some(&5));
    assert_eq!(tls.cipher_suites.values().sum::<u64>(), 5);
    assert!(
        tls.cipher_suites.keys().all(|k| k.starts_with("TLS13_")),
        "{tls:?}"
    );
    assert_eq!(
        tls.resumed, 4,
        "one session at a time: all but the first resume"
    );
    let summary = loadgen::summary(&r);
    assert!(
        summary.contains("starttls: 5 handshakes (TLSv1.3 5), 80% resumed, handshake p50"),
        "{summary}"
    );
    // The tls key survives the result file.
    r.save(&out).unwrap();
    let back = report::load(&out).unwrap();
    assert_eq!(back.tls, r.tls);
    assert!(back.histograms.unwrap().phases.contains_key("tls"));
    let config = &back.run.unwrap().config;
    assert_eq!(config["tls"]["mode"], "starttls");
    assert_eq!(config["tls"]["resume"], true);
}

#[tokio::test]
async fn implicit_tls_works_with_the_preflight_and_sustained_mode() {
    let pki = TestPki::new();
    let server = TestServer::start_options(tls_server(ServerTls::implicit(&pki))).await;
    let r = run(config(
        &[server.addr],
        &[
            "--mode",
            "sustained",
            "--rate",
            "40",
            "--duration",
            "0.5",
            "--workers",
            "4",
            "--size",
            "small",
            "--tls",
            "implicit",
            "--tls-ca",
            pki.ca_path(),
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!((m.total_messages, m.successful_messages), (20, 20), "{m:?}");
    assert!(m.phases_ms["tls"].p50 > 0.0 && m.phases_ms["banner"].p50 > 0.0);
    let tls = r.tls.unwrap();
    assert_eq!(tls.mode, "implicit");
    assert_eq!(tls.handshakes, 20);
    // The preflight's handshake is one more on the server, never in the result.
    assert_eq!(server.seen.handshakes.load(Ordering::SeqCst), 21);
}

#[tokio::test]
async fn an_unknown_ca_is_a_certificate_failure_until_tls_insecure() {
    let pki = TestPki::new();
    let server = TestServer::start_options(tls_server(ServerTls::starttls(&pki))).await;
    let base = ["--messages", "4", "--workers", "2", "--tls", "starttls"];
    let unknown = run(config(&[server.addr], &base)).await;
    let m = &unknown.metrics;
    assert_eq!(m.failed_messages, 4);
    assert_eq!(m.error_breakdown.get("tls:certificate"), Some(&4), "{m:?}");
    assert_eq!(server.seen.mails.load(Ordering::SeqCst), 0);
    assert_eq!(unknown.tls.unwrap().handshakes, 0);

    // The right CA but another name: the certificate does not match.
    let wrong_name = run(config(
        &[server.addr],
        &[
            &base[..],
            &["--tls-ca", pki.ca_path(), "--tls-sni", "mx.example.net"],
        ]
        .concat(),
    ))
    .await;
    assert_eq!(
        wrong_name.metrics.error_breakdown.get("tls:certificate"),
        Some(&4)
    );

    let insecure = run(config(
        &[server.addr],
        &[&base[..], &["--tls-insecure"]].concat(),
    ))
    .await;
    assert_eq!(
        insecure.metrics.successful_messages, 4,
        "{:?}",
        insecure.metrics
    );
    assert_eq!(server.messages().len(), 4);
}

#[tokio::test]
async fn a_server_without_starttls_fails_the_message_and_gets_no_plaintext_mail() {
    let pki = TestPki::new();
    let server = TestServer::start_options(tls_server(ServerTls {
        offer_starttls: false,
        ..ServerTls::starttls(&pki)
    }))
    .await;
    let r = run(config(
        &[server.addr],
        &[
            "--messages",
            "3",
            "--workers",
            "1",
            "--tls",
            "starttls",
            "--tls-ca",
            pki.ca_path(),
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!(m.failed_messages, 3);
    assert_eq!(m.error_breakdown.get("tls:not_offered"), Some(&3), "{m:?}");
    assert_eq!(
        server.seen.mails.load(Ordering::SeqCst),
        0,
        "no MAIL in plaintext"
    );
    assert_eq!(server.eods.load(Ordering::SeqCst), 0);
    assert_eq!(server.seen.handshakes.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_reply_injected_before_the_handshake_fails_the_message() {
    let pki = TestPki::new();
    let server = TestServer::start_options(tls_server(ServerTls {
        inject_after_starttls: true,
        ..ServerTls::starttls(&pki)
    }))
    .await;
    let r = run(config(
        &[server.addr],
        &[
            "--messages",
            "2",
            "--workers",
            "1",
            "--tls",
            "starttls",
            "--tls-ca",
            pki.ca_path(),
            "--no-preflight",
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!(m.error_breakdown.get("protocol:tls"), Some(&2), "{m:?}");
    assert_eq!(server.seen.mails.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_stalled_handshake_is_a_tls_timeout() {
    let pki = TestPki::new();
    for (mode, tls) in [
        ("starttls", ServerTls::starttls(&pki)),
        ("implicit", ServerTls::implicit(&pki)),
    ] {
        let server = TestServer::start_options(tls_server(ServerTls {
            stall_handshake: true,
            ..tls
        }))
        .await;
        let r = run(config(
            &[server.addr],
            &[
                "--messages",
                "2",
                "--workers",
                "2",
                "--timeout",
                "300ms",
                "--tls",
                mode,
                "--tls-ca",
                pki.ca_path(),
                "--no-preflight",
            ],
        ))
        .await;
        let m = &r.metrics;
        assert_eq!(
            m.error_breakdown.get("tls:timeout"),
            Some(&2),
            "{mode}: {m:?}"
        );
        assert_eq!(m.timeouts, 2, "{mode}: counted with the timeouts");
        assert!(m.duration_seconds < 3.0, "{mode}: {}", m.duration_seconds);
    }
}

#[tokio::test]
async fn resumption_on_resumes_later_handshakes_and_off_does_not() {
    let pki = TestPki::new();
    for (resume, want) in [("on", 5), ("off", 0)] {
        let server = TestServer::start_options(tls_server(ServerTls::starttls(&pki))).await;
        let r = run(config(
            &[server.addr],
            &[
                "--messages",
                "6",
                "--workers",
                "1",
                "--size",
                "small",
                "--tls",
                "starttls",
                "--tls-ca",
                pki.ca_path(),
                "--tls-resume",
                resume,
            ],
        ))
        .await;
        assert_eq!(r.metrics.successful_messages, 6, "{resume}");
        let tls = r.tls.unwrap();
        assert_eq!(tls.handshakes, 6, "{resume}");
        // One session at a time: every connection after the first resumes (the
        // preflight's session is not kept, so the first is a full handshake).
        assert_eq!(tls.resumed, want, "--tls-resume {resume}: {tls:?}");
        assert_eq!(server.seen.resumed.load(Ordering::SeqCst), want);
    }
}

#[tokio::test]
async fn auth_plain_after_starttls_and_auth_login_send_the_right_base64() {
    let pki = TestPki::new();
    for (mechanism, tls, lines) in [
        (
            "plain",
            true,
            // printf '\0alice\0secret' | base64
            &["AUTH PLAIN AGFsaWNlAHNlY3JldA=="][..],
        ),
        ("login", false, &["AUTH LOGIN", "YWxpY2U=", "c2VjcmV0"][..]),
    ] {
        let options = if tls {
            tls_server(ServerTls::starttls(&pki))
        } else {
            Options::default()
        };
        let server = TestServer::start_options(with_auth(options, &[("alice", "secret")])).await;
        let mut flags = vec![
            "--messages",
            "2",
            "--workers",
            "1",
            "--no-preflight",
            "--auth",
            mechanism,
            "--auth-user",
            "alice",
            "--auth-password",
            "secret",
        ];
        if tls {
            flags.extend(["--tls", "starttls", "--tls-ca", pki.ca_path()]);
        }
        let r = run(config(&[server.addr], &flags)).await;
        let m = &r.metrics;
        assert_eq!(m.successful_messages, 2, "{mechanism}: {m:?}");
        assert!(m.phases_ms["auth"].p50 > 0.0, "{mechanism}: auth is timed");
        assert_eq!(server.logins(), ["alice", "alice"]);
        assert_eq!(server.auth_lines(), [lines, lines].concat(), "{mechanism}");
        let echo = r.run.unwrap().config.to_string();
        assert!(!echo.contains("secret"), "the password is never written");
    }
}

#[tokio::test]
async fn a_wrong_password_is_counted_as_its_reply_and_sends_no_mail() {
    let server =
        TestServer::start_options(with_auth(Options::default(), &[("alice", "secret")])).await;
    let r = run(config(
        &[server.addr],
        &[
            "--messages",
            "3",
            "--workers",
            "1",
            "--auth",
            "plain",
            "--auth-user",
            "alice",
            "--auth-password",
            "wrong",
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!(m.failed_messages, 3);
    assert_eq!(m.error_breakdown.get("535"), Some(&3), "{m:?}");
    assert_eq!(
        m.replies.get("535"),
        Some(&3),
        "a reply class like any other"
    );
    assert!(m.phases_ms["auth"].p50 > 0.0);
    assert_eq!(server.seen.mails.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_server_without_auth_answers_a_bare_auth_and_gets_no_password() {
    let server = TestServer::start(TestServer::accepting()).await;
    let r = run(config(
        &[server.addr],
        &[
            "--messages",
            "2",
            "--workers",
            "1",
            "--auth",
            "login",
            "--auth-user",
            "alice",
            "--auth-password",
            "secret",
        ],
    ))
    .await;
    // The test server answers an AUTH it does not offer with 502.
    assert_eq!(
        r.metrics.error_breakdown.get("502"),
        Some(&2),
        "{:?}",
        r.metrics
    );
    assert_eq!(server.seen.mails.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn auth_file_users_rotate_over_connections() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "# test users\nann:a1\nbob:b2\n\ncid:c:3\n").unwrap();
    let server = TestServer::start_options(with_auth(
        Options::default(),
        &[("ann", "a1"), ("bob", "b2"), ("cid", "c:3")],
    ))
    .await;
    let r = run(config(
        &[server.addr],
        &[
            "--messages",
            "6",
            "--workers",
            "2",
            "--auth",
            "login",
            "--auth-file",
            users.to_str().unwrap(),
        ],
    ))
    .await;
    assert_eq!(r.metrics.successful_messages, 6, "{:?}", r.metrics);
    let mut logins = server.logins();
    logins.sort();
    assert_eq!(logins, ["ann", "ann", "bob", "bob", "cid", "cid"]);
    assert_eq!(r.run.unwrap().config["auth"]["users"], 3);
}

#[tokio::test]
async fn reused_pipelined_connections_do_tls_and_auth_once_on_each_server() {
    let pki = TestPki::new();
    let options = || {
        with_auth(
            tls_server(ServerTls::starttls(&pki)),
            &[("alice", "secret")],
        )
    };
    let servers = [
        TestServer::start_options(options()).await,
        TestServer::start_options(options()).await,
    ];
    let addrs: Vec<_> = servers.iter().map(|s| s.addr).collect();
    let r = run(config(
        &addrs,
        &[
            "--messages",
            "20",
            "--workers",
            "2",
            "--msgs-per-conn",
            "5",
            "--pipelining",
            "--rcpts",
            "2",
            "--no-preflight",
            "--tls",
            "starttls",
            "--tls-ca",
            pki.ca_path(),
            "--auth",
            "plain",
            "--auth-user",
            "alice",
            "--auth-password",
            "secret",
        ],
    ))
    .await;
    let m = &r.metrics;
    assert_eq!(m.successful_messages, 20, "{m:?}");
    assert_eq!(r.tls.as_ref().unwrap().handshakes, 4, "one per connection");
    for (s, server) in r.per_server.iter().zip(&servers) {
        assert_eq!(s.successful_messages, 10);
        assert_eq!(server.messages().len(), 10);
        assert_eq!(server.seen.handshakes.load(Ordering::SeqCst), 2);
        assert_eq!(server.logins().len(), 2);
    }
}
