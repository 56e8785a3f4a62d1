//! THREAD (RFC 5256): the ORDEREDSUBJECT and REFERENCES algorithms, free of sockets and of
//! the store, and the THREAD / UID THREAD command that feeds them.
//!
//! The algorithms work on [`ThreadMsg`] values (one per message that matched the search
//! criteria, in mailbox order) and return a forest of [`Node`]s, which [`to_imap`] turns into
//! imap-types' `Thread` values for the codec to encode. Every walk over the trees uses an
//! explicit stack or the parent links, never recursion: a chain of replies thousands deep
//! (which any sender can make) must not exhaust the stack.

use crate::response;
use crate::session::{Outcome, Session, State};
use imap_codec::imap_types::core::{Charset, Tag, Vec1, Vec2};
use imap_codec::imap_types::extensions::thread::{Thread, ThreadingAlgorithm};
use imap_codec::imap_types::response::{Code, Data};
use imap_codec::imap_types::search::SearchKey;
use mail_parser::{HeaderValue, Message};
use mailfleet_storage::StoreResult;
use std::collections::HashMap;
use std::num::NonZeroU32;

/// References of one message taken into account (the last ones, nearest to the message): a
/// header may list any number, and each costs a container and a loop check.
pub const MAX_REFERENCES: usize = 256;

/// What threading needs of one message.
#[derive(Clone, Debug, Default)]
pub struct ThreadMsg {
    /// The number reported: the sequence number, or the UID for UID THREAD.
    pub id: u32,
    /// Sequence number: breaks ties between equal dates (RFC 5256 §3, as SORT does).
    pub seq: u32,
    /// Sent date (the Date header, else the internal date), Unix seconds.
    pub date: i64,
    /// Base subject (RFC 5256 §2.1), lower-cased for the i;unicode-casemap comparison.
    pub base_subject: String,
    /// Whether the subject marked a reply or forward (RFC 5256 §2.1, steps 2 to 6).
    pub is_reply: bool,
    /// Message-ID without angle brackets; None when absent.
    pub message_id: Option<String>,
    /// The References ids in order, or (without any) the first In-Reply-To id (RFC 5256
    /// REFERENCES step 1A).
    pub references: Vec<String>,
}

impl ThreadMsg {
    /// The threading fields of a parsed message.
    pub fn from_parsed(id: u32, seq: u32, internal_date: i64, p: Option<&Message<'_>>) -> Self {
        let subject = p.and_then(|p| p.subject()).unwrap_or_default();
        let date = p
            .and_then(|p| p.date())
            .map(|d| d.to_timestamp())
            .unwrap_or(internal_date);
        let mut references = p.map(|p| ids(p.references())).unwrap_or_default();
        if references.is_empty() {
            references = p
                .map(|p| ids(p.in_reply_to()))
                .unwrap_or_default()
                .into_iter()
                .take(1)
                .collect();
        }
        if references.len() > MAX_REFERENCES {
            references.drain(..references.len() - MAX_REFERENCES);
        }
        ThreadMsg {
            id,
            seq,
            date,
            base_subject: mailfleet_mime::base_subject(subject).to_lowercase(),
            is_reply: is_reply_or_forward(subject),
            message_id: p
                .and_then(|p| p.message_id())
                .filter(|m| !m.trim().is_empty())
                .map(str::to_string),
            references,
        }
    }
}

fn ids(v: &HeaderValue<'_>) -> Vec<String> {
    match v {
        HeaderValue::Text(t) => vec![t.to_string()],
        HeaderValue::TextList(l) => l.iter().map(|t| t.to_string()).collect(),
        _ => vec![],
    }
    .into_iter()
    .filter(|s| !s.trim().is_empty())
    .collect()
}

/// Whether extracting the base subject removed a reply or forward marker (RFC 5256 §2.1):
/// a `subj-refwd` leader (`Re:`, `Fw:`, `Fwd:`, optionally with a blob before the colon and
/// blobs before the word), a `(fwd)` trailer, or a `[fwd: ...]` wrapper.
pub fn is_reply_or_forward(subject: &str) -> bool {
    let s: String = subject
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    let s = s.trim();
    if s.ends_with("(fwd)") || (s.starts_with("[fwd:") && s.ends_with(']')) {
        return true;
    }
    let mut rest = s;
    loop {
        rest = rest.trim_start();
        if let Some(r) = rest.strip_prefix('[') {
            match r.find(['[', ']']) {
                Some(i) if r.as_bytes()[i] == b']' => rest = &r[i + 1..],
                _ => return false,
            }
            continue;
        }
        break;
    }
    let after = ["fwd", "fw", "re"]
        .iter()
        .find_map(|w| rest.strip_prefix(w))
        .map(str::trim_start);
    let Some(mut after) = after else {
        return false;
    };
    if let Some(r) = after.strip_prefix('[') {
        match r.find(['[', ']']) {
            Some(i) if r.as_bytes()[i] == b']' => after = r[i + 1..].trim_start(),
            _ => return false,
        }
    }
    after.starts_with(':')
}

