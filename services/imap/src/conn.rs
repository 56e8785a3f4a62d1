//! The connection driver: the only part of the IMAP service that touches a socket.
//!
//! Framing is imap-codec's [`Fragmentizer`]: it splits input into lines and literals under
//! a maximum message size, so a client can never make the server buffer more than one
//! bounded command. The driver answers synchronizing literals with `+` (or refuses them when
//! too large, before the client sends them), runs the STARTTLS upgrade, the AUTHENTICATE
//! continuation and IDLE, and applies the inactivity timeout.

use crate::response::{self, Resp};
use crate::session::{Next, Session};
use imap_codec::fragmentizer::{
    DecodeMessageError, FragmentInfo, Fragmentizer, LiteralAnnouncement,
};
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::{LiteralMode, Tag};
use imap_codec::imap_types::IntoStatic;
use imap_codec::{AuthenticateDataCodec, CommandCodec, IdleDoneCodec};
use mailfleet_core::net::{placeholder_io, tls_handshake, Io};
use mailfleet_core::shutdown::Shutdown;
use mailfleet_telemetry::{CommandId, CommandResult, ImapStatus};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;

/// Limits of the framing layer.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Largest literal accepted (APPEND); larger synchronizing literals are refused before
    /// the client sends them.
    pub max_literal: u32,
    /// Largest command, literals included.
    pub max_command: u32,
    /// Syntax errors tolerated before the connection is closed.
    pub max_errors: u32,
    pub tls_handshake_timeout: Duration,
    /// How often IDLE re-checks the mailbox even without a notification (a safety net for
    /// lost notifications; they carry no data, so a re-check is always correct).
    pub idle_recheck: Duration,
}

const READ_CHUNK: usize = 16 * 1024;

/// The read buffer between commands. Commands are short; a read that fills this grows the
/// buffer to [`READ_CHUNK`] for the rest of the command (a literal is coming), and it
/// shrinks back once the command is complete, so an idle session holds 1 KiB, not 16
/// (issue 11: idle sessions of at most 8 KiB).
const SMALL_READ: usize = 1024;

/// Largest literal accepted before login. RFC 7888 §4 explains why a server should not
/// invite large literals from a client it does not know yet; 4096 is LITERAL-'s bound, and
/// holds any user name, password or SASL response.
pub const PREAUTH_MAX_LITERAL: u32 = 4096;
/// Largest command before login, literals included; longer ones close the connection.
pub const PREAUTH_MAX_COMMAND: usize = 8 * 1024;
/// Bad commands (tagged `BAD`, including syntax errors) tolerated before login; the one that
/// reaches it closes the connection (Dovecot's login processes allow 3 too).
pub const PREAUTH_MAX_BAD_COMMANDS: u32 = 3;
/// Time allowed for one command line and its literals from its first byte, whatever the
/// per-read inactivity timeout: a client sending a byte at a time cannot hold a connection
/// slot forever.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);
/// Each accepted literal extends the command's deadline at this rate (bytes per second),
/// so a 50 MiB APPEND gets about 53 minutes and a trickle still ends.
pub const MIN_LITERAL_RATE: u64 = 16 * 1024;

enum Input {
    /// A complete message is in the fragmentizer.
    Message,
    Eof,
    Timeout,
    /// The command was not complete by its deadline.
    Deadline,
    Shutdown,
    /// The connection must close; the reason was already sent.
    Close,
    /// A change notification arrived for NOTIFY while no command was being read; `true`
    /// when the coordinator is gone.
    Notify(bool),
}

/// Whether the command being framed is APPEND (or REPLACE / UID REPLACE, RFC 8508), the
/// only commands whose literal may be as large as a message. Looks at the verb after the
/// tag on the first line.
fn is_append(message: &[u8]) -> bool {
    let verb = verb_of(message);
    verb.eq_ignore_ascii_case(b"APPEND") || verb.eq_ignore_ascii_case(b"REPLACE")
}

