"""Differential test: the same IMAP command scripts against Dovecot and against Mailfleet.

Every script in ``tests/imap-diff/*.imap`` (one per area: rev1 basics, SELECT/STATUS, FETCH,
SEARCH, CONDSTORE, LIST-EXTENDED, error cases...; the format is described in
``tests/imap-diff/README.md``) runs line by line over raw sockets against a throw-away Dovecot
(Debian's dovecot-imapd, configured by ``dovecot_server.py``) and a Mailfleet started in
embedded mode, each script as its own freshly created user, so scripts cannot disturb each
other. Most scripts first ``!include fixture.imap``, which APPENDs the same ten messages (from
``services/mime/tests/corpus``) with the same INTERNALDATE and flags.

Each command's answer is normalised (``imapwire.normalise_command``), then the two are
compared. Normalised away, because the servers may legitimately differ there:

* the greeting's and every OK/NO/BAD's human-readable text (status and response code name
  are kept), untagged ``OK`` responses that carry only text, and the continuation text;
* capability lists (``* CAPABILITY``, ``[CAPABILITY ...]``) and ``* ID`` contents;
* UIDVALIDITY values (also inside APPENDUID/COPYUID and STATUS), and the arguments of
  BADCHARSET and REFERRAL codes;
* MODSEQ and HIGHESTMODSEQ values: each becomes its rank among the modseqs of the same
  command, so equality and order within one answer are still compared;
* the order of untagged responses (compared as a sorted list), of the items within a FETCH
  response (a dict), and of flags in a flag list (a set); sequence sets (in ESEARCH ALL,
  VANISHED, COPYUID, APPENDUID, MODIFIED) are compared as the sets of numbers they denote;
* quoted string versus literal for the same bytes, atom versus quoted string for the tag of
  a LIST extended item (an astring, RFC 5258: ``CHILDINFO`` or ``"CHILDINFO"``), and the
  case of media type names in BODY/BODYSTRUCTURE (case-insensitive per RFC 2045);
* ``\\Recent``: dropped from flag lists, and RECENT responses and counts are not compared.
  Both servers keep it, but differ in when they report a changed count (Dovecot also after
  an EXPUNGE or MOVE, Mailfleet not in an IMAP4rev2 session); SEARCH RECENT/NEW/OLD are
  compared;
* the quota root's name (Dovecot: ``"User quota"``, Mailfleet: ``""``);
* an INTERNALDATE within 36 hours of now (set by an APPEND without a date).

The mailbox hierarchy separator is the same on both (Dovecot is configured with ``/``).

What still differs must be in ``EXPECTED_DIFFERENCES`` (key ``script:tag``) with its reason:
"mailfleet bug: ..." for a Mailfleet defect, anything else for a difference the RFCs allow or
a Dovecot-specific behaviour. The test fails on a difference that is not in the table and on a
table entry that no longer differs, so the table, and docs/imap.md's "Differences from Dovecot"
that lists it, stay true.

Skipped when ``/usr/sbin/dovecot`` (or ``$MAILFLEET_DOVECOT``) is missing or is not 2.3.
Run: ``MAILFLEET_BIN=$CARGO_TARGET_DIR/debug/mailfleet python3 -m pytest -q
tests/e2e/test_imap_dovecot_diff.py``; ``MAILFLEET_IMAPDIFF_REPORT=path`` also writes every
command's normalised answers from both servers to ``path``.
"""

from __future__ import annotations

import os
import pathlib
import pprint
import re

import pytest

import dovecot_server
from conftest import REPO, Server, mailfleet_bin
from imapwire import Connection, Literal, Result, capture_variables, normalise_command, parse_script, substitute

SCRIPTS = REPO / "tests" / "imap-diff"
CORPUS = REPO / "services" / "mime" / "tests" / "corpus"
PASSWORD = "Diff-Horse-Battery-9"
DOMAIN = "example.test"
MIN_COMMANDS = 300

# The capabilities both servers advertise after login, and the script that exercises each.
# The test fails if both servers start offering one that is not listed here.
COVERAGE = {
    "IMAP4REV1": "01-basic.imap",
    "LITERAL+": "12-append.imap",
    "SASL-IR": "01-basic.imap",
    "ID": "16-id-enable.imap",
    "ENABLE": "16-id-enable.imap",
    "IDLE": "17-idle.imap",
    "NAMESPACE": "15-namespace.imap",
    "UNSELECT": "19-unselect-close.imap",
    "UIDPLUS": "10-copy-move.imap",
    "MOVE": "10-copy-move.imap",
    "CONDSTORE": "09-condstore.imap",
    "QRESYNC": "09-condstore.imap",
    "SORT": "07-sort.imap",
    "QUOTA": "18-quota.imap",
    "STATUS=SIZE": "02-select-status.imap",
    "BINARY": "04-bodystructure-binary.imap",
    "SPECIAL-USE": "13-list.imap",
    "CHILDREN": "13-list.imap",
    "ESEARCH": "06-esearch.imap",
    "LIST-EXTENDED": "13-list.imap",
    "LIST-STATUS": "13-list.imap",
    "WITHIN": "05-search.imap",
    "NOTIFY": "29-notify.imap",
    "THREAD=ORDEREDSUBJECT": "24-thread.imap",
    "THREAD=REFERENCES": "24-thread.imap",
    "ESORT": "25-esort-context.imap",
    "CONTEXT=SEARCH": "25-esort-context.imap",
    "SEARCHRES": "26-searchres.imap",
    "MULTIAPPEND": "27-multiappend.imap",
    "SAVEDATE": "28-savedate-preview.imap",
    "PREVIEW": "28-savedate-preview.imap",
    "ACL": "31-acl.imap",
    "RIGHTS=TEXK": "31-acl.imap",
    "METADATA": "32-metadata.imap",
}

