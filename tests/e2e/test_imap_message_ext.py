"""MULTIAPPEND (RFC 3502), REPLACE (RFC 8508), UNAUTHENTICATE (RFC 8437), SAVEDATE (RFC 8514)
and PREVIEW (RFC 8970) against a running Mailfleet, over raw sockets (imaplib cannot send
several literals in one command, nor these commands)."""

import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from conftest import PASSWORD, Server
from imapwire import Connection, Literal

USER = "alice@example.test"
MAX_MESSAGE = 4096


@pytest.fixture
def mf(tmp_path):
    s = Server(
        tmp_path / "data",
        extra_env={
            "MAILFLEET_IMAP__ALLOW_PLAINTEXT_AUTH": "true",
            "MAILFLEET_IMAP__STARTTLS": "false",
            "MAILFLEET_IMAP__MAX_MESSAGE_SIZE": str(MAX_MESSAGE),
        },
    )
    s.cli("domain", "add", "example.test")
    s.cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
    s.cli("user", "add", "small@example.test", "--quota", "2K", "--password-stdin", stdin=PASSWORD + "\n")
    s.start()
    yield s
    s.stop()


class Client:
    def __init__(self, server, user=USER):
        self.c = Connection(server.imap_port)
        self.n = 0
        if user:
            assert self.ok(f"LOGIN {user} {PASSWORD}")

    def cmd(self, *parts):
        """Sends a command made of text and literals (bytes: sync literal)."""
        self.n += 1
        tag = f"t{self.n}"
        wire = []
        first = True
        for p in parts:
            if isinstance(p, bytes):
                wire.append(Literal(p, False))
            else:
                wire.append(((f"{tag} " if first else "") + p).encode())
            first = False
        if isinstance(parts[-1], bytes):
            wire.append(b"")
        responses = self.c.send_command(tag, wire)
        assert responses is not None, "unexpected continuation request"
        return [r.decode("utf-8", "replace") for r in responses], tag

    def ok(self, *parts):
        responses, tag = self.cmd(*parts)
        return responses if responses[-1].startswith(f"{tag} OK") else None

    def status(self, mailbox):
        responses, _ = self.cmd(f"STATUS {mailbox} (MESSAGES UIDNEXT)")
        m = re.search(r"MESSAGES (\d+) UIDNEXT (\d+)", responses[0])
        return int(m.group(1)), int(m.group(2))

    def close(self):
        self.c.close()


def msg(subject, body="body\r\n"):
    return f"From: a@example.com\r\nSubject: {subject}\r\n\r\n{body}".encode()


