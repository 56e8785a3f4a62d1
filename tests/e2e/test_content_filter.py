"""Spam and virus filtering with a real rspamd and a real clamd, started by the tests
(`scanners.py` says how they are configured)."""

import base64
import smtplib

import pytest

from conftest import PASSWORD, Server, free_port
from scanners import EICAR, start_clamd, start_rspamd

GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@pytest.fixture(scope="module")
def rspamd(tmp_path_factory):
    s = start_rspamd(tmp_path_factory.mktemp("rspamd"))
    yield s.port
    s.stop()


@pytest.fixture(scope="module")
def clamd(tmp_path_factory):
    s = start_clamd(tmp_path_factory.mktemp("clamd"))
    yield s.port
    s.stop()


def start_mx(tmp_path, env):
    s = Server(tmp_path / "data", env)
    s.cli("domain", "add", "example.test")
    s.cli("user", "add", "alice@example.test", "--password-stdin", stdin=PASSWORD + "\n")
    return s.start()


@pytest.fixture
def mx(tmp_path, rspamd, clamd):
    s = start_mx(tmp_path, {
        "MAILFLEET_SMTP__RSPAMD__ADDRESS": f"127.0.0.1:{rspamd}",
        "MAILFLEET_SMTP__CLAMAV__ADDRESS": f"127.0.0.1:{clamd}",
    })
    yield s
    s.stop()


def message(subject, body="Hello there, this is a normal message.", extra=""):
    return (
        f"From: <sender@remote.test>\r\nTo: <alice@example.test>\r\nSubject: {subject}\r\n"
        f"Date: Sun, 06 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '-')}@remote.test>\r\n"
        f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n{extra}\r\n{body}\r\n"
    ).encode()


def with_attachment(subject, data: bytes):
    return (
        f"From: <sender@remote.test>\r\nTo: <alice@example.test>\r\nSubject: {subject}\r\n"
        f"Date: Sun, 06 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject}@remote.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BOUNDARY\r\n\r\n"
        "--BOUNDARY\r\nContent-Type: text/plain\r\n\r\nSee the attachment.\r\n"
        "--BOUNDARY\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
        "Content-Disposition: attachment; filename=tool.com\r\n\r\n"
    ).encode() + base64.b64encode(data) + b"\r\n--BOUNDARY--\r\n"


def send(mx, msg):
    with smtplib.SMTP("127.0.0.1", mx.smtp_port, timeout=60) as s:
        s.ehlo("client.remote.test")
        assert s.mail("sender@remote.test")[0] == 250
        assert s.rcpt("alice@example.test")[0] == 250
        code, text = s.data(msg)
        return code, text.decode()


def stored(mx, mailbox, subject):
    for m in mx.messages("alice@example.test", mailbox):
        raw = mx.message_bytes("alice@example.test", m["uid"], mailbox)
        if f"Subject: {subject}\r\n".encode() in raw:
            return raw
    return None


def head(raw):
    return raw.split(b"\r\n\r\n", 1)[0].decode()


def test_a_clean_message_is_delivered_with_the_verdicts(mx):
    code, _ = send(mx, message("clean one"))
    assert code == 250
    h = head(stored(mx, "INBOX", "clean one"))
    assert "X-Spam-Status: No, score=" in h and 'action="no action"' in h, h
    assert "X-Virus-Scanned: clean (ClamAV) by mx.example.test" in h, h
    assert "X-Spam-Flag" not in h


def test_gtube_is_refused(mx):
    code, text = send(mx, message("gtube", GTUBE))
    assert code == 554 and "5.7.1" in text and "spam" in text, (code, text)
    assert stored(mx, "INBOX", "gtube") is None and stored(mx, "Junk", "gtube") is None


def test_add_header_moves_to_junk_with_the_symbols_and_forged_verdicts_removed(mx):
    forged = "X-Spam-Status: No, score=-100\r\nX-Virus-Scanned: clean by the sender\r\n"
    code, _ = send(mx, message("junk-marker offer", extra=forged))
    assert code == 250
    assert stored(mx, "INBOX", "junk-marker offer") is None
    h = head(stored(mx, "Junk", "junk-marker offer"))
    assert "X-Spam-Status: Yes" in h and 'action="add header"' in h, h
    assert "X-Spam-Flag: YES" in h
    assert "MAILFLEET_TEST_JUNK(8.00)" in h.replace("\r\n\t", " "), h
    assert "score=-100" not in h and "by the sender" not in h, h


def test_the_eicar_test_file_is_refused(mx):
    code, text = send(mx, with_attachment("eicar", EICAR))
    assert code == 554 and "5.7.0" in text and "Eicar" in text, (code, text)
    code, text = send(mx, message("eicar inline", EICAR.decode()))
    assert code == 554 and "5.7.0" in text, (code, text)
    assert not mx.messages("alice@example.test")


def test_scanner_outages_defer_by_default_and_accept_when_configured(tmp_path):
    dead = free_port()  # nothing listens there
    s = start_mx(tmp_path / "tempfail", {
        "MAILFLEET_SMTP__RSPAMD__ADDRESS": f"127.0.0.1:{dead}",
        "MAILFLEET_SMTP__CLAMAV__ADDRESS": f"127.0.0.1:{dead}",
    })
    try:
        code, text = send(s, message("while down"))
        assert code == 451 and "4.7.1" in text and "Virus scanner unavailable" in text, (code, text)
    finally:
        s.stop()
    s = start_mx(tmp_path / "accept", {
        "MAILFLEET_SMTP__RSPAMD__ADDRESS": f"127.0.0.1:{dead}",
        "MAILFLEET_SMTP__RSPAMD__ON_ERROR": "accept",
        "MAILFLEET_SMTP__CLAMAV__ADDRESS": f"127.0.0.1:{dead}",
        "MAILFLEET_SMTP__CLAMAV__ON_ERROR": "accept",
    })
    try:
        code, _ = send(s, message("while down"))
        assert code == 250
        h = head(stored(s, "INBOX", "while down"))
        assert "X-Virus-Scanned: not scanned (scanner unavailable)" in h, h
        assert "X-Spam-Status: Unknown, not scanned (filter unavailable)" in h, h
    finally:
        s.stop()


def test_only_the_spam_filter_down_defers(tmp_path, clamd):
    s = start_mx(tmp_path, {
        "MAILFLEET_SMTP__RSPAMD__ADDRESS": f"127.0.0.1:{free_port()}",
        "MAILFLEET_SMTP__CLAMAV__ADDRESS": f"127.0.0.1:{clamd}",
    })
    try:
        code, text = send(s, message("spam filter down"))
        assert code == 451 and "Spam filter unavailable" in text, (code, text)
    finally:
        s.stop()


def test_domain_thresholds_hold_rspamds_score(tmp_path, rspamd):
    """`[smtp.spam_domains."example.test"]`: this domain junks at any score rspamd gives
    a plain message, so the domain's threshold, not rspamd's action, decides."""
    s = start_mx(tmp_path, {
        "MAILFLEET_SMTP__RSPAMD__ADDRESS": f"127.0.0.1:{rspamd}",
        "MAILFLEET_SMTP__SPAM_DOMAINS": '{ "example.test" = { junk = -50.0, reject = 1000.0 } }',
    })
    try:
        code, text = send(s, message("strict domain"))
        assert code == 250, text
        assert stored(s, "Junk", "strict domain") is not None
        assert stored(s, "INBOX", "strict domain") is None
    finally:
        s.stop()