def verb_of(source: str) -> str:
    """The command name of a script line ("UID FETCH" for UID commands), upper-cased."""
    words = source.split()
    if words and words[0].startswith("2:"):
        words = words[1:] if words[0] == "2:" else [words[0][2:]] + words[1:]
    words = words[1:3]
    if not words:
        return ""
    if words[0].upper() == "UID" and len(words) > 1:
        return "UID " + words[1].upper()
    return words[0].upper()


# Response codes RFC 5530 and RFC 9051 section 7.1 leave optional, which the servers send in
# different places (Dovecot often answers NO without a code, Mailfleet says NONEXISTENT).
OPTIONAL_CODES = {
    "NONEXISTENT", "ALREADYEXISTS", "CLIENTBUG", "CANNOT", "SERVERBUG", "UNAVAILABLE",
    "NOPERM", "INUSE", "LIMIT", "PARSE", "HASCHILDREN", "EXPUNGEISSUED", "CONTACTADMIN",
}


def _drop_codes(result: tuple, source: str) -> tuple:
    verb = verb_of(source)
    status, code, untagged = result
    if code and code[0] in OPTIONAL_CODES:
        code = None
    return (status, code, untagged)


def _without_mailboxid(result: tuple, source: str) -> tuple:
    status, code, untagged = result
    if code and code[0] == "MAILBOXID":
        code = None
    untagged = tuple(u for u in untagged if not (u[0] == "OK" and u[1] and u[1][0] == "MAILBOXID"))
    return (status, code, untagged)


def _system_flags_only(result: tuple, source: str) -> tuple:
    verb = verb_of(source)
    status, code, untagged = result
    out = []
    for u in untagged:
        if u[0] == "FLAGS" or (u[0] == "OK" and u[1] and u[1][0] == "PERMANENTFLAGS"):
            if verb not in ("SELECT", "EXAMINE"):
                continue
            if u[0] == "FLAGS":
                u = ("FLAGS", tuple(f for f in u[1] if f.startswith("\\")))
            else:
                u = ("OK", ("PERMANENTFLAGS", tuple(f for f in u[1][1] if f.startswith("\\"))))
        out.append(u)
    return (status, code, tuple(sorted(out, key=repr)))


def _modseq_rank_only(result: tuple, source: str) -> tuple:
    verb = verb_of(source)
    def walk(x):
        if isinstance(x, str) and x.startswith("<modseq "):
            return "<modseq>"
        if isinstance(x, tuple):
            return tuple(walk(y) for y in x)
        return x

    status, code, untagged = result
    return (status, walk(code), tuple(sorted((walk(u) for u in untagged), key=repr)))


def _without_marked(result: tuple, source: str) -> tuple:
    verb = verb_of(source)
    status, code, untagged = result
    out = []
    for u in untagged:
        if u[0] in ("LIST", "LSUB"):
            u = (u[0], tuple(a for a in u[1] if a not in ("\\marked", "\\unmarked"))) + u[2:]
        out.append(u)
    return (status, code, tuple(sorted(out, key=repr)))


def _list_attributes_without(names: set[str], unless: str | None = None, only_if: str | None = None):
    """A rule dropping some LIST/LSUB attributes, except in commands that mention `unless`
    (and only in commands that mention `only_if`)."""

    def transform(result: tuple, source: str) -> tuple:
        if unless and unless in source.upper():
            return result
        if only_if and only_if not in source.upper():
            return result
        status, code, untagged = result
        out = []
        for u in untagged:
            if u[0] in ("LIST", "LSUB"):
                u = (u[0], tuple(a for a in u[1] if a not in names)) + u[2:]
            out.append(u)
        return (status, code, tuple(sorted(out, key=repr)))

    return transform


def _unsolicited_fetch_without_uid(result: tuple, source: str) -> tuple:
    verb = verb_of(source)
    status, code, untagged = result
    if verb in ("FETCH", "UID FETCH", "STORE", "UID STORE"):
        return result
    out = []
    for u in untagged:
        if u[0] == "FETCH":
            u = ("FETCH", u[1], tuple(item for item in u[2] if item[0] != "UID"))
        out.append(u)
    return (status, code, tuple(sorted(out, key=repr)))


