//! Refusals a client sees over a real socket: malformed addresses, a spool that
//! cannot be written, and per-address rate limits that leave other addresses alone.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::{Client, start_spooling, start_with, stop};

#[tokio::test]
async fn malformed_sender_gets_501_5_1_7_and_malformed_recipient_501_5_1_3() {
    let server = start_with(|_| {}).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    c.cmd("MAIL FROM:<not an address>")
        .await
        .assert(501, "5.1.7");
    // The refused MAIL opened no transaction: a recipient is out of sequence.
    c.cmd("RCPT TO:<r@test.example>").await.assert(503, "5.5.1");
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    c.cmd("RCPT TO:<user@[not.an.ip]>")
        .await
        .assert(501, "5.1.3");
    c.cmd("RCPT TO:<no at sign>").await.assert(501, "5.1.3");
    // The transaction survives a refused recipient.
    c.cmd("RCPT TO:<r@test.example>").await.assert(250, "2.1.5");
    c.cmd("QUIT").await.assert(221, "2.0.0");
    stop(server).await;
}

#[tokio::test]
async fn a_spool_write_that_fails_gets_451_4_3_0_and_the_next_one_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let spool = dir.path().join("spool");
    let server = start_spooling(&spool).await;
    // Taking away the directory a message is first written to makes the write fail
    // (this test may run as root, for whom permissions would not).
    std::fs::remove_dir(spool.join("tmp")).unwrap();
    let mut c = Client::ready(server.smtp_addr()).await;
    c.send_message(b"Subject: lost\r\n\r\nbody\r\n")
        .await
        .assert(451, "4.3.0");
    assert_eq!(server.stats().messages_rejected["store_error"], 1);
    assert_eq!(server.stats().messages_accepted, 0);
    assert_eq!(std::fs::read_dir(spool.join("new")).unwrap().count(), 0);

    // A temporary failure: once the directory is back, the same session delivers.
    std::fs::create_dir(spool.join("tmp")).unwrap();
    c.send_message(b"Subject: kept\r\n\r\nbody\r\n")
        .await
        .assert(250, "2.0.0");
    assert_eq!(std::fs::read_dir(spool.join("new")).unwrap().count(), 1);
    stop(server).await;
}

#[tokio::test]
async fn a_per_address_rate_limit_leaves_other_addresses_alone() {
    let server = start_with(|c| {
        c.rate_limit_window = Duration::from_secs(60);
        c.max_requests_per_window = 1000;
        c.max_requests_per_window_per_ip = 2;
    })
    .await;
    let addr = server.smtp_addr();
    let busy: IpAddr = "127.0.0.2".parse().unwrap();
    let other: IpAddr = "127.0.0.3".parse().unwrap();
    for _ in 0..2 {
        let mut c = Client::connect_from(busy, addr).await;
        c.reply().await.assert(220, "");
    }
    let mut refused = Client::connect_from(busy, addr).await;
    refused.reply().await.assert(421, "4.7.0");
    assert!(refused.is_closed().await);
    // Another address has its own budget, untouched by the first one's.
    for _ in 0..2 {
        let mut c = Client::connect_from(other, addr).await;
        c.reply().await.assert(220, "");
        c.cmd("QUIT").await.assert(221, "2.0.0");
    }
    let mut refused = Client::connect_from(other, addr).await;
    refused.reply().await.assert(421, "4.7.0");
    assert_eq!(server.stats().connections_rejected["rate_limit_per_ip"], 2);
    assert_eq!(server.stats().connections_rejected["rate_limit"], 0);
    stop(server).await;
}

#[tokio::test]
async fn a_per_address_connection_limit_leaves_other_addresses_alone() {
    let server = start_with(|c| {
        c.max_connections = 100;
        c.max_connections_per_ip = 1;
    })
    .await;
    let addr = server.smtp_addr();
    let busy: IpAddr = "127.0.0.2".parse().unwrap();
    let other: IpAddr = "127.0.0.3".parse().unwrap();
    let mut held = Client::connect_from(busy, addr).await;
    held.reply().await.assert(220, "");
    let mut refused = Client::connect_from(busy, addr).await;
    refused.reply().await.assert(421, "4.7.0");
    let mut c = Client::connect_from(other, addr).await;
    c.reply().await.assert(220, "");
    assert_eq!(
        server.stats().connections_rejected["max_connections_per_ip"],
        1
    );
    stop(server).await;
}
