"""IMAP OBJECTID (RFC 8474) against a running Mailfleet, with Python's imaplib: MAILBOXID from
CREATE, SELECT and STATUS (kept by RENAME and across a restart), EMAILID and THREADID of
delivered (SMTP) and appended messages (threads by In-Reply-To / References, kept by COPY and
MOVE) and the SEARCH keys EMAILID and THREADID. Dovecot 2.3 does not offer OBJECTID, so these
are checked against the RFC rather than differentially."""

import imaplib
import re
import smtplib

import pytest

from conftest import PASSWORD, Server

USER = "alice@example.test"
OBJECTID = re.compile(r"^[A-Za-z0-9_-]{1,255}$")


@pytest.fixture
def mf(tmp_path):
    s = Server(
        tmp_path / "data",
        extra_env={
            "MAILFLEET_IMAP__ALLOW_PLAINTEXT_AUTH": "true",
            "MAILFLEET_IMAP__STARTTLS": "false",
        },
    )
    s.cli("domain", "add", "example.test")
    s.cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
    s.start()
    yield s
    s.stop()


def login(server):
    c = imaplib.IMAP4("127.0.0.1", server.imap_port)
    c.login(USER, PASSWORD)
    return c


def message(msgid, subject, in_reply_to=None, references=""):
    h = f"From: bob@remote.test\r\nTo: {USER}\r\nMessage-ID: <{msgid}>\r\nSubject: {subject}\r\n"
    if in_reply_to:
        h += f"In-Reply-To: <{in_reply_to}>\r\n"
    if references:
        h += f"References: {references}\r\n"
    return (h + "\r\nhello\r\n").encode()


def deliver(server, raw):
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=20) as s:
        s.sendmail("bob@remote.test", [USER], raw)


def mailbox_id(text):
    m = re.search(r"MAILBOXID \(([^)]*)\)", text)
    assert m, text
    assert OBJECTID.match(m.group(1)), m.group(1)
    return m.group(1)


def ids(c):
    """(EMAILID, THREADID) by sequence number of the selected mailbox."""
    typ, data = c.fetch("1:*", "(EMAILID THREADID)")
    assert typ == "OK", data
    out = []
    for line in data:
        text = line.decode() if isinstance(line, bytes) else line[0].decode()
        e = re.search(r"EMAILID \(([^)]*)\)", text).group(1)
        t = re.search(r"THREADID \(([^)]*)\)", text).group(1)
        assert OBJECTID.match(e) and e.startswith("E"), text
        assert OBJECTID.match(t) and t.startswith("T"), text
        out.append((e, t))
    return out


def search(c, *criteria):
    typ, data = c.search(None, *criteria)
    assert typ == "OK", data
    return [int(n) for n in data[0].split()]


def test_mailboxid_kept_by_rename_and_restart(mf):
    c = login(mf)
    assert "OBJECTID" in c.capabilities
    typ, data = c.create("Projects")
    assert typ == "OK"
    created = mailbox_id(data[0].decode())
    typ, data = c.status("Projects", "(MESSAGES MAILBOXID)")
    assert typ == "OK"
    assert mailbox_id(data[0].decode()) == created
    assert c.rename("Projects", "Work")[0] == "OK"
    typ, data = c.status("Work", "(MAILBOXID)")
    assert mailbox_id(data[0].decode()) == created
    c.select("Work")
    codes = [x.decode() for x in c.untagged_responses.get("OK", [])]
    assert any(f"[MAILBOXID ({created})]" in x for x in codes), codes
    typ, data = c.status("INBOX", "(MAILBOXID)")
    inbox = mailbox_id(data[0].decode())
    assert inbox != created
    c.logout()
    mf.stop()
    mf.start()
    c = login(mf)
    typ, data = c.status("Work", "(MAILBOXID)")
    assert mailbox_id(data[0].decode()) == created, "durable across a restart"
    typ, data = c.status("INBOX", "(MAILBOXID)")
    assert mailbox_id(data[0].decode()) == inbox
    assert c.delete("Work")[0] == "OK"
    typ, data = c.create("Work")
    assert mailbox_id(data[0].decode()) != created, "a new mailbox gets a new MAILBOXID"
    c.logout()


def test_threads_copy_move_and_search(mf):
    # Delivered over SMTP: the delivery path files the thread too.
    deliver(mf, message("root@remote.test", "plans"))
    deliver(mf, message("reply@remote.test", "Re: plans", "root@remote.test", "<root@remote.test>"))
    c = login(mf)
    # Appended: a reply to the reply, by References only, and an unrelated message.
    typ, _ = c.append(
        "INBOX",
        None,
        None,
        message("deep@remote.test", "Re: Re: plans", references="<root@remote.test> <reply@remote.test>"),
    )
    assert typ == "OK"
    assert c.append("INBOX", None, None, message("other@remote.test", "other"))[0] == "OK"
    # The same message delivered again: a new email in the same thread.
    deliver(mf, message("root@remote.test", "plans"))
    c.select("INBOX")
    got = ids(c)
    assert len(got) == 5
    assert len({e for e, _ in got}) == 5, got
    thread = got[0][1]
    assert [t == thread for _, t in got] == [True, True, True, False, True], got

    assert search(c, "THREADID", thread) == [1, 2, 3, 5]
    assert search(c, "EMAILID", got[3][0]) == [4]
    assert search(c, "NOT", "THREADID", thread) == [4]
    typ, data = c.uid("SEARCH", "EMAILID", got[1][0])
    assert typ == "OK" and data[0].split() == [b"2"], data
    with pytest.raises(imaplib.IMAP4.error):
        c.search(None, "EMAILID", '"not an id"')

    assert c.copy("1", "Trash")[0] == "OK"
    typ, _ = c._simple_command("MOVE", "2", "Trash")
    assert typ == "OK"
    c.select("Trash")
    assert ids(c) == [got[0], got[1]], "COPY and MOVE keep EMAILID and THREADID"
    assert search(c, "THREADID", thread) == [1, 2]
    c.select("INBOX")
    assert search(c, "EMAILID", got[1][0]) == [], "the moved original is gone"
    assert search(c, "EMAILID", got[0][0]) == [1]
    c.logout()

    mf.stop()
    mf.start()
    c = login(mf)
    c.select("Trash")
    assert ids(c) == [got[0], got[1]], "durable across a restart"
    c.logout()