def _rights_as_sets(result: tuple, source: str) -> tuple:
    """ACL and MYRIGHTS responses with each rights string's letters sorted."""
    status, code, untagged = result

    def letters(x):
        return "".join(sorted(x)) if isinstance(x, str) else x

    out = []
    for u in untagged:
        if isinstance(u, tuple) and u[:1] == ("ACL",):
            u = u[:2] + tuple(letters(x) if i % 2 else x for i, x in enumerate(u[2:]))
        elif isinstance(u, tuple) and u[:1] == ("MYRIGHTS",) and len(u) == 3:
            u = u[:2] + (letters(u[2]),)
        out.append(u)
    return (status, code, tuple(sorted(out, key=repr)))


def _metadata_entries_sorted(result: tuple, source: str) -> tuple:
    """METADATA responses with their (entry, value) pairs in name order."""
    status, code, untagged = result
    out = []
    for u in untagged:
        if isinstance(u, tuple) and u[:1] == ("METADATA",) and len(u) == 3 and isinstance(u[2], tuple):
            items = u[2]
            pairs = sorted(zip(items[0::2], items[1::2]), key=repr)
            u = u[:2] + (tuple(x for p in pairs for x in p),)
        out.append(u)
    return (status, code, tuple(sorted(out, key=repr)))


# Differences that recur across many commands, as transformations applied to both normalised
# answers when they differ: name -> (reason, transformation). A command whose answers become
# equal after some of these is covered by them. A rule that no command needs fails the test.
KNOWN_RULES = {
    "optional-response-codes": (
        "response codes such as NONEXISTENT, ALREADYEXISTS and CLIENTBUG are optional "
        "(RFC 5530); Mailfleet sends them where Dovecot often answers with text only",
        _drop_codes,
    ),
    "keywords-in-flags": (
        "Dovecot's FLAGS and PERMANENTFLAGS name every keyword the mailbox has known (kept "
        "after no message holds it any more, and added with a new FLAGS even by SEARCH KEYWORD "
        "of an unknown one); Mailfleet's name the keywords its messages hold. Both are allowed "
        "(RFC 9051 section 7.3.5)",
        _system_flags_only,
    ),
    "uid-in-unsolicited-fetch": (
        "Mailfleet adds UID to the FETCH responses that report another session's flag "
        "changes (at NOOP, IDLE...); the RFCs allow any data items in an unsolicited FETCH",
        _unsolicited_fetch_without_uid,
    ),
    "marked-attributes": (
        "Dovecot adds \\Marked and \\Unmarked to LIST responses; RFC 9051 section 7.3.1 "
        "makes them optional and Mailfleet does not track them",
        _without_marked,
    ),
    "children-attributes": (
        "Mailfleet always sends \\HasChildren or \\HasNoChildren; Dovecot leaves them out "
        "of LSUB and of extended LISTs without RETURN (CHILDREN). Both are allowed "
        "(RFC 5258 lets the server return them unasked)",
        _list_attributes_without({"\\haschildren", "\\hasnochildren"}),
    ),
    "subscribed-in-plain-list": (
        "Mailfleet marks subscribed mailboxes \\Subscribed in every LIST; Dovecot only when "
        "SUBSCRIBED is asked for. Unrequested attributes are allowed (RFC 5258)",
        _list_attributes_without({"\\subscribed"}, unless="SUBSCRIBED"),
    ),
    "special-use-unrequested": (
        "Mailfleet sends the SPECIAL-USE attributes in every LIST; Dovecot leaves them out of "
        "an extended LIST without RETURN (SPECIAL-USE). RFC 6154 allows both",
        _list_attributes_without(
            {"\\sent", "\\drafts", "\\junk", "\\trash", "\\archive"}, unless="SPECIAL-USE", only_if="LIST"
        ),
    ),
    "superiors-are-mailboxes": (
        "CREATE a/b/c and CREATE a/: Dovecot makes the missing superiors \\Noselect "
        "placeholders, Mailfleet makes them real mailboxes. RFC 9051 section 6.3.4 asks for "
        "the superiors to exist (SHOULD) and allows either",
        _list_attributes_without({"\\noselect"}),
    ),
    "rights-order": (
        "a rights string is a set (RFC 4314 section 2.1 gives no order): Dovecot writes the "
        "letters in the order they were granted, Mailfleet in one fixed order",
        _rights_as_sets,
    ),
    "metadata-order": (
        "the entries of a METADATA response come in no defined order (RFC 5464 section 4.4); "
        "Dovecot's order varies, Mailfleet's is by name",
        _metadata_entries_sorted,
    ),
    "mailboxid-codes": (
        "Mailfleet offers OBJECTID (RFC 8474) and names a mailbox's MAILBOXID in the OK of "
        "CREATE and in an untagged OK at SELECT/EXAMINE; Dovecot 2.3 has no OBJECTID",
        _without_mailboxid,
    ),
    "modseq-granularity": (
        "Dovecot enables modseq tracking for a mailbox lazily, giving every message that has "
        "not changed since the same MODSEQ; Mailfleet gives each APPEND its own. Both are "
        "valid (RFC 7162 only asks modseqs to grow with each change)",
        _modseq_rank_only,
    ),
}

