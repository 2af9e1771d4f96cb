//! The SMTP dialogue over real sockets: commands, replies, line limits, DATA framing,
//! pipelining.

mod common;

use common::{Client, body_of_size, start_with, stop};

#[tokio::test]
async fn ehlo_advertises_the_extensions_with_the_configured_size() {
    let server = start_with(|c| c.max_message_size = 123_456).await;
    let mut c = Client::connect_greeted(server.smtp_addr()).await;
    let r = c.cmd("EHLO client.test").await;
    assert_eq!(r.code, 250);
    for ext in [
        "PIPELINING",
        "SIZE 123456",
        "8BITMIME",
        "ENHANCEDSTATUSCODES",
        "SMTPUTF8",
    ] {
        assert!(r.lines.iter().any(|l| l == ext), "{ext} missing in {r:?}");
    }
    assert!(r.lines[0].starts_with("test.example"), "{r:?}");
    c.cmd("QUIT").await.assert(221, "2.0.0");
    assert!(c.is_closed().await);
    stop(server).await;
}

#[tokio::test]
async fn simple_commands_get_their_rfc_replies() {
    let server = start_with(|_| {}).await;
    let mut c = Client::connect_greeted(server.smtp_addr()).await;
    // Before HELO a transaction cannot start.
    c.cmd("MAIL FROM:<a@b.example>").await.assert(503, "5.5.1");
    let helo = c.cmd("HELO client.test").await;
    assert_eq!(helo.code, 250);
    c.cmd("NOOP").await.assert(250, "2.0.0");
    c.cmd("VRFY someone").await.assert(252, "2.5.0");
    c.cmd("HELP").await.assert(214, "2.0.0");
    c.cmd("FROBNICATE now").await.assert(500, "5.5.1");
    c.cmd("EXPN list").await.assert(502, "5.5.1");
    c.cmd("STARTTLS").await.assert(502, "5.5.1");
    c.cmd("RCPT TO:<x@y.example>").await.assert(503, "5.5.1");
    c.cmd("DATA").await.assert(503, "5.5.1");
    c.cmd("MAIL FROM:missing-brackets@b.example")
        .await
        .assert(501, "5.5.4");
    c.cmd("EHLO").await.assert(501, "5.5.4");
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    c.cmd("MAIL FROM:<a@b.example>").await.assert(503, "5.5.1");
    c.cmd("DATA").await.assert(503, "5.5.1");
    c.cmd("RSET").await.assert(250, "2.0.0");
    c.cmd("RCPT TO:<x@y.example>").await.assert(503, "5.5.1");
    c.cmd("QUIT").await.assert(221, "2.0.0");
    stop(server).await;
}

#[tokio::test]
async fn control_characters_in_a_host_or_an_address_get_501_and_are_never_echoed() {
    let server = start_with(|_| {}).await;
    let mut c = Client::connect_greeted(server.smtp_addr()).await;
    c.send(b"HELO client\x03\x01EHLO\r\n").await;
    c.reply().await.assert(501, "5.5.4");
    c.cmd("EHLO client.test").await;
    c.send(b"MAIL FROM:<\"a\x1b[2Jb\"@c.example>\r\n").await;
    c.reply().await.assert(501, "5.1.7");
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    c.send(b"RCPT TO:<x\x7fy@test.example>\r\n").await;
    c.reply().await.assert(501, "5.1.3");
    c.cmd("QUIT").await.assert(221, "2.0.0");
    assert!(server.stored_messages().is_empty());
    stop(server).await;
}

#[tokio::test]
async fn many_messages_per_connection_are_stored_with_their_envelope() {
    let server = start_with(|_| {}).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    for i in 0..5 {
        let body = format!("Subject: {i}\r\n\r\nbody {i}\r\n");
        c.send_message(body.as_bytes()).await.assert(250, "2.0.0");
    }
    c.cmd("QUIT").await.assert(221, "2.0.0");
    let stored = server.stored_messages();
    assert_eq!(stored.len(), 5);
    assert_eq!(stored[3].mail_from, "sender@client.test");
    assert_eq!(stored[3].rcpt_to, vec!["rcpt@test.example".to_string()]);
    assert_eq!(stored[3].data, b"Subject: 3\r\n\r\nbody 3\r\n");
    assert_eq!(server.stats().messages_accepted, 5);
    stop(server).await;
}

