//! Line framing for line-based protocols (POP3, SMTP submission and inbound): a read
//! buffer over an [`Io`] stream that yields one line at a time under a length cap.
//!
//! - A line longer than the cap is read and thrown away up to its LF, keeping at most one
//!   read's worth in memory however long it is, and reported as [`LineRead::TooLong`].
//! - Reads are bounded by a deadline, not per read, so a client trickling one byte a
//!   minute cannot hold a session forever.
//! - [`LineStream::read_line`] is cancel-safe: bytes already read stay in the buffer and a
//!   half-discarded line stays marked, so it can sit in a `tokio::select!` beside timers
//!   (lease renewal) and the shutdown signal.

use crate::net::{placeholder_io, Io};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Size of each socket read.
pub const READ_CHUNK: usize = 16 * 1024;

/// Queued output past which replies are written before the next command is read, even
/// while pipelined commands wait: the replies to a pipeline are grouped into writes of
/// about this size, and a client that sends commands without reading the answers is
/// served no further than its socket takes (issue 9: 400 pipelined `RETR` of a 1 MB
/// message once grew the server by 406 MiB).
pub const FLUSH_AT: usize = 64 * 1024;

/// How long one flush may wait for a client that does not read, by default: a peer that
/// has not taken a reply in this long is gone or hostile, and its connection is dropped.
pub const DEFAULT_WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// One framing result.
#[derive(Debug, PartialEq, Eq)]
pub enum LineRead {
    /// A line without its CRLF (or bare LF).
    Line(Vec<u8>),
    /// A line over the cap was read and discarded.
    TooLong,
    /// The peer closed the connection (or it failed).
    Eof,
    /// The deadline passed.
    Timeout,
}

/// A buffered stream read by lines and written by whole replies.
pub struct LineStream {
    io: Box<dyn Io>,
    buf: Vec<u8>,
    out: Vec<u8>,
    max_line: usize,
    /// In the middle of throwing away an over-long line.
    discarding: bool,
    /// Longest a flush may wait for the peer to take the bytes.
    write_timeout: std::time::Duration,
    /// Largest amount of output ever queued at once (for tests and diagnostics).
    out_high_water: usize,
}

impl LineStream {
    /// `max_line` counts the line end.
    pub fn new(io: Box<dyn Io>, max_line: usize) -> Self {
        Self {
            io,
            buf: Vec::with_capacity(READ_CHUNK),
            out: Vec::with_capacity(1024),
            max_line: max_line.max(3),
            discarding: false,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            out_high_water: 0,
        }
    }

