//! The session's input buffer: bytes received but not yet handled, command-line
//! framing, and the memory charge for the buffer itself.
//!
//! The buffer's capacity is charged to the process memory budget before anything is
//! read into it, and the charge always equals the capacity, so the budget sees what
//! the session really holds. Between messages the buffer is small (idle sessions stay
//! cheap); while a message arrives it is large (few reads per message).
//!
//! What a transport layer under the session holds for the connection (TLS record
//! buffers) is charged here too, as an estimate set by the session, so that the
//! per-connection limit and the process budget count it like the buffer itself.
//!
//! Filling is I/O-free ([`extend_from_slice`](InputBuffer::extend_from_slice)) or from
//! any reader ([`read_from`](InputBuffer::read_from)); either way at most the spare
//! capacity is filled, as one read would.

use std::sync::Arc;

use memchr::memchr;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::memory::{MemoryBudget, MemoryCharge};
use crate::protocol::MAX_COMMAND_LINE;

/// Buffer size between messages: room for a full command line plus a pipelined batch
/// of commands, small so that idle sessions stay cheap.
const COMMAND_BUFFER: usize = 4 * 1024;
/// Buffer size while a message is arriving: large reads for throughput.
const DATA_BUFFER: usize = 64 * 1024;

/// What the next bytes from the client are expected to be; decides the buffer size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expecting {
    Commands,
    MessageContent,
}

impl Expecting {
    /// The buffer capacity for this kind of input.
    pub fn buffer_size(self) -> usize {
        match self {
            Expecting::Commands => COMMAND_BUFFER,
            Expecting::MessageContent => DATA_BUFFER,
        }
    }
}

/// One framed command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A complete line of at most [`MAX_COMMAND_LINE`] octets, ending in LF.
    Command(&'a [u8]),
    /// A line longer than [`MAX_COMMAND_LINE`] has ended; its bytes were dropped as
    /// they came.
    TooLong,
}

/// Bytes from the client that have not been handled yet.
#[derive(Debug)]
pub struct InputBuffer {
    bytes: Vec<u8>,
    /// Bytes of `bytes` already handled.
    pos: usize,
    /// Dropping the rest of a command line longer than [`MAX_COMMAND_LINE`], to be
    /// answered once when it ends.
    discarding_line: bool,
    /// Always equal to `bytes.capacity()`.
    charge: MemoryCharge,
    /// What the transport under the session (TLS) may hold; see [`Self::charge_transport`].
    transport: MemoryCharge,
}

impl InputBuffer {
    pub fn new(budget: Arc<MemoryBudget>) -> Self {
        Self {
            bytes: Vec::new(),
            pos: 0,
            discarding_line: false,
            charge: MemoryCharge::new(budget.clone()),
            transport: MemoryCharge::new(budget),
        }
    }

    /// Bytes charged to the memory budget for this buffer and the transport under it.
    pub fn charged(&self) -> u64 {
        self.charge.bytes() + self.transport.bytes()
    }

    /// Sets what the transport under the session holds for this connection (its
    /// buffers, estimated by the caller), charged unconditionally like the command
    /// buffer: without it the connection cannot work at all.
    pub fn charge_transport(&mut self, bytes: u64) {
        let charged = self.transport.bytes();
        if bytes > charged {
            self.transport.grow(bytes - charged);
        } else {
            self.transport.shrink(charged - bytes);
        }
    }

    /// Drops every byte not handled yet (and any long line being skipped); returns
    /// how many there were.
    pub fn discard_pending(&mut self) -> usize {
        let discarded = self.bytes.len() - self.pos;
        self.bytes.clear();
        self.pos = 0;
        self.discarding_line = false;
        discarded
    }

    /// The bytes not handled yet.
    pub fn pending(&self) -> &[u8] {
        &self.bytes[self.pos..]
    }

