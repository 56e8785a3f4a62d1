"""IMAP with Python's imaplib against a running Mailfleet."""

import imaplib
import re
import smtplib
import socket
import ssl
import threading
import time

import pytest

from conftest import PASSWORD

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def deliver(server, rcpt, subject, body="Hello.\r\n", extra=b""):
    msg = (
        f"From: Sender <sender@remote.test>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@remote.test>\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    ).encode() + extra + b"\r\n" + body.encode()
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail("sender@remote.test", [rcpt], msg)
    return msg


MULTIPART = (
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n'
)
MULTIPART_BODY = (
    "--XYZ\r\n"
    "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
    "Part one text.\r\n"
    "--XYZ\r\n"
    'Content-Type: application/octet-stream; name="a.bin"\r\n'
    "Content-Transfer-Encoding: base64\r\n"
    'Content-Disposition: attachment; filename="a.bin"\r\n\r\n'
    "AAECAwQF\r\n"
    "--XYZ--\r\n"
)


def login(server, user="alice@example.test", tls=True):
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    if tls:
        c.starttls(ssl_context=CTX)
    c.login(user, PASSWORD)
    return c


def test_login_requires_tls_and_refuses_bad_password(server):
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    assert "LOGINDISABLED" in c.capabilities
    with pytest.raises(imaplib.IMAP4.error):
        c.login("alice@example.test", PASSWORD)
    c.starttls(ssl_context=CTX)
    assert "AUTH=PLAIN" in c.capabilities
    with pytest.raises(imaplib.IMAP4.error):
        c.login("alice@example.test", "wrong password")
    c.logout()
    s = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=CTX, timeout=30)
    typ, _ = s.authenticate("PLAIN", lambda _: f"\0alice@example.test\0{PASSWORD}".encode())
    assert typ == "OK"
    s.logout()


def test_full_session(server):
    deliver(server, "alice@example.test", "first message")
    deliver(server, "alice@example.test", "second with parts", MULTIPART_BODY, MULTIPART)
    c = login(server)
    typ, data = c.list()
    assert typ == "OK"
    listing = b"\n".join(data)
    for name, use in [(b"Sent", b"\\Sent"), (b"Trash", b"\\Trash"), (b"Junk", b"\\Junk"), (b"Drafts", b"\\Drafts"), (b"Archive", b"\\Archive")]:
        line = next(l for l in data if l.endswith(b'"' + name + b'"') or l.endswith(b" " + name))
        assert use in line, line
    assert b"INBOX" in listing

    typ, data = c.select("INBOX")
    assert typ == "OK" and data == [b"2"]
    typ, data = c.fetch("1:2", "(UID FLAGS RFC822.SIZE INTERNALDATE ENVELOPE)")
    assert typ == "OK"
    assert b'"first message"' in data[0] and b"UID 1" in data[0]

    typ, data = c.fetch("2", "(BODYSTRUCTURE)")
    bs = data[0]
    assert b'("TEXT" "PLAIN"' in bs.upper() and b'"MIXED"' in bs.upper(), bs
    typ, data = c.fetch("2", "(BODY.PEEK[1] BODY.PEEK[2.MIME] BODY.PEEK[HEADER.FIELDS (SUBJECT)] BODY.PEEK[]<0.10>)")
    parts = {k.split(b" ")[-1] if False else None: None for k in []}
    flat = b"".join(p if isinstance(p, bytes) else b"".join(p) for p in data)
    assert b"Part one text." in flat
    assert b"Content-Disposition: attachment" in flat
    assert b"Subject: second with parts" in flat
    typ, data = c.fetch("2", "(BINARY.PEEK[2])")
    assert typ == "OK"
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0], "PEEK does not set \\Seen"
    typ, data = c.fetch("1", "(BODY[TEXT])")
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0], "BODY[] sets \\Seen"

    typ, data = c.search(None, "UNSEEN")
    assert data == [b"2"]
    typ, data = c.search(None, "SUBJECT", '"second"')
    assert data == [b"2"]
    typ, data = c.search(None, "BODY", '"one text"')
    assert data == [b"2"]
    typ, data = c.search(None, "OR", "FROM", "sender", "LARGER", "100000")
    assert data == [b"1 2"]
    typ, data = c.uid("SEARCH", None, "NOT", "SEEN")
    assert data == [b"2"]
    typ, data = c.sort("(REVERSE ARRIVAL)", "UTF-8", "ALL")
    assert typ == "OK" and data[0].split() in ([b"2", b"1"], [b"1", b"2"])

    typ, data = c.store("2", "+FLAGS", "(\\Flagged $Important)")
    assert b"\\Flagged" in data[0] and b"$Important" in data[0]
    typ, data = c.copy("1", "Archive")
    assert typ == "OK"
    assert c.untagged_responses or True
    typ, data = c.status("Archive", "(MESSAGES UIDNEXT UNSEEN)")
    assert b"MESSAGES 1" in data[0]

    typ, data = c._simple_command("MOVE", "2", "Trash")
    assert typ == "OK"
    typ, data = c.select("INBOX")
    assert data == [b"1"]
    typ, data = c.select("Trash")
    assert data == [b"1"]
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Flagged" in data[0], "MOVE keeps flags"
    c.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = c.expunge()
    assert data == [b"1"]
    typ, data = c.select("Trash")
    assert data == [b"0"]

    typ, _ = c.create("Projects/2026")
    assert typ == "OK"
    typ, data = c.list('""', "Projects*")
    assert len(data) == 2
    typ, _ = c.rename("Projects", "Work")
    typ, data = c.list('""', "Work/%")
    assert b"Work/2026" in data[0]
    typ, _ = c.delete("Work/2026")
    assert typ == "OK"
    typ, data = c.append("Drafts", "(\\Draft)", None, b"Subject: draft\r\n\r\nunfinished\r\n")
    assert typ == "OK" and b"APPENDUID" in data[0]
    typ, data = c.select("Drafts")
    assert data == [b"1"]
    typ, data = c.fetch("1", "(FLAGS BODY.PEEK[TEXT])")
    assert b"\\Draft" in data[0][0] and data[0][1] == b"unfinished\r\n"
    c.logout()


