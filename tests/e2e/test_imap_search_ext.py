"""THREAD, ESORT, CONTEXT=SEARCH, CONTEXT=SORT, PARTIAL and SEARCHRES against a running Mailfleet, with
Python's imaplib (RFC 5256, 5267, 9394, 5182)."""

import imaplib
import ssl

from conftest import PASSWORD

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE

# imaplib refuses commands it does not know.
imaplib.Commands.setdefault("CANCELUPDATE", ("SELECTED",))


def login(server, user="alice@example.test"):
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    c.starttls(ssl_context=CTX)
    c.login(user, PASSWORD)
    return c


def msg(mid, subject, date, refs=None, irt=None):
    head = f"From: a@example.test\r\nSubject: {subject}\r\nDate: {date}\r\n"
    if mid:
        head += f"Message-ID: <{mid}@t.test>\r\n"
    if refs:
        head += "References: " + " ".join(f"<{r}@t.test>" for r in refs) + "\r\n"
    if irt:
        head += f"In-Reply-To: <{irt}@t.test>\r\n"
    return (head + "\r\nbody\r\n").encode()


def populate(c):
    """Seven messages: a thread of four (root, two replies, a reply to a reply), two
    replies to a missing parent, and a message with the root's subject but no references."""
    msgs = [
        msg("root", "Plans", "Mon, 12 Feb 2024 10:00:00 +0000"),
        msg("r1", "Re: Plans", "Mon, 12 Feb 2024 11:00:00 +0000", refs=["root"]),
        msg("o1", "Re: Orphan", "Mon, 12 Feb 2024 09:00:00 +0000", refs=["missing"]),
        msg("r2", "Re: Plans", "Mon, 12 Feb 2024 12:00:00 +0000", refs=["root", "r1"]),
        msg("o2", "Re: Orphan", "Mon, 12 Feb 2024 09:30:00 +0000", refs=["missing"]),
        msg("r3", "RE: Plans", "Mon, 12 Feb 2024 13:00:00 +0000", irt="root"),
        msg(None, "Lunch", "Mon, 12 Feb 2024 08:00:00 +0000"),
    ]
    for i, m in enumerate(msgs):
        flags = "(\\Seen)" if i % 2 == 0 else "()"
        typ, _ = c.append("INBOX", flags, None, m)
        assert typ == "OK"
    typ, _ = c.select("INBOX")
    assert typ == "OK"


def status_of(c, *args):
    """The status of a command; imaplib raises on BAD."""
    try:
        typ, _ = c._simple_command(*args)
        return typ
    except imaplib.IMAP4.error:
        return "BAD"


def esearch(c):
    return c.untagged_responses.pop("ESEARCH", [])


def test_capabilities_are_advertised(server):
    c = login(server)
    caps = set(c.capabilities)
    for cap in (
        "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "ESORT", "CONTEXT=SEARCH", "CONTEXT=SORT", "PARTIAL",
        "SEARCHRES",
    ):
        assert cap in caps, cap
    c.logout()


def test_thread_references_and_orderedsubject(server):
    c = login(server)
    populate(c)
    typ, data = c.thread("REFERENCES", "UTF-8", "ALL")
    assert typ == "OK"
    # The Lunch message is the oldest; the orphans hang under a dummy parent; 6 answers
    # the root through In-Reply-To, 4 answers 2 through References.
    assert data == [b"(7)((3)(5))(1 (2 4)(6))"]
    typ, data = c.uid("THREAD", "REFERENCES", "UTF-8", "UID", "2:7")
    assert typ == "OK"
    assert data == [b"(7)((3)(5))((2 4)(6))"]  # 1 is left out: 2 and 6 keep a dummy parent
    typ, data = c.thread("ORDEREDSUBJECT", "UTF-8", "ALL")
    assert typ == "OK"
    assert data == [b"(7)(3 5)(1 (2)(4)(6))"]
    typ, data = c.thread("REFERENCES", "UTF-8", "SEEN")
    assert data == [b"(7)((3)(5))(1)"]
    typ, data = c.thread("REFERENCES", "UTF-8", "NOT", "ALL")
    assert typ == "OK" and data[0] in (None, b"")
    assert status_of(c, "THREAD", "BOGUS", "UTF-8", "ALL") == "BAD"
    c.logout()


