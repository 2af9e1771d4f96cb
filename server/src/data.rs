//! The DATA reader: finds the end of a message, undoes dot-stuffing, enforces the
//! DATA line limit.
//!
//! Written by hand because no crate does this scan the way we need it: it decides the
//! large-message throughput of the server, so it jumps from LF to LF with `memchr`
//! (SIMD) instead of looking at every byte, and it must be strict where parsers are
//! often lenient:
//!
//! - End of data is only `<CRLF>.<CRLF>` (RFC 5321 4.1.1.4). A bare LF is not a line
//!   ending for this purpose, so `\n.\n` or `\r\n.\n` never end a message (the SMTP
//!   smuggling family of bugs).
//! - A `.` at the start of a line is removed (RFC 5321 4.5.2).
//! - A line longer than 1000 octets including its line ending is noted; the message
//!   is still read to its end so that the rest of it is never taken for commands.
//!
//! The reader is incremental: it consumes what it can from a buffer and says how much
//! it used, so a message may arrive in any number of reads.

use memchr::memchr;

use crate::protocol::MAX_DATA_LINE;

/// The state of one message being received.
#[derive(Debug)]
pub struct DataReader {
    /// True right after a CRLF (and at the start of the message): the only place
    /// where a `.` means something.
    at_line_start: bool,
    /// Octets of the current line so far (after unstuffing, including its ending).
    line_len: usize,
    /// Octets of message content so far (after unstuffing).
    size: u64,
    line_too_long: bool,
}

impl Default for DataReader {
    fn default() -> Self {
        Self::new()
    }
}

impl DataReader {
    pub fn new() -> Self {
        Self {
            at_line_start: true,
            line_len: 0,
            size: 0,
            line_too_long: false,
        }
    }

    /// Message content octets seen so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when some line of the message exceeded [`MAX_DATA_LINE`].
    pub fn line_too_long(&self) -> bool {
        self.line_too_long
    }

    /// Consumes as much of `input` as can be decided now, handing message content to
    /// `sink` in order. Returns how many bytes were consumed and whether the final
    /// `<CRLF>.<CRLF>` was reached (the bytes after it are not consumed).
    ///
    /// Bytes that cannot be decided yet (a trailing CR, or a `.` / `.\r` at the start
    /// of a line) are left in `input` for the next call.
    pub fn feed(&mut self, input: &[u8], mut sink: impl FnMut(&[u8])) -> (usize, bool) {
        let mut pos = 0;
        loop {
            let rest = &input[pos..];
            if rest.is_empty() {
                return (pos, false);
            }
            if self.at_line_start && rest[0] == b'.' {
                if rest.starts_with(b".\r\n") {
                    return (pos + 3, true);
                }
                if rest == b"." || rest == b".\r" {
                    return (pos, false);
                }
                // Dot-stuffed line: drop the first dot, keep the rest of the line.
                pos += 1;
                self.at_line_start = false;
                continue;
            }
            match memchr(b'\n', rest) {
                Some(i) => {
                    let line = &rest[..=i];
                    self.take(line, &mut sink);
                    let crlf = i > 0 && rest[i - 1] == b'\r';
                    // Any LF ends a line for the length limit (lenient towards clients
                    // that send bare LF), but only CRLF starts a line where a dot is
                    // special.
                    self.line_len = 0;
                    self.at_line_start = crlf;
                    pos += i + 1;
                }
                None => {
                    // A partial line. Keep a trailing CR back: it may be the first half
                    // of the CRLF that decides whether the next line starts fresh.
                    let take = if rest.ends_with(b"\r") {
                        rest.len() - 1
                    } else {
                        rest.len()
                    };
                    if take > 0 {
                        self.take(&rest[..take], &mut sink);
                        self.at_line_start = false;
                        pos += take;
                    }
                    return (pos, false);
                }
            }
        }
    }

    fn take(&mut self, bytes: &[u8], sink: &mut impl FnMut(&[u8])) {
        self.line_len += bytes.len();
        if self.line_len > MAX_DATA_LINE {
            self.line_too_long = true;
        }
        self.size += bytes.len() as u64;
        sink(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one after another (keeping unconsumed bytes), returns the body,
    /// whether the end was found and the bytes left after it.
    fn run(chunks: &[&[u8]]) -> (Vec<u8>, bool, Vec<u8>, DataReader) {
        let mut reader = DataReader::new();
        let mut body = Vec::new();
        let mut pending = Vec::new();
        for chunk in chunks {
            pending.extend_from_slice(chunk);
            let (used, done) = reader.feed(&pending, |b| body.extend_from_slice(b));
            pending.drain(..used);
            if done {
                return (body, true, pending, reader);
            }
        }
        (body, false, pending, reader)
    }

    #[test]
    fn ends_on_crlf_dot_crlf_and_leaves_the_rest() {
        let (body, done, rest, _) = run(&[b"Subject: x\r\n\r\nhello\r\n.\r\nQUIT\r\n"]);
        assert!(done);
        assert_eq!(body, b"Subject: x\r\n\r\nhello\r\n");
        assert_eq!(rest, b"QUIT\r\n");
    }

    #[test]
    fn empty_message_ends_immediately() {
        let (body, done, _, _) = run(&[b".\r\n"]);
        assert!(done);
        assert!(body.is_empty());
    }

    #[test]
    fn bare_lf_never_ends_data() {
        let (body, done, _, _) = run(&[b"a\n.\nb\r\n.\nc\r\n"]);
        assert!(!done);
        assert_eq!(body, b"a\n.\nb\r\n\nc\r\n");
        let (_, done, _, _) = run(&[b"a\r\n.\r\n"]);
        assert!(done);
    }

    #[test]
    fn dots_are_unstuffed() {
        let (body, done, _, _) = run(&[b"..leading\r\n...\r\nmid.dle\r\n.\r\n"]);
        assert!(done);
        assert_eq!(body, b".leading\r\n..\r\nmid.dle\r\n");
    }

    #[test]
    fn end_marker_split_across_reads_is_found() {
        let (body, done, rest, _) = run(&[b"x\r", b"\n", b".", b"\r", b"\nNOOP\r\n"]);
        assert!(done);
        assert_eq!(body, b"x\r\n");
        assert_eq!(rest, b"NOOP\r\n");
    }

    #[test]
    fn line_limit_counts_the_crlf() {
        let mut ok = vec![b'a'; 998];
        ok.extend_from_slice(b"\r\n.\r\n");
        let (_, done, _, reader) = run(&[&ok]);
        assert!(done && !reader.line_too_long());

        let mut long = vec![b'a'; 999];
        long.extend_from_slice(b"\r\n.\r\n");
        let (_, done, _, reader) = run(&[&long[..500], &long[500..]]);
        assert!(done && reader.line_too_long());
    }

    #[test]
    fn size_counts_unstuffed_content() {
        let (_, _, _, reader) = run(&[b"..ab\r\n.\r\n"]);
        assert_eq!(reader.size(), 5);
    }
}
