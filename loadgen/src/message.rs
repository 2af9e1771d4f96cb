//! The messages a run sends.
//!
//! Generating messages must never be the bottleneck, so everything that does not
//! change per message is prepared once: the static headers (built with lettre, which
//! knows RFC 5322 folding and MIME) and, per distinct size, the body in its final
//! dot-stuffed wire form, terminator included, in a shared `Arc<[u8]>`. Per message
//! only four header lines are formatted into a reused buffer: `Date`, `Message-ID`,
//! `X-Stampede-Run` and `X-Stampede-Seq`.
//!
//! "Size on the wire" is the DATA content: header and body bytes with CRLF line ends
//! as sent after the 354 reply, excluding the final `.<CRLF>`.

use std::io::Write;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lettre::message::Mailbox;
use lettre::message::header::{ContentType, MIME_VERSION_1_0};
use rand::distr::Distribution;
use rand::distr::weighted::WeightedIndex;

use crate::config::Config;

/// Characters per body line, excluding CRLF (RFC 5322 2.1.1 recommends ≤ 78).
pub const BODY_LINE_CHARS: usize = 76;

/// End of DATA (RFC 5321 4.1.1.4); the body already ends with CRLF.
const END_OF_DATA: &[u8] = b".\r\n";

/// Digits of the sequence number in the Message-ID: zero-padded, so the header's
/// length does not depend on the sequence number.
const MESSAGE_ID_SEQ_DIGITS: usize = 10;

/// A body in wire form for one size, shared by every message of that size.
#[derive(Debug, Clone)]
pub struct PreparedBody {
    /// Requested size on the wire.
    pub size: u64,
    /// Dot-stuffed body with CRLF line ends, followed by `.<CRLF>`.
    pub wire: Arc<[u8]>,
}

impl PreparedBody {
    /// Body bytes that count toward the message size (without the terminator).
    pub fn content_len(&self) -> usize {
        self.wire.len() - END_OF_DATA.len()
    }
}

/// Everything needed to write any message of a run.
#[derive(Debug)]
pub struct MessageFactory {
    run_id: String,
    domain: String,
    /// Static header lines (From, To, Subject, MIME-Version, Content-Type, ...).
    static_headers: Vec<u8>,
    bodies: Vec<PreparedBody>,
    mix: Option<WeightedIndex<u32>>,
}

impl MessageFactory {
    /// Builds the template once per run; fails only on an unusable address.
    pub fn new(config: &Config, run_id: &str) -> anyhow::Result<Self> {
        let static_headers = static_headers(config, run_id)?;
        let domain = config.from_domain().to_string();
        let mut me = MessageFactory {
            run_id: run_id.to_string(),
            domain,
            static_headers,
            bodies: Vec::new(),
            mix: None,
        };
        let header_len = me.header_len();
        me.bodies = config
            .size
            .choices
            .iter()
            .map(|c| PreparedBody {
                size: c.bytes,
                wire: body_wire(c.bytes.saturating_sub(header_len as u64) as usize),
            })
            .collect();
        if config.size.choices.len() > 1 {
            me.mix = Some(WeightedIndex::new(
                config.size.choices.iter().map(|c| c.weight),
            )?);
        }
        Ok(me)
    }

    /// Index of the body for the next message: the only size, or one drawn from
    /// the mix.
    pub fn pick<R: rand::Rng>(&self, rng: &mut R) -> usize {
        match &self.mix {
            None => 0,
            Some(w) => w.sample(rng),
        }
    }

    /// The prepared bodies, one per size of the spec, in its order.
    pub fn bodies(&self) -> &[PreparedBody] {
        &self.bodies
    }

    /// Writes the header block of message `seq` (blank line included) into `out`.
    pub fn write_headers(&self, out: &mut Vec<u8>, seq: u64, date: &DateClock) {
        out.clear();
        out.extend_from_slice(b"Date: ");
        out.extend_from_slice(date.text.as_bytes());
        // Writing into a Vec cannot fail.
        let _ = write!(
            out,
            "\r\nMessage-ID: <{}.{:0w$}@{}>\r\nX-Stampede-Run: {}\r\nX-Stampede-Seq: {}\r\n",
            self.run_id,
            seq,
            self.domain,
            self.run_id,
            seq,
            w = MESSAGE_ID_SEQ_DIGITS
        );
        out.extend_from_slice(&self.static_headers);
        out.extend_from_slice(b"\r\n");
    }

    /// Length of a header block for a typical sequence number (6 digits), used to
    /// size the bodies: the message grows by one byte per extra digit, 0.1% of the
    /// smallest named size.
    fn header_len(&self) -> usize {
        let mut v = Vec::new();
        self.write_headers(&mut v, 100_000, &DateClock::new());
        v.len()
    }
}

/// RFC 5322 date text, formatted once per second, not once per message.
#[derive(Debug)]
pub struct DateClock {
    second: i64,
    text: String,
}

impl Default for DateClock {
    fn default() -> Self {
        Self::new()
    }
}

impl DateClock {
    pub fn new() -> Self {
        let mut c = DateClock {
            second: i64::MIN,
            text: String::new(),
        };
        c.refresh();
        c
    }

