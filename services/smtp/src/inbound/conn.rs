//! The connection driver: the only part of inbound SMTP that touches a socket.
//!
//! It frames bytes into command lines (with a length cap), DATA (through
//! [`DataReceiver`]) and BDAT chunks, applies the RFC 5321 §4.5.3.2 timeouts, performs
//! the STARTTLS upgrade, and hands each event to the [`Session`]. It is generic over the
//! stream so tests drive it through an in-memory pipe.
//!
//! Message bytes are charged to the in-flight budget through the session before they are
//! kept: for DATA, before each block of the read buffer is decoded; for BDAT, the session
//! reserves the whole chunk before it is read, and the chunk is then read from the socket
//! straight into its own buffer (not through the read buffer).

use super::session::{Next, Response, Session};
use crate::proto::{DataEnd, DataReceiver, Reply};
use bytes::{Buf, BufMut, BytesMut};
use mailfleet_core::shutdown::Shutdown;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

pub use mailfleet_core::net::Io;

/// Framing limits and timeouts.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_line: usize,
    pub max_message_size: usize,
    /// The whole of one command line must arrive within this (RFC 5321 §4.5.3.2.7's
    /// 5 minutes), however the client spreads its bytes: a deadline, not a per-read wait.
    pub command_timeout: Duration,
    /// Longest wait for each block of DATA/BDAT bytes (§4.5.3.2.5's 3 minutes).
    pub data_timeout: Duration,
    /// The whole message (DATA up to its final dot, or one BDAT chunk) must arrive within
    /// this, so a sender trickling a byte every few minutes cannot hold a slot forever.
    pub data_deadline: Duration,
    /// How long a TLS handshake may take.
    pub tls_handshake_timeout: Duration,
}

/// Size of each socket read.
const READ_CHUNK: usize = 16 * 1024;

/// Room left in a message buffer reserved to the declared size for the trace headers
/// cleanup puts on top, so adding them does not reallocate (and copy) the message.
const TRACE_HEADROOM: usize = 2048;

enum LineRead {
    Line(Vec<u8>),
    TooLong,
    Eof,
    Timeout,
    Shutdown,
}

struct Conn {
    io: Box<dyn Io>,
    buf: BytesMut,
    out: Vec<u8>,
    limits: ConnLimits,
}

impl Conn {
    /// Reads more bytes into the buffer before `deadline`; Ok(false) on EOF.
    async fn fill(&mut self, deadline: Instant) -> Result<bool, ()> {
        self.buf.reserve(READ_CHUNK);
        match tokio::time::timeout_at(deadline, self.io.read_buf(&mut self.buf)).await {
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(_)) => Ok(false),
            Err(_) => Err(()),
        }
    }

    async fn read_line(&mut self, shutdown: &mut Shutdown, idle_ok: bool) -> LineRead {
        let deadline = Instant::now() + self.limits.command_timeout;
        loop {
            let window = self.buf.len().min(self.limits.max_line);
            if let Some(pos) = self.buf[..window].iter().position(|b| *b == b'\n') {
                let mut line = self.buf.split_to(pos + 1).to_vec();
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                return LineRead::Line(line);
            }
            if self.buf.len() >= self.limits.max_line {
                return self.discard_line(deadline).await;
            }
            let wait_for_shutdown = idle_ok && self.buf.is_empty();
            let fill = self.fill(deadline);
            let filled = if wait_for_shutdown {
                tokio::select! {
                    r = fill => r,
                    _ = shutdown.wait() => return LineRead::Shutdown,
                }
            } else {
                fill.await
            };
            match filled {
                Ok(true) => {}
                Ok(false) => return LineRead::Eof,
                Err(()) => return LineRead::Timeout,
            }
        }
    }

    /// Throws away an over-long line up to and including its LF, keeping no more than one
    /// read's worth in memory however long the line is.
    async fn discard_line(&mut self, deadline: Instant) -> LineRead {
        loop {
            if let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
                self.buf.advance(pos + 1);
                return LineRead::TooLong;
            }
            self.buf.clear();
            match self.fill(deadline).await {
                Ok(true) => {}
                Ok(false) => return LineRead::Eof,
                Err(()) => return LineRead::Timeout,
            }
        }
    }

    /// The earlier of the next block's wait and the whole message's deadline.
    fn data_wait(&self, whole: Instant) -> Instant {
        (Instant::now() + self.limits.data_timeout).min(whole)
    }

    /// Reads until `<CRLF>.<CRLF>`. Before each block is decoded, the session is asked to
    /// cover what the message would then hold (decoding never produces more bytes than it
    /// reads); when it cannot, the message is dropped and the rest only drained.
    async fn read_data(&mut self, session: &mut Session) -> Option<DataEnd> {
        let max = self.limits.max_message_size;
        let hint = session.message_size_hint();
        let capacity = if hint > 0 {
            hint.saturating_add(TRACE_HEADROOM)
        } else {
            max.min(64 * 1024)
        };
        let mut rx = DataReceiver::with_capacity(max, capacity);
        let whole = Instant::now() + self.limits.data_deadline;
        loop {
            if !self.buf.is_empty() {
                if !rx.is_discarding() {
                    let upto = rx.len().saturating_add(self.buf.len()).min(max);
                    if !session.reserve_message_bytes(upto) {
                        rx.discard();
                    }
                }
                let (used, end) = rx.feed(&self.buf);
                self.buf.advance(used);
                if let Some(end) = end {
                    if rx.saw_bare_line_end {
                        tracing::info!("message contained bare CR or LF; normalised");
                    }
                    return Some(end);
                }
            }
            match self.fill(self.data_wait(whole)).await {
                Ok(true) => {}
                _ => return None,
            }
        }
    }

    /// Reads exactly `size` octets, keeping them only if `keep`. A kept chunk has been
    /// checked against the size limit and reserved by the session, so its buffer is
    /// allocated whole and filled from the socket directly.
    /// The last chunk gets room for the trace headers too (it is the whole message when
    /// the client sends one chunk).
    async fn read_chunk(&mut self, size: u64, keep: bool, last: bool) -> Option<Option<BytesMut>> {
        let mut remaining = size;
        let mut data = keep.then(|| {
            let size = (size as usize).min(self.limits.max_message_size);
            BytesMut::with_capacity(if last { size + TRACE_HEADROOM } else { size })
        });
        let whole = Instant::now() + self.limits.data_deadline;
        loop {
            let take = (self.buf.len() as u64).min(remaining) as usize;
            if take > 0 {
                if let Some(d) = data.as_mut() {
                    d.extend_from_slice(&self.buf[..take]);
                }
                self.buf.advance(take);
                remaining -= take as u64;
            }
            if remaining == 0 {
                return Some(data);
            }
            let deadline = self.data_wait(whole);
            match data.as_mut() {
                Some(d) => {
                    // At most the rest of the chunk, so pipelined commands after it stay
                    // on the socket for the read buffer.
                    let want = usize::try_from(remaining).unwrap_or(usize::MAX);
                    let mut limited = d.limit(want);
                    let read = self.io.read_buf(&mut limited);
                    match tokio::time::timeout_at(deadline, read).await {
                        Ok(Ok(n)) if n > 0 => remaining -= n as u64,
                        _ => return None,
                    }
                }
                None => match self.fill(deadline).await {
                    Ok(true) => {}
                    _ => return None,
                },
            }
        }
    }

    fn queue(&mut self, replies: &[Reply]) {
        for r in replies {
            self.out.extend_from_slice(r.to_wire().as_bytes());
        }
    }

    /// Writes the queued replies, giving up on a client that does not read them within
    /// the command timeout.
    async fn flush(&mut self) -> std::io::Result<()> {
        let write = async {
            if !self.out.is_empty() {
                self.io.write_all(&self.out).await?;
                self.out.clear();
            }
            self.io.flush().await
        };
        match tokio::time::timeout(self.limits.command_timeout, write).await {
            Ok(r) => r,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "the client did not read its replies in time",
            )),
        }
    }
}