/// The command word of a framed message: the word after the tag, or the one after `UID`
/// (`UID FETCH` is `FETCH`); empty when there is none.
fn verb_of(message: &[u8]) -> &[u8] {
    let mut words = message.split(|b| *b == b' ' || *b == b'\r' || *b == b'\n');
    let _tag = words.next();
    let verb = words.next().unwrap_or_default();
    if verb.eq_ignore_ascii_case(b"UID") {
        words.next().unwrap_or_default()
    } else {
        verb
    }
}

struct Conn {
    io: Box<dyn Io>,
    frag: Fragmentizer,
    limits: ConnLimits,
    buf: Vec<u8>,
    /// COMPRESS=DEFLATE (RFC 4978) once negotiated: both directions from then on. Inside
    /// TLS when TLS is in use, since `io` is the TLS stream.
    deflate: Option<Box<crate::deflate::Deflate>>,
    /// Mailbox names in responses are encoded in modified UTF-7 (the session did not
    /// enable UTF8=ACCEPT), or else sent as quoted UTF-8; see [`crate::mutf7`].
    mutf7: bool,
    /// The command being answered and when it arrived: counted when its tagged status is
    /// written (`mailfleet_commands_total`, `mailfleet_command_duration_seconds`).
    pending: Option<(CommandId, std::time::Instant)>,
    /// The span of the command being answered (`imap.command`, a child of the session's
    /// span), closed with the tagged reply. Disabled unless traces are exported or the log
    /// level is `debug`.
    command_span: tracing::Span,
}

/// The command name of a framed message, for the metrics: the word after the tag, or the
/// one after `UID` (`UID FETCH` counts as `FETCH`). Resolved against the fixed table, so
/// whatever a client sends maps to a known name or `other`.
fn command_of(message: &[u8]) -> CommandId {
    mailfleet_telemetry::metrics()
        .imap
        .command_bytes(verb_of(message))
}

/// The status of a tagged completion among `r` (typed, or a raw line `tag OK ...`).
fn tagged_status(r: &Resp) -> Option<ImapStatus> {
    use imap_codec::imap_types::response::{Response, Status, StatusKind};
    let kind = match r {
        Resp::Typed(Response::Status(Status::Tagged(t))) => t.body.kind,
        Resp::Typed(_) => return None,
        Resp::Raw(bytes) => {
            let mut words = bytes.split(|b| *b == b' ' || *b == b'\r' || *b == b'\n');
            match words.next() {
                None | Some(b"*") | Some(b"+") | Some(b"") => return None,
                Some(_) => {}
            }
            match words.next().unwrap_or_default() {
                b"OK" => StatusKind::Ok,
                b"NO" => StatusKind::No,
                b"BAD" => StatusKind::Bad,
                _ => return None,
            }
        }
    };
    Some(match kind {
        StatusKind::Ok => ImapStatus::Ok,
        StatusKind::No => ImapStatus::No,
        StatusKind::Bad => ImapStatus::Bad,
    })
}

impl Conn {
    /// Counts the pending command with `status` (a reply without a tag ends it too).
    fn finish_command(&mut self, status: ImapStatus) {
        if let Some((cmd, started)) = self.pending.take() {
            mailfleet_telemetry::metrics()
                .imap
                .record(cmd, status, started.elapsed());
            let span = std::mem::replace(&mut self.command_span, tracing::Span::none());
            span.record("imap.status", status.label());
            if status != ImapStatus::Ok {
                span.record("otel.status_code", "ERROR");
            }
        }
    }

    async fn write(&mut self, responses: &[Resp]) -> std::io::Result<()> {
        if self.pending.is_some() {
            if let Some(status) = responses.iter().rev().find_map(tagged_status) {
                self.finish_command(status);
            }
        }
        let mut out = Vec::new();
        for r in responses {
            match crate::mutf7::response_out(r, self.mutf7) {
                Some(wire) => out.extend_from_slice(&response::encode(&wire)),
                None => out.extend_from_slice(&response::encode(r)),
            }
        }
        if !out.is_empty() {
            self.write_raw(&out).await?;
        }
        self.io.flush().await
    }