    /// Updates the text when the second has changed.
    pub fn refresh(&mut self) {
        let now: DateTime<Utc> = Utc::now();
        if now.timestamp() != self.second {
            self.second = now.timestamp();
            // Day zero-padded: fixed width, so the header length never changes.
            self.text = now.format("%a, %d %b %Y %H:%M:%S +0000").to_string();
        }
    }
}

/// The headers that are the same for every message, built by lettre, with the
/// Date it adds removed (ours is per message).
fn static_headers(config: &Config, run_id: &str) -> anyhow::Result<Vec<u8>> {
    let mut b = lettre::Message::builder()
        .from(config.from.parse::<Mailbox>()?)
        .subject(format!("Stampede load test {run_id}"))
        .header(MIME_VERSION_1_0)
        .header(ContentType::TEXT_PLAIN)
        .user_agent(format!("stampede-loadgen/{}", env!("CARGO_PKG_VERSION")));
    for r in &config.recipients {
        b = b.to(r.parse::<Mailbox>()?);
    }
    let formatted = b.body(String::from("x\r\n"))?.formatted();
    let end = memchr::memmem::find(&formatted, b"\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("lettre produced no header block"))?;
    let head = &formatted[..end + 2];
    let mut out = Vec::with_capacity(head.len());
    let mut skipping = false;
    for line in head.split_inclusive(|&b| b == b'\n') {
        let continuation = line.first().is_some_and(|&c| c == b' ' || c == b'\t');
        if !continuation {
            skipping = line.len() >= 5 && line[..5].eq_ignore_ascii_case(b"date:");
        }
        if !skipping {
            out.extend_from_slice(line);
        }
    }
    Ok(out)
}

/// A body of exactly `len` bytes (at least 2: one empty line), CRLF line ends, lines
/// of [`BODY_LINE_CHARS`] printable ASCII, dot-stuffed, followed by `.<CRLF>`.
pub fn body_wire(len: usize) -> Arc<[u8]> {
    const TEXT: &[u8] =
        b"The quick brown fox jumps over the lazy dog; Stampede load test payload 0123456789 ";
    let len = len.max(2);
    let mut raw = Vec::with_capacity(len);
    let mut k = 0usize;
    while raw.len() < len {
        let left = len - raw.len();
        // A line needs CRLF; never leave a remainder of a lone byte.
        let chars = if left <= BODY_LINE_CHARS + 2 {
            left - 2
        } else if left - (BODY_LINE_CHARS + 2) < 2 {
            BODY_LINE_CHARS - 2
        } else {
            BODY_LINE_CHARS
        };
        for _ in 0..chars {
            raw.push(TEXT[k % TEXT.len()]);
            k += 1;
        }
        raw.extend_from_slice(b"\r\n");
    }
    let mut wire = dot_stuff(&raw);
    wire.extend_from_slice(END_OF_DATA);
    wire.into()
}

/// RFC 5321 4.5.2: a line starting with '.' gets one more.
pub fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 16);
    let mut at_line_start = true;
    for &b in body {
        if at_line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        at_line_start = b == b'\n';
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_exact_length_and_short_lines() {
        for len in [2usize, 3, 77, 78, 79, 80, 81, 1000, 10_000, 65_537] {
            let w = body_wire(len);
            let body = &w[..w.len() - 3];
            assert_eq!(body.len(), len, "len {len}");
            assert!(body.ends_with(b"\r\n"));
            for line in body.split(|&b| b == b'\n') {
                assert!(line.len() <= BODY_LINE_CHARS + 1, "line {}", line.len());
                assert!(line.first() != Some(&b'.'));
            }
            assert!(w.ends_with(b"\r\n.\r\n") || len == 2);
        }
    }

    #[test]
    fn dot_stuffing_doubles_leading_dots() {
        assert_eq!(dot_stuff(b".a\r\n.\r\nb.\r\n"), b"..a\r\n..\r\nb.\r\n");
    }

    #[test]
    fn messages_have_the_requested_size_and_unique_ids() {
        let c = Config::from_cli([
            "loadgen",
            "--servers",
            "x",
            "--size",
            "small=1,2500=1,xlarge=1",
            "--rcpts",
            "3",
        ])
        .unwrap();
        let f = MessageFactory::new(&c, "run1").unwrap();
        let clock = DateClock::new();
        let mut h = Vec::new();
        for b in &f.bodies {
            f.write_headers(&mut h, 12345, &clock);
            let size = h.len() + b.content_len();
            let err = (size as f64 - b.size as f64).abs() / b.size as f64;
            assert!(err < 0.01, "size {size} for {}", b.size);
        }
        f.write_headers(&mut h, 7, &clock);
        let text = String::from_utf8(h.clone()).unwrap();
        for want in [
            "Date: ",
            "From: ",
            "To: ",
            "Subject: ",
            "MIME-Version: 1.0",
            "Content-Transfer-Encoding: 7bit",
            "User-Agent: stampede-loadgen/",
            "Content-Type: text/plain",
            "X-Stampede-Run: run1",
            "X-Stampede-Seq: 7\r\n",
            "Message-ID: <run1.0000000007@stampede.test>",
        ] {
            assert!(text.contains(want), "missing {want} in {text}");
        }
        assert_eq!(text.matches("Date:").count(), 1);
        assert!(text.ends_with("\r\n\r\n"));
        for line in text.split("\r\n") {
            assert!(line.len() <= 78, "{line}");
        }
    }
}