/// Runs one SMTP session to its end. `tls` is the acceptor used for STARTTLS.
pub async fn serve_connection(
    io: Box<dyn Io>,
    mut session: Session,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut conn = Conn {
        io,
        buf: BytesMut::with_capacity(READ_CHUNK),
        out: Vec::with_capacity(1024),
        limits,
    };
    conn.queue(&[session.greeting()]);
    conn.flush().await?;
    loop {
        let idle = !session.in_transaction();
        let response = match conn.read_line(&mut shutdown, idle).await {
            LineRead::Line(line) => session.command_line(&line).await,
            LineRead::TooLong => session.line_too_long(),
            LineRead::Eof => return Ok(()),
            LineRead::Timeout => {
                conn.queue(&[Reply::timeout()]);
                return conn.flush().await;
            }
            LineRead::Shutdown => {
                conn.queue(&[Reply::shutting_down()]);
                return conn.flush().await;
            }
        };
        let mut response: Response = response;
        // Events that complete a command (DATA content, BDAT chunks) may chain.
        loop {
            conn.queue(&response.replies);
            match response.next {
                Next::Command => {
                    // PIPELINING: replies to a group of commands go out together, once
                    // the client's buffered input is used up (RFC 2920 §3.2), or once
                    // they pass FLUSH_AT: a client that pipelines without reading is
                    // then not read further until it takes them.
                    if conn.buf.is_empty() || conn.out.len() >= mailfleet_core::framing::FLUSH_AT {
                        conn.flush().await?;
                    }
                    break;
                }
                Next::Close => {
                    conn.flush().await?;
                    let _ = conn.io.shutdown().await;
                    return Ok(());
                }
                Next::Data => {
                    conn.flush().await?;
                    let Some(end) = conn.read_data(&mut session).await else {
                        // Timeout or disconnect mid-message: nothing is kept.
                        conn.queue(&[Reply::timeout()]);
                        let _ = conn.flush().await;
                        return Ok(());
                    };
                    response = session.data_end(end).await;
                }
                Next::Bdat { size, last, keep } => {
                    let Some(chunk) = conn.read_chunk(size, keep, last).await else {
                        conn.queue(&[Reply::timeout()]);
                        let _ = conn.flush().await;
                        return Ok(());
                    };
                    response = session.bdat_chunk(chunk, last).await;
                }
                Next::StartTls => {
                    conn.flush().await?;
                    let Some(acceptor) = tls.clone() else {
                        return Ok(());
                    };
                    // Anything pipelined after STARTTLS was sent in plaintext and must not
                    // be read as if it came over TLS (the CVE-2011-0411 class of bugs).
                    conn.buf.clear();
                    let io = std::mem::replace(&mut conn.io, mailfleet_core::net::placeholder_io());
                    let Some((io, desc)) = mailfleet_core::net::tls_handshake(
                        &acceptor,
                        io,
                        limits.tls_handshake_timeout,
                        session.metrics_protocol(),
                    )
                    .await
                    else {
                        return Ok(());
                    };
                    conn.io = io;
                    session.tls_established(desc);
                    break;
                }
            }
        }
    }
}