    /// Sets how long a flush may wait for the peer to read.
    pub fn with_write_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.write_timeout = timeout;
        self
    }

    /// The most output that was ever queued at once: bounded by [`FLUSH_AT`] plus one
    /// reply, whatever the client pipelines.
    pub fn out_high_water(&self) -> usize {
        self.out_high_water
    }

    /// Bytes received but not yet consumed (pipelined commands).
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Reads more bytes; `Some(false)` on EOF or error, `None` when the deadline passed.
    async fn fill(&mut self, deadline: Instant) -> Option<bool> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
        match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => Some(false),
            Ok(Ok(_)) => Some(true),
            Err(_) => None,
        }
    }

    /// The next line, before `deadline`.
    pub async fn read_line(&mut self, deadline: Instant) -> LineRead {
        loop {
            if self.discarding {
                match self.buf.iter().position(|b| *b == b'\n') {
                    Some(pos) => {
                        self.buf.drain(..=pos);
                        self.discarding = false;
                        return LineRead::TooLong;
                    }
                    None => self.buf.clear(),
                }
            } else {
                let window = self.buf.len().min(self.max_line);
                if let Some(pos) = self.buf[..window].iter().position(|b| *b == b'\n') {
                    let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                    return LineRead::Line(line);
                }
                if self.buf.len() >= self.max_line {
                    self.discarding = true;
                    continue;
                }
            }
            match self.fill(deadline).await {
                Some(true) => {}
                Some(false) => return LineRead::Eof,
                None => return LineRead::Timeout,
            }
        }
    }

    /// Queues bytes to send.
    pub fn queue(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
        self.out_high_water = self.out_high_water.max(self.out.len());
    }

    /// Sends what is queued, within the write timeout (`TimedOut` past it).
    pub async fn flush(&mut self) -> std::io::Result<()> {
        let write = async {
            if !self.out.is_empty() {
                self.io.write_all(&self.out).await?;
                self.out.clear();
                // Give a large reply's memory back rather than keep it per connection.
                if self.out.capacity() > FLUSH_AT {
                    self.out.shrink_to(1024);
                }
            }
            self.io.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read its replies in time",
            )),
        }
    }

    /// Sends what is queued when the client has nothing more buffered, so replies to
    /// pipelined commands leave together (RFC 2920 §3.2, RFC 2449 PIPELINING), or when
    /// [`FLUSH_AT`] bytes are waiting: the next command is then read only once the client
    /// has taken these replies, so output never piles up behind a client that does not
    /// read (the socket's own buffer is the backpressure).
    pub async fn flush_if_idle(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() || self.out.len() >= FLUSH_AT {
            self.flush().await
        } else {
            Ok(())
        }
    }

    /// Flushes and closes the write side.
    pub async fn close(&mut self) {
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
    }

    /// Takes the stream for a TLS upgrade. Anything the client pipelined after the
    /// upgrade command came in plaintext and is thrown away, never read as if it had come
    /// over TLS (the CVE-2011-0411 class of bugs).
    pub fn take_for_upgrade(&mut self) -> Box<dyn Io> {
        self.buf.clear();
        self.discarding = false;
        std::mem::replace(&mut self.io, placeholder_io())
    }

    /// Puts the upgraded stream in place.
    pub fn upgraded(&mut self, io: Box<dyn Io>) {
        self.io = io;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[tokio::test]
    async fn lines_long_lines_and_eof() {
        let (client, server) = tokio::io::duplex(64 * 1024);
        let mut s = LineStream::new(Box::new(server), 16);
        let mut c = client;
        let long = vec![b'x'; 100_000];
        let writer = tokio::spawn(async move {
            c.write_all(b"one\r\ntwo\n").await.expect("w");
            c.write_all(&long).await.expect("w");
            c.write_all(b"\r\nthree\r\npartial").await.expect("w");
        });
        assert_eq!(s.read_line(far()).await, LineRead::Line(b"one".to_vec()));
        assert_eq!(s.read_line(far()).await, LineRead::Line(b"two".to_vec()));
        assert_eq!(s.read_line(far()).await, LineRead::TooLong);
        assert_eq!(s.read_line(far()).await, LineRead::Line(b"three".to_vec()));
        writer.await.expect("writer");
        assert_eq!(s.read_line(far()).await, LineRead::Eof);
    }

    /// Issue 9 item 4: replies to pipelined commands were queued until the input was
    /// drained, so a client pipelining commands and reading nothing grew the server
    /// without bound. Now output is written once it passes `FLUSH_AT`, and the next
    /// command is not read until the client takes it.
    #[tokio::test]
    async fn pipelined_replies_wait_for_a_client_that_does_not_read() {
        let (mut client, server) = tokio::io::duplex(8 * 1024);
        let mut s =
            LineStream::new(Box::new(server), 512).with_write_timeout(Duration::from_millis(300));
        let commands = b"RETR 1\r\n".repeat(400);
        let writer = tokio::spawn(async move {
            // The duplex buffer fills once the server stops reading; the write then waits.
            let _ = client.write_all(&commands).await;
            client
        });
        let reply = vec![b'x'; 100 * 1024];
        let mut served = 0;
        let outcome = loop {
            match s.read_line(far()).await {
                LineRead::Line(_) => {}
                other => break Err(format!("{other:?}")),
            }
            served += 1;
            s.queue(&reply);
            if let Err(e) = s.flush_if_idle().await {
                break Ok(e);
            }
        };
        let err = outcome.expect("the flush gives up on a client that does not read");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        assert_eq!(
            served, 1,
            "no second command is read while the first reply waits"
        );
        assert!(s.out_high_water() <= FLUSH_AT + reply.len());
        writer.abort();
    }

    #[tokio::test]
    async fn pipelined_small_replies_still_leave_together() {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut s = LineStream::new(Box::new(server), 512);
        client
            .write_all(b"NOOP\r\nNOOP\r\nNOOP\r\n")
            .await
            .expect("w");
        for _ in 0..3 {
            assert!(matches!(s.read_line(far()).await, LineRead::Line(_)));
            s.queue(b"+OK\r\n");
            s.flush_if_idle().await.expect("flush");
        }
        let mut got = [0u8; 15];
        client.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"+OK\r\n+OK\r\n+OK\r\n");
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_bounds_a_trickle() {
        let (mut client, server) = tokio::io::duplex(1024);
        let mut s = LineStream::new(Box::new(server), 512);
        let deadline = Instant::now() + Duration::from_secs(10);
        let trickle = tokio::spawn(async move {
            for _ in 0..100 {
                if client.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        assert_eq!(s.read_line(deadline).await, LineRead::Timeout);
        trickle.abort();
    }
}