    /// Marks the first `n` pending bytes as handled.
    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.bytes.len());
    }

    /// Drops the handled bytes and sizes the buffer for what comes next, charging any
    /// growth before it is filled. Called before each fill.
    pub fn prepare(&mut self, expecting: Expecting) {
        if self.pos > 0 {
            self.bytes.drain(..self.pos);
            self.pos = 0;
        }
        let target = expecting.buffer_size();
        if self.bytes.capacity() < target {
            self.bytes.reserve_exact(target - self.bytes.len());
        } else if self.bytes.capacity() > target && self.bytes.len() <= target / 2 {
            self.bytes.shrink_to(target);
        }
        // Room for at least one byte, or a read would look like end of input.
        if self.bytes.len() == self.bytes.capacity() {
            self.bytes.reserve(1);
        }
        self.sync_charge();
    }

    /// Room left for the next fill.
    pub fn spare_capacity(&self) -> usize {
        self.bytes.capacity() - self.bytes.len()
    }

    /// Appends as much of `bytes` as fits in the spare capacity (what one read would
    /// take) and returns how much that was.
    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.spare_capacity());
        self.bytes.extend_from_slice(&bytes[..n]);
        n
    }

    /// One read from `reader` into the spare capacity; `Ok(0)` means end of input.
    pub async fn read_from<R: AsyncRead + Unpin>(
        &mut self,
        reader: &mut R,
    ) -> std::io::Result<usize> {
        let read = reader.read_buf(&mut self.bytes).await;
        // `prepare` left spare capacity, so the read did not grow the buffer; keep the
        // charge honest even if a future caller forgets to prepare.
        self.sync_charge();
        read
    }

    /// The next complete command line, if the buffer holds one. A line longer than
    /// [`MAX_COMMAND_LINE`] is dropped as it arrives and reported once, when it ends.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        let rest = &self.bytes[self.pos..];
        let Some(lf) = memchr(b'\n', rest) else {
            if rest.len() >= MAX_COMMAND_LINE {
                // Too long to be a command: drop what we have, answer when it ends.
                self.discarding_line = true;
                self.pos = self.bytes.len();
            }
            return None;
        };
        let start = self.pos;
        let line_len = lf + 1;
        self.pos += line_len;
        if std::mem::take(&mut self.discarding_line) || line_len > MAX_COMMAND_LINE {
            return Some(Line::TooLong);
        }
        Some(Line::Command(&self.bytes[start..start + line_len]))
    }

    fn sync_charge(&mut self) {
        let capacity = self.bytes.capacity() as u64;
        let charged = self.charge.bytes();
        if capacity > charged {
            self.charge.grow(capacity - charged);
        } else {
            self.charge.shrink(charged - capacity);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer() -> (InputBuffer, Arc<MemoryBudget>) {
        let budget = Arc::new(MemoryBudget::new(u64::MAX / 2, 0.75, 0.9));
        (InputBuffer::new(budget.clone()), budget)
    }

    /// Feeds `chunks` through the buffer as reads would, collecting the framed lines.
    fn frame(chunks: &[&[u8]]) -> Vec<Option<Vec<u8>>> {
        let (mut input, _) = buffer();
        let mut lines = Vec::new();
        for chunk in chunks {
            let mut chunk = *chunk;
            while !chunk.is_empty() {
                input.prepare(Expecting::Commands);
                let n = input.extend_from_slice(chunk);
                chunk = &chunk[n..];
                while let Some(line) = input.next_line() {
                    lines.push(match line {
                        Line::Command(bytes) => Some(bytes.to_vec()),
                        Line::TooLong => None,
                    });
                }
            }
        }
        lines
    }

    #[test]
    fn pipelined_lines_are_framed_in_order_and_partial_ones_wait() {
        let lines = frame(&[b"NOOP\r\nRSET\r\nQU", b"IT\r\n"]);
        assert_eq!(
            lines,
            vec![
                Some(b"NOOP\r\n".to_vec()),
                Some(b"RSET\r\n".to_vec()),
                Some(b"QUIT\r\n".to_vec()),
            ]
        );
    }

    #[test]
    fn a_512_octet_line_is_a_command_and_513_is_too_long() {
        let longest = [vec![b'a'; 510], b"\r\n".to_vec()].concat();
        let too_long = [vec![b'a'; 511], b"\r\n".to_vec()].concat();
        assert_eq!(frame(&[&longest]), vec![Some(longest.clone())]);
        assert_eq!(frame(&[&too_long]), vec![None]);
    }

    #[test]
    fn a_huge_line_in_pieces_is_reported_once_and_the_next_line_is_framed() {
        let huge = vec![b'x'; 20_000];
        assert_eq!(
            frame(&[&huge, &huge, b"\r\nNOOP\r\n"]),
            vec![None, Some(b"NOOP\r\n".to_vec())]
        );
    }

    #[test]
    fn the_charge_follows_the_capacity_and_is_released_on_drop() {
        let (mut input, budget) = buffer();
        input.prepare(Expecting::MessageContent);
        assert!(input.charged() >= DATA_BUFFER as u64);
        assert_eq!(budget.accounted(), input.charged());
        input.prepare(Expecting::Commands);
        assert!(input.charged() < DATA_BUFFER as u64);
        assert_eq!(budget.accounted(), input.charged());
        drop(input);
        assert_eq!(budget.accounted(), 0);
    }

    #[test]
    fn the_transport_charge_counts_with_the_buffer_and_discarding_empties_it() {
        let (mut input, budget) = buffer();
        input.prepare(Expecting::Commands);
        let buffer_charge = input.charged();
        input.charge_transport(10_000);
        assert_eq!(input.charged(), buffer_charge + 10_000);
        input.charge_transport(3_000);
        assert_eq!(budget.accounted(), buffer_charge + 3_000);
        let _ = input.extend_from_slice(b"STARTTLS\r\nMAIL FROM:<a@b>\r\n");
        assert!(input.next_line().is_some());
        assert_eq!(input.discard_pending(), 17);
        assert_eq!(input.next_line(), None);
        drop(input);
        assert_eq!(budget.accounted(), 0);
    }

    #[test]
    fn a_fill_takes_at_most_the_spare_capacity() {
        let (mut input, _) = buffer();
        input.prepare(Expecting::Commands);
        let spare = input.spare_capacity();
        assert!(spare >= COMMAND_BUFFER);
        assert_eq!(input.extend_from_slice(&vec![b'a'; spare + 10]), spare);
        assert_eq!(input.spare_capacity(), 0);
    }
}
