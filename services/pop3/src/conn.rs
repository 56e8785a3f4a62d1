//! The connection driver: the only part of POP3 that touches a socket.
//!
//! It frames lines under `pop3.max_line_length` ([`LineStream`]), applies the autologout
//! timer (`pop3.command_timeout_secs`, RFC 1939 §3: at least ten minutes, counted from the
//! last command), renews the maildrop lease while the session lives, performs the STLS
//! upgrade, and stops an idle session when the server shuts down. It is generic over the
//! stream so tests drive it through an in-memory pipe.

use crate::session::{Next, Session, LEASE_RENEW_EVERY};
use mailfleet_core::framing::{LineRead, LineStream};
use mailfleet_core::net::{tls_handshake, Io};
use mailfleet_core::shutdown::Shutdown;
use std::time::Duration;
use tokio::time::{interval_at, Instant, MissedTickBehavior};
use tokio_rustls::TlsAcceptor;

/// Framing limits and timeouts.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    pub max_line: usize,
    /// The autologout timer.
    pub command_timeout: Duration,
    pub tls_handshake_timeout: Duration,
}

enum Event {
    Read(LineRead),
    LeaseLost,
    Shutdown,
}

/// Runs one POP3 session to its end. `tls` is the acceptor used for STLS.
pub async fn serve_connection(
    io: Box<dyn Io>,
    mut session: Session,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut conn = LineStream::new(io, limits.max_line);
    conn.queue(&session.greeting());
    let result = drive(&mut conn, &mut session, limits, tls, &mut shutdown).await;
    // However the session ended, it releases the maildrop; only QUIT has deleted anything.
    session.finish().await;
    result
}

async fn drive(
    conn: &mut LineStream,
    session: &mut Session,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    shutdown: &mut Shutdown,
) -> std::io::Result<()> {
    conn.flush().await?;
    let mut renew = interval_at(Instant::now() + LEASE_RENEW_EVERY, LEASE_RENEW_EVERY);
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let deadline = Instant::now() + limits.command_timeout;
        let event = loop {
            let idle = conn.buffered() == 0;
            tokio::select! {
                r = conn.read_line(deadline) => break Event::Read(r),
                _ = renew.tick(), if session.holds_lease() => {
                    if !session.renew_lease().await {
                        break Event::LeaseLost;
                    }
                }
                _ = shutdown.wait(), if idle => break Event::Shutdown,
            }
        };
        let response = match event {
            Event::Read(LineRead::Line(line)) => session.line(&line).await,
            Event::Read(LineRead::TooLong) => session.line_too_long(),
            Event::Read(LineRead::Eof) => return Ok(()),
            Event::Read(LineRead::Timeout) => {
                conn.queue(&session.timed_out());
                conn.close().await;
                return Ok(());
            }
            Event::LeaseLost => {
                conn.queue(&session.lease_lost());
                conn.close().await;
                return Ok(());
            }
            Event::Shutdown => {
                conn.queue(&session.shutting_down());
                conn.close().await;
                return Ok(());
            }
        };
        conn.queue(&response.data);
        match response.next {
            Next::Command => conn.flush_if_idle().await?,
            Next::Close => {
                conn.close().await;
                return Ok(());
            }
            Next::StartTls => {
                conn.flush().await?;
                let Some(acceptor) = tls.clone() else {
                    return Ok(());
                };
                let io = conn.take_for_upgrade();
                let Some((io, desc)) = tls_handshake(
                    &acceptor,
                    io,
                    limits.tls_handshake_timeout,
                    mailfleet_telemetry::Protocol::Pop3,
                )
                .await
                else {
                    return Ok(());
                };
                conn.upgraded(io);
                session.tls_established(desc);
            }
        }
    }
}