def test_esort_and_partial(server):
    c = login(server)
    populate(c)
    typ, _ = c._simple_command("SORT", "RETURN", "(MIN MAX COUNT ALL)", "(DATE)", "UTF-8", "ALL")
    assert typ == "OK"
    [line] = esearch(c)
    # Sort order by date: 7, 3, 5, 1, 2, 4, 6; MIN and MAX are the first and the last.
    assert line.endswith(b"MIN 7 MAX 6 ALL 7,3,5,1:2,4,6 COUNT 7"), line
    typ, _ = c._simple_command("UID", "SORT", "RETURN", "(PARTIAL 2:3)", "(DATE)", "UTF-8", "ALL")
    assert typ == "OK"
    [line] = esearch(c)
    assert line.endswith(b"UID PARTIAL (2:3 3,5)"), line
    typ, _ = c._simple_command("SEARCH", "RETURN", "(PARTIAL -1:-2 COUNT)", "ALL")
    [line] = esearch(c)
    assert line.endswith(b"PARTIAL (-1:-2 6:7) COUNT 7"), line
    typ, _ = c._simple_command("SEARCH", "RETURN", "(PARTIAL 9:10)", "ALL")
    [line] = esearch(c)
    assert line.endswith(b"PARTIAL (9:10 NIL)"), line
    for bad in ("(PARTIAL 1:2 ALL)", "(PARTIAL -1:2)", "(PARTIAL 0:2)"):
        assert status_of(c, "SEARCH", "RETURN", bad, "ALL") == "BAD", bad
    c.logout()


def test_searchres_saved_result(server):
    c = login(server)
    populate(c)
    typ, _ = c._simple_command("SEARCH", "RETURN", "(SAVE)", "SEEN")
    assert typ == "OK"
    assert esearch(c) == []  # SAVE alone returns nothing
    typ, data = c.fetch("$", "(UID)")
    assert typ == "OK"
    assert sorted(int(d.split()[0]) for d in data) == [1, 3, 5, 7]
    typ, data = c.store("$", "+FLAGS", "(\\Flagged)")
    assert typ == "OK"
    typ, data = c.search(None, "FLAGGED")
    assert data == [b"1 3 5 7"]
    # With MIN and MAX only, those two are saved (RFC 5182 section 2.4).
    c._simple_command("SEARCH", "RETURN", "(SAVE MIN MAX)", "UNSEEN")
    assert esearch(c)[-1].endswith(b"MIN 2 MAX 6")
    typ, data = c.search(None, "$")
    assert data == [b"2 6"]
    # PARTIAL with SAVE saves the window (RFC 9394), used by a later UID FETCH.
    c._simple_command("UID", "SEARCH", "RETURN", "(SAVE PARTIAL 2:3)", "ALL")
    esearch(c)
    typ, data = c.uid("FETCH", "$", "(FLAGS)")
    assert sorted(int(d.split(b"UID ")[1].split()[0]) for d in data) == [2, 3]
    # The saved result follows expunges: message 1 goes, the others stay.
    c._simple_command("SEARCH", "RETURN", "(SAVE)", "1:3")
    c.store("1", "+FLAGS", "(\\Deleted)")
    c.expunge()
    typ, data = c.search(None, "$")
    assert data == [b"1 2"]
    typ, data = c.uid("SEARCH", "$")
    assert data == [b"2 3"]
    # A failed SEARCH with SAVE empties it; so does SELECT.
    typ, _ = c._simple_command("SEARCH", "RETURN", "(SAVE)", "CHARSET", "X-UNKNOWN", "ALL")
    assert typ == "NO"
    typ, data = c.search(None, "$")
    assert data[0] in (None, b"")
    c._simple_command("SEARCH", "RETURN", "(SAVE)", "ALL")
    c.select("INBOX")
    typ, data = c.search(None, "$")
    assert data[0] in (None, b"")
    typ, data = c.fetch("$", "(UID)")
    assert typ == "OK" and data[0] in (None, b"")
    # A SEARCH with SAVE may use the previous result in its criteria (RFC 5182 section 2.2).
    c._simple_command("SEARCH", "RETURN", "(SAVE)", "SEEN")
    c._simple_command("SEARCH", "RETURN", "(SAVE ALL)", "$", "UNSEEN")
    lines = esearch(c)
    assert lines and all(b" ALL " not in line for line in lines), lines
    typ, data = c.search(None, "$")
    assert data[0] in (None, b"")
    c._simple_command("SEARCH", "RETURN", "(SAVE)", "SEEN")
    c._simple_command("SEARCH", "RETURN", "(SAVE)", "OR", "$", "FLAGGED")
    typ, data = c.search(None, "$")
    _, expected = c.search(None, "OR", "SEEN", "FLAGGED")
    assert data == expected
    # COPY and MOVE of $.
    c._simple_command("SEARCH", "RETURN", "(SAVE)", "SUBJECT", "orphan")
    typ, _ = c.copy("$", "Archive")
    assert typ == "OK"
    typ, _ = c._simple_command("MOVE", "$", "Trash")
    assert typ == "OK"
    typ, data = c.status("Archive", "(MESSAGES)")
    assert b"MESSAGES 2" in data[0]
    typ, data = c.status("Trash", "(MESSAGES)")
    assert b"MESSAGES 2" in data[0]
    c.logout()