def test_idle_sees_smtp_delivery_within_a_second(server):
    c = login(server)
    c.select("INBOX")
    tag = c._new_tag()
    c.send(tag + b" IDLE\r\n")
    assert c.readline().startswith(b"+")
    sent_at = {}

    def send_later():
        time.sleep(0.5)
        sent_at["t"] = time.time()
        deliver(server, "alice@example.test", "idle wakeup")

    t = threading.Thread(target=send_later)
    t.start()
    c.sock.settimeout(10)
    line = c.readline()
    got = time.time()
    t.join()
    assert re.match(rb"\* 1 EXISTS", line), line
    assert got - sent_at["t"] < 1.0, f"IDLE took {got - sent_at['t']:.3f}s"
    c.send(b"DONE\r\n")
    while True:
        l = c.readline()
        if l.startswith(tag):
            assert b"OK" in l
            break
    c.logout()


def test_two_sessions_see_each_others_changes(server):
    deliver(server, "bob@example.test", "shared one")
    deliver(server, "bob@example.test", "shared two")
    a = login(server, "bob@example.test")
    b = login(server, "bob@example.test")
    a.select("INBOX")
    b.select("INBOX")
    a.store("1", "+FLAGS", "(\\Answered)")
    b.untagged_responses.clear()
    typ, data = b.noop()
    flags = [r for r in b.untagged_responses.get("FETCH", [])]
    assert any(b"\\Answered" in r for r in flags), b.untagged_responses
    a.store("2", "+FLAGS", "(\\Deleted)")
    a.expunge()
    b.untagged_responses.clear()
    b.noop()
    assert b.untagged_responses.get("EXPUNGE") == [b"2"], b.untagged_responses
    deliver(server, "bob@example.test", "shared three")
    b.untagged_responses.clear()
    b.noop()
    assert b.untagged_responses.get("EXISTS") == [b"2"], b.untagged_responses
    a.logout()
    b.logout()


