//! FETCH and UID FETCH, and the untagged updates (EXPUNGE/VANISHED, EXISTS, FETCH FLAGS)
//! every command may carry.
//!
//! Header-level items (ENVELOPE, BODYSTRUCTURE, BODY) come from the message summary cached
//! in metadata, so they never read the blob; body sections read the blob once per message
//! and slice it by the summary's offsets. A summary missing from the cache (a message stored
//! before summaries existed) is computed once and stored.

use super::{resolve, seq_set_valid};
use crate::response::{self, Resp};
use crate::selected::{Selected, Update};
use crate::session::{Enabled, Outcome, Session, State};
use bytes::Bytes;
use imap_codec::imap_types::command::FetchModifier;
use imap_codec::imap_types::core::{IString, Literal, NString, Tag, Vec1};
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::Literal8;
use imap_codec::imap_types::fetch::{
    MacroOrMessageDataItemNames, MessageDataItem, MessageDataItemName, Part, Section,
};
use imap_codec::imap_types::flag::{Flag, FlagFetch};
use imap_codec::imap_types::response::Data;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::IntoStatic;
use mailfleet_mime::{MessageSummary, SectionKind};
use mailfleet_storage::{FlagOp, Flags, ModSeq, StoreResult, Uid};
use std::collections::HashMap;
use std::num::{NonZeroU32, NonZeroU64};
use tracing::Instrument;

/// Messages handled per batch of a FETCH.
const BATCH_MESSAGES: usize = 200;
/// Response bytes (estimated from message sizes and the items asked) a FETCH holds per
/// batch; each batch is written to the socket before the next is read. One message always
/// makes a batch, whatever its size.
pub const BATCH_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;
/// Most items one FETCH may name, after duplicates are merged; more get `BAD`.
pub const MAX_FETCH_ITEMS: usize = 64;
/// Most items returning message data (`BODY[…]`, `BINARY[…]`, `RFC822…`) one FETCH may
/// name: each holds up to a whole message in memory, so this bounds a response to
/// `MAX_FETCH_BODY_ITEMS` × the message size.
pub const MAX_FETCH_BODY_ITEMS: usize = 16;

/// A FETCH in progress: the driver writes each batch before the next is loaded, so a
/// `FETCH 1:* BODY[]` holds one batch, not the mailbox ([`Session::fetch_step`]).
pub struct FetchJob {
    tag: Tag<'static>,
    uid: bool,
    items: Vec<MessageDataItemName<'static>>,
    need: Needs,
    condstore: bool,
    /// This FETCH enabled CONDSTORE: the tagged OK carries `[HIGHESTMODSEQ]`.
    announce_modseq: bool,
    seen_now: Vec<Uid>,
    targets: Vec<(u32, Uid)>,
    batches: Vec<std::ops::Range<usize>>,
    next: usize,
    /// Messages expunged by another session, left out of the responses.
    gone: std::collections::HashSet<Uid>,
    sel_id: mailfleet_storage::MailboxId,
    /// SAVEDATE and PREVIEW, which the codec does not parse (see [`super::msgext`]).
    pub(crate) extra: super::msgext::FetchExtra,
}

/// Body reads per FETCH batch that become spans in their message's trace.
const TRACED_PER_BATCH: usize = 32;

/// Whether an item returns message data (and so holds up to a message in memory).
fn is_body_item(item: &MessageDataItemName<'_>) -> bool {
    matches!(
        item,
        MessageDataItemName::BodyExt { .. }
            | MessageDataItemName::Binary { .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Text
            | MessageDataItemName::Rfc822Header
    )
}

/// Flags as IMAP values; unknown or invalid keywords are left out rather than failing.
pub(crate) fn imap_flags(flags: &Flags) -> Vec<FlagFetch<'static>> {
    flags
        .iter()
        .filter_map(|f| Flag::try_from(f).ok().map(IntoStatic::into_static))
        .map(FlagFetch::Flag)
        .collect()
}

