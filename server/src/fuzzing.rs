//! Entry points for the cargo-fuzz targets in `fuzz/` and their regression tests.
//!
//! Each function feeds arbitrary bytes through one I/O-free part of the server's input
//! path and panics when an invariant breaks, so a fuzz target is one call and a crash
//! it finds becomes a unit test calling the same function with the same bytes.
//!
//! Input layout shared by [`data_reader`] and [`session`]: the first byte chooses how
//! the stream is split into reads (see [`Chunks`]), [`session`] takes a second byte of
//! options, and the rest is what the client sends.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use crate::admission::Admission;
use crate::config::{Config, StoreKind};
use crate::data::DataReader;
use crate::input::InputBuffer;
use crate::memory::{MemoryBudget, MemoryCharge};
use crate::metrics::Metrics;
use crate::protocol::{self, Command, MAX_DATA_LINE, Response};
use crate::session::{Delivery, Dialogue, SessionEnd, Step, Then};
use crate::store::{Store, StoreError};
use crate::{Shared, Shutdown};

/// The command parser on any bytes: no panic; every reply it leads to is well formed;
/// no address or host name carries a control character (they are echoed in replies
/// and written into spool headers).
pub fn command_line(line: &[u8]) {
    let mut out = Vec::new();
    match protocol::parse_command(line) {
        Err(e) => e.reply().write_to(&mut out),
        Ok(command) => {
            let echoed = match &command {
                Command::Ehlo { host } | Command::Helo { host } => Some(host),
                Command::Mail { from, .. } => Some(from),
                Command::Rcpt { to } => Some(to),
                _ => None,
            };
            if let Some(text) = echoed {
                assert!(
                    !text.chars().any(char::is_control),
                    "control character accepted in {command:?} from {line:?}"
                );
            }
            if let Command::Ehlo { host } = &command {
                Response::ehlo("fuzz.example", host, 1000).write_to(&mut out);
            }
            if let Command::NotImplemented(name) = &command {
                protocol::Reply::not_implemented(name).write_to(&mut out);
            }
        }
    }
    replies(&out);
}

/// The DATA reader: a stream split into any reads gives the same result as the whole
/// stream at once, and both match a byte-by-byte reading of RFC 5321 4.1.1.4/4.5.2.
pub fn data_reader(data: &[u8]) {
    let Some((&split, stream)) = data.split_first() else {
        return;
    };
    let expected = reference_data(stream);
    let whole = read_data(&[stream]);
    assert_eq!(whole, expected, "whole stream vs reference for {stream:?}");
    let chunks: Vec<&[u8]> = Chunks::new(stream, split).collect();
    let pieces = read_data(&chunks);
    assert_eq!(
        pieces, expected,
        "split {split} vs reference for {stream:?}"
    );
}

/// A whole session fed arbitrary bytes through the I/O-free `Dialogue`: no panic,
/// every reply well formed, a close only after 221 or 421, accepted messages within
/// the limits, memory charged within the limits and all of it released at the end,
/// and the same replies and messages however the stream is split into reads.
pub fn session(data: &[u8]) {
    let [split, options, stream @ ..] = data else {
        return;
    };
    let options = SessionOptions::from_bits(*options);
    let (shared, hold) = shared_for(options);
    let baseline = shared.memory.accounted();
    let whole = run_session(&shared, options, Chunks::new(stream, 0));
    let pieces = run_session(&shared, options, Chunks::new(stream, *split));
    assert_eq!(
        whole, pieces,
        "split {split} changed the session for {stream:?}"
    );
    assert_eq!(shared.memory.accounted(), baseline, "memory charge leaked");
    drop(hold);
    assert_eq!(shared.memory.accounted(), 0);
}

/// Splits a stream into reads of pseudo-random lengths chosen by a seed: 0 means as
/// large as the buffer takes, 1 means byte by byte, seed `s` allows up to `s²/2 + 1`.
pub struct Chunks<'a> {
    rest: &'a [u8],
    seed: u8,
    state: u32,
}