# Rules and entries whose Dovecot side varies from run to run (Dovecot's METADATA entry order;
# its file-based acl_shared_dict, written after the SETACL answer, so the grantee's "Other
# Users" LIST may or may not lag one change behind; its NOTIFY MailboxName events for another
# session's CREATE/RENAME/DELETE, which usually do not arrive within the 5 s IDLE window but
# did in one CI run on a loaded machine). They must never cover a difference they do not
# describe, but not differing in one run is not an error.
VARYING = {
    "metadata-order",
    "29-notify.imap:n040",
    "29-notify.imap:n041",
    "29-notify.imap:n042",
    "31-acl.imap:p023",
    "31-acl.imap:p024",
    "31-acl.imap:p025",
    "31-acl.imap:p060",
}

# "script:tag" -> reason. "mailfleet bug: ..." entries are defects to fix in services/imap;
# the others are differences the RFCs allow. Every entry is also in docs/imap.md.
EXPECTED_DIFFERENCES: dict[str, str] = {
    # SELECT / STATUS
    "02-select-status.imap:b026": "SELECT without a mailbox name: both answer BAD, but Dovecot first closes the selected "
    "mailbox (OK [CLOSED]); Mailfleet does not run a command it cannot parse, so the mailbox "
    "stays selected",
    "02-select-status.imap:b027": "after b026 Mailfleet still has a mailbox selected, so this EXAMINE starts with OK "
    "[CLOSED]; Dovecot closed it at b026",
    # BINARY (RFC 3516)
    "04-bodystructure-binary.imap:d028": "BINARY[2.MIME] is not in RFC 3516's grammar (only part "
    "numbers): Mailfleet answers BAD, Dovecot serves the MIME header",
    # SEARCH
    # SORT (RFC 5256)
    # STORE and flags
    "08-store.imap:h027": "STORE 1 +FLAGS without a flag list is not in the grammar: Mailfleet "
    "answers BAD, Dovecot OK",
    "08-store.imap:h033": "STORE in a mailbox opened with EXAMINE: Mailfleet answers NO "
    "[READ-ONLY], Dovecot OK without changing anything; both allowed",
    "08-store.imap:h012": "+FLAGS ($important) after $Important was removed from every message "
    "(h015): Dovecot stores the spelling the mailbox first knew ($Important), Mailfleet, which "
    "keeps no keyword list apart from its messages', the one given; keywords are "
    "case-insensitive, so both are the same keyword (see rule keywords-in-flags)",
    # CONDSTORE / QRESYNC (RFC 7162)
    "09-condstore.imap:i030": "STORE -FLAGS (\\Draft) on a message without \\Draft: Mailfleet "
    "answers with a FETCH of the unchanged flags, Dovecot sends none; both allowed",
    # COPY / MOVE / EXPUNGE in a read-only mailbox
    "10-copy-move.imap:j020": "MOVE out of a mailbox opened with EXAMINE: Mailfleet answers NO "
    "[READ-ONLY] (a MOVE expunges), Dovecot moves the message",
    "11-expunge.imap:k015": "EXPUNGE in a mailbox opened with EXAMINE: Mailfleet answers NO "
    "[READ-ONLY], Dovecot OK without expunging; both allowed",
    "11-expunge.imap:k016": "UID EXPUNGE in a mailbox opened with EXAMINE: as k015",
    # APPEND
    "12-append.imap:l006": "APPEND date-time '1-Jan-2000 ...' (one-digit day without the leading "
    "space) is not in the grammar (date-day-fixed): Mailfleet answers BAD, Dovecot accepts it",
    "12-append.imap:l012": "APPEND with the date 32-Jan-2024: Mailfleet answers BAD, Dovecot "
    "accepts the impossible date",
    # LIST / LSUB (RFC 3501, RFC 5258)
    # CREATE / DELETE / RENAME
    "14-mailboxes.imap:n018": "DELETE Beta, created as the superior of Beta/Gamma/Delta: a "
    "\\Noselect placeholder in Dovecot (NO), a real mailbox in Mailfleet (OK); see rule "
    "superiors-are-mailboxes",
    # ACL (RFC 4314), other users' namespace
    "31-acl.imap:p009": "MYRIGHTS of a mailbox that does not exist: Dovecot answers OK with the "
    "rights the user would have, Mailfleet NO [NONEXISTENT] (RFC 4314 section 3.8 answers the "
    "rights on a mailbox; there is none)",
    "31-acl.imap:p023": "the grantee's LIST \"\" \"Other Users/*\" right after the owner's "
    "SETACL: Dovecot's acl_shared_dict (a file dict) is written late, so its list lags one ACL "
    "change behind (empty here, the revoked mailbox at p060); Mailfleet lists what the ACLs "
    "say at the time",
    "31-acl.imap:p024": "as p023 (LIST \"\" \"Other Users/%\")",
    "31-acl.imap:p025": "as p023 (LIST \"Other Users/\" \"%/%\")",
    "31-acl.imap:p060": "as p023: after DELETEACL Dovecot still lists the mailbox, Mailfleet "
    "no longer does (and SELECT of it fails in both, p061)",
    "31-acl.imap:p067": "MYRIGHTS with an extra argument: Mailfleet answers BAD (RFC 4314 "
    "section 3.8's grammar has one), Dovecot ignores it",
    # METADATA (RFC 5464)
    "32-metadata.imap:q052": "SETMETADATA with an empty entry list: Mailfleet answers BAD (RFC "
    "5464 section 5.4's grammar needs at least one entry), Dovecot OK",
    "14-mailboxes.imap:n036": "CREATE Lit after CREATE Lit/It: Dovecot turns its \\Noselect "
    "placeholder into a mailbox, Mailfleet's Lit already is one (NO [ALREADYEXISTS]); see rule "
    "superiors-are-mailboxes",
    "14-mailboxes.imap:n037": "SELECT Epsilon (the renamed superior Beta/Gamma): a \\Noselect "
    "placeholder in Dovecot (NO), a mailbox in Mailfleet (OK); same cause",
    "14-mailboxes.imap:n039": "RENAME Sent: Dovecot refuses (its Sent exists only in the "
    "configuration until first used: NO [NONEXISTENT]); Mailfleet renames it",
    "14-mailboxes.imap:n040": "after n039: Mailfleet lists Sent-Renamed with its \\Sent attribute, "
    "Dovecot still lists Sent",
    # Arguments the grammar does not allow, which Dovecot ignores
    "15-namespace.imap:o007": "NAMESPACE with an argument: Mailfleet BAD (the grammar has none), "
    "Dovecot ignores it",
    "19-unselect-close.imap:t017": "UNSELECT with an argument: Mailfleet BAD, Dovecot ignores it",
    "19-unselect-close.imap:t019": "after t017 and t018 (UNSELECT/CLOSE with an argument: BAD in Mailfleet, run by Dovecot) "
    "INBOX is still selected in Mailfleet, so this SELECT starts with OK [CLOSED]",
    "20-errors-syntax.imap:u004": "SELECT with extra arguments: Mailfleet BAD, Dovecot ignores them",
    "20-errors-syntax.imap:u005": "after u003 and u004 (SELECT with a bad argument list: Dovecot closes the selected "
    "mailbox, see b026) INBOX is still selected in Mailfleet, so this SELECT starts with OK "
    "[CLOSED]",
    "20-errors-syntax.imap:u016": "BODY[]<5> (a partial without length) is not in the grammar: "
    "Mailfleet BAD, Dovecot returns from octet 5 on",
    "23-errors-syntax-more.imap:u034": "NOOP with an argument: Mailfleet BAD, Dovecot ignores it",
    "23-errors-syntax-more.imap:u035": "CAPABILITY with an argument: Mailfleet BAD, Dovecot "
    "ignores it",
    "23-errors-syntax-more.imap:u036": "LOGOUT with an argument: Mailfleet BAD, Dovecot logs out",
    # ID / ENABLE
    "16-id-enable.imap:p003": "ID (\"name\") with no value: Mailfleet BAD (RFC 2971 needs "
    "field/value pairs), Dovecot ignores it",
    "16-id-enable.imap:p004": "ENABLE before login: Mailfleet BAD (RFC 5161: "
    "authenticated state only), Dovecot OK with an empty ENABLED",
    "16-id-enable.imap:p008": "ID without its argument: Mailfleet BAD, Dovecot OK",
    "16-id-enable.imap:p011": "ENABLE of an unknown extension: Mailfleet sends an empty "
    "'* ENABLED', Dovecot none; both allowed",
    "16-id-enable.imap:p012": "ENABLE without an argument: Mailfleet BAD (the grammar needs one), "
    "Dovecot OK",
    "16-id-enable.imap:p014": "ENABLE IMAP4rev2: Mailfleet speaks IMAP4rev2, Dovecot 2.3 does not",
    # QUOTA (RFC 9208)
    "18-quota.imap:s002": "quota usage in KiB: 4732 bytes are 4 for Mailfleet (rounded down), 5 "
    "for Dovecot (rounded up); RFC 9208 does not say how to round",
    "18-quota.imap:s003": "quota rounding, as s002",
    "18-quota.imap:s007": "quota rounding, as s002",
    "18-quota.imap:s010": "quota rounding, as s002",
    "18-quota.imap:s004": "GETQUOTAROOT of a nonexistent mailbox: Mailfleet NO [NONEXISTENT], "
    "Dovecot answers with the user's quota root",
    "21-errors-state.imap:v028": "GETQUOTAROOT of a nonexistent mailbox, as s004",
    # ESORT, CONTEXT=SEARCH, PARTIAL, SEARCHRES
    "25-esort-context.imap:e047": "SEARCH RETURN (PARTIAL -1:-3): negative ranges (the last results) are "
    "RFC 9394's PARTIAL, which Mailfleet offers; Dovecot 2.3 implements RFC 5267's positive ranges only (BAD)",
    "25-esort-context.imap:e048": "UID SEARCH RETURN (PARTIAL -2:-4 COUNT): as e047",
    "26-searchres.imap:s056": "SEARCH $ after a SEARCH RETURN (SAVE) that failed on its syntax (s055, BAD): "
    "RFC 5182 section 2.1 has a failed SEARCH with SAVE empty the saved result, as Mailfleet does; "
    "Dovecot 2.3 keeps the previous one",
    # Two sessions
    "22-sessions.imap:w005": "another session's flag change is reported by Dovecot during FETCH, "
    "by Mailfleet at the next NOOP; servers may hold it back",
    "22-sessions.imap:x007": "Mailfleet adds UID to the FETCH reporting the other session's flag "
    "change inside this STORE (see rule uid-in-unsolicited-fetch)",
    "22-sessions.imap:w010": "UID FETCH 1 FLAGS right after another session cleared \\Flagged: "
    "both report the change and answer with the current flags; Mailfleet adds UID to the "
    "FETCH reporting the change (see rule uid-in-unsolicited-fetch)",
    # NOTIFY (RFC 5465)
    "29-notify.imap:n010": "BADEVENT's event list: RFC 5465's grammar puts it in parentheses (Mailfleet lists the events it supports); Dovecot names the unsupported event without parentheses",
    "29-notify.imap:n011": "BADEVENT's event list, as n010",
    "29-notify.imap:n014": "NOTIFY SET without an event group is not in RFC 5465's grammar (event-groups is 1*event-group): Mailfleet answers BAD, Dovecot OK",
    "29-notify.imap:n035": "another session's flag change during IDLE with NOTIFY FlagChange: Dovecot adds MODSEQ though the client never enabled CONDSTORE (RFC 7162 section 3.1 sends MODSEQ only after a CONDSTORE enabling command); Mailfleet adds UID (see rule uid-in-unsolicited-fetch)",
    "29-notify.imap:n040": "NOTIFY MailboxName: another session's CREATE is reported by Mailfleet (RFC 5465); Dovecot 2.3 usually sent nothing within 5 s (varies: see VARYING)",
    "29-notify.imap:n041": "NOTIFY MailboxName: another session's RENAME, reported by Mailfleet with OLDNAME, as n040",
    "29-notify.imap:n042": "NOTIFY MailboxName: another session's DELETE, reported by Mailfleet with \\NonExistent, as n040",
    # Modified UTF-7 names
    "30-mutf7.imap:u028": "quota usage in KiB: two 16-byte messages are 0 for Mailfleet (rounded down), 1 for Dovecot (rounded up), as 18-quota.imap:s002",
    # SAVEDATE / PREVIEW
    "28-savedate-preview.imap:sp023": "SEARCH SAVEDON 31-Feb-2024 (an impossible date): Mailfleet "
    "answers BAD, as for ON and for APPEND (see l012), Dovecot searches and finds nothing",
    "28-savedate-preview.imap:sp048": "FETCH PREVIEW (FUZZY): FUZZY is not a modifier of RFC 8970 "
    "(only LAZY is; PREVIEW=FUZZY named an algorithm in its drafts): Mailfleet answers BAD, "
    "Dovecot serves the preview",
}