/// A view message's flags as FETCH shows them: the stored flags, plus `\Recent` when the
/// message is recent in this session (RFC 3501 §2.3.2).
pub(crate) fn view_flags(m: &crate::selected::Msg<'_>) -> Vec<FlagFetch<'static>> {
    let mut out = imap_flags(&m.flags);
    if m.recent {
        out.push(FlagFetch::Recent);
    }
    out
}

/// `* FLAGS (...)` and `* OK [PERMANENTFLAGS (...)]` naming the system flags and every
/// keyword the mailbox uses (RFC 9051 §7.3.5): sent at SELECT and again, before the first
/// FETCH that shows it, whenever a new keyword appears.
pub(crate) fn flag_announcement(sel: &Selected) -> Vec<Resp> {
    let mut flags = vec![
        Flag::Answered,
        Flag::Flagged,
        Flag::Deleted,
        Flag::Seen,
        Flag::Draft,
    ];
    flags.extend(
        sel.keywords
            .list()
            .iter()
            .filter_map(|k| Flag::try_from(k.as_str()).ok().map(IntoStatic::into_static)),
    );
    let mut perm: Vec<imap_codec::imap_types::flag::FlagPerm<'static>> = Vec::new();
    if !sel.read_only {
        perm.extend(flags.iter().cloned().map(Into::into));
        perm.push(imap_codec::imap_types::flag::FlagPerm::Asterisk);
    }
    vec![
        response::data(Data::Flags(flags)),
        response::untagged_ok(
            Some(imap_codec::imap_types::response::Code::PermanentFlags(perm)),
            if sel.read_only {
                "Read-only mailbox"
            } else {
                "Flags permitted"
            },
        ),
    ]
}

/// A FETCH response, with the `<origin>` of BINARY partials (RFC 3516 §4.2), which
/// imap-types cannot express: each item is still encoded by imap-codec (as a one-item
/// FETCH whose frame is cut off), and only the origin is inserted after its section.
pub(crate) fn fetch_response(
    seq: u32,
    data: Vec<(MessageDataItem<'static>, Option<u32>)>,
) -> Option<Resp> {
    if data.iter().all(|(_, o)| o.is_none()) {
        let items = Vec1::try_from(data.into_iter().map(|(d, _)| d).collect::<Vec<_>>()).ok()?;
        return Some(response::data(Data::Fetch {
            seq: nz(seq),
            items,
        }));
    }
    let prefix = format!("* {seq} FETCH (");
    let mut out = prefix.clone().into_bytes();
    for (i, (item, origin)) in data.into_iter().enumerate() {
        let one = response::encode(&response::data(Data::Fetch {
            seq: nz(seq),
            items: Vec1::from(item),
        }));
        let body = one
            .strip_prefix(prefix.as_bytes())?
            .strip_suffix(b")\r\n")?;
        if i > 0 {
            out.push(b' ');
        }
        match origin {
            Some(o) => {
                // `BINARY[1.2] ...`: the section holds digits and dots only, so the first
                // `]` ends it.
                let close = body.iter().position(|b| *b == b']')?;
                out.extend_from_slice(&body[..=close]);
                out.extend_from_slice(format!("<{o}>").as_bytes());
                out.extend_from_slice(&body[close + 1..]);
            }
            None => out.extend_from_slice(body),
        }
    }
    out.extend_from_slice(b")\r\n");
    Some(Resp::Raw(out))
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Sorted, merged ranges of non-zero values: `[1,2,3,7]` → `[(1,3),(7,7)]`.
pub(crate) fn ranges(values: &[Uid]) -> Vec<(u32, u32)> {
    let mut sorted: Vec<u32> = values.iter().map(|u| u.0).filter(|u| *u > 0).collect();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<(u32, u32)> = Vec::new();
    for v in sorted {
        match out.last_mut() {
            Some((_, end)) if *end + 1 == v => *end = v,
            _ => out.push((v, v)),
        }
    }
    out
}

/// A compact set (`1:3,7`) for VANISHED and MODIFIED.
pub(crate) fn uid_set(uids: &[Uid]) -> Option<SequenceSet> {
    let seqs: Vec<Sequence> = ranges(uids)
        .into_iter()
        .map(|(a, b)| {
            if a == b {
                Sequence::Single(SeqOrUid::Value(nz(a)))
            } else {
                Sequence::Range(SeqOrUid::Value(nz(a)), SeqOrUid::Value(nz(b)))
            }
        })
        .collect();
    Vec1::try_from(seqs).ok().map(SequenceSet)
}

/// `* n FETCH (UID u FLAGS (...) [MODSEQ (m)])` for one message.
pub(crate) fn flags_response(
    sel: &Selected,
    uid: Uid,
    with_uid: bool,
    modseq: bool,
) -> Option<Resp> {
    let seq = sel.seq_of(uid)?;
    let m = sel.by_seq(seq)?;
    let mut items = Vec::new();
    if with_uid {
        items.push(MessageDataItem::Uid(nz(m.uid.0)));
    }
    items.push(MessageDataItem::Flags(view_flags(&m)));
    if modseq {
        items.push(MessageDataItem::ModSeq(
            NonZeroU64::new(m.modseq.0).unwrap_or(NonZeroU64::MIN),
        ));
    }
    Some(response::data(Data::Fetch {
        seq: nz(seq),
        items: Vec1::try_from(items).ok()?,
    }))
}

/// Untagged responses for a refresh of the selected mailbox.
pub(crate) fn render_update(sel: &Selected, update: &Update, enabled: Enabled) -> Vec<Resp> {
    let mut out = Vec::new();
    if update.new_keywords {
        out.extend(flag_announcement(sel));
    }
    if enabled.qresync {
        let uids: Vec<Uid> = update.expunged.iter().map(|(_, u)| *u).collect();
        if let Some(set) = uid_set(&uids) {
            out.push(response::data(Data::Vanished {
                earlier: false,
                known_uids: set,
            }));
        }
    } else {
        for (seq, _) in &update.expunged {
            out.push(response::data(Data::Expunge(nz(*seq))));
        }
    }
    if let Some(n) = update.exists {
        out.push(response::data(Data::Exists(n)));
    }
    if let Some(n) = update.recent.filter(|_| !enabled.rev2) {
        out.push(response::data(Data::Recent(n)));
    }
    for uid in &update.flags_changed {
        out.extend(flags_response(sel, *uid, true, enabled.condstore));
    }
    out
}

fn datetime(ts: i64) -> Option<DateTime> {
    let dt = chrono::DateTime::from_timestamp(ts, 0)?.fixed_offset();
    DateTime::try_from(dt).ok()
}

fn nstring(mut bytes: Vec<u8>) -> NString<'static> {
    // Message bytes go out as literals: they may hold anything a quoted string cannot,
    // except NUL (RFC 9051 §4.3). A message appended as a literal8 (RFC 3516 §4.4) may
    // hold NULs; BODY[] shows them as 0x80, as Dovecot does, and BINARY[] gives the exact
    // octets in a literal8.
    for b in bytes.iter_mut().filter(|b| **b == 0) {
        *b = 0x80;
    }
    NString(Some(IString::Literal(Literal::unvalidated(bytes))))
}

fn partial(data: Vec<u8>, range: Option<(u32, NonZeroU32)>) -> (Vec<u8>, Option<u32>) {
    match range {
        None => (data, None),
        Some((start, len)) => {
            let s = (start as usize).min(data.len());
            let e = s.saturating_add(len.get() as usize).min(data.len());
            (data[s..e].to_vec(), Some(start))
        }
    }
}

fn part_path(p: &Option<Part>) -> Vec<u32> {
    p.as_ref()
        .map(|p| p.0.as_ref().iter().map(|n| n.get()).collect())
        .unwrap_or_default()
}

fn header_names(names: &Vec1<imap_codec::imap_types::core::AString<'static>>) -> Vec<String> {
    names
        .as_ref()
        .iter()
        .map(|n| String::from_utf8_lossy(n.as_ref()).into_owned())
        .collect()
}

/// The bytes a BODY[section] names, or empty when the part does not exist (RFC 9051 asks
/// for an empty string rather than an error).
fn section_bytes(
    raw: &[u8],
    summary: &MessageSummary,
    section: &Option<Section<'static>>,
) -> Vec<u8> {
    let (path, kind) = match section {
        None => return raw.to_vec(),
        Some(Section::Part(p)) => (part_path(&Some(p.clone())), SectionKind::Full),
        Some(Section::Header(p)) => (part_path(p), SectionKind::Header),
        Some(Section::Text(p)) => (part_path(p), SectionKind::Text),
        Some(Section::Mime(p)) => (part_path(&Some(p.clone())), SectionKind::Mime),
        Some(Section::HeaderFields(p, names)) => {
            (part_path(p), SectionKind::HeaderFields(header_names(names)))
        }
        Some(Section::HeaderFieldsNot(p, names)) => (
            part_path(p),
            SectionKind::HeaderFieldsNot(header_names(names)),
        ),
    };
    mailfleet_mime::section(raw, summary, &path, kind).unwrap_or_default()
}

/// What a FETCH needs loaded for each message.
#[derive(Default, Clone, Copy)]
struct Needs {
    summary: bool,
    blob: bool,
    sets_seen: bool,
}

fn needs(items: &[MessageDataItemName<'static>]) -> Needs {
    let mut n = Needs::default();
    for i in items {
        match i {
            MessageDataItemName::Envelope
            | MessageDataItemName::BodyStructure
            | MessageDataItemName::Body => n.summary = true,
            MessageDataItemName::BodyExt { section, peek, .. } => {
                n.blob = true;
                n.summary |= section.is_some();
                n.sets_seen |= !peek;
            }
            MessageDataItemName::Binary { peek, .. } => {
                n.blob = true;
                n.summary = true;
                n.sets_seen |= !peek;
            }
            MessageDataItemName::BinarySize { .. } => {
                n.blob = true;
                n.summary = true;
            }
            MessageDataItemName::Rfc822 | MessageDataItemName::Rfc822Text => {
                n.blob = true;
                n.summary = true;
                n.sets_seen = true;
            }
            MessageDataItemName::Rfc822Header => {
                n.blob = true;
                n.summary = true;
            }
            _ => {}
        }
    }
    n
}

/// Loads (or computes and caches) summaries for `uids`.
async fn summaries(
    stores: &mailfleet_storage::Stores,
    sel: &Selected,
    uids: &[Uid],
    blobs: &HashMap<Uid, Bytes>,
) -> StoreResult<HashMap<Uid, MessageSummary>> {
    let mut out = HashMap::new();
    for chunk in uids.chunks(500) {
        for (uid, bytes) in stores.meta.message_summaries(sel.id, chunk).await? {
            if let Ok(s) = MessageSummary::from_bytes(&bytes) {
                out.insert(uid, s);
            }
        }
    }
    for uid in uids {
        if out.contains_key(uid) {
            continue;
        }
        if sel.seq_of(*uid).is_none() {
            continue;
        }
        let raw = match blobs.get(uid) {
            Some(b) => b.clone(),
            // Expunged by another session: nothing to summarise.
            None => match sel.read_body_if_present(stores, *uid).await? {
                Some(b) => b,
                None => continue,
            },
        };
        let summary = tokio::task::spawn_blocking(move || mailfleet_mime::analyze(&raw))
            .await
            .map_err(|e| mailfleet_storage::StoreError::Unavailable(e.to_string()))?;
        stores
            .meta
            .set_message_summary(sel.id, *uid, summary.to_bytes())
            .await?;
        out.insert(*uid, summary);
    }
    Ok(out)
}

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn fetch(
        &mut self,
        tag: Tag<'static>,
        set: SequenceSet,
        items: MacroOrMessageDataItemNames<'static>,
        uid: bool,
        modifiers: Vec<FetchModifier>,
    ) -> StoreResult<Outcome> {
        let items = match items {
            MacroOrMessageDataItemNames::Macro(m) => m
                .expand()
                .into_iter()
                .map(IntoStatic::into_static)
                .collect(),
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v,
        };
        // The same item twice asks for the same data once (`BODY[] BODY[] …` would
        // otherwise multiply the response).
        let mut unique: Vec<MessageDataItemName<'static>> = Vec::with_capacity(items.len());
        for i in items {
            if !unique.contains(&i) {
                unique.push(i);
            }
        }
        let mut items = unique;
        if items.len() > MAX_FETCH_ITEMS
            || items.iter().filter(|i| is_body_item(i)).count() > MAX_FETCH_BODY_ITEMS
        {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "Too many FETCH items",
            )]));
        }
        let mut changed_since = None;
        let mut vanished = false;
        for m in modifiers {
            match m {
                FetchModifier::ChangedSince(v) => changed_since = Some(ModSeq(v.get())),
                FetchModifier::Vanished => vanished = true,
            }
        }
        // CHANGEDSINCE and the MODSEQ item are CONDSTORE enabling commands (RFC 7162 §3.1).
        let announce_modseq = (changed_since.is_some()
            || items.contains(&MessageDataItemName::ModSeq))
            && self.enable_condstore();
        if vanished && (!uid || changed_since.is_none() || !self.enabled.qresync) {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "VANISHED needs UID FETCH with CHANGEDSINCE and QRESYNC enabled",
            )]));
        }
        let condstore = self.enabled.condstore;
        if uid && !items.contains(&MessageDataItemName::Uid) {
            items.insert(0, MessageDataItemName::Uid);
        }
        if (changed_since.is_some() || condstore)
            && !items.contains(&MessageDataItemName::ModSeq)
            && changed_since.is_some()
        {
            items.push(MessageDataItemName::ModSeq);
        }
        // UID FETCH brings the view up to date first (new mail, expunges and flag changes
        // may all be reported by a UID command, RFC 9051 §7.5.1), so the answer carries the
        // flags as they are now, not as they were before another session's change (which
        // would then be reported after the answer, contradicting it). A FETCH by sequence
        // number keeps the view the client numbered against until it is done.
        let mut out = if uid {
            self.pending_updates(true).await?
        } else {
            Vec::new()
        };
        let enabled = self.enabled;
        let State::Selected(sel) = &mut self.state else {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "No mailbox selected",
            )]));
        };
        if !uid && !seq_set_valid(sel, &set) {
            out.push(response::bad(&tag, "Invalid message sequence number"));
            return Ok(Outcome::done(out));
        }
        let mut targets = resolve(sel, &set, uid);
        if let Some(since) = changed_since {
            targets.retain(|(seq, _)| sel.by_seq(*seq).is_some_and(|m| m.modseq > since));
        }
        let need = needs(&items);
        // Without the `s` right a FETCH does not set \Seen (RFC 4314 §4).
        let read_only = sel.read_only || !self.selected_rights.has("s");
        let sel_id = sel.id;

        if vanished {
            if let Some(since) = changed_since {
                let largest = sel.max_uid().map_or(0, |u| u.get());
                let gone: Vec<Uid> = self
                    .stores
                    .meta
                    .changes_since(sel_id, since)
                    .await?
                    .into_iter()
                    .filter(|c| c.kind == mailfleet_storage::ChangeKind::Expunged)
                    .filter(|c| super::in_set(&set, c.uid.0, largest.max(c.uid.0)))
                    .map(|c| c.uid)
                    .collect();
                if let Some(s) = uid_set(&gone) {
                    out.push(response::data(Data::Vanished {
                        earlier: true,
                        known_uids: s,
                    }));
                }
            }
        }

        // Mark \Seen first (one transaction), so FLAGS in the response are the new ones.
        let mut seen_now: Vec<Uid> = Vec::new();
        if need.sets_seen && !read_only {
            let unseen: Vec<Uid> = targets
                .iter()
                .filter_map(|(seq, _)| sel.by_seq(*seq))
                .filter(|m| !m.flags.contains("\\Seen"))
                .map(|m| m.uid)
                .collect();
            if !unseen.is_empty() {
                let changed = self
                    .stores
                    .meta
                    .store_flags(sel_id, &unseen, FlagOp::Add, &Flags::new(["\\Seen"]))
                    .await?;
                for c in changed {
                    if let Some(m) = sel.get_mut(c.uid) {
                        m.flags = c.flags;
                        m.modseq = c.modseq;
                    }
                    seen_now.push(c.uid);
                }
            }
        }

        // Split into batches so a FETCH 1:* of a large mailbox keeps memory flat: at most
        // BATCH_MESSAGES messages, and at most `fetch_batch_bytes` of estimated response
        // (one message always fits, whatever its size). The driver writes each batch
        // before the next one is loaded.
        let per_message = items.iter().filter(|i| is_body_item(i)).count().max(1) as u64;
        let mut batches = Vec::new();
        let mut start = 0;
        let mut bytes = 0u64;
        for (i, (seq, _)) in targets.iter().enumerate() {
            let size = if need.blob {
                sel.by_seq(*seq).map_or(0, |m| m.size) * per_message
            } else {
                256
            };
            if i > start && (i - start >= BATCH_MESSAGES || bytes + size > self.fetch_batch_bytes) {
                batches.push(start..i);
                start = i;
                bytes = 0;
            }
            bytes += size;
        }
        if start < targets.len() {
            batches.push(start..targets.len());
        }
        let _ = enabled;
        self.fetch_job = Some(Box::new(FetchJob {
            tag,
            uid,
            items,
            need,
            condstore,
            announce_modseq,
            seen_now,
            targets,
            batches,
            next: 0,
            gone: Default::default(),
            sel_id,
            extra: Default::default(),
        }));
        Ok(Outcome {
            responses: out,
            next: crate::session::Next::Fetch,
        })
    }

    /// The next batch of the FETCH in progress, and whether it was the last (it then ends
    /// with the tagged reply).
    pub async fn fetch_step(&mut self) -> (Vec<Resp>, bool) {
        let Some(mut job) = self.fetch_job.take() else {
            return (vec![], true);
        };
        let result = if job.next < job.batches.len() {
            self.fetch_batch(&mut job).await.map(|r| (r, false))
        } else {
            self.fetch_finish(&mut job).await.map(|r| (r, true))
        };
        match result {
            Ok((out, done)) => {
                if !done {
                    self.fetch_job = Some(job);
                }
                (out, done)
            }
            Err(e) => {
                tracing::warn!(error = %e, "IMAP FETCH failed on storage");
                (
                    vec![response::no(
                        &job.tag,
                        response::code("UNAVAILABLE"),
                        "Temporary storage failure, try again",
                    )],
                    true,
                )
            }
        }
    }

    async fn fetch_batch(&mut self, job: &mut FetchJob) -> StoreResult<Vec<Resp>> {
        let State::Selected(sel) = &self.state else {
            return Ok(vec![]);
        };
        let sel: &Selected = sel;
        let range = job.batches[job.next].clone();
        job.next += 1;
        let batch = &job.targets[range];
        let (items, need) = (&job.items, job.need);
        let mut out = Vec::new();
        let uids: Vec<Uid> = batch.iter().map(|(_, u)| *u).collect();
        let mut blobs: HashMap<Uid, Bytes> = HashMap::new();
        if need.blob {
            // With traces exported, each body read is a span in the message's own trace
            // (the one SMTP started and stored with it), linked to this command's span:
            // the trace of a message runs from its receipt to its reading.
            // At most TRACED_PER_BATCH messages per batch get a span: a `FETCH 1:* BODY[]` of a
            // large mailbox must not flood the exporter's bounded queue.
            let traces: HashMap<Uid, String> = if mailfleet_telemetry::trace::exporting() {
                let traced = &uids[..uids.len().min(TRACED_PER_BATCH)];
                match self.stores.meta.message_traces(sel.id, traced).await {
                    Ok(t) => t.into_iter().collect(),
                    Err(e) => {
                        tracing::debug!(error = %e, "message trace contexts unavailable");
                        HashMap::new()
                    }
                }
            } else {
                HashMap::new()
            };
            for (_, u) in batch {
                // A message whose trace was not sampled (or was minted with export off)
                // gets no span: it would be dropped at export after costing its making.
                let sampled = traces
                    .get(u)
                    .filter(|p| mailfleet_telemetry::trace::is_sampled(p));
                let span = match sampled {
                    Some(parent) => {
                        let span = tracing::debug_span!(
                            parent: None,
                            "imap.fetch.message",
                            otel.name = "imap FETCH message",
                            imap.uid = i64::from(u.0),
                        );
                        mailfleet_telemetry::trace::set_parent(&span, parent);
                        mailfleet_telemetry::trace::link_span(&span, &tracing::Span::current());
                        span
                    }
                    None => tracing::Span::none(),
                };
                match sel
                    .read_body_if_present(&self.stores, *u)
                    .instrument(span)
                    .await?
                {
                    Some(b) => {
                        blobs.insert(*u, b);
                    }
                    None => {
                        job.gone.insert(*u);
                    }
                }
            }
        }
        let extra = job.extra;
        // PREVIEW needs the summary; PREVIEW (LAZY) only what is stored (RFC 8970 §3.1).
        let summaries = if need.summary || extra.preview == Some(false) {
            summaries(&self.stores, sel, &uids, &blobs).await?
        } else if extra.preview == Some(true) {
            super::message_ext::stored_summaries(&self.stores, sel.id, &uids).await?
        } else {
            HashMap::new()
        };
        let extras =
            super::message_ext::fetch_extras(&self.stores, sel, extra, &uids, &blobs, &summaries)
                .await?;
        for (seq, u) in batch {
            let Some(m) = sel.by_seq(*seq) else { continue };
            if job.gone.contains(u) || (need.summary && !summaries.contains_key(u)) {
                // Expunged by another session since the view was refreshed: left out, and
                // the command ends NO [EXPUNGEISSUED] (RFC 2180 §4.1.2).
                job.gone.insert(*u);
                continue;
            }
            let raw = blobs.get(u);
            let summary = summaries.get(u);
            let mut data = Vec::with_capacity(items.len());
            for item in items {
                if extra.drop_uid && *item == MessageDataItemName::Uid {
                    continue;
                }
                if let Some(d) = render_item(item, &m, raw, summary) {
                    let origin = match item {
                        MessageDataItemName::Binary {
                            partial: Some((start, _)),
                            ..
                        } => Some(*start),
                        _ => None,
                    };
                    data.push((d, origin));
                }
            }
            let seen_now = job.seen_now.contains(u);
            if seen_now && !items.contains(&MessageDataItemName::Flags) {
                data.push((MessageDataItem::Flags(view_flags(&m)), None));
            }
            if job.condstore && !items.contains(&MessageDataItemName::ModSeq) && seen_now {
                data.push((
                    MessageDataItem::ModSeq(NonZeroU64::new(m.modseq.0).unwrap_or(NonZeroU64::MIN)),
                    None,
                ));
            }
            match extras.get(u) {
                Some(raw_items) => out.extend(super::message_ext::fetch_response_with(
                    *seq, data, raw_items,
                )),
                None => out.extend(fetch_response(*seq, data)),
            }
        }
        Ok(out)
    }

    async fn fetch_finish(&mut self, job: &mut FetchJob) -> StoreResult<Vec<Resp>> {
        if !job.seen_now.is_empty() {
            self.notify(job.sel_id, None).await;
        }
        // FETCH must not renumber (RFC 9051 §7.5.1), UID FETCH may.
        let mut out = self.pending_updates(job.uid).await?;
        if !job.gone.is_empty() {
            // RFC 2180 §4.1.2 with RFC 5530's code: what exists was sent; the client learns
            // of the expunge at its next NOOP (or in this very reply for UID FETCH).
            out.push(response::no(
                &job.tag,
                response::code("EXPUNGEISSUED"),
                "Some messages were also expunged",
            ));
            return Ok(out);
        }
        let code = if job.announce_modseq {
            self.highest_modseq_code()
        } else {
            None
        };
        out.push(response::ok(
            &job.tag,
            code,
            if job.uid {
                "UID FETCH completed"
            } else {
                "FETCH completed"
            },
        ));
        Ok(out)
    }
}