impl<'a> Chunks<'a> {
    pub fn new(stream: &'a [u8], seed: u8) -> Self {
        Self {
            rest: stream,
            seed,
            state: 0x9e37_79b9 ^ u32::from(seed),
        }
    }

    fn next_len(&mut self) -> usize {
        if self.seed == 0 {
            return self.rest.len();
        }
        // xorshift32: cheap, deterministic, different for every seed.
        self.state ^= self.state << 13;
        self.state ^= self.state >> 17;
        self.state ^= self.state << 5;
        let seed = usize::from(self.seed);
        1 + self.state as usize % (seed * seed / 2 + 1)
    }
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.rest.is_empty() {
            return None;
        }
        let len = self.next_len().min(self.rest.len());
        let (chunk, rest) = self.rest.split_at(len);
        self.rest = rest;
        Some(chunk)
    }
}

/// What a DATA reading produced: the content, whether the end was found, how many
/// bytes were consumed, whether a line was too long.
#[derive(Debug, PartialEq, Eq)]
struct DataResult {
    body: Vec<u8>,
    done: bool,
    consumed: usize,
    line_too_long: bool,
}

fn read_data(chunks: &[&[u8]]) -> DataResult {
    let mut reader = DataReader::new();
    let mut body = Vec::new();
    let mut pending = Vec::new();
    let mut consumed = 0;
    let mut done = false;
    for chunk in chunks {
        pending.extend_from_slice(chunk);
        let (used, end) = reader.feed(&pending, |b| body.extend_from_slice(b));
        assert!(used <= pending.len());
        pending.drain(..used);
        consumed += used;
        if end {
            done = true;
            break;
        }
    }
    assert_eq!(
        reader.size(),
        body.len() as u64,
        "size is the unstuffed length"
    );
    DataResult {
        body,
        done,
        consumed,
        line_too_long: reader.line_too_long(),
    }
}

/// The DATA rules read one byte at a time, as the RFC states them.
fn reference_data(stream: &[u8]) -> DataResult {
    let mut body = Vec::new();
    let (mut line_start, mut line_len, mut line_too_long) = (true, 0, false);
    let result = |body, done, consumed, line_too_long| DataResult {
        body,
        done,
        consumed,
        line_too_long,
    };
    let mut i = 0;
    while i < stream.len() {
        let rest = &stream[i..];
        if line_start && rest[0] == b'.' {
            if rest.starts_with(b".\r\n") {
                return result(body, true, i + 3, line_too_long);
            }
            if rest == b"." || rest == b".\r" {
                // Undecided until the next byte arrives.
                return result(body, false, i, line_too_long);
            }
            // A stuffed dot is dropped.
            line_start = false;
            i += 1;
            continue;
        }
        let byte = rest[0];
        if byte == b'\r' && rest.len() == 1 {
            // Maybe the first half of a CRLF: undecided.
            return result(body, false, i, line_too_long);
        }
        body.push(byte);
        line_len += 1;
        line_too_long |= line_len > MAX_DATA_LINE;
        if byte == b'\n' {
            // Only CRLF starts a line where a dot means something.
            line_start = i > 0 && stream[i - 1] == b'\r';
            line_len = 0;
        } else {
            line_start = false;
        }
        i += 1;
    }
    result(body, false, stream.len(), line_too_long)
}

/// Server settings a session run uses, chosen by the option byte so that the fuzzer
/// reaches every limit.
#[derive(Debug, Clone, Copy)]
struct SessionOptions {
    keep_content: bool,
    small_messages: bool,
    small_connection_memory: bool,
    draining: bool,
    process_memory_nearly_full: bool,
    memory_critical: bool,
    store_fails: bool,
    few_recipients: bool,
}

impl SessionOptions {
    fn from_bits(bits: u8) -> Self {
        let bit = |n: u8| bits & (1 << n) != 0;
        Self {
            keep_content: bit(0),
            small_messages: bit(1),
            small_connection_memory: bit(2),
            draining: bit(3),
            process_memory_nearly_full: bit(4),
            memory_critical: bit(5),
            store_fails: bit(6),
            few_recipients: bit(7),
        }
    }
}