def test_condstore_qresync_resync(server):
    for i in range(3):
        deliver(server, "bob@example.test", f"sync {i}")
    c = login(server, "bob@example.test")
    c._simple_command("ENABLE", "QRESYNC")
    typ, data = c.select("INBOX")
    hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", b" ".join(c.untagged_responses.get("OK", []))).group(1))
    uv = int(c.untagged_responses["UIDVALIDITY"][0])
    c.logout()
    # Changes while the client is away.
    other = login(server, "bob@example.test")
    other.select("INBOX")
    other.store("1", "+FLAGS", "(\\Seen)")
    other.store("3", "+FLAGS", "(\\Deleted)")
    other.expunge()
    other.logout()
    c = login(server, "bob@example.test")
    c._simple_command("ENABLE", "QRESYNC")
    tag = c._new_tag()
    c.send(tag + f" SELECT INBOX (QRESYNC ({uv} {hms} 1:3))\r\n".encode())
    lines = []
    while True:
        l = c.readline()
        lines.append(l)
        if l.startswith(tag):
            break
    text = b"".join(lines)
    assert b"* VANISHED (EARLIER) 3" in text, text
    fetches = [l for l in lines if b"FETCH" in l]
    assert len(fetches) == 1 and b"UID 1" in fetches[0] and b"\\Seen" in fetches[0], fetches
    # CHANGEDSINCE returns exactly the changes after a MODSEQ.
    c.state = "SELECTED"
    typ, data = c.uid("FETCH", "1:*", f"(FLAGS) (CHANGEDSINCE {hms})")
    assert len([d for d in data if d]) == 1 and b"UID 1" in data[0]
    c.logout()


def test_garbage_gets_bad_and_server_survives(server):
    c = login(server)
    for junk in [b"\x00\x01\x02", b"a1 FETCH", b"a2 NONSENSE", b"a3 SELECT", b"a4 LOGIN x"]:
        c.send(junk + b"\r\n")
        line = c.readline()
        assert b"BAD" in line, (junk, line)
    typ, _ = c.noop()
    assert typ == "OK"
    # A literal over the APPEND limit is refused before it is sent.
    tag = c._new_tag()
    c.send(tag + b" APPEND INBOX {999999999}\r\n")
    line = c.readline()
    assert line.startswith(tag + b" NO [TOOBIG]"), line
    assert c.noop()[0] == "OK"
    c.logout()


def test_esearch_and_list_extended(server):
    for i in range(3):
        deliver(server, "alice@example.test", f"es {i}")
    c = login(server)
    c.select("INBOX")
    c.store("2", "+FLAGS", "(\\Seen)")
    typ, data = c._simple_command("UID", "SEARCH", "RETURN", "(MIN MAX COUNT ALL)", "UNSEEN")
    assert typ == "OK"
    es = c.untagged_responses.pop("ESEARCH")[0]
    # RFC 4731 gives the return data no order: compare them as pairs.
    words = es.split(b")")[-1].split()
    assert words[0] == b"UID", es
    pairs = dict(zip(words[1::2], words[2::2]))
    assert pairs == {b"MIN": b"1", b"MAX": b"3", b"COUNT": b"2", b"ALL": b"1,3"}, es
    c.subscribe("Sent")
    typ, data = c._simple_command("LIST", "(SUBSCRIBED)", '""', "*", "RETURN", "(STATUS (MESSAGES UNSEEN))")
    assert typ == "OK"
    lists = c.untagged_responses.pop("LIST")
    assert lists == [b'(\\HasNoChildren \\Sent \\Subscribed) "/" Sent'], lists
    assert c.untagged_responses.pop("STATUS") == [b"Sent (MESSAGES 0 UNSEEN 0)"]
    typ, data = c._simple_command("LIST", '""', '("INBOX" "Trash")')
    assert len(c.untagged_responses.pop("LIST")) == 2
    c.logout()


def test_hostile_list_pattern_and_preauth_literal(server):
    """Issue 9 items 1 and 2 against the real binary: a LIST pattern of 50,000 `*` used to
    overflow the stack and abort the whole process; before login a large literal used to be
    invited with `+ Ready`."""
    c = login(server)
    tag = c._new_tag()
    c.send(tag + b' LIST "" "' + b"*" * 50_000 + b'"\r\n')
    line = c.readline()
    assert line.startswith(tag + b" BAD"), line
    typ, data = c.list('""', "*a*a*a*a*a*a*a*a*a*a*a*a*b")
    assert typ == "OK"
    assert c.noop()[0] == "OK"
    c.logout()

    raw = socket.create_connection(("127.0.0.1", server.imap_port), timeout=10)
    f = raw.makefile("rb")
    greeting = f.readline()
    assert b"LITERAL-" in greeting and b"LITERAL+" not in greeting, greeting
    raw.sendall(b"a1 LOGIN {1048576}\r\n")
    line = f.readline()
    assert line.startswith(b"a1 NO [TOOBIG]"), line
    raw.close()