/// A thread tree node: a message (its index in the input) or a dummy standing for a
/// message that is referenced but not present.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub msg: Option<usize>,
    pub children: Vec<Node>,
}

/// ORDEREDSUBJECT (RFC 5256 §3): messages grouped by base subject; in each group, sorted by
/// sent date, the first is the parent and the others its children; groups are ordered by
/// the date of their first message.
pub fn ordered_subject(msgs: &[ThreadMsg]) -> Vec<Node> {
    let mut order: Vec<usize> = (0..msgs.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&msgs[a], &msgs[b]);
        x.base_subject
            .cmp(&y.base_subject)
            .then(x.date.cmp(&y.date))
            .then(x.seq.cmp(&y.seq))
    });
    let mut threads: Vec<Node> = Vec::new();
    let mut i = 0;
    while i < order.len() {
        let mut j = i + 1;
        while j < order.len() && msgs[order[j]].base_subject == msgs[order[i]].base_subject {
            j += 1;
        }
        threads.push(Node {
            msg: Some(order[i]),
            children: order[i + 1..j]
                .iter()
                .map(|&k| Node {
                    msg: Some(k),
                    children: vec![],
                })
                .collect(),
        });
        i = j;
    }
    threads.sort_by_key(|t| {
        let m = &msgs[t.msg.unwrap_or(0)];
        (m.date, m.seq)
    });
    threads
}

/// A container of the REFERENCES algorithm (RFC 5256 §3, after Zawinski).
#[derive(Debug, Default, Clone)]
struct Container {
    msg: Option<usize>,
    parent: Option<usize>,
    children: Vec<usize>,
}

struct Forest {
    c: Vec<Container>,
}

impl Forest {
    fn new_container(&mut self) -> usize {
        self.c.push(Container::default());
        self.c.len() - 1
    }

    /// Whether `a` is `b` or lies below it (so linking `a` as the parent of `b` would loop).
    fn is_descendant_or_self(&self, a: usize, b: usize) -> bool {
        let mut cur = Some(a);
        while let Some(x) = cur {
            if x == b {
                return true;
            }
            cur = self.c[x].parent;
        }
        false
    }

    fn link(&mut self, parent: usize, child: usize) {
        self.c[child].parent = Some(parent);
        self.c[parent].children.push(child);
    }

    fn unlink(&mut self, child: usize) {
        if let Some(p) = self.c[child].parent.take() {
            self.c[p].children.retain(|&x| x != child);
        }
    }

    /// Containers in post-order below the given roots (children before parents).
    fn post_order(&self, roots: &[usize]) -> Vec<usize> {
        let mut out = Vec::new();
        let mut stack: Vec<(usize, bool)> = roots.iter().rev().map(|&r| (r, false)).collect();
        while let Some((n, expanded)) = stack.pop() {
            if expanded {
                out.push(n);
            } else {
                stack.push((n, true));
                for &ch in self.c[n].children.iter().rev() {
                    stack.push((ch, false));
                }
            }
        }
        out
    }
}