/// The part a BINARY section names (RFC 3516 §4.2): numbers walk multiparts and enter
/// message/rfc822 bodies; part 1 of a single-part entity is that entity.
fn find_part<'a>(root: &'a mailfleet_mime::Part, path: &[u32]) -> Option<&'a mailfleet_mime::Part> {
    use mailfleet_mime::Body;
    let mut part = root;
    for &n in path {
        let idx = n.checked_sub(1)? as usize;
        part = match &part.body {
            Body::Multipart { parts } => parts.get(idx)?,
            Body::Message { message, .. } => match &message.body {
                Body::Multipart { parts } => parts.get(idx)?,
                _ if idx == 0 => message,
                _ => return None,
            },
            _ if idx == 0 => part,
            _ => return None,
        };
    }
    Some(part)
}

/// BINARY[section]: the part's content with its transfer encoding removed. `BINARY[]` is
/// the whole message (RFC 3516 §4.2, as BODY[] is): its header as stored, then its body
/// decoded.
fn binary(raw: &[u8], summary: &MessageSummary, path: &[u32]) -> Option<Vec<u8>> {
    if path.is_empty() {
        let root = &summary.root;
        let encoding = root.encoding_or_default();
        if !encoding.eq_ignore_ascii_case(b"base64")
            && !encoding.eq_ignore_ascii_case(b"quoted-printable")
        {
            return Some(raw.to_vec());
        }
        let header_end = (root.body_start as usize).min(raw.len());
        let mut whole = raw[..header_end].to_vec();
        whole.extend(part_binary(raw, root)?);
        return Some(whole);
    }
    part_binary(raw, find_part(&summary.root, path)?)
}

