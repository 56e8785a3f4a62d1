"""SEARCH answered from the full-text index, with Python's imaplib against a running
Mailfleet: after delivery and APPEND, after COPY and EXPUNGE, for strings too short for the
index, and for messages not indexed (as if stored before the index existed) before and
after `mailfleet reindex`."""

import imaplib
import smtplib
import sqlite3
import ssl
import time

from conftest import PASSWORD

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE

MESSAGES = [
    ("Quarterly report", "Ann Writer <ann@remote.test>", "The numbers for the third quarter look fine.\r\n"),
    ("Lunch on Friday", "Bob Eater <bob@remote.test>", "Shall we try the new Zebrafinch cafe?\r\n"),
    ("Re: Quarterly REPORT", "Carol <carol@remote.test>", "Agreed, ship it. Gruesse.\r\n"),
    ("Grüße aus Köln", "Dieter <dieter@remote.test>", "Viele Grüße und bis bald.\r\n"),
]


def deliver(server, subject, sender, body):
    msg = (
        f"From: {sender}\r\nTo: alice@example.test\r\nSubject: {subject}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 8bit\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
    ).encode() + body.encode()
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail("sender@remote.test", ["alice@example.test"], msg)


def pending_count(server):
    """Messages the full-text index does not hold yet (read beside the running server)."""
    db = sqlite3.connect(server.data_dir / "metadata.sqlite3")
    try:
        return db.execute("SELECT COUNT(*) FROM fts_pending").fetchone()[0]
    finally:
        db.close()


def login(server):
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    c.starttls(ssl_context=CTX)
    c.login("alice@example.test", PASSWORD)
    return c


def search(c, key, needle):
    c.literal = needle.encode()
    typ, data = c.uid("SEARCH", "CHARSET", "UTF-8", key)
    assert typ == "OK", data
    return [int(u) for u in data[0].split()]


def run_searches(c):
    return {
        "body quarter": search(c, "BODY", "quarter"),
        "body zebrafinch": search(c, "BODY", "ZEBRAFINCH"),
        "text ann@remote": search(c, "TEXT", "ann@remote"),
        "text ship it": search(c, "TEXT", "ship it"),
        "subject report": search(c, "SUBJECT", "report"),
        "subject grüße": search(c, "SUBJECT", "GRÜẞE"),
        "from writer": search(c, "FROM", "writer"),
        "body grüße": search(c, "BODY", "grüße"),
        "body 1 char": search(c, "BODY", "z"),
        "body 2 chars": search(c, "BODY", "ip"),
        "subject 2 chars": search(c, "SUBJECT", "Re"),
        "body none": search(c, "BODY", "no such words here"),
    }


WANT = {
    "body quarter": [1],
    "body zebrafinch": [2],
    "text ann@remote": [1],
    "text ship it": [3],
    "subject report": [1, 3],
    "subject grüße": [4],
    "from writer": [1],
    "body grüße": [4],
    "body 1 char": [2],
    "body 2 chars": [3],
    "subject 2 chars": [1, 3],
    "body none": [],
}


def test_search_after_delivery_append_copy_expunge(server):
    for subject, sender, body in MESSAGES[:3]:
        deliver(server, subject, sender, body)
    c = login(server)
    subject, sender, body = MESSAGES[3]
    msg = (
        f"From: {sender}\r\nSubject: {subject}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
        + body
    ).encode()
    typ, _ = c.append("INBOX", None, None, msg)
    assert typ == "OK"
    c.select("INBOX")
    assert run_searches(c) == WANT

    # COPY carries the index entries: the same answers in Archive, under its UIDs.
    typ, _ = c.uid("COPY", "1:4", "Archive")
    assert typ == "OK"
    c.select("Archive")
    assert run_searches(c) == WANT

    # EXPUNGE removes them.
    c.select("INBOX")
    c.uid("STORE", "1", "+FLAGS.SILENT", r"(\Deleted)")
    c.expunge()
    got = run_searches(c)
    assert got == {k: [u for u in v if u != 1] for k, v in WANT.items()}
    # MOVE: out of INBOX's index, into Trash's.
    typ, _ = c.uid("MOVE", "2", "Trash")
    assert typ == "OK"
    assert search(c, "BODY", "zebrafinch") == []
    c.select("Trash")
    assert search(c, "BODY", "zebrafinch") == [1]
    c.logout()


def test_unindexed_messages_are_scanned_then_reindexed(server):
    for subject, sender, body in MESSAGES:
        deliver(server, subject, sender, body)
    # Delivery indexes in the background, right after the message is durable: wait for it,
    # then nothing is left for the reindex.
    deadline = time.time() + 10
    while pending_count(server) and time.time() < deadline:
        time.sleep(0.05)
    r = server.cli("reindex")
    assert "indexed 0 messages" in r.stdout, r.stdout  # delivery indexed them all
    # Make every message unindexed, as the migration leaves messages stored before the
    # index existed.
    server.stop()
    db = sqlite3.connect(server.data_dir / "metadata.sqlite3")
    db.execute("INSERT OR REPLACE INTO fts_pending SELECT mailbox_id, uid, 0 FROM messages")
    db.commit()
    db.close()
    # The texts live in the index file beside the database.
    index = sqlite3.connect(server.data_dir / "metadata.sqlite3.fts")
    index.execute("DELETE FROM fts_docs")
    index.execute("DELETE FROM fts_indexed")
    index.commit()
    index.close()
    server.start()
    c = login(server)
    c.select("INBOX")
    assert run_searches(c) == WANT, "unindexed messages are searched by parsing them"
    r = server.cli("--json", "reindex", "alice@example.test")
    assert '"indexed":4' in r.stdout.replace(" ", ""), r.stdout
    assert run_searches(c) == WANT
    db = sqlite3.connect(server.data_dir / "metadata.sqlite3")
    assert db.execute("SELECT COUNT(*) FROM fts_pending").fetchone()[0] == 0
    db.close()
    index = sqlite3.connect(server.data_dir / "metadata.sqlite3.fts")
    assert index.execute("SELECT COUNT(DISTINCT uid) FROM fts_docs").fetchone()[0] == 4
    index.close()
    c.logout()