def raw_command(c, line: bytes, literal: bytes | None = None) -> list[bytes]:
    """Sends one command on imaplib's (TLS) socket and returns every line up to its tagged
    completion: for what imaplib cannot express (literal8, extended LIST/SEARCH output)."""
    tag = c._new_tag()
    c.send(tag + b" " + line + b"\r\n")
    if literal is not None:
        assert c.readline().startswith(b"+"), "continuation"
        c.send(literal + b"\r\n")
    lines = []
    while True:
        l = c.readline()
        assert l, f"connection closed after {lines}"
        lines.append(l)
        if l.startswith(tag + b" "):
            return lines


def test_recent_is_recent_in_one_session(server):
    """RFC 3501 §2.3.2: the first session to select the mailbox after mail arrived gets
    \\Recent; a second session does not; new mail is recent where it is noticed first."""
    deliver(server, "alice@example.test", "recent one")
    deliver(server, "alice@example.test", "recent two")
    a = login(server)
    a.select("INBOX")
    assert a.untagged_responses.pop("RECENT") == [b"2"]
    typ, data = a.fetch("1", "(FLAGS)")
    assert b"\\Recent" in data[0], data
    assert a.search(None, "RECENT")[1] == [b"1 2"]
    a.store("1", "+FLAGS", "(\\Seen)")
    assert a.search(None, "NEW")[1] == [b"2"]
    b = login(server)
    b.select("INBOX")
    assert b.untagged_responses.pop("RECENT") == [b"0"]
    assert b.search(None, "OLD")[1] == [b"1 2"]
    deliver(server, "alice@example.test", "recent three")
    b.untagged_responses.clear()
    b.noop()
    assert b.untagged_responses.get("EXISTS") == [b"3"] and b.untagged_responses.get("RECENT") == [b"1"], b.untagged_responses
    assert b"\\Recent" in b.fetch("3", "(FLAGS)")[1][0]
    a.untagged_responses.clear()
    a.noop()
    assert a.untagged_responses.get("RECENT") == [b"2"], a.untagged_responses
    assert b"\\Recent" not in a.fetch("3", "(FLAGS)")[1][0]
    typ, data = b.copy("1", "INBOX")
    assert b.untagged_responses.get("RECENT")[-1] == b"2", b.untagged_responses
    # IMAP4rev2 has no \Recent: no RECENT response.
    v2 = login(server)
    v2._simple_command("ENABLE", "IMAP4rev2")
    v2.untagged_responses.clear()
    v2.select("INBOX")
    assert "RECENT" not in v2.untagged_responses, v2.untagged_responses
    for c in (a, b, v2):
        c.logout()


def test_sent_dates_use_the_date_as_written(server):
    c = login(server)
    c.append("INBOX", None, None, b"Date: Mon, 1 Jan 2024 23:30:00 -0500\r\nSubject: late\r\n\r\nx\r\n")
    c.select("INBOX")
    assert c.search(None, "SENTON", "1-Jan-2024")[1] == [b"1"]
    assert c.search(None, "SENTON", "2-Jan-2024")[1] == [b""]
    assert c.search(None, "SENTSINCE", "2-Jan-2024")[1] == [b""]
    assert c.search(None, "SENTBEFORE", "2-Jan-2024")[1] == [b"1"]
    c.logout()


def test_condstore_after_fetch_modseq(server):
    for i in range(3):
        deliver(server, "alice@example.test", f"cs {i}")
    c = login(server)
    c.select("INBOX")
    tag = c._new_tag()
    lines = raw_command(c, b"FETCH 1 (MODSEQ)")
    assert lines[-1].split(b" ")[1:3] == [b"OK", b"[HIGHESTMODSEQ"], lines
    typ, data = c.store("1", "+FLAGS", "(\\Flagged)")
    assert b"MODSEQ (" in data[0], data
    m1 = int(re.search(rb"MODSEQ \((\d+)\)", data[0]).group(1))
    lines = raw_command(c, b"SEARCH RETURN (ALL) MODSEQ 1")
    assert any(l.endswith(b" ALL 1:3 MODSEQ %d\r\n" % m1) for l in lines), lines
    typ, data = c.search(None, "MODSEQ", "1")
    assert data == [b"1 2 3 (MODSEQ %d)" % m1], data
    c.logout()


