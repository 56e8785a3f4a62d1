//! The connection driver: the only part of ManageSieve that touches a socket.
//!
//! It feeds received bytes to the [`Framer`] (line and literal limits), applies the idle
//! timer (`managesieve.command_timeout_secs`, counted from the end of the last command to
//! the end of the next, so a client trickling bytes cannot hold a session), performs the
//! STARTTLS upgrade, and ends an idle session when the server shuts down. It is generic
//! over the stream so tests drive it through an in-memory pipe.

use crate::proto::{FrameLimits, Framer};
use crate::session::{Next, Session};
use mailfleet_core::framing::DEFAULT_WRITE_TIMEOUT;
use mailfleet_core::net::{placeholder_io, tls_handshake, Io};
use mailfleet_core::shutdown::Shutdown;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// Size of each socket read.
const READ_CHUNK: usize = 8192;

/// Framing limits and timeouts.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Longest command line outside literals, line end included.
    pub max_line: usize,
    /// Time allowed for each command.
    pub command_timeout: Duration,
    pub tls_handshake_timeout: Duration,
}

enum Event {
    Read(usize),
    Eof,
    Timeout,
    Shutdown,
}

async fn write(io: &mut Box<dyn Io>, data: &[u8]) -> std::io::Result<()> {
    let w = async {
        io.write_all(data).await?;
        io.flush().await
    };
    match tokio::time::timeout(DEFAULT_WRITE_TIMEOUT, w).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the client did not read its replies in time",
        )),
    }
}

async fn close(io: &mut Box<dyn Io>, data: &[u8]) {
    let _ = write(io, data).await;
    let _ = io.shutdown().await;
}

/// Runs one ManageSieve session to its end. `tls` is the acceptor used for STARTTLS.
pub async fn serve_connection(
    mut io: Box<dyn Io>,
    mut session: Session,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut framer = Framer::new(FrameLimits {
        max_line: limits.max_line,
        max_literal: session.max_literal(),
    });
    write(&mut io, &session.greeting()).await?;
    let mut chunk = vec![0u8; READ_CHUNK];
    loop {
        let deadline = Instant::now() + limits.command_timeout;
        let frame = loop {
            framer.set_max_literal(session.max_literal());
            if let Some(f) = framer.next_frame() {
                break f;
            }
            let idle = framer.buffered() == 0;
            let event = tokio::select! {
                r = tokio::time::timeout_at(deadline, io.read(&mut chunk)) => match r {
                    Ok(Ok(0)) | Ok(Err(_)) => Event::Eof,
                    Ok(Ok(n)) => Event::Read(n),
                    Err(_) => Event::Timeout,
                },
                _ = shutdown.wait(), if idle => Event::Shutdown,
            };
            match event {
                Event::Read(n) => framer.push(&chunk[..n]),
                Event::Eof => return Ok(()),
                Event::Timeout => {
                    close(&mut io, &session.timed_out()).await;
                    return Ok(());
                }
                Event::Shutdown => {
                    close(&mut io, &session.shutting_down()).await;
                    return Ok(());
                }
            }
        };
        let response = session.frame(frame).await;
        match response.next {
            Next::Command => {
                if !response.data.is_empty() {
                    write(&mut io, &response.data).await?;
                }
            }
            Next::Close => {
                close(&mut io, &response.data).await;
                return Ok(());
            }
            Next::StartTls => {
                write(&mut io, &response.data).await?;
                let Some(acceptor) = tls.clone() else {
                    return Ok(());
                };
                // Whatever was pipelined behind STARTTLS came in plaintext: dropped.
                framer.clear();
                let plain = std::mem::replace(&mut io, placeholder_io());
                let Some((upgraded, desc)) = tls_handshake(
                    &acceptor,
                    plain,
                    limits.tls_handshake_timeout,
                    mailfleet_telemetry::Protocol::ManageSieve,
                )
                .await
                else {
                    return Ok(());
                };
                io = upgraded;
                let caps = session.tls_established(desc);
                write(&mut io, &caps).await?;
            }
        }
    }
}