def test_context_update_and_cancelupdate(server):
    c = login(server)
    populate(c)
    other = login(server)
    other.select("INBOX")
    typ, _ = c._simple_command("SEARCH", "RETURN", "(UPDATE ALL)", "FLAGGED")
    assert typ == "OK"
    [line] = esearch(c)
    assert b"ALL" not in line  # no message is flagged: ALL is left out
    typ, _ = c._simple_command("UID", "SEARCH", "RETURN", "(UPDATE)", "UNSEEN")
    assert typ == "OK"
    esearch(c)
    # Another session flags message 2 and sees message 4: ADDTO for the first search,
    # REMOVEFROM for the second (by UID).
    other.store("2", "+FLAGS", "(\\Flagged)")
    other.store("4", "+FLAGS", "(\\Seen)")
    c.noop()
    updates = esearch(c)
    assert any(u.endswith(b"ADDTO (0 2)") for u in updates), updates
    assert any(u.endswith(b"UID REMOVEFROM (0 4)") for u in updates), updates
    # A new message matching both.
    other.append("INBOX", "(\\Flagged)", None, msg("n", "new", "Tue, 13 Feb 2024 10:00:00 +0000"))
    c.noop()
    updates = esearch(c)
    assert any(u.endswith(b"ADDTO (0 8)") and b"UID" not in u for u in updates), updates
    assert any(u.endswith(b"UID ADDTO (0 8)") for u in updates), updates
    # This session's own EXPUNGE: REMOVEFROM comes before the EXPUNGE response.
    c.store("2", "+FLAGS", "(\\Deleted)")
    esearch(c)
    typ, data = c._simple_command("EXPUNGE")
    assert typ == "OK"
    updates = esearch(c)
    assert any(u.endswith(b"REMOVEFROM (0 2)") and b"UID" not in u for u in updates), updates
    # CANCELUPDATE of every live search; an unknown tag fails and cancels nothing.
    typ, _ = c._simple_command("CANCELUPDATE", '"nonexistent"')
    assert typ == "NO"
    c.logout()
    other.logout()