/// A process budget far above any RSS, so that only charges decide.
const FUZZ_MEMORY_LIMIT: u64 = 1 << 40;

/// The server state for one fuzz input, and a charge that stands for other sessions'
/// memory.
fn shared_for(options: SessionOptions) -> (Arc<Shared>, MemoryCharge) {
    let mut config = Config {
        domain: "fuzz.example".into(),
        store: if options.keep_content {
            StoreKind::Memory
        } else {
            StoreKind::Discard
        },
        ..Config::for_local_testing()
    };
    if options.small_messages {
        config.max_message_size = 300;
    }
    if options.small_connection_memory {
        config.per_connection_memory_limit = 80 * 1024;
    }
    if options.few_recipients {
        config.max_recipients = 2;
    }
    // Critical only at the limit itself, so "nearly full" leaves transactions possible
    // but refuses message memory beyond what is left (about 36 KiB next to a DATA
    // input buffer).
    let memory = Arc::new(MemoryBudget::new(FUZZ_MEMORY_LIMIT, 1.0, 1.0));
    let mut hold = MemoryCharge::new(memory.clone());
    if options.memory_critical {
        hold.grow(FUZZ_MEMORY_LIMIT);
    } else if options.process_memory_nearly_full {
        hold.grow(FUZZ_MEMORY_LIMIT - 100 * 1024);
    }
    // AUTH is on in every run (without TLS), so that the SASL states are fuzzed too.
    // The failure guard never blocks: the two runs of one input share this state and
    // must give the same transcript.
    let credentials = fuzz_credentials();
    config.auth_allow_plaintext = credentials.is_some();
    config.auth_max_failures = u32::MAX;
    let mut shared = shared(config, memory);
    if let Some(state) = Arc::get_mut(&mut shared) {
        state.credentials = credentials;
    }
    if options.draining {
        shared.shutdown.draining.cancel();
    }
    (shared, hold)
}

/// The users of fuzz runs: `fuzz` with password `fuzz` (in clear, so a check is
/// cheap), loaded once through a file as the server does.
fn fuzz_credentials() -> Option<Arc<crate::auth::Credentials>> {
    static CREDENTIALS: std::sync::OnceLock<Option<Arc<crate::auth::Credentials>>> =
        std::sync::OnceLock::new();
    CREDENTIALS
        .get_or_init(|| {
            let path =
                std::env::temp_dir().join(format!("stampede-fuzz-users-{}", std::process::id()));
            std::fs::write(&path, "fuzz:fuzz\n").ok()?;
            let loaded = crate::auth::Credentials::load(&path).ok();
            let _ = std::fs::remove_file(&path);
            loaded.map(Arc::new)
        })
        .clone()
}

/// Server state without listeners, for driving a [`Dialogue`] directly. Needs a
/// store that opens without I/O (memory or discard).
pub(crate) fn shared(config: Config, memory: Arc<MemoryBudget>) -> Arc<Shared> {
    Arc::new(Shared {
        metrics: Metrics::new(),
        admission: Arc::new(Admission::new(&config, memory.clone())),
        store: Store::open(&config).expect("memory and discard stores open without I/O"),
        memory,
        shutdown: Shutdown::default(),
        started: std::time::Instant::now(),
        auth_guard: crate::auth::FailureGuard::new(
            config.auth_max_failures,
            config.auth_failure_window,
        ),
        password_checks: tokio::sync::Semaphore::new(1),
        config,
        tls: None,
        credentials: None,
    })
}

/// What a session run produced, for comparing runs.
#[derive(Debug, PartialEq, Eq)]
struct Transcript {
    output: Vec<u8>,
    /// Envelope and content of each message handed to the store.
    delivered: Vec<(String, Vec<String>, Vec<u8>)>,
    end: Option<SessionEnd>,
}