#[tokio::test]
async fn null_sender_and_smtputf8_and_body_parameters_are_accepted() {
    let server = start_with(|_| {}).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    c.cmd("MAIL FROM:<> BODY=8BITMIME SMTPUTF8")
        .await
        .assert(250, "2.1.0");
    c.cmd("RCPT TO:<rcpt@test.example>")
        .await
        .assert(250, "2.1.5");
    c.cmd("RSET").await.assert(250, "2.0.0");
    // Not advertised, so not honoured.
    c.cmd("MAIL FROM:<a@b.example> RET=HDRS")
        .await
        .assert(555, "5.5.4");
    stop(server).await;
}

#[tokio::test]
async fn pipelined_transaction_in_one_write_gets_replies_in_order() {
    let server = start_with(|_| {}).await;
    let mut c = Client::connect_greeted(server.smtp_addr()).await;
    c.send(
        "EHLO pipe.test\r\nMAIL FROM:<a@pipe.test>\r\nRCPT TO:<b@test.example>\r\n\
         RCPT TO:<c@test.example>\r\nNOOP\r\nDATA\r\nSubject: p\r\n\r\npiped\r\n.\r\n\
         RSET\r\nVRFY x\r\nQUIT\r\n",
    )
    .await;
    let codes: Vec<(u16, String)> = {
        let mut v = Vec::new();
        for _ in 0..10 {
            let r = c.reply().await;
            v.push((r.code, r.status().to_string()));
        }
        v
    };
    let expected: Vec<(u16, String)> = [
        (250, ""),
        (250, "2.1.0"),
        (250, "2.1.5"),
        (250, "2.1.5"),
        (250, "2.0.0"),
        (354, ""),
        (250, "2.0.0"),
        (250, "2.0.0"),
        (252, "2.5.0"),
        (221, "2.0.0"),
    ]
    .into_iter()
    .map(|(c, s)| (c, s.to_string()))
    .collect();
    assert_eq!(codes, expected);
    let stored = server.stored_messages();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].rcpt_to.len(), 2);
    assert_eq!(stored[0].data, b"Subject: p\r\n\r\npiped\r\n");
    stop(server).await;
}

#[tokio::test]
async fn the_101st_recipient_gets_452_4_5_3() {
    let server = start_with(|_| {}).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    let mut batch = String::new();
    for i in 0..101 {
        batch.push_str(&format!("RCPT TO:<r{i}@test.example>\r\n"));
    }
    c.send(batch).await;
    for _ in 0..100 {
        c.reply().await.assert(250, "2.1.5");
    }
    c.reply().await.assert(452, "4.5.3");
    // The transaction is still usable with its 100 recipients.
    c.cmd("DATA").await.assert(354, "");
    c.send("Subject: many\r\n\r\nx\r\n.\r\n").await;
    c.reply().await.assert(250, "2.0.0");
    assert_eq!(server.stored_messages()[0].rcpt_to.len(), 100);
    stop(server).await;
}

#[tokio::test]
async fn long_command_line_gets_500_5_5_2_and_the_session_stays_usable() {
    let server = start_with(|_| {}).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    // 510 characters + CRLF = 512 octets: the longest legal command line.
    let longest = format!("NOOP {}", "a".repeat(505));
    assert_eq!(longest.len() + 2, 512);
    c.cmd(&longest).await.assert(250, "2.0.0");
    let too_long = format!("NOOP {}", "a".repeat(506));
    c.cmd(&too_long).await.assert(500, "5.5.2");
    // Far too long, arriving in pieces: answered once, when the line ends.
    c.send(format!("MAIL FROM:<{}", "b".repeat(5000))).await;
    c.send(format!("{}@x.example>\r\n", "c".repeat(5000))).await;
    c.reply().await.assert(500, "5.5.2");
    c.cmd("NOOP").await.assert(250, "2.0.0");
    c.send_message(b"Subject: after\r\n\r\nok\r\n")
        .await
        .assert(250, "2.0.0");
    stop(server).await;
}

#[tokio::test]
async fn a_998_character_body_line_is_accepted() {
    let server = start_with(|_| {}).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    let mut body = b"Subject: long\r\n\r\n".to_vec();
    body.extend_from_slice(&[b'y'; 998]);
    body.extend_from_slice(b"\r\n");
    c.send_message(&body).await.assert(250, "2.0.0");
    assert_eq!(server.stored_messages()[0].data, body);
    stop(server).await;
}