def test_context_limit_and_cancel(server):
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    c.starttls(ssl_context=CTX)
    c.login("alice@example.test", PASSWORD)
    populate(c)
    tags = []
    for _ in range(9):
        tag = c._new_tag().decode()
        # Send by hand so the tag is known for CANCELUPDATE.
        c.tagged_commands[tag.encode()] = None
        c.send(f"{tag} SEARCH RETURN (UPDATE) ALL\r\n".encode())
        typ, _ = c._get_tagged_response(tag.encode())
        assert typ == "OK"
        tags.append(tag)
    # The ninth search is answered but gets no updates (RFC 5267: NO [NOUPDATE "tag"]).
    noupdate = [r for r in c.untagged_responses.get("NO", []) if b"NOUPDATE" in r]
    assert noupdate and tags[8].encode() in noupdate[-1]
    typ, _ = c._simple_command("CANCELUPDATE", *[f'"{t}"' for t in tags[:8]])
    assert typ == "OK"
    # Cancelled: a change sends no ESEARCH any more.
    esearch(c)
    c.store("1", "+FLAGS", "(\\Flagged)")
    c.noop()
    assert esearch(c) == []
    typ, _ = c._simple_command("CANCELUPDATE", f'"{tags[0]}"')
    assert typ == "NO"
    c.logout()


def raw(c, tag, command):
    """Sends one command line on the (TLS) socket and returns every response line up to and
    including the tagged one, in order (imaplib's own dispatch would sort them by kind)."""
    c.send(f"{tag} {command}\r\n".encode())
    lines = []
    while True:
        line = c.readline().rstrip(b"\r\n")
        lines.append(line)
        if line.startswith(f"{tag} ".encode()):
            return lines


def test_context_sort_positions(server):
    """CONTEXT=SORT (RFC 5267 section 4.3): ADDTO and REMOVEFROM of a live SORT carry the
    position in the sorted list; REMOVEFROM of an expunged message comes before its EXPUNGE."""
    c = login(server)
    populate(c)  # by DATE: 7 3 5 1 2 4 6; unseen: 2 4 6
    other = login(server)
    other.select("INBOX")
    r = raw(c, "s1", "UID SORT RETURN (UPDATE ALL) (DATE) UTF-8 UNSEEN")
    assert r[-1].startswith(b"s1 OK") and b'* ESEARCH (TAG "s1") UID ALL 2,4,6' in r, r
    r = raw(c, "s2", "SORT RETURN (UPDATE PARTIAL 1:2) (REVERSE DATE) UTF-8 ALL")
    assert r[-1].startswith(b"s2 OK") and b'* ESEARCH (TAG "s2") PARTIAL (1:2 6,4)' in r, r
    # A new unseen message dated 10:30: first of s1 (before 2 at 11:00), fourth of s2.
    typ, _ = other.append("INBOX", "()", None, msg("n", "New", "Mon, 12 Feb 2024 10:30:00 +0000"))
    assert typ == "OK"
    r = raw(c, "n1", "NOOP")
    assert b'* ESEARCH (TAG "s1") UID ADDTO (1 8)' in r, r
    assert b'* ESEARCH (TAG "s2") ADDTO (4 8)' in r, r
    assert r.index(b"* 8 EXISTS") < r.index(b'* ESEARCH (TAG "s2") ADDTO (4 8)'), r
    # Message 4 is seen in the other session: third in s1 (8 2 4 6).
    other.store("4", "+FLAGS", "(\\Seen)")
    r = raw(c, "n2", "NOOP")
    assert b'* ESEARCH (TAG "s1") UID REMOVEFROM (3 4)' in r, r
    # Message 7 (the oldest, last of s2) expunged by this session.
    raw(c, "d1", "STORE 7 +FLAGS.SILENT (\\Deleted)")
    r = raw(c, "x1", "EXPUNGE")
    assert r[-1].startswith(b"x1 OK"), r
    assert r.index(b'* ESEARCH (TAG "s2") REMOVEFROM (8 7)') < r.index(b"* 7 EXPUNGE"), r
    r = raw(c, "c1", 'CANCELUPDATE "s1" "s2"')
    assert r[-1].startswith(b"c1 OK"), r
    other.store("2", "+FLAGS", "(\\Seen)")
    r = raw(c, "n3", "NOOP")
    assert not any(x.startswith(b"* ESEARCH") for x in r), r
    c.logout()
    other.logout()