    /// Writes one batch; with COMPRESS, compressed and sync-flushed so the client can read
    /// all of it at once (RFC 4978 §4).
    async fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.deflate.as_mut() {
            Some(z) => {
                let packed = z.compress(bytes);
                self.io.write_all(&packed).await?;
            }
            None => self.io.write_all(bytes).await?,
        }
        self.io.flush().await
    }

    /// Largest command other than APPEND after login, literals included: the configured
    /// command size (`max_command` is that plus the APPEND limit).
    fn command_limit(&self) -> usize {
        self.limits
            .max_command
            .saturating_sub(self.limits.max_literal)
            .max(1024) as usize
    }

    /// Reads until a whole message (command line with its literals) is framed.
    ///
    /// Before login (`authenticated` false) literals are limited to [`PREAUTH_MAX_LITERAL`]
    /// and the command to [`PREAUTH_MAX_COMMAND`]; after it, APPEND literals to
    /// `max_literal` and every other command to `max_command - max_literal`. Every message
    /// must be complete by its deadline ([`COMMAND_DEADLINE`], extended per literal).
    async fn next_message(
        &mut self,
        timeout: Duration,
        shutdown: &mut Shutdown,
        idle: bool,
        authenticated: bool,
        mut wake: Option<&mut mailfleet_storage::Subscription>,
    ) -> std::io::Result<Input> {
        let mut deadline: Option<tokio::time::Instant> = (!self.frag.message_bytes().is_empty()
            && !self.frag.is_message_complete())
        .then(|| tokio::time::Instant::now() + COMMAND_DEADLINE);
        loop {
            let progress = self.frag.progress();
            if !authenticated && self.frag.message_bytes().len() > PREAUTH_MAX_COMMAND {
                self.write(&[response::bye("Command too long before login")])
                    .await?;
                return Ok(Input::Close);
            }
            if authenticated
                && self.frag.message_bytes().len() > self.command_limit()
                && !is_append(self.frag.message_bytes())
            {
                // Only APPEND may be as large as a message; anything else this long is
                // not a command a client sends, and is not buffered further.
                self.write(&[response::bye("Command too long")]).await?;
                return Ok(Input::Close);
            }
            match progress {
                Some(FragmentInfo::Line {
                    announcement: Some(LiteralAnnouncement { mode, length }),
                    ..
                }) => {
                    let allowed = if !authenticated {
                        PREAUTH_MAX_LITERAL
                    } else if is_append(self.frag.message_bytes()) {
                        // MULTIAPPEND (RFC 3502): all the messages of one command share
                        // the command limit; a literal that would pass it is refused
                        // before it is sent.
                        let used = self.frag.message_bytes().len() as u32;
                        self.limits
                            .max_literal
                            .min(self.limits.max_command.saturating_sub(used))
                    } else {
                        self.command_limit() as u32
                    };
                    if length > allowed {
                        match mode {
                            LiteralMode::Sync => {
                                // The client waits for our go-ahead: refuse and forget the
                                // command; the literal is never sent.
                                let tag = self
                                    .frag
                                    .decode_tag()
                                    .map(|t| t.into_static())
                                    .unwrap_or_else(|| Tag::unvalidated("*"));
                                self.frag.skip_message();
                                self.write(&[response::no(
                                    &tag,
                                    Some(imap_codec::imap_types::response::Code::TooBig),
                                    "Literal too large",
                                )])
                                .await?;
                            }
                            // Before login, a stranger's non-synchronizing literal is not
                            // read at all: its bytes are coming whatever we answer, so the
                            // connection closes (RFC 7888 §5, LITERAL-).
                            LiteralMode::NonSync if !authenticated => {
                                let tag = self
                                    .frag
                                    .decode_tag()
                                    .map(|t| t.into_static())
                                    .unwrap_or_else(|| Tag::unvalidated("*"));
                                self.write(&[
                                    response::bad_code(
                                        &tag,
                                        imap_codec::imap_types::response::Code::TooBig,
                                        "Literal too large before login",
                                    ),
                                    response::bye("Literal too large before login"),
                                ])
                                .await?;
                                return Ok(Input::Close);
                            }
                            // Non-synchronizing: the bytes are coming anyway; read and drop them.
                            LiteralMode::NonSync => self.frag.poison_message(),
                        }
                    } else {
                        if let Some(d) = deadline.as_mut() {
                            *d += Duration::from_secs(u64::from(length) / MIN_LITERAL_RATE);
                        }
                        if mode == LiteralMode::Sync {
                            self.write_raw(b"+ Ready for literal data\r\n").await?;
                        }
                    }
                }
                Some(_) => {
                    if self.frag.is_message_complete() {
                        if self.buf.len() > SMALL_READ {
                            self.buf = vec![0; SMALL_READ];
                        }
                        return Ok(Input::Message);
                    }
                }
                None => {
                    // With COMPRESS, input is inflated one chunk at a time, and only when
                    // the fragmentizer has used up the last one: a decompression bomb meets
                    // the limits above chunk by chunk (see `crate::deflate`).
                    if let Some(z) = self.deflate.as_mut() {
                        match z.inflate(&mut self.buf) {
                            Ok(0) => {}
                            Ok(n) => {
                                deadline.get_or_insert_with(|| {
                                    tokio::time::Instant::now() + COMMAND_DEADLINE
                                });
                                let chunk = self.buf[..n].to_vec();
                                self.frag.enqueue_bytes(&chunk);
                                continue;
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "COMPRESS input refused");
                                return Ok(Input::Eof);
                            }
                        }
                    }
                    let now = tokio::time::Instant::now();
                    let idle_end = now + timeout;
                    let until = deadline.map_or(idle_end, |d| d.min(idle_end));
                    let read = self.io.read(&mut self.buf);
                    // NOTIFY (RFC 5465): between commands, a change notification ends the
                    // wait so the session can report it; only the socket read is raced,
                    // and only while no command is partly read.
                    let between = self.frag.message_bytes().is_empty();
                    let woken = async {
                        match wake.as_deref_mut() {
                            Some(s) if between => s.next().await.is_none(),
                            _ => std::future::pending().await,
                        }
                    };
                    let n = if idle {
                        tokio::select! {
                            r = tokio::time::timeout_at(until, read) => r,
                            _ = shutdown.wait() => return Ok(Input::Shutdown),
                            gone = woken => return Ok(Input::Notify(gone)),
                        }
                    } else {
                        tokio::time::timeout_at(until, read).await
                    };
                    match n {
                        Ok(Ok(0)) | Ok(Err(_)) => return Ok(Input::Eof),
                        Ok(Ok(n)) => {
                            if let Some(z) = self.deflate.as_mut() {
                                // Inflated at the top of the loop; the deadline starts
                                // with the first inflated byte.
                                z.feed(&self.buf[..n]);
                                continue;
                            }
                            deadline.get_or_insert_with(|| {
                                tokio::time::Instant::now() + COMMAND_DEADLINE
                            });
                            self.frag.enqueue_bytes(&self.buf[..n]);
                            if n == self.buf.len() && n < READ_CHUNK {
                                self.buf = vec![0; READ_CHUNK];
                            }
                        }
                        Err(_) if deadline.is_some_and(|d| d <= idle_end) => {
                            return Ok(Input::Deadline)
                        }
                        Err(_) => return Ok(Input::Timeout),
                    }
                }
            }
        }
    }
}