/// Drives a dialogue the way [`crate::session::Session`] does, reads being `chunks`.
fn run_session<'a>(
    shared: &Arc<Shared>,
    options: SessionOptions,
    mut chunks: Chunks<'a>,
) -> Transcript {
    let config = &shared.config;
    let peer = SocketAddr::from((Ipv4Addr::LOCALHOST, 2525));
    let baseline = shared.memory.accounted();
    let mut input = InputBuffer::new(shared.memory.clone());
    let mut dialogue = Dialogue::new(shared.clone(), peer);
    let mut output = Vec::new();
    dialogue.greeting().write_to(&mut output);
    let mut delivered = Vec::new();
    let mut pending: &[u8] = &[];
    let end = 'session: loop {
        loop {
            let outcome = match dialogue.step(&mut input) {
                Step::NeedInput => break,
                Step::Answer(outcome) => outcome,
                Step::Deliver(Delivery { message, receipt }) => {
                    assert!(
                        !message.rcpt_to.is_empty()
                            && message.rcpt_to.len() <= config.max_recipients
                    );
                    assert!(message.data.len() as u64 <= config.max_message_size);
                    if !options.keep_content {
                        assert!(message.data.is_empty(), "discard store kept content");
                    }
                    let result = if options.store_fails {
                        Err(StoreError::Task("fuzz".into()))
                    } else {
                        Ok(())
                    };
                    delivered.push((message.mail_from, message.rcpt_to, message.data));
                    dialogue.stored(receipt, result)
                }
                // No users file in these runs: AUTH is answered 502 before any check.
                Step::Verify(verification) => {
                    let (user, ok) = verification.check();
                    dialogue.verified(user, ok)
                }
            };
            outcome.response.write_to(&mut output);
            if let Then::Close(end) = outcome.then {
                let code = outcome.response.code();
                assert!(
                    matches!(
                        (end, code),
                        (SessionEnd::Quit, 221) | (SessionEnd::Shutdown, 421)
                    ),
                    "{end:?} after {code}"
                );
                break 'session Some(end);
            }
            if let Response::Reply(reply) = &outcome.response {
                assert!(
                    reply.code != 221 && reply.code != 421,
                    "{reply:?} without a close"
                );
            }
        }
        let held = shared.memory.accounted() - baseline;
        let bound = config.per_connection_memory_limit.max(2 * 64 * 1024);
        assert!(held <= bound, "session holds {held} bytes, bound {bound}");
        if pending.is_empty() {
            match chunks.next() {
                Some(chunk) => pending = chunk,
                None => break None,
            }
        }
        input.prepare(dialogue.expecting());
        let n = input.extend_from_slice(pending);
        assert!(n > 0, "a prepared buffer has room");
        pending = &pending[n..];
    };
    drop((dialogue, input));
    replies(&output);
    Transcript {
        output,
        delivered,
        end,
    }
}