# ---------------------------------------------------------------------------------------------
# Servers


def _scripts() -> list[pathlib.Path]:
    return sorted(p for p in SCRIPTS.glob("*.imap") if p.name != "fixture.imap")


def _user(script: pathlib.Path) -> str:
    return f"alice{script.name.split('-', 1)[0]}@{DOMAIN}"


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    if not os.access(dovecot_server.DOVECOT, os.X_OK):
        pytest.skip(f"{dovecot_server.DOVECOT} is not installed (Debian package dovecot-imapd)")
    if dovecot_server.version()[:2] != (2, 3):
        pytest.skip("the Dovecot configuration is written for Dovecot 2.3")
    if not os.path.exists(mailfleet_bin()):
        pytest.skip(f"no mailfleet binary at {mailfleet_bin()} (set MAILFLEET_BIN)")
    users = {_user(s): PASSWORD for s in _scripts()}
    # The grantee of 31-acl.imap's shared mailboxes (its second connection).
    users["bob31@" + DOMAIN] = PASSWORD
    dovecot = dovecot_server.Dovecot(users)
    mailfleet = Server(
        tmp_path_factory.mktemp("imapdiff") / "data",
        extra_env={
            # Both servers are on loopback; LOGIN without STARTTLS keeps the scripts identical.
            "MAILFLEET_IMAP__ALLOW_PLAINTEXT_AUTH": "true",
            "MAILFLEET_IMAP__STARTTLS": "false",
            # The scripts' deliberate failed logins must not trip the per-IP throttle (and
            # Dovecot has none configured either).
            "MAILFLEET_AUTH__MAX_FAILURES_PER_IP": "1000",
            "MAILFLEET_AUTH__MAX_FAILURES_PER_ACCOUNT": "1000",
            "MAILFLEET_AUTH__DELAY_BASE_MS": "0",
        },
    )
    try:
        mailfleet.cli("domain", "add", DOMAIN)
        for user in users:
            mailfleet.cli("user", "add", user, "--quota", "1G", "--password-stdin", stdin=PASSWORD + "\n")
        mailfleet.start()
        yield {"dovecot": dovecot.port, "mailfleet": mailfleet.imap_port}
    finally:
        mailfleet.stop()
        dovecot.stop()