FIVE_PARTS = (
    b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
    b"--B\r\nContent-Type: text/plain\r\n\r\npart one\r\n"
    b"--B\r\nContent-Type: text/plain\r\n\r\npart two\r\n"
    b"--B\r\nContent-Type: message/rfc822\r\n\r\n"
    b'Subject: inner\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="I"\r\n\r\n'
    b"--I\r\nContent-Type: text/plain\r\n\r\ninner text\r\n"
    b"--I\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"aW5uZXIgZGVjb2RlZA==\r\n--I--\r\n"
    b"--B\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    b"caf=C3=A9 =3D soft=\r\nbreak\r\n"
    b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
    b"SGVsbG8sIGJp\r\nbmFyeSB3b3JsZA==\r\n--B--\r\n"
)


def test_binary_partials(server):
    c = login(server)
    c.append("INBOX", None, None, FIVE_PARTS)
    c.select("INBOX")
    typ, data = c.fetch("1", "(BINARY.PEEK[5]<0.7> BINARY.SIZE[5])")
    assert data[0] == (b"1 (BINARY[5]<0> {7}", b"Hello, "), data
    assert b"BINARY.SIZE[5] 19" in data[1], data
    typ, data = c.fetch("1", "(BINARY.PEEK[4])")
    assert data[0][1] == "café = softbreak".encode(), data
    typ, data = c.fetch("1", "(BINARY.PEEK[3.2]<6.7> BINARY.SIZE[3.2])")
    assert data[0] == (b"1 (BINARY[3.2]<6> {7}", b"decoded"), data
    assert b"BINARY.SIZE[3.2] 13" in data[1], data
    c.logout()


def test_append_literal8(server):
    msg = (
        b'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="B"\r\n\r\n'
        b"--B\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
        b"--B\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        b"\x00\x01\x02zz\xff\r\n--B--\r\n"
    )
    c = login(server)
    lines = raw_command(c, b"APPEND INBOX ~{%d}" % len(msg), msg)
    assert b"OK [APPENDUID" in lines[-1], lines
    c.select("INBOX")
    lines = raw_command(c, b"FETCH 1 (BINARY.PEEK[2] BODY.PEEK[1])")
    text = b"".join(lines)
    assert b"BINARY[2] ~{6}\r\n\x00\x01\x02zz\xff BODY[1] {5}\r\nhello)" in text, text
    # A literal cannot carry NUL (RFC 9051 §4.3): BODY[] shows it as 0x80, as Dovecot does.
    typ, data = c.fetch("1", "(BODY.PEEK[2])")
    assert data[0][1] == b"\x80\x01\x02zz\xff", data
    assert c.noop()[0] == "OK"
    c.logout()


def test_list_extended_subscribed_and_lsub(server):
    c = login(server)
    for name in ("Foo/Bar", "Top/Leaf"):
        c.create(name)
    for name in ("Foo/Bar", "Top/Leaf"):
        c.subscribe(name)
    c.delete("Top/Leaf")
    c.delete("Top")
    lines = raw_command(c, b'LIST (RECURSIVEMATCH) "" *')
    assert b" BAD " in lines[-1], lines
    lines = raw_command(c, b'LIST (SUBSCRIBED) "" *')
    assert b'* LIST (\\NonExistent \\Subscribed) "/" Top/Leaf\r\n' in lines, lines
    lines = raw_command(c, b'LIST (SUBSCRIBED RECURSIVEMATCH) "" %')
    assert b'* LIST (\\HasChildren) "/" Foo ("CHILDINFO" ("SUBSCRIBED"))\r\n' in lines, lines
    assert b'* LIST (\\NonExistent) "/" Top ("CHILDINFO" ("SUBSCRIBED"))\r\n' in lines, lines
    typ, data = c.lsub('""', "%")
    assert b'(\\Noselect) "/" Foo' in data and b'(\\Noselect) "/" Top' in data, data
    assert c.noop()[0] == "OK"
    c.logout()


