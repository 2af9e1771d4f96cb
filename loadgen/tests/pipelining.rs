//! `--pipelining` on the wire: a scripted server looks at what each of its reads
//! holds. Sent in one write, MAIL, RCPT and DATA arrive in one read on loopback;
//! sent one by one, each waits for the reply to the one before, so a read can never
//! hold the next command.

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{config, run};

/// How long the scripted server waits for the client's next bytes.
const READ_WAIT: Duration = Duration::from_secs(5);

/// One `read` from the client, as text.
async fn read_once(sock: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 64 * 1024];
    let n = tokio::time::timeout(READ_WAIT, sock.read(&mut buf))
        .await
        .expect("the client sends within the wait")
        .expect("read from the client");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Reads until the end-of-data marker.
async fn read_message(sock: &mut TcpStream) {
    let mut data = String::new();
    while !data.ends_with("\r\n.\r\n") {
        let chunk = read_once(sock).await;
        assert!(!chunk.is_empty(), "the client closed in the middle of data");
        data.push_str(&chunk);
    }
}

/// Serves one session of one message and returns what each read held from the
/// first command after EHLO up to DATA.
async fn scripted_session(listener: TcpListener, offer_pipelining: bool) -> Vec<String> {
    let (mut sock, _) = listener.accept().await.unwrap();
    sock.write_all(b"220 scripted ESMTP\r\n").await.unwrap();
    let ehlo = read_once(&mut sock).await;
    assert!(ehlo.starts_with("EHLO "), "{ehlo:?}");
    let extensions: &[u8] = if offer_pipelining {
        b"250-scripted\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
    } else {
        b"250-scripted\r\n250 8BITMIME\r\n"
    };
    sock.write_all(extensions).await.unwrap();

    let mut reads = Vec::new();
    let mut commands = Vec::new();
    while !commands.iter().any(|c: &String| c == "DATA") {
        let read = read_once(&mut sock).await;
        assert!(!read.is_empty(), "the client closed before DATA: {reads:?}");
        let mut replies = String::new();
        for line in read.split_terminator("\r\n") {
            replies.push_str(if line == "DATA" {
                "354 go on\r\n"
            } else {
                "250 ok\r\n"
            });
            commands.push(line.to_string());
        }
        reads.push(read);
        sock.write_all(replies.as_bytes()).await.unwrap();
    }
    read_message(&mut sock).await;
    sock.write_all(b"250 2.0.0 queued\r\n").await.unwrap();
    // QUIT, if the client says it before closing.
    if read_once(&mut sock).await.starts_with("QUIT") {
        let _ = sock.write_all(b"221 bye\r\n").await;
    }
    reads
}

/// One message through a scripted server; returns the reads and the run's result.
async fn one_message(offer_pipelining: bool, flags: &[&str]) -> (Vec<String>, report::RunResult) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(scripted_session(listener, offer_pipelining));
    let mut args = vec![
        "--messages",
        "1",
        "--workers",
        "1",
        "--size",
        "small",
        "--no-preflight",
    ];
    args.extend_from_slice(flags);
    let result = run(config(&[addr], &args)).await;
    let reads = tokio::time::timeout(READ_WAIT * 2, server)
        .await
        .expect("the scripted session ends")
        .expect("the scripted session's checks hold");
    (reads, result)
}

#[tokio::test]
async fn pipelining_sends_mail_rcpt_and_data_in_one_write() {
    let (reads, r) = one_message(true, &["--pipelining"]).await;
    assert_eq!(r.metrics.successful_messages, 1, "{:?}", r.metrics);
    assert_eq!(reads.len(), 1, "MAIL, RCPT and DATA in one read: {reads:?}");
    let group: Vec<&str> = reads[0].split_terminator("\r\n").collect();
    assert_eq!(group.len(), 3, "{group:?}");
    assert!(group[0].starts_with("MAIL FROM:<"), "{group:?}");
    assert!(group[1].starts_with("RCPT TO:<"), "{group:?}");
    assert_eq!(group[2], "DATA");
}

#[tokio::test]
async fn pipelining_falls_back_to_one_command_at_a_time_when_not_offered() {
    let (reads, r) = one_message(false, &["--pipelining"]).await;
    assert_eq!(r.metrics.successful_messages, 1, "{:?}", r.metrics);
    assert_eq!(reads.len(), 3, "one command per read: {reads:?}");
    assert!(reads[0].starts_with("MAIL FROM:<"), "{reads:?}");
    assert!(reads[1].starts_with("RCPT TO:<"), "{reads:?}");
    assert_eq!(reads[2], "DATA\r\n");
}

#[tokio::test]
async fn without_the_flag_commands_go_one_at_a_time_even_when_offered() {
    let (reads, r) = one_message(true, &[]).await;
    assert_eq!(r.metrics.successful_messages, 1, "{:?}", r.metrics);
    assert_eq!(reads.len(), 3, "one command per read: {reads:?}");
}