/// One part's body with its Content-Transfer-Encoding removed.
fn part_binary(raw: &[u8], part: &mailfleet_mime::Part) -> Option<Vec<u8>> {
    let (start, end) = (part.body_start as usize, part.body_end as usize);
    let body = raw.get(start.min(raw.len())..end.min(raw.len()))?;
    let encoding = part.encoding_or_default();
    if encoding.eq_ignore_ascii_case(b"base64") {
        mail_parser::decoders::base64::base64_decode(body)
    } else if encoding.eq_ignore_ascii_case(b"quoted-printable") {
        mail_parser::decoders::quoted_printable::quoted_printable_decode(body)
    } else {
        Some(body.to_vec())
    }
}

fn render_item(
    item: &MessageDataItemName<'static>,
    m: &crate::selected::Msg<'_>,
    raw: Option<&Bytes>,
    summary: Option<&MessageSummary>,
) -> Option<MessageDataItem<'static>> {
    Some(match item {
        MessageDataItemName::Uid => MessageDataItem::Uid(nz(m.uid.0)),
        MessageDataItemName::Flags => MessageDataItem::Flags(view_flags(m)),
        MessageDataItemName::InternalDate => {
            MessageDataItem::InternalDate(datetime(m.internal_date)?)
        }
        MessageDataItemName::Rfc822Size => {
            MessageDataItem::Rfc822Size(m.size.min(u32::MAX as u64) as u32)
        }
        MessageDataItemName::ModSeq => {
            MessageDataItem::ModSeq(NonZeroU64::new(m.modseq.0).unwrap_or(NonZeroU64::MIN))
        }
        MessageDataItemName::Envelope => {
            MessageDataItem::Envelope(mailfleet_mime::imap::envelope(&summary?.envelope))
        }
        MessageDataItemName::BodyStructure => MessageDataItem::BodyStructure(
            mailfleet_mime::imap::body_structure(&summary?.root, true),
        ),
        MessageDataItemName::Body => {
            MessageDataItem::Body(mailfleet_mime::imap::body_structure(&summary?.root, false))
        }
        MessageDataItemName::BodyExt {
            section,
            partial: range,
            ..
        } => {
            let raw = raw?;
            let bytes = match summary {
                Some(s) => section_bytes(raw, s, section),
                None => raw.to_vec(),
            };
            let (bytes, origin) = partial(bytes, *range);
            MessageDataItem::BodyExt {
                section: section.clone(),
                origin,
                data: nstring(bytes),
            }
        }
        MessageDataItemName::Rfc822 => MessageDataItem::Rfc822(nstring(raw?.to_vec())),
        MessageDataItemName::Rfc822Header => MessageDataItem::Rfc822Header(nstring(
            mailfleet_mime::section(raw?, summary?, &[], SectionKind::Header).unwrap_or_default(),
        )),
        MessageDataItemName::Rfc822Text => MessageDataItem::Rfc822Text(nstring(
            mailfleet_mime::section(raw?, summary?, &[], SectionKind::Text).unwrap_or_default(),
        )),
        MessageDataItemName::Binary {
            section,
            partial: range,
            ..
        } => {
            let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
            let decoded = binary(raw?, summary?, &path).unwrap_or_default();
            let (bytes, _) = partial(decoded, *range);
            // literal8 only when the octets hold a NUL, which a literal cannot carry
            // (RFC 3516 §4.3); otherwise a plain literal, as Dovecot answers.
            let value = if bytes.contains(&0) {
                imap_codec::imap_types::core::NString8::Literal8(Literal8 {
                    data: bytes.into(),
                    mode: imap_codec::imap_types::core::LiteralMode::Sync,
                })
            } else {
                imap_codec::imap_types::core::NString8::NString(nstring(bytes))
            };
            MessageDataItem::Binary {
                section: section.clone(),
                value,
            }
        }
        MessageDataItemName::BinarySize { section } => {
            let path: Vec<u32> = section.iter().map(|n| n.get()).collect();
            let n = binary(raw?, summary?, &path).map_or(0, |d| d.len());
            MessageDataItem::BinarySize {
                section: section.clone(),
                size: n.min(u32::MAX as usize) as u32,
            }
        }
    })
}