/// Checks that `out` is a sequence of well-formed SMTP replies (RFC 5321 4.2): each
/// line is a code 2xx-5xx, `-` (more lines follow, same code) or a space, text without
/// control characters, CRLF. Returns the number of replies.
fn replies(out: &[u8]) -> usize {
    let mut count = 0;
    let mut continuing: Option<&[u8]> = None;
    let mut rest = out;
    while !rest.is_empty() {
        let end = memchr::memmem::find(rest, b"\r\n")
            .unwrap_or_else(|| panic!("reply line without CRLF: {rest:?}"));
        let line = &rest[..end];
        rest = &rest[end + 2..];
        assert!(line.len() >= 4, "short reply line {line:?}");
        let (code, sep, text) = (&line[..3], line[3], &line[4..]);
        assert!(
            matches!(code[0], b'2'..=b'5') && code[1..].iter().all(u8::is_ascii_digit),
            "bad reply code in {line:?}"
        );
        if let Some(previous) = continuing {
            assert_eq!(previous, code, "code changed inside a multi-line reply");
        }
        let text = std::str::from_utf8(text).expect("reply text is UTF-8");
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\t'),
            "control character in reply {line:?}"
        );
        match sep {
            b'-' => continuing = Some(code),
            b' ' => {
                continuing = None;
                count += 1;
            }
            _ => panic!("bad separator in {line:?}"),
        }
    }
    assert!(continuing.is_none(), "multi-line reply not finished");
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The seed corpus in `fuzz/seeds/session` is built from these.
    const SESSION: &[u8] = b"EHLO fuzz.test\r\nMAIL FROM:<a@b.example> SIZE=20\r\n\
        RCPT TO:<c@d.example>\r\nDATA\r\nSubject: x\r\n\r\n..dot\r\n.\r\nQUIT\r\n";

    /// The first crash of the `session` target (fuzz/artifacts/session/crash-f9f2...):
    /// a HELO host with control characters was echoed in the 250 reply.
    #[test]
    fn fuzz_crash_helo_host_with_control_characters() {
        session(
            b"\x11\x08MAIL FROM:<a@b.example>\r\nHELO client\x03\x01EHLO client.test\r\n\
              MAIL FROM:<sender.",
        );
    }

    #[test]
    fn a_pipelined_session_gives_the_same_replies_however_it_is_split() {
        for split in [0, 1, 2, 7, 255] {
            for options in [0b0000_0000, 0b0000_0001, 0b0100_0011, 0b0001_0101] {
                session(&[&[split, options][..], SESSION].concat());
            }
        }
    }

    /// AUTH PLAIN (right, wrong, cancelled) and LOGIN, pipelined with a transaction.
    const AUTH_SESSION: &[u8] = b"EHLO fuzz.test\r\nAUTH PLAIN AGZ1enoAd3Jvbmc=\r\n\
        AUTH PLAIN\r\n*\r\nAUTH LOGIN\r\nZnV6eg==\r\nZnV6eg==\r\n\
        MAIL FROM:<a@b.example> AUTH=<>\r\nRCPT TO:<c@d.example>\r\nDATA\r\nx\r\n.\r\n\
        AUTH PLAIN AGZ1enoAZnV6eg==\r\nQUIT\r\n";

    #[test]
    fn an_auth_session_gives_the_same_replies_however_it_is_split() {
        for split in [0, 1, 2, 7, 255] {
            session(&[&[split, 0][..], AUTH_SESSION].concat());
        }
        let options = SessionOptions::from_bits(0);
        let (shared, _hold) = shared_for(options);
        let t = run_session(&shared, options, Chunks::new(AUTH_SESSION, 5));
        let text = String::from_utf8(t.output).unwrap();
        let codes: Vec<&str> = text
            .lines()
            .filter(|l| l.as_bytes().get(3) == Some(&b' '))
            .map(|l| &l[..3])
            .collect();
        assert_eq!(
            codes,
            [
                "220", "250", "535", "334", "501", "334", "334", "235", "250", "250", "354", "250",
                "503", "221"
            ]
        );
    }

    #[test]
    fn the_session_harness_sees_the_replies_and_the_message() {
        let options = SessionOptions::from_bits(1);
        let (shared, _hold) = shared_for(options);
        let t = run_session(&shared, options, Chunks::new(SESSION, 3));
        assert_eq!(replies(&t.output), 7);
        assert_eq!(t.end, Some(SessionEnd::Quit));
        assert_eq!(t.delivered.len(), 1);
        assert_eq!(t.delivered[0].2, b"Subject: x\r\n\r\n.dot\r\n");
    }

    #[test]
    fn the_data_reader_matches_its_reference_on_the_smuggling_cases() {
        for stream in [
            &b"a\n.\nb\r\n.\nc\r\n.\r\nrest"[..],
            b"..x\r\n.\r",
            b"x\r",
            b"\r\n.\r\n",
            b".\r\n",
        ] {
            for split in [0, 1, 3] {
                data_reader(&[&[split][..], stream].concat());
            }
        }
    }

    #[test]
    fn the_command_parser_holds_on_the_protocol_test_lines() {
        for line in [
            &b"EHLO client.test\r\n"[..],
            b"MAIL FROM:<> BODY=8BITMIME SMTPUTF8\r\n",
            b"MAIL FROM:<a@b.example> RET=HDRS\r\n",
            b"RCPT TO:<user@[192.0.2.1]>\r\n",
            b"FROBNICATE now\r\n",
        ] {
            command_line(line);
        }
    }
}