def test_multiappend_is_atomic_and_answers_a_uid_set(mf):
    c = Client(mf)
    assert "MULTIAPPEND" in c.cmd("CAPABILITY")[0][0].split()
    r = c.ok("APPEND INBOX (\\Seen) ", msg("one"), " (\\Flagged) \" 2-Jan-2023 08:00:00 +0000\" ", msg("two"), " ", msg("three"))
    assert r, r
    m = re.search(r"\[APPENDUID (\d+) (\S+)\]", r[-1])
    assert m and m.group(2) == "1:3", r[-1]
    assert c.status("INBOX") == (3, 4)
    r = c.ok("SELECT INBOX")
    r = c.ok("FETCH 1:3 (FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert "FLAGS (\\Seen \\Recent)" in r[0] and "FLAGS (\\Flagged \\Recent)" in r[1], r
    assert "Subject: one" in r[0] and "Subject: three" in r[2], r
    assert "02-Jan-2023 08:00:00 +0000" in r[1] or " 2-Jan-2023 08:00:00 +0000" in r[1], r
    # The second message is empty: nothing is stored, not even the first.
    responses, tag = c.cmd("APPEND INBOX ", msg("four"), " ", b"")
    assert responses[-1].startswith(f"{tag} NO"), responses
    # \Recent cannot be set: the whole command is refused.
    responses, tag = c.cmd("APPEND INBOX ", msg("five"), " (\\Recent) ", msg("six"))
    assert responses[-1].startswith(f"{tag} BAD"), responses
    responses, tag = c.cmd("APPEND Nowhere ", msg("x"), " ", msg("y"))
    assert "[TRYCREATE]" in responses[-1], responses
    assert c.status("INBOX") == (3, 4)
    # Into the selected mailbox: EXISTS comes with the answer.
    r = c.ok("APPEND INBOX ", msg("seven"), " ", msg("eight"))
    assert any(x == "* 5 EXISTS" for x in r), r
    assert "APPENDUID" in r[-1] and " 4:5]" in r[-1], r[-1]
    c.close()


def test_multiappend_quota_covers_every_message(mf):
    c = Client(mf, "small@example.test")
    big = msg("q", "x" * 900 + "\r\n")
    # Each message fits the 2 KiB quota; the three together do not.
    responses, tag = c.cmd("APPEND INBOX ", big, " ", big, " ", big)
    assert "[OVERQUOTA]" in responses[-1], responses
    assert c.status("INBOX") == (0, 1)
    assert c.ok("APPEND INBOX ", big, " ", big)
    assert c.status("INBOX") == (2, 3)
    c.close()


def test_multiappend_limits(mf):
    c = Client(mf)
    # Together the messages may not exceed the command limit (max message size plus the
    # command size): a literal that would pass it is refused before it is sent.
    part = msg("l", "y" * (MAX_MESSAGE - 100) + "\r\n")
    parts = ["APPEND INBOX "]
    for _ in range(40):
        parts += [part, " "]
    parts[-1:] = []
    responses, tag = c.cmd(*parts)
    assert responses[-1].startswith(f"{tag} NO") and "TOOBIG" in responses[-1], responses[-1]
    # At most 100 messages per command.
    many = ["APPEND INBOX"]
    for i in range(101):
        many.append(" {1+}\r\nx")
    responses, tag = c.cmd("".join(many))
    assert responses[-1].startswith(f"{tag} NO [LIMIT]"), responses
    assert c.status("INBOX") == (0, 1)
    c.close()


def test_replace_appends_then_expunges(mf):
    c = Client(mf)
    assert "REPLACE" in c.cmd("CAPABILITY")[0][0].split()
    assert c.ok("APPEND Drafts (\\Draft) ", msg("draft 1"))
    assert c.ok("APPEND Drafts (\\Draft) ", msg("other"))
    assert c.ok("SELECT Drafts")
    r = c.ok("REPLACE 1 Drafts (\\Draft \\Seen) ", msg("draft 2"))
    assert r, r
    untagged = [x for x in r if x.startswith("*")]
    # RFC 8508 section 3.3: the APPENDUID first, then the expunge and the new count.
    assert re.match(r"\* OK \[APPENDUID \d+ 3\]", untagged[0]), r
    assert untagged[1:3] == ["* 1 EXPUNGE", "* 2 EXISTS"], r
    r = c.ok("FETCH 1:* (UID FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    text = "\n".join(r)
    assert "draft 1" not in text and "draft 2" in text and "UID 3" in text
    # UID REPLACE into another mailbox.
    r = c.ok("UID REPLACE 3 Archive ", msg("archived"))
    assert r and "* 2 EXPUNGE" in r, r
    assert c.status("Archive") == (1, 2)
    # Failures leave the old message alone.
    responses, tag = c.cmd("UID REPLACE 999 Drafts ", msg("x"))
    assert responses[-1].startswith(f"{tag} NO"), responses
    responses, tag = c.cmd("REPLACE 5 Drafts ", msg("x"))
    assert responses[-1].startswith(f"{tag} BAD"), responses
    responses, tag = c.cmd("REPLACE 1 Nowhere ", msg("x"))
    assert "[TRYCREATE]" in responses[-1], responses
    assert c.status("Drafts") == (1, 4)
    # With QRESYNC the old message is reported as VANISHED.
    assert c.ok("ENABLE QRESYNC")
    r = c.ok("UID REPLACE 2 Drafts ", msg("other 2"))
    assert r and "* VANISHED 2" in r, r
    assert c.ok("EXAMINE Drafts")
    responses, tag = c.cmd("REPLACE 1 Drafts ", msg("ro"))
    assert responses[-1].startswith(f"{tag} NO"), responses
    assert c.ok("UNSELECT")
    responses, tag = c.cmd("REPLACE 1 Drafts ", msg("none"))
    assert responses[-1].startswith(f"{tag} BAD"), responses
    c.close()


def test_unauthenticate_resets_the_session(mf):
    c = Client(mf)
    assert "UNAUTHENTICATE" in c.cmd("CAPABILITY")[0][0].split()
    assert c.ok("APPEND INBOX ", msg("one"))
    assert c.ok("ENABLE CONDSTORE")
    assert c.ok("SELECT INBOX")
    r = c.ok("STORE 1 +FLAGS (\\Flagged)")
    assert r and "MODSEQ" in r[0], r
    r = c.ok("UNAUTHENTICATE")
    assert r, r
    caps = c.cmd("CAPABILITY")[0][0].split()
    assert "AUTH=PLAIN" in caps, caps
    responses, tag = c.cmd("FETCH 1 FLAGS")
    assert responses[-1].startswith(f"{tag} BAD"), responses
    responses, tag = c.cmd("UNAUTHENTICATE")
    assert responses[-1].startswith(f"{tag} BAD"), responses
    assert c.ok(f"LOGIN {USER} {PASSWORD}")
    # Nothing selected, CONDSTORE no longer enabled.
    responses, tag = c.cmd("FETCH 1 FLAGS")
    assert responses[-1].startswith(f"{tag} BAD"), responses
    assert c.ok("SELECT INBOX")
    r = c.ok("STORE 1 -FLAGS (\\Flagged)")
    assert r and "MODSEQ" not in r[0], r
    c.close()


def test_savedate_is_when_the_message_was_saved(mf):
    c = Client(mf)
    caps = c.cmd("CAPABILITY")[0][0].split()
    assert "SAVEDATE" in caps and "PREVIEW" in caps
    assert c.ok("APPEND INBOX \"01-Feb-2024 10:00:00 +0000\" ", msg("old"))
    assert c.ok("SELECT INBOX")
    r = c.ok("FETCH 1 (SAVEDATE INTERNALDATE)")
    m = re.search(r'SAVEDATE "([^"]+)"', r[0])
    assert m, r
    saved = datetime.strptime(m.group(1).strip(), "%d-%b-%Y %H:%M:%S %z")
    assert abs((datetime.now(timezone.utc) - saved).total_seconds()) < 120
    assert '"01-Feb-2024 10:00:00 +0000"' in r[0]
    today = datetime.now(timezone.utc)
    fmt = lambda d: d.strftime("%d-%b-%Y")
    assert c.ok(f"SEARCH SAVEDON {fmt(today)}")[0] == "* SEARCH 1"
    assert c.ok("SEARCH SAVEDON 1-Feb-2024")[0] == "* SEARCH"
    assert c.ok("SEARCH ON 1-Feb-2024")[0] == "* SEARCH 1"
    assert c.ok(f"SEARCH SAVEDBEFORE {fmt(today + timedelta(days=2))}")[0] == "* SEARCH 1"
    assert c.ok(f"SEARCH SAVEDSINCE {fmt(today + timedelta(days=2))}")[0] == "* SEARCH"
    assert c.ok("UID SEARCH SAVEDATESUPPORTED")[0] == "* SEARCH 1"
    r = c.ok("SEARCH RETURN (COUNT) NOT SAVEDBEFORE 1-Jan-2020")
    assert r and "COUNT 1" in r[0], r
    responses, tag = c.cmd("SEARCH SAVEDON 32-Jan-2024")
    assert responses[-1].startswith(f"{tag} BAD"), responses
    # A copy is saved anew.
    time.sleep(1.1)
    assert c.ok("COPY 1 Archive")
    assert c.ok("EXAMINE Archive")
    r = c.ok("FETCH 1 SAVEDATE")
    m2 = re.search(r'SAVEDATE "([^"]+)"', r[0])
    assert m2 and m2.group(1) != m.group(1), (m.group(1), r)
    c.close()


def test_preview(mf):
    c = Client(mf)
    html = (
        b"From: a@example.com\r\nSubject: h\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: text/html; charset=utf-8\r\n\r\n"
        b"<html><head><style>p{}</style></head><body><p>Hello <b>w\xc3\xb6rld</b></p></body></html>\r\n"
    )
    assert c.ok("APPEND INBOX ", msg("p", "  Some   text\r\n\r\nhere.\r\n"), " ", html, " ", msg("long", "z" * 400))
    assert c.ok("SELECT INBOX")
    r = c.ok("FETCH 1:3 (PREVIEW)")
    assert r[0] == '* 1 FETCH (PREVIEW "Some text here.")', r
    assert r[1].startswith("* 2 FETCH (PREVIEW {12}") and "Hello wörld" in r[1], r
    assert re.search(r'PREVIEW "z{256}"\)', r[2]), r[2]
    r = c.ok("FETCH 1 (PREVIEW (LAZY) UID)")
    assert "PREVIEW \"Some text here.\"" in r[0] and "UID 1" in r[0], r
    responses, tag = c.cmd("FETCH 1 (PREVIEW (FUZZY))")
    assert responses[-1].startswith(f"{tag} BAD"), responses
    c.close()