/// REFERENCES (RFC 5256 §3): threads built from Message-ID, References and In-Reply-To,
/// then merged by base subject.
pub fn references(msgs: &[ThreadMsg]) -> Vec<Node> {
    let mut f = Forest { c: Vec::new() };
    let mut table: HashMap<&str, usize> = HashMap::new();
    // (1) Link the messages.
    for (i, m) in msgs.iter().enumerate() {
        // (A) The message's own container; one without a Message-ID, or with one already
        // taken by another message, gets a container of its own (a unique ID).
        let me = match m.message_id.as_deref() {
            Some(id) => match table.get(id) {
                Some(&c) if f.c[c].msg.is_none() => c,
                Some(_) => f.new_container(),
                None => {
                    let c = f.new_container();
                    table.insert(id, c);
                    c
                }
            },
            None => f.new_container(),
        };
        f.c[me].msg = Some(i);
        let refs: Vec<usize> = m
            .references
            .iter()
            .map(|r| match table.get(r.as_str()) {
                Some(&c) => c,
                None => {
                    let c = f.new_container();
                    table.insert(r.as_str(), c);
                    c
                }
            })
            .collect();
        // Each reference is the parent of the next, unless the child already has a parent
        // or the link would make a loop.
        for w in refs.windows(2) {
            let (a, b) = (w[0], w[1]);
            if f.c[b].parent.is_none() && !f.is_descendant_or_self(a, b) {
                f.link(a, b);
            }
        }
        // (B) The last reference is the message's parent (replacing any parent it had).
        if let Some(&last) = refs.last() {
            if !f.is_descendant_or_self(last, me) {
                f.unlink(me);
                f.link(last, me);
            }
        }
    }
    // (2) The root set.
    let roots: Vec<usize> = (0..f.c.len())
        .filter(|&c| f.c[c].parent.is_none())
        .collect();
    // (3) Prune dummies, children before parents: an empty dummy goes, a dummy with children
    // is replaced by them, except at the top when it has more than one.
    for n in f.post_order(&roots) {
        let children = std::mem::take(&mut f.c[n].children);
        let mut kept = Vec::with_capacity(children.len());
        for ch in children {
            if f.c[ch].msg.is_none() {
                let grand = std::mem::take(&mut f.c[ch].children);
                for &g in &grand {
                    f.c[g].parent = Some(n);
                }
                kept.extend(grand);
            } else {
                kept.push(ch);
            }
        }
        f.c[n].children = kept;
    }
    let mut top: Vec<usize> = Vec::new();
    for r in roots {
        if f.c[r].msg.is_some() || f.c[r].children.len() > 1 {
            top.push(r);
        } else if let Some(&only) = f.c[r].children.first() {
            f.c[only].parent = None;
            top.push(only);
        }
    }
    // (4) Sort the top level by date (a dummy by its first child's).
    sort_siblings(&mut f, msgs, &top);
    sort_list(&f, msgs, &mut top);
    // (5) Merge threads with the same base subject.
    let subject_of = |f: &Forest, c: usize| -> Option<usize> {
        f.c[c]
            .msg
            .or_else(|| f.c[c].children.first().and_then(|&k| f.c[k].msg))
    };
    let mut by_subject: HashMap<String, usize> = HashMap::new();
    for &r in &top {
        let Some(m) = subject_of(&f, r) else { continue };
        let subject = &msgs[m].base_subject;
        if subject.is_empty() {
            continue;
        }
        match by_subject.get(subject) {
            None => {
                by_subject.insert(subject.clone(), r);
            }
            Some(&old) => {
                let old_dummy = f.c[old].msg.is_none();
                let this_dummy = f.c[r].msg.is_none();
                let old_reply = f.c[old].msg.is_some_and(|m| msgs[m].is_reply);
                let this_reply = f.c[r].msg.is_some_and(|m| msgs[m].is_reply);
                if (this_dummy && !old_dummy) || (old_reply && !this_reply && !old_dummy) {
                    by_subject.insert(subject.clone(), r);
                }
            }
        }
    }
    let mut removed = vec![false; f.c.len()];
    let mut replaced: HashMap<usize, usize> = HashMap::new();
    for &r in &top {
        let Some(m) = subject_of(&f, r) else { continue };
        let subject = msgs[m].base_subject.clone();
        if subject.is_empty() {
            continue;
        }
        let Some(&t) = by_subject.get(&subject) else {
            continue;
        };
        if t == r {
            continue;
        }
        let t_dummy = f.c[t].msg.is_none();
        let r_dummy = f.c[r].msg.is_none();
        let t_reply = f.c[t].msg.is_some_and(|m| msgs[m].is_reply);
        let r_reply = f.c[r].msg.is_some_and(|m| msgs[m].is_reply);
        if t_dummy && r_dummy {
            let kids = std::mem::take(&mut f.c[r].children);
            for k in kids {
                f.c[k].parent = None;
                f.link(t, k);
            }
        } else if t_dummy {
            f.link(t, r);
        } else if r_dummy {
            // Not reached: the table prefers a dummy; kept for completeness.
            f.link(r, t);
            by_subject.insert(subject, r);
            removed[t] = true;
            continue;
        } else if !t_reply && r_reply {
            f.link(t, r);
        } else {
            // Both replies, or both not: a new dummy holds the two.
            let d = f.new_container();
            removed.push(false);
            f.link(d, t);
            f.link(d, r);
            by_subject.insert(subject, d);
            replaced.insert(t, d);
        }
        removed[r] = true;
    }
    let mut top: Vec<usize> = top
        .into_iter()
        .filter(|c| !removed[*c])
        .map(|c| {
            let mut c = c;
            while let Some(&d) = replaced.get(&c) {
                c = d;
            }
            c
        })
        .collect();
    top.dedup();
    // (6) Sort every set of siblings, then the top level again.
    sort_siblings(&mut f, msgs, &top);
    sort_list(&f, msgs, &mut top);
    top.iter().map(|&r| build(&f, r)).collect()
}