/// A command decoded by the codec directly, or through the rewriting of
/// [`crate::commands::extended`].
enum Decoded {
    Plain(imap_codec::imap_types::command::Command<'static>),
    SearchExt(
        imap_codec::imap_types::command::Command<'static>,
        crate::commands::searchext::Ext,
    ),
    List(
        Vec<imap_codec::imap_types::command::Command<'static>>,
        crate::commands::extended::ListOpts,
    ),
    Notify(
        Tag<'static>,
        Result<crate::notify::NotifyCmd, crate::notify::Refusal>,
    ),
    /// MULTIAPPEND, REPLACE, UNAUTHENTICATE, SAVEDATE and PREVIEW
    /// ([`crate::commands::msgext`]).
    Message(crate::commands::msgext::MsgExt),
    /// An ACL command (RFC 4314), parsed by [`crate::commands::acl::preparse`].
    Acl(Tag<'static>, crate::commands::acl::AclCommand),
    Invalid,
}

fn decode_plain(bytes: &[u8]) -> Option<imap_codec::imap_types::command::Command<'static>> {
    use imap_codec::decode::Decoder;
    match CommandCodec::default().decode(bytes) {
        Ok((b"", cmd)) => Some(cmd.into_static()),
        _ => None,
    }
}

/// ESEARCH (and SEARCHRES, ESORT, CONTEXT, PARTIAL) and LIST-EXTENDED forms the codec refused, rewritten and decoded by it.
fn extended_decode(bytes: &[u8]) -> Option<Decoded> {
    use crate::commands::extended::{preparse, Extended};
    if let Some((cmd, ext)) = crate::commands::searchext::decode_message(bytes, decode_plain) {
        return Some(Decoded::SearchExt(cmd, ext));
    }
    match preparse(bytes)? {
        Extended::List { plain, opts } => {
            let cmds = plain
                .iter()
                .map(|p| decode_plain(p))
                .collect::<Option<Vec<_>>>()?;
            Some(Decoded::List(cmds, opts))
        }
    }
}

/// Runs one IMAP session to its end. `tls` is the acceptor used for STARTTLS.
pub async fn serve_connection(
    io: Box<dyn Io>,
    mut session: Session,
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    mut shutdown: Shutdown,
) -> std::io::Result<()> {
    let mut conn = Conn {
        io,
        frag: Fragmentizer::new(limits.max_command),
        limits,
        buf: vec![0; SMALL_READ],
        deflate: None,
        mutf7: true,
        pending: None,
        command_span: tracing::Span::none(),
    };
    let greeting = session.greeting();
    conn.write_raw(&greeting).await?;
    let mut errors = 0u32;
    let mut preauth_bad = 0u32;
    loop {
        let timeout = session.inactivity_timeout();
        let authenticated = session.is_authenticated();
        match conn
            .next_message(
                timeout,
                &mut shutdown,
                true,
                authenticated,
                session.notify_subscription(),
            )
            .await?
        {
            Input::Message => {
                let cmd = command_of(conn.frag.message_bytes());
                let name = mailfleet_telemetry::metrics().imap.label(cmd);
                conn.command_span = tracing::debug_span!(
                    "imap.command",
                    otel.name = name,
                    imap.command = name,
                    imap.status = tracing::field::Empty,
                    otel.status_code = tracing::field::Empty,
                );
                conn.pending = Some((cmd, std::time::Instant::now()));
            }
            Input::Notify(gone) => {
                session.notify_woken(gone);
                let out = Box::pin(session.notify_updates(true)).await;
                conn.write(&out).await?;
                continue;
            }
            Input::Eof | Input::Close => return Ok(()),
            Input::Timeout => {
                return conn
                    .write(&[response::bye("Autologout; idle for too long")])
                    .await;
            }
            Input::Deadline => {
                return conn
                    .write(&[response::bye("Command not completed in time")])
                    .await;
            }
            Input::Shutdown => {
                return conn.write(&[response::bye("Server shutting down")]).await;
            }
        }
        let decoded = match conn.frag.decode_message(&CommandCodec::default()) {
            Ok(cmd) => Ok(Decoded::Plain(cmd.into_static())),
            // NOTIFY (RFC 5465), which the codec does not know.
            Err(DecodeMessageError::DecodingFailure(_))
                if crate::notify::parse(conn.frag.message_bytes()).is_some() =>
            {
                match crate::notify::parse(conn.frag.message_bytes()) {
                    Some((tag, cmd)) => Ok(Decoded::Notify(tag, cmd)),
                    None => Ok(Decoded::Invalid),
                }
            }
            Err(DecodeMessageError::DecodingFailure(_))
                if extended_decode(conn.frag.message_bytes()).is_some() =>
            {
                Ok(extended_decode(conn.frag.message_bytes()).unwrap_or(Decoded::Invalid))
            }
            Err(DecodeMessageError::DecodingFailure(_))
                if crate::commands::msgext::preparse(conn.frag.message_bytes()).is_some() =>
            {
                crate::commands::msgext::preparse(conn.frag.message_bytes())
                    .map(Decoded::Message)
                    .ok_or((None, false))
            }
            Err(DecodeMessageError::DecodingFailure(_))
                if crate::commands::acl::preparse(conn.frag.message_bytes()).is_some() =>
            {
                Ok(crate::commands::acl::preparse(conn.frag.message_bytes())
                    .map_or(Decoded::Invalid, |(t, c)| Decoded::Acl(t, c)))
            }
            Err(e) => {
                let tag = conn.frag.decode_tag().map(|t| t.into_static());
                Err((
                    tag,
                    matches!(
                        e,
                        DecodeMessageError::MessageTooLong { .. }
                            | DecodeMessageError::MessagePoisoned { .. }
                    ),
                ))
            }
        };
        let outcome = match decoded {
            Ok(Decoded::Plain(cmd))
                if matches!(cmd.body, CommandBody::Compress { .. }) && authenticated =>
            {
                let (reply, start) =
                    compress_reply(&cmd.tag, session.is_authenticated(), conn.deflate.is_some());
                conn.write(&[reply]).await?;
                if start {
                    // Compression starts right after the OK's CRLF (RFC 4978 §3). Bytes the
                    // client pipelined behind COMPRESS were sent before it saw the OK, so
                    // they cannot be compressed data: they are dropped (as at STARTTLS).
                    conn.frag = Fragmentizer::new(limits.max_command);
                    conn.deflate = Some(Box::default());
                }
                continue;
            }
            Ok(Decoded::Plain(cmd)) => match crate::mutf7::command_in(cmd, session.mutf7_names()) {
                Ok(cmd) => {
                    Box::pin(session.handle(cmd))
                        .instrument(conn.command_span.clone())
                        .await
                }
                Err(cmd) => crate::session::Outcome::done(vec![invalid_name(&cmd)]),
            },
            // `$` commands (COPY $ name, MOVE $ name) carry mailbox names too.
            Ok(Decoded::SearchExt(cmd, ext)) => {
                match crate::mutf7::command_in(cmd, session.mutf7_names()) {
                    Ok(cmd) => {
                        Box::pin(session.search_ext(cmd, ext))
                            .instrument(conn.command_span.clone())
                            .await
                    }
                    Err(cmd) => crate::session::Outcome::done(vec![invalid_name(&cmd)]),
                }
            }
            Ok(Decoded::Notify(tag, cmd)) => {
                Box::pin(session.notify_command(tag, cmd))
                    .instrument(conn.command_span.clone())
                    .await
            }
            Ok(Decoded::List(cmds, opts)) => {
                let tag = cmds.first().map(|c| c.tag.clone());
                let mutf7 = session.mutf7_names();
                match cmds
                    .into_iter()
                    .map(|c| crate::mutf7::command_in(c, mutf7))
                    .collect::<Result<Vec<_>, _>>()
                {
                    Ok(cmds) => {
                        Box::pin(session.list_extended(cmds, opts))
                            .instrument(conn.command_span.clone())
                            .await
                    }
                    // A pattern no valid name can match: nothing is listed.
                    Err(_) => crate::session::Outcome::done(
                        tag.iter()
                            .map(|t| response::ok(t, None, "LIST completed"))
                            .collect(),
                    ),
                }
            }
            Ok(Decoded::Message(ext)) => {
                match crate::mutf7::message_ext_in(ext, session.mutf7_names()) {
                    Ok(ext) => {
                        Box::pin(session.message_ext(ext))
                            .instrument(conn.command_span.clone())
                            .await
                    }
                    Err(cmd) => crate::session::Outcome::done(vec![invalid_name(&cmd)]),
                }
            }
            Ok(Decoded::Acl(tag, cmd)) => {
                Box::pin(session.acl_command(tag, cmd))
                    .instrument(conn.command_span.clone())
                    .await
            }
            Ok(Decoded::Invalid) => {
                conn.finish_command(ImapStatus::Bad);
                conn.write(&[response::untagged_bad("Syntax error in command")])
                    .await?;
                continue;
            }
            Err((tag, too_big)) => {
                errors += 1;
                if !authenticated {
                    preauth_bad += 1;
                }
                let reply = match (tag, too_big) {
                    (Some(t), true) => response::no(
                        &t,
                        Some(imap_codec::imap_types::response::Code::TooBig),
                        "Command too large",
                    ),
                    (Some(t), false) => response::bad(&t, "Syntax error in command"),
                    (None, _) => {
                        conn.finish_command(ImapStatus::Bad);
                        response::untagged_bad("Syntax error in command")
                    }
                };
                if errors >= limits.max_errors || preauth_bad >= PREAUTH_MAX_BAD_COMMANDS {
                    conn.write(&[reply, response::bye("Too many errors")])
                        .await?;
                    return Ok(());
                }
                conn.write(&[reply]).await?;
                continue;
            }
        };
        if !authenticated && !session.is_authenticated() && has_tagged_bad(&outcome.responses) {
            preauth_bad += 1;
            if preauth_bad >= PREAUTH_MAX_BAD_COMMANDS {
                let mut out = outcome.responses;
                out.push(response::bye("Too many invalid commands"));
                conn.write(&out).await?;
                return Ok(());
            }
        }
        let mut outcome = outcome;
        if session.notify_active() && matches!(outcome.next, Next::Command) {
            // NOTIFY: what happened elsewhere goes out before the tagged reply (RFC 5465).
            let extra = Box::pin(session.notify_updates(false)).await;
            if !extra.is_empty() {
                let at = outcome.responses.len().saturating_sub(1);
                outcome.responses.splice(at..at, extra);
            }
        }
        conn.write(&outcome.responses).await?;
        conn.mutf7 = session.mutf7_names();
        match outcome.next {
            Next::Command => {}
            Next::Close => {
                let _ = conn.io.shutdown().await;
                return Ok(());
            }
            Next::StartTls => {
                let Some(acceptor) = tls.clone() else {
                    return Ok(());
                };
                // Bytes pipelined after STARTTLS arrived in plaintext: never read them as
                // if they came over TLS.
                conn.frag = Fragmentizer::new(limits.max_command);
                let io = std::mem::replace(&mut conn.io, placeholder_io());
                let Some((io, _desc)) = tls_handshake(
                    &acceptor,
                    io,
                    limits.tls_handshake_timeout,
                    mailfleet_telemetry::Protocol::Imap,
                )
                .await
                else {
                    return Ok(());
                };
                conn.io = io;
                session.tls_established();
            }
            Next::AuthenticateData { tag } => {
                conn.write_raw(b"+ \r\n").await?;
                match conn
                    .next_message(timeout, &mut shutdown, false, false, None)
                    .await?
                {
                    Input::Message => {}
                    _ => return Ok(()),
                }
                let data = conn
                    .frag
                    .decode_message(&AuthenticateDataCodec::default())
                    .ok()
                    .map(|d| d.into_static());
                let outcome = Box::pin(session.authenticate_data(tag, data))
                    .instrument(conn.command_span.clone())
                    .await;
                conn.write(&outcome.responses).await?;
                if matches!(outcome.next, Next::Close) {
                    return Ok(());
                }
            }
            Next::Fetch => loop {
                let (batch, last) = Box::pin(session.fetch_step())
                    .instrument(conn.command_span.clone())
                    .await;
                conn.write(&batch).await?;
                if last {
                    break;
                }
            },
            Next::Idle { tag } => {
                let span = conn.command_span.clone();
                if !Box::pin(idle(&mut conn, &mut session, tag, &mut shutdown))
                    .instrument(span)
                    .await?
                {
                    return Ok(());
                }
            }
        }
    }
}

/// The answer to `COMPRESS DEFLATE` (RFC 4978 §3), and whether compression starts after it.
/// COMPRESS is valid once logged in (`command-auth`, also in the selected state); a second
/// one is refused with `[COMPRESSIONACTIVE]`.
fn compress_reply(tag: &Tag<'static>, authenticated: bool, active: bool) -> (Resp, bool) {
    use imap_codec::imap_types::response::Code;
    if !authenticated {
        (response::bad(tag, "Log in first"), false)
    } else if active {
        (
            response::no(
                tag,
                Some(Code::CompressionActive),
                "Compression already active",
            ),
            false,
        )
    } else {
        (response::ok(tag, None, "DEFLATE active"), true)
    }
}

/// The answer to a command whose mailbox name is not valid modified UTF-7 (RFC 3501
/// §5.1.3; a client that did not enable UTF8=ACCEPT), or not valid UTF-8 (one that did).
/// NO, as Dovecot answers: the command is well-formed, the name is not one the server can
/// have.
///
/// LIST and LSUB are answered OK with nothing listed, as Dovecot does: a pattern that is not
/// valid modified UTF-7 matches no mailbox.
fn invalid_name(cmd: &imap_codec::imap_types::command::Command<'static>) -> Resp {
    match cmd.body {
        CommandBody::List { .. } => response::ok(&cmd.tag, None, "LIST completed"),
        CommandBody::Lsub { .. } => response::ok(&cmd.tag, None, "LSUB completed"),
        _ => response::no(
            &cmd.tag,
            None,
            "Mailbox name is not valid modified UTF-7 or UTF-8",
        ),
    }
}

/// Whether the responses end a command with a tagged BAD.
fn has_tagged_bad(responses: &[Resp]) -> bool {
    use imap_codec::imap_types::response::{Response, Status, StatusKind};
    responses.iter().any(|r| {
        matches!(r, Resp::Typed(Response::Status(Status::Tagged(t))) if t.body.kind == StatusKind::Bad)
    })
}

/// IDLE (RFC 2177): report changes as they happen until `DONE`. Returns false when the
/// connection must close.
async fn idle(
    conn: &mut Conn,
    session: &mut Session,
    tag: Tag<'static>,
    shutdown: &mut Shutdown,
) -> std::io::Result<bool> {
    let mut sub = Box::pin(session.change_subscription()).await;
    conn.write_raw(b"+ idling\r\n").await?;
    let initial = Box::pin(session.pending_updates(true))
        .await
        .unwrap_or_default();
    conn.write(&initial).await?;
    let deadline = tokio::time::Instant::now() + session.inactivity_timeout();
    let mut recheck = tokio::time::interval(conn.limits.idle_recheck);
    recheck.tick().await;
    loop {
        let event = async {
            match sub.as_mut() {
                Some(s) => s.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            input = conn.next_message(Duration::from_secs(u64::MAX / 4), shutdown, true, true, None) => {
                match input? {
                    Input::Message => {
                        let done = conn.frag.decode_message(&IdleDoneCodec::default()).is_ok();
                        let reply = if done {
                            response::ok(&tag, None, "IDLE terminated")
                        } else {
                            response::bad(&tag, "Expected DONE")
                        };
                        conn.write(&[reply]).await?;
                        return Ok(true);
                    }
                    Input::Shutdown => {
                        conn.write(&[response::bye("Server shutting down")]).await?;
                        return Ok(false);
                    }
                    Input::Eof | Input::Timeout | Input::Deadline | Input::Close
                    | Input::Notify(_) => return Ok(false),
                }
            }
            ev = event => {
                if ev.is_none() {
                    sub = None;
                }
                session.notify_woken(false);
                let mut updates = Box::pin(session.pending_updates(true)).await.unwrap_or_default();
                updates.extend(Box::pin(session.notify_updates(false)).await);
                conn.write(&updates).await?;
            }
            _ = recheck.tick() => {
                session.notify_woken(false);
                let mut updates = Box::pin(session.pending_updates(true)).await.unwrap_or_default();
                updates.extend(Box::pin(session.notify_updates(false)).await);
                conn.write(&updates).await?;
            }
            _ = tokio::time::sleep_until(deadline) => {
                conn.write(&[response::bye("Autologout; idle for too long")]).await?;
                return Ok(false);
            }
        }
    }
}