#[tokio::test]
async fn a_999_character_body_line_gets_500_5_5_2_after_the_whole_message() {
    let server = start_with(|_| {}).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    let mut body = b"Subject: long\r\n\r\n".to_vec();
    body.extend_from_slice(&[b'y'; 999]);
    // Lines after the long one look like commands; they must not be taken as such.
    body.extend_from_slice(b"\r\nQUIT\r\nRSET\r\n");
    c.send_message(&body).await.assert(500, "5.5.2");
    assert!(server.stored_messages().is_empty());
    c.send_message(b"Subject: next\r\n\r\nok\r\n")
        .await
        .assert(250, "2.0.0");
    stop(server).await;
}

#[tokio::test]
async fn bare_lf_dot_lf_does_not_end_data() {
    let server = start_with(|_| {}).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    c.cmd("MAIL FROM:<a@b.example>").await.assert(250, "2.1.0");
    c.cmd("RCPT TO:<r@test.example>").await.assert(250, "2.1.5");
    c.cmd("DATA").await.assert(354, "");
    // A smuggling attempt: "\n.\n" and "\r\n.\n" followed by a second transaction.
    c.send(
        "Subject: s\r\n\r\nfirst\n.\nMAIL FROM:<evil@x.example>\r\n\
         RCPT TO:<victim@test.example>\r\nDATA\r\nsmuggled\r\n.\nstill data\r\n",
    )
    .await;
    // Nothing may have been answered yet: the message has not ended.
    assert!(c.silent_for(std::time::Duration::from_millis(200)).await);
    c.send(".\r\n").await;
    c.reply().await.assert(250, "2.0.0");
    c.cmd("NOOP").await.assert(250, "2.0.0");
    let stored = server.stored_messages();
    assert_eq!(stored.len(), 1, "exactly one message");
    let data = String::from_utf8(stored[0].data.clone()).unwrap();
    assert!(data.contains("MAIL FROM:<evil@x.example>"), "{data:?}");
    assert!(data.ends_with("still data\r\n"), "{data:?}");
    stop(server).await;
}

#[tokio::test]
async fn leading_dots_are_unstuffed() {
    let server = start_with(|_| {}).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    c.send_message(b"Subject: dots\r\n\r\n..one dot\r\n...\r\n")
        .await
        .assert(250, "2.0.0");
    let stored = server.stored_messages();
    assert_eq!(stored[0].data, b"Subject: dots\r\n\r\n.one dot\r\n..\r\n");
    stop(server).await;
}

#[tokio::test]
async fn size_parameter_over_the_limit_gets_552_at_mail() {
    let server = start_with(|c| c.max_message_size = 10_000).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    c.cmd("MAIL FROM:<a@b.example> SIZE=10001")
        .await
        .assert(552, "5.3.4");
    c.cmd("MAIL FROM:<a@b.example> SIZE=10000")
        .await
        .assert(250, "2.1.0");
    stop(server).await;
}

#[tokio::test]
async fn oversize_data_gets_552_after_the_final_dot_and_the_session_still_works() {
    let server = start_with(|c| c.max_message_size = 10_000).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    let mut body = body_of_size(30_000);
    // Command-like lines inside the refused message must stay message content.
    body.extend_from_slice(b"QUIT\r\nMAIL FROM:<x@y.example>\r\n");
    c.send_message(&body).await.assert(552, "5.3.4");
    c.cmd("NOOP").await.assert(250, "2.0.0");
    c.send_message(&body_of_size(5_000))
        .await
        .assert(250, "2.0.0");
    let stats = server.stats();
    assert_eq!(stats.messages_rejected["size"], 1);
    assert_eq!(stats.messages_accepted, 1);
    stop(server).await;
}

#[tokio::test]
async fn message_over_the_per_connection_memory_limit_gets_552() {
    let server = start_with(|c| {
        c.max_message_size = 4 * 1024 * 1024;
        c.per_connection_memory_limit = 128 * 1024;
    })
    .await;
    let mut c = Client::ready(server.smtp_addr()).await;
    let r = c.send_message(&body_of_size(512 * 1024)).await;
    r.assert(552, "5.3.4");
    assert!(r.text().contains("memory"), "{r:?}");
    c.send_message(&body_of_size(10_000))
        .await
        .assert(250, "2.0.0");
    assert_eq!(server.stats().messages_rejected["connection_memory"], 1);
    stop(server).await;
}

#[tokio::test]
async fn a_large_message_arrives_intact() {
    let server = start_with(|_| {}).await;
    let mut c = Client::ready(server.smtp_addr()).await;
    let body = body_of_size(1024 * 1024);
    c.send_message(&body).await.assert(250, "2.0.0");
    assert_eq!(server.stored_messages()[0].data, body);
    assert_eq!(server.stats().bytes_received, body.len() as u64);
    stop(server).await;
}