/// The date key of a container: its message's, or (a dummy) its first child's.
fn key(f: &Forest, msgs: &[ThreadMsg], c: usize) -> (i64, u32) {
    let mut cur = c;
    loop {
        if let Some(m) = f.c[cur].msg {
            return (msgs[m].date, msgs[m].seq);
        }
        match f.c[cur].children.first() {
            Some(&k) => cur = k,
            None => return (i64::MIN, 0),
        }
    }
}

fn sort_list(f: &Forest, msgs: &[ThreadMsg], list: &mut [usize]) {
    list.sort_by_key(|&c| key(f, msgs, c));
}

/// Sorts the children of every container below `roots` by date, deepest first, so that a
/// dummy's first child is known when its parent's children are sorted.
fn sort_siblings(f: &mut Forest, msgs: &[ThreadMsg], roots: &[usize]) {
    for n in f.post_order(roots) {
        let mut kids = std::mem::take(&mut f.c[n].children);
        sort_list(f, msgs, &mut kids);
        f.c[n].children = kids;
    }
}

/// The [`Node`] tree of a container, built without recursion.
fn build(f: &Forest, root: usize) -> Node {
    let order = f.post_order(&[root]);
    let mut done: HashMap<usize, Node> = HashMap::with_capacity(order.len());
    for n in order {
        let children = f.c[n]
            .children
            .iter()
            .filter_map(|k| done.remove(k))
            .collect();
        done.insert(
            n,
            Node {
                msg: f.c[n].msg,
                children,
            },
        );
    }
    done.remove(&root).unwrap_or(Node {
        msg: None,
        children: vec![],
    })
}

/// The threads as imap-types values: a chain of only children is one list of numbers, a
/// node with several children ends its list with one parenthesised thread per child, and a
/// dummy at the top is a list of its children's threads (`((3)(5))`). Built bottom-up with
/// an explicit stack.
pub fn to_imap(nodes: Vec<Node>, msgs: &[ThreadMsg]) -> Vec<Thread> {
    nodes.into_iter().filter_map(|n| convert(n, msgs)).collect()
}

fn convert(root: Node, msgs: &[ThreadMsg]) -> Option<Thread> {
    // Flatten into post-order with child counts, then fold with a value stack.
    enum Item {
        Msg(Option<u32>, usize),
    }
    let mut post: Vec<Item> = Vec::new();
    let mut stack: Vec<(Node, bool, usize)> = vec![(root, false, 0)];
    while let Some((mut n, expanded, count)) = stack.pop() {
        if expanded {
            post.push(Item::Msg(n.msg.map(|m| msgs[m].id), count));
            continue;
        }
        let kids = std::mem::take(&mut n.children);
        let count = kids.len();
        stack.push((n, true, count));
        for k in kids.into_iter().rev() {
            stack.push((k, false, 0));
        }
    }
    // Values: a thread for each finished node, as (prefix, answers) before wrapping.
    let mut values: Vec<Option<Thread>> = Vec::new();
    for Item::Msg(id, count) in post {
        let kids: Vec<Thread> = values
            .split_off(values.len().saturating_sub(count))
            .into_iter()
            .flatten()
            .collect();
        let id = id.and_then(NonZeroU32::new);
        let thread = match (id, kids.len()) {
            (None, 0) => None,
            (None, 1) => kids.into_iter().next(),
            (None, _) => Some(Thread::Nested {
                answers: Vec2::unvalidated(kids),
            }),
            (Some(id), 0) => Some(Thread::Members {
                prefix: Vec1::from(id),
                answers: None,
            }),
            (Some(id), 1) => Some(match kids.into_iter().next() {
                Some(Thread::Members { prefix, answers }) => {
                    let mut p = vec![id];
                    p.extend(prefix.into_inner());
                    Thread::Members {
                        prefix: Vec1::unvalidated(p),
                        answers,
                    }
                }
                Some(Thread::Nested { answers }) => Thread::Members {
                    prefix: Vec1::from(id),
                    answers: Some(answers),
                },
                None => Thread::Members {
                    prefix: Vec1::from(id),
                    answers: None,
                },
            }),
            (Some(id), _) => Some(Thread::Members {
                prefix: Vec1::from(id),
                answers: Some(Vec2::unvalidated(kids)),
            }),
        };
        values.push(thread);
    }
    values.pop().flatten()
}