# ---------------------------------------------------------------------------------------------
# Running a script

# Commands that make the session use CONDSTORE (RFC 7162 section 3.1).
CONDSTORE_ENABLING = re.compile(r"\b(CONDSTORE|QRESYNC|MODSEQ|CHANGEDSINCE|UNCHANGEDSINCE|HIGHESTMODSEQ)\b", re.I)


class Run:
    """One script against one server: results by key, in order."""

    def __init__(self, port: int, user: str) -> None:
        self.port = port
        self.variables = {"USER": user, "PASS": PASSWORD}
        self.conns: dict[int, Connection] = {}
        self.results: dict[str, tuple[str, Result, list[bytes]]] = {}
        self.greetings = 0
        # Connections whose session has used CONDSTORE (see normalise_command).
        self.condstore: set[int] = set()

    def connect(self, n: int) -> Connection:
        if n not in self.conns:
            c = Connection(self.port)
            self.conns[n] = c
            self.greetings += 1
            self.record(f"<greeting {self.greetings}>", "(connect)", [c.greeting], "*")
        return self.conns[n]

    def record(self, key: str, source: str, responses: list[bytes], tag: str, conn: int = 1) -> None:
        assert key not in self.results, f"{key} twice"
        capture_variables(responses, self.variables)
        if tag == "*":
            # A greeting: only its status counts (OK, PREAUTH or BYE).
            status = responses[0].split(b" ")[1].decode().upper() if responses else "<none>"
            self.results[key] = (source, Result(status, None, ()), responses)
        else:
            result = normalise_command(tag, responses, condstore=conn in self.condstore, verb=verb_of(source))
            self.results[key] = (source, result, responses)

    def run(self, steps, prefix: str = "") -> None:
        open_cmd: dict[int, tuple[str, str]] = {}
        for step in steps:
            if step.kind == "reconnect":
                if 1 in self.conns:
                    self.conns.pop(1).close()
                self.condstore.discard(1)
                self.connect(1)
                continue
            if step.kind == "include":
                self.run(parse_script(SCRIPTS / step.tag, CORPUS, counted=False), prefix=step.tag + "/")
                continue
            conn = self.connect(step.conn)
            if step.kind == "continue":
                tag, source = open_cmd.pop(step.conn)
                responses = conn.send_continuation(step.parts[0], step.wait_untagged)
            else:
                assert step.conn not in open_cmd, f"line {step.line_no}: command still waiting for '>'"
                tag, source = step.tag, step.source
                if CONDSTORE_ENABLING.search(source):
                    self.condstore.add(step.conn)
                parts = [
                    substitute(p, self.variables)
                    if isinstance(p, bytes)
                    else Literal(substitute(p.data, self.variables), p.non_sync)
                    for p in step.parts
                ]
                responses = conn.send_command(step.tag, parts)
            if responses is None:
                open_cmd[step.conn] = (tag, source)
                continue
            self.record(prefix + tag, source, responses, tag, step.conn)
        assert not open_cmd, f"commands left waiting for a continuation line: {open_cmd}"

    def close(self) -> None:
        for c in self.conns.values():
            c.close()