def test_sort_subject_address_and_search_from(server):
    c = login(server)
    for frm, subject in [
        (b"b@a.test", b"Re: banana"),
        (b"=?utf-8?q?J=C3=BCrgen?= <a@z.test>", b"[list] Apple (fwd)"),
        (b"a@b.test", b"Fwd: cherry"),
    ]:
        c.append("INBOX", None, None, b"From: " + frm + b"\r\nSubject: " + subject + b"\r\n\r\nx\r\n")
    c.select("INBOX")
    assert c.sort("(SUBJECT)", "UTF-8", "ALL")[1] == [b"2 1 3"]
    assert c.sort("(FROM)", "UTF-8", "ALL")[1] == [b"3 2 1"]
    c.literal = "Jürgen <a@z".encode()
    assert c.search("UTF-8", "FROM")[1] == [b"2"]
    assert c.search(None, "FROM", "rgen")[1] == [b"2"]
    c.logout()


def test_esearch_past_the_end_is_ok_and_the_session_lives(server):
    for i in range(2):
        deliver(server, "alice@example.test", f"end {i}")
    c = login(server)
    c.select("INBOX")
    lines = raw_command(c, b"SEARCH RETURN () 1000")
    assert lines[0] == b'* ESEARCH (TAG "%s")\r\n' % lines[-1].split(b" ")[0], lines
    assert b" OK " in lines[-1], lines
    assert c.search(None, "1000")[1] == [b""]
    for bad in (b"FETCH 1000 FLAGS", b"STORE 99 +FLAGS (\\Seen)", b'LIST (RECURSIVEMATCH) "" *'):
        lines = raw_command(c, bad)
        assert b" BAD " in lines[-1] and not any(l.startswith(b"* BYE") for l in lines), lines
    assert c.noop()[0] == "OK"
    assert c.fetch("1", "(UID)")[0] == "OK"
    c.logout()


def test_new_keywords_are_announced(server):
    deliver(server, "alice@example.test", "kw")
    a = login(server)
    b = login(server)
    a.select("INBOX")
    b.select("INBOX")
    lines = raw_command(a, b"STORE 1 +FLAGS ($Label1)")
    flags = next(i for i, l in enumerate(lines) if l.startswith(b"* FLAGS ("))
    perm = next(i for i, l in enumerate(lines) if l.startswith(b"* OK [PERMANENTFLAGS ("))
    fetch = next(i for i, l in enumerate(lines) if b" FETCH " in l)
    assert b"$Label1" in lines[flags] and b"$Label1 \\*)]" in lines[perm] and flags < fetch and perm < fetch, lines
    lines = raw_command(b, b"NOOP")
    flags = next(i for i, l in enumerate(lines) if l.startswith(b"* FLAGS ("))
    fetch = next(i for i, l in enumerate(lines) if b" FETCH " in l)
    assert b"$Label1" in lines[flags] and flags < fetch, lines
    a.logout()
    b.logout()


def test_many_sessions_on_one_mailbox_share_a_view_and_each_see_every_change(server):
    """Sessions on one mailbox share one message list in the server (services/imap/src/
    views.rs); each must still be told exactly what changed since it last looked."""
    owner = login(server)
    owner.create("SharedView")
    for i in range(30):
        owner.append("SharedView", None, None, f"Subject: sv {i}\r\n\r\nbody {i}\r\n".encode())
    sessions = [login(server) for _ in range(8)]
    for s in sessions:
        typ, data = s.select("SharedView")
        assert typ == "OK" and data == [b"30"], data
    a, b = sessions[0], sessions[1]
    a.store("5", "+FLAGS", "(\\Flagged)")
    b.store("10", "+FLAGS", "(\\Deleted)")
    b.expunge()
    owner.append("SharedView", None, None, b"Subject: sv new\r\n\r\nnew\r\n")
    owner.append("SharedView", None, None, b"Subject: sv new 2\r\n\r\nnew\r\n")
    for n, s in enumerate(sessions):
        s.untagged_responses.clear()
        s.noop()
        got = s.untagged_responses
        if n != 1:
            assert got.get("EXPUNGE") == [b"10"], (n, got)
        assert got.get("EXISTS") == [b"31"], (n, got)
        if n >= 2:
            assert any(b"\\Flagged" in r for r in got.get("FETCH", [])), (n, got)
    uids = None
    for s in sessions:
        s.untagged_responses.clear()
        typ, data = s.uid("SEARCH", "FLAGGED")
        assert data == [b"5"], data
        typ, data = s.fetch("1:*", "(UID)")
        if uids is None:
            uids = data
        assert data == uids and len(data) == 31
    for s in sessions:
        s.logout()
    owner.delete("SharedView")
    owner.logout()