impl Session {
    /// THREAD and UID THREAD (RFC 5256): the messages matching the criteria, threaded by
    /// ORDEREDSUBJECT or REFERENCES.
    pub(crate) async fn thread(
        &mut self,
        tag: Tag<'static>,
        algorithm: ThreadingAlgorithm<'static>,
        charset: Charset<'static>,
        search: Vec1<SearchKey<'static>>,
        uid: bool,
    ) -> StoreResult<Outcome> {
        let references = match algorithm {
            ThreadingAlgorithm::OrderedSubject => false,
            ThreadingAlgorithm::References => true,
            ThreadingAlgorithm::Other(_) => {
                return Ok(Outcome::done(vec![response::bad(
                    &tag,
                    "Unknown threading algorithm",
                )]))
            }
        };
        if !Self::check_charset(&Some(charset)) {
            return Ok(Outcome::done(vec![response::no(
                &tag,
                Some(Code::BadCharset { allowed: vec![] }),
                "Only UTF-8 and US-ASCII are supported",
            )]));
        }
        let key = SearchKey::And(search);
        if let Some(bad) = super::search::check_limits(&key) {
            return Ok(Outcome::done(vec![response::bad(&tag, bad)]));
        }
        let State::Selected(sel) = &self.state else {
            return Ok(Outcome::done(vec![response::bad(
                &tag,
                "No mailbox selected",
            )]));
        };
        let mut msgs: Vec<ThreadMsg> = Vec::new();
        Self::evaluate(
            &self.stores,
            sel,
            &key,
            |seq, m, parsed| {
                let id = if uid { m.uid.0 } else { seq };
                msgs.push(ThreadMsg::from_parsed(id, seq, m.internal_date, parsed));
            },
            true,
        )
        .await?;
        let nodes = if references {
            self::references(&msgs)
        } else {
            ordered_subject(&msgs)
        };
        let threads = to_imap(nodes, &msgs);
        let mut out = vec![response::data(Data::Thread(threads))];
        out.extend(self.pending_updates(uid).await?);
        out.push(response::ok(
            &tag,
            None,
            if uid {
                "UID THREAD completed"
            } else {
                "THREAD completed"
            },
        ));
        Ok(Outcome::done(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: u32, date: i64, subject: &str, mid: &str, refs: &[&str]) -> ThreadMsg {
        ThreadMsg {
            id,
            seq: id,
            date,
            base_subject: mailfleet_mime::base_subject(subject).to_lowercase(),
            is_reply: is_reply_or_forward(subject),
            message_id: (!mid.is_empty()).then(|| mid.to_string()),
            references: refs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn render(threads: Vec<Node>, msgs: &[ThreadMsg]) -> String {
        to_imap(threads, msgs)
            .iter()
            .map(|t| t.to_string())
            .collect::<String>()
    }

    #[test]
    fn reply_markers() {
        assert!(is_reply_or_forward("Re: hello"));
        assert!(is_reply_or_forward("RE : hello"));
        assert!(is_reply_or_forward("[list] Re: hello"));
        assert!(is_reply_or_forward("Re[2]: hello"));
        assert!(is_reply_or_forward("Fwd: hello"));
        assert!(is_reply_or_forward("hello (fwd)"));
        assert!(is_reply_or_forward("[Fwd: hello]"));
        assert!(!is_reply_or_forward("hello"));
        assert!(!is_reply_or_forward("[list] hello"));
        assert!(!is_reply_or_forward("Reply needed"));
        assert!(!is_reply_or_forward("Re hello"));
    }

    /// The shape of RFC 5256's ORDEREDSUBJECT example: one thread per base subject, the
    /// first message parent of the others, threads ordered by their first message's date.
    #[test]
    fn ordered_subject_groups_by_base_subject() {
        let msgs = vec![
            m(1, 100, "alpha", "", &[]),
            m(2, 200, "Re: alpha", "", &[]),
            m(3, 150, "beta", "", &[]),
            m(4, 300, "RE: [x] alpha", "", &[]),
            m(5, 120, "Fwd: beta", "", &[]),
            m(6, 50, "gamma", "", &[]),
            m(7, 400, "beta (fwd)", "", &[]),
        ];
        let out = render(ordered_subject(&msgs), &msgs);
        assert_eq!(out, "(6)(1 (2)(4))(5 (3)(7))");
    }

    #[test]
    fn ordered_subject_single_follower_is_a_chain() {
        let msgs = vec![m(1, 10, "a", "", &[]), m(2, 20, "Re: a", "", &[])];
        assert_eq!(render(ordered_subject(&msgs), &msgs), "(1 2)");
        assert_eq!(render(ordered_subject(&[]), &[]), "");
    }

    /// RFC 5256's example response shape `(2)(3 6 (4 23)(44 7 96))`: 3 is the root, 6
    /// replies to it, 4 and 44 reply to 6, 23 to 4, 7 to 44 and 96 to 7.
    #[test]
    fn references_builds_the_rfc_example_tree() {
        let msgs = vec![
            m(2, 10, "other", "m2", &[]),
            m(3, 20, "topic", "m3", &[]),
            m(4, 40, "Re: topic", "m4", &["m3", "m6"]),
            m(6, 30, "Re: topic", "m6", &["m3"]),
            m(7, 60, "Re: topic", "m7", &["m3", "m6", "m44"]),
            m(23, 50, "Re: topic", "m23", &["m3", "m6", "m4"]),
            m(44, 45, "Re: topic", "m44", &["m3", "m6"]),
            m(96, 70, "Re: topic", "m96", &["m3", "m6", "m44", "m7"]),
        ];
        assert_eq!(render(references(&msgs), &msgs), "(2)(3 6 (4 23)(44 7 96))");
    }

    /// A message whose parent is missing hangs under a dummy; two such siblings keep the
    /// dummy at the top (`((3)(5))`), a single one is promoted.
    #[test]
    fn references_dummies() {
        let msgs = vec![
            m(3, 10, "Re: x", "a", &["missing"]),
            m(5, 20, "Re: x", "b", &["missing"]),
            m(7, 30, "y", "c", &["gone"]),
        ];
        assert_eq!(render(references(&msgs), &msgs), "((3)(5))(7)");
    }

    /// Threads with the same base subject are merged: a reply under the original, two
    /// originals under a new dummy.
    #[test]
    fn references_merges_by_subject() {
        let msgs = vec![
            m(1, 10, "meeting", "a", &[]),
            m(2, 20, "Re: meeting", "b", &[]),
            m(3, 30, "lunch", "c", &[]),
            m(4, 40, "lunch", "d", &[]),
        ];
        assert_eq!(render(references(&msgs), &msgs), "(1 2)((3)(4))");
    }

    /// Loops in References, a message referring to itself, duplicate and missing
    /// Message-IDs: each message is threaded once and nothing hangs.
    #[test]
    fn references_survives_loops_and_duplicates() {
        let msgs = vec![
            m(1, 10, "a", "x", &["y"]),
            m(2, 20, "b", "y", &["x"]),
            m(3, 30, "c", "z", &["z"]),
            m(4, 40, "d", "x", &[]),
            m(5, 50, "e", "", &["x"]),
        ];
        let out = render(references(&msgs), &msgs);
        for n in 1..=5 {
            assert_eq!(out.matches(&n.to_string()).count(), 1, "{out}");
        }
        assert_eq!(out, "(2 1 5)(3)(4)");
    }

    /// A chain of 50,000 replies is threaded and rendered without recursion.
    #[test]
    fn deep_chains_do_not_overflow_the_stack() {
        let n = 50_000u32;
        let msgs: Vec<ThreadMsg> = (1..=n)
            .map(|i| {
                let refs = if i > 1 {
                    vec![format!("m{}", i - 1)]
                } else {
                    vec![]
                };
                ThreadMsg {
                    id: i,
                    seq: i,
                    date: i64::from(i),
                    base_subject: "s".into(),
                    is_reply: i > 1,
                    message_id: Some(format!("m{i}")),
                    references: refs,
                }
            })
            .collect();
        let threads = to_imap(references(&msgs), &msgs);
        assert_eq!(threads.len(), 1);
        let text = threads[0].to_string();
        assert!(text.starts_with("(1 2 3 ") && text.ends_with(" 50000)"));
    }
}