def run_script(port: int, script: pathlib.Path) -> Run:
    r = Run(port, _user(script))
    try:
        r.connect(1)
        r.run(parse_script(script, CORPUS))
    finally:
        r.close()
    return r


def _show(raw: list[bytes]) -> str:
    out = []
    for line in raw:
        text = line.decode("utf-8", "replace")
        out.append(text if len(text) < 400 else text[:400] + "...")
    return "\n      ".join(out)


# ---------------------------------------------------------------------------------------------
# Tests


def test_scripts_send_enough_commands():
    """The scripts hold at least MIN_COMMANDS commands, fixture loading not counted."""
    total = sum(
        1 for s in _scripts() for step in parse_script(s, CORPUS) if step.kind == "command"
    )
    assert total >= MIN_COMMANDS, f"only {total} commands in {SCRIPTS}"


def test_docs_list_every_difference():
    """docs/imap.md's "Differences from Dovecot" names every rule and table entry, and no other."""
    doc = (REPO / "docs" / "imap.md").read_text()
    section = doc.split("## Differences from Dovecot", 1)[1]
    missing = [k for k in list(KNOWN_RULES) + list(EXPECTED_DIFFERENCES) if f"`{k}`" not in section]
    assert not missing, f"not in docs/imap.md: {missing}"
    listed = set(re.findall(r"^\| `([0-9][0-9]-[^`]+\.imap:[^`]+)`", section, re.M))
    extra = sorted(listed - set(EXPECTED_DIFFERENCES))
    assert not extra, f"docs/imap.md lists differences the test does not expect: {extra}"