#[cfg(test)]
mod streaming_tests {
    use super::*;
    use crate::session::{ImapConfig, LoginError, LoginService, Next, Session, UserSessions};
    use imap_codec::decode::Decoder;
    use imap_codec::imap_types::command::Command;
    use mailfleet_storage::metadata::QuotaPolicy;
    use mailfleet_storage::{Account, NewMessage, Stores};
    use std::sync::Arc;

    struct AnyPassword(Stores);

    #[async_trait::async_trait]
    impl LoginService for AnyPassword {
        async fn login(
            &self,
            user: &str,
            _: &str,
            _: std::net::IpAddr,
        ) -> Result<Account, LoginError> {
            self.0
                .meta
                .get_account(user)
                .await
                .map_err(|_| LoginError::Unavailable)?
                .ok_or(LoginError::Invalid)
        }
    }

    fn cmd(line: &str) -> Command<'static> {
        let (_, c) = imap_codec::CommandCodec::default()
            .decode(line.as_bytes())
            .expect("command");
        c.into_static()
    }

    const MESSAGES: usize = 30;
    const BODY: usize = 64 * 1024;
    const BOUND: u64 = 256 * 1024;

    async fn session(dir: &std::path::Path) -> Session {
        let stores = mailfleet_storage::embedded::open(dir, 64).expect("stores");
        stores
            .meta
            .create_domain("example.test")
            .await
            .expect("domain");
        let acct = stores
            .meta
            .create_account("alice@example.test", "x", 0)
            .await
            .expect("account");
        let inbox = stores
            .meta
            .get_mailbox(acct.id, "INBOX")
            .await
            .expect("get")
            .expect("inbox");
        for i in 0..MESSAGES {
            let raw = format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(BODY));
            let blob = stores
                .blobs
                .put(Bytes::from(raw.clone()))
                .await
                .expect("blob");
            stores
                .meta
                .append(
                    vec![NewMessage {
                        account: acct.id,
                        mailbox: inbox.id,
                        blob,
                        size: raw.len() as u64,
                        internal_date: 1_700_000_000,
                        flags: Flags::default(),
                        summary: None,
                        refs: Default::default(),
                        trace: None,
                    }],
                    QuotaPolicy::Allow,
                )
                .await
                .expect("append");
        }
        let cfg = Arc::new(ImapConfig {
            hostname: "mx.example.test".into(),
            starttls: false,
            plaintext_auth_without_tls: true,
            max_message_size: 1 << 20,
            max_failed_logins: 3,
            idle_timeout: std::time::Duration::from_secs(1800),
            user_sessions: UserSessions::new(2),
            views: crate::views::SharedViews::new(),
            junk_training: None,
        });
        let login = Arc::new(AnyPassword(stores.clone()));
        let mut s = Session::new(cfg, stores, login, "192.0.2.1".parse().expect("ip"), true);
        s.fetch_batch_bytes = BOUND;
        s.handle(cmd("a LOGIN alice@example.test x\r\n")).await;
        s.handle(cmd("b SELECT INBOX\r\n")).await;
        s
    }

    /// Runs one FETCH to its end; returns (largest batch in encoded bytes, total bytes,
    /// FETCH responses, tagged reply).
    async fn run(s: &mut Session, line: &str) -> (u64, u64, usize, String) {
        let outcome = s.handle(cmd(line)).await;
        let mut batches = vec![outcome.responses];
        if matches!(outcome.next, Next::Fetch) {
            loop {
                let (batch, last) = s.fetch_step().await;
                batches.push(batch);
                if last {
                    break;
                }
            }
        }
        let (mut high, mut total, mut fetches) = (0u64, 0u64, 0usize);
        let mut tagged = String::new();
        for b in &batches {
            let bytes: Vec<Vec<u8>> = b.iter().map(crate::response::encode).collect();
            let size: u64 = bytes.iter().map(|x| x.len() as u64).sum();
            high = high.max(size);
            total += size;
            for x in bytes {
                let text = String::from_utf8_lossy(&x).into_owned();
                if text.starts_with("* ") && text.contains(" FETCH (") {
                    fetches += 1;
                } else if !text.starts_with('*') {
                    tagged = text;
                }
            }
        }
        (high, total, fetches, tagged)
    }

    /// Issue 9 item 8: `FETCH 1:* BODY[]` of a mailbox larger than the bound is sent in
    /// batches, none of which exceeds the bound by more than one message.
    #[tokio::test]
    async fn fetch_holds_one_batch_not_the_mailbox() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = session(dir.path()).await;
        let one_message = (BODY + 1024) as u64;
        for line in [
            "c FETCH 1:* (UID BODY.PEEK[])\r\n",
            "d FETCH 1:* (BODY.PEEK[] BODY.PEEK[] BODY.PEEK[] BODY.PEEK[] BODY.PEEK[])\r\n",
            "e FETCH 1:* (BODY.PEEK[TEXT] BODY.PEEK[] RFC822.SIZE)\r\n",
        ] {
            let (high, total, fetches, tagged) = run(&mut s, line).await;
            assert!(tagged.contains("OK"), "{line}: {tagged}");
            assert_eq!(fetches, MESSAGES, "{line}");
            assert!(
                total > 4 * BOUND,
                "{line}: the mailbox is bigger than the bound"
            );
            assert!(
                high <= BOUND + 2 * one_message,
                "{line}: a batch of {high} bytes, bound {BOUND}"
            );
        }
    }

    #[tokio::test]
    async fn too_many_fetch_items_get_bad() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = session(dir.path()).await;
        let many: Vec<String> = (0..=MAX_FETCH_BODY_ITEMS)
            .map(|i| format!("BODY.PEEK[]<{i}.10>"))
            .collect();
        let (_, _, fetches, tagged) =
            run(&mut s, &format!("f FETCH 1 ({})\r\n", many.join(" "))).await;
        assert_eq!(fetches, 0);
        assert!(tagged.starts_with("f BAD"), "{tagged}");
    }
}