def test_every_shared_capability_has_a_script(servers):
    caps = {}
    user = _user(_scripts()[0])
    for name, port in servers.items():
        c = Connection(port)
        try:
            login = c.send_command("a", [f"a LOGIN {user} {PASSWORD}".encode()])
            assert login and login[-1].startswith(b"a OK"), (name, login)
            responses = c.send_command("b", [b"b CAPABILITY"])
        finally:
            c.close()
        line = next(x for x in responses if x.upper().startswith(b"* CAPABILITY "))
        caps[name] = {w.decode().upper() for w in line.split()[2:]}
    shared = caps["dovecot"] & caps["mailfleet"]
    missing = sorted(c for c in shared if c not in COVERAGE and not c.startswith("AUTH="))
    assert not missing, f"both servers offer {missing}: add a script and list it in COVERAGE"
    for cap, script in COVERAGE.items():
        assert (SCRIPTS / script).exists(), f"{cap}: {script} missing"


def test_dovecot_and_mailfleet_answer_alike(servers):
    differences: dict[str, str] = {}
    rules_used: set[str] = set()
    keys_seen: set[str] = set()
    report = []
    for script in _scripts():
        runs = {name: run_script(port, script) for name, port in servers.items()}
        dov, mf = runs["dovecot"].results, runs["mailfleet"].results
        for key in list(dov) + [k for k in mf if k not in dov]:
            full = f"{script.name}:{key}"
            keys_seen.add(full)
            d, m = dov.get(key), mf.get(key)
            source = (d or m)[0]
            dn = d[1].as_tuple() if d else None
            mn = m[1].as_tuple() if m else None
            report.append(f"{full}  {source}\n  dovecot:   {dn}\n  mailfleet: {mn}")
            if dn != mn and dn and mn and full not in EXPECTED_DIFFERENCES:
                for rule, (_, transform) in KNOWN_RULES.items():
                    dt, mt = transform(dn, source), transform(mn, source)
                    if (dt, mt) != (dn, mn):
                        rules_used.add(rule)
                    dn, mn = dt, mt
                    if dn == mn:
                        break
            if dn != mn:
                differences[full] = (
                    f"{full}: {source}\n"
                    f"  dovecot:   {pprint.pformat(dn, width=200)}\n"
                    f"  mailfleet: {pprint.pformat(mn, width=200)}\n"
                    f"  dovecot raw:\n      {_show(d[2]) if d else '-'}\n"
                    f"  mailfleet raw:\n      {_show(m[2]) if m else '-'}"
                )
    if os.environ.get("MAILFLEET_IMAPDIFF_REPORT"):
        pathlib.Path(os.environ["MAILFLEET_IMAPDIFF_REPORT"]).write_text("\n".join(report) + "\n")
    unexpected = [text for key, text in differences.items() if key not in EXPECTED_DIFFERENCES]
    stale = [
        f"{key} ({reason})"
        for key, reason in EXPECTED_DIFFERENCES.items()
        if key not in differences and key not in VARYING
    ]
    unknown = [k for k in EXPECTED_DIFFERENCES if k not in keys_seen]
    stale += [
        f"rule {name}" for name in KNOWN_RULES if name not in rules_used and name not in VARYING
    ]
    problems = []
    if unexpected:
        problems.append(f"{len(unexpected)} differences not in EXPECTED_DIFFERENCES:\n\n" + "\n\n".join(unexpected))
    if stale:
        problems.append("EXPECTED_DIFFERENCES entries that no longer differ (remove them here and "
                        "in docs/imap.md):\n  " + "\n  ".join(stale))
    if unknown:
        problems.append("EXPECTED_DIFFERENCES keys naming no command: " + ", ".join(unknown))
    assert not problems, "\n\n".join(problems)
