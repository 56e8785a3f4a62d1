"""Sieve at delivery, end to end: scripts uploaded with a real ManageSieve client
(sievelib), mail sent over SMTP (smtplib), where it landed read back over IMAP (imaplib)
and the admin CLI. Covers fileinto (:create, flags), redirect, reject at DATA, vacation
with its :days memory, editheader, a failing script, and a global "before" script."""

import imaplib
import smtplib
import ssl
import time

import pytest
import sievelib.managesieve as managesieve
from sievelib.managesieve import Client

from conftest import PASSWORD, Server

ALICE, BOB, CAROL = "alice@example.test", "bob@example.test", "carol@example.test"

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE
_DEFAULT_CONTEXT = ssl.create_default_context


@pytest.fixture(autouse=True)
def self_signed_tls(monkeypatch):
    def insecure(*_a, **_k):
        ctx = _DEFAULT_CONTEXT()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx

    monkeypatch.setattr(managesieve.ssllib, "create_default_context", insecure)


@pytest.fixture
def mx(tmp_path):
    global_dir = tmp_path / "sieve-global"
    global_dir.mkdir()
    # The administrator's script, run before every user's: marks mail from a partner.
    (global_dir / "before.sieve").write_text(
        'require ["editheader"];\n'
        'if address :domain "from" "partner.test" { addheader "X-Partner" "yes"; }\n'
    )
    s = Server(tmp_path / "data", {
        "MAILFLEET_SIEVE__GLOBAL_DIR": str(global_dir),
        "MAILFLEET_SIEVE__BEFORE": '["before"]',
    })
    s.cli("domain", "add", "example.test")
    for u in (ALICE, BOB, CAROL):
        s.cli("user", "add", u, "--password-stdin", stdin=PASSWORD + "\n")
    s.start()
    yield s
    s.stop()


def upload(mx, script, user=ALICE):
    c = Client("127.0.0.1", mx.managesieve_port)
    assert c.connect(user, PASSWORD, starttls=True, authmech="PLAIN"), c.errmsg
    assert c.putscript("rules", script), c.errmsg
    assert c.setactive("rules"), c.errmsg
    c.logout()


def send(mx, subject, sender="someone@remote.test", rcpts=(ALICE,), extra="", body="Hello."):
    msg = (
        f"From: <{sender}>\r\nTo: <{rcpts[0]}>\r\nSubject: {subject}\r\n"
        f"Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@remote.test>\r\n"
        f"{extra}\r\n{body}\r\n"
    ).encode()
    with smtplib.SMTP("127.0.0.1", mx.smtp_port, timeout=60) as s:
        s.ehlo("client.remote.test")
        assert s.mail(sender)[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(msg)
        return code, text.decode()


def find(mx, user, subject, mailbox="INBOX"):
    for m in mx.messages(user, mailbox):
        raw = mx.message_bytes(user, m["uid"], mailbox)
        if f"Subject: {subject}\r\n".encode() in raw:
            return m, raw
    return None, None


def test_fileinto_with_create_and_flags(mx):
    upload(mx, 'require ["fileinto", "mailbox", "imap4flags"];\n'
               'if header :contains "subject" "[list]" {\n'
               '  fileinto :create :flags ["\\\\Seen", "$List"] "Lists";\n'
               '}\n')
    assert send(mx, "[list] weekly digest")[0] == 250
    assert send(mx, "personal note")[0] == 250
    assert find(mx, ALICE, "[list] weekly digest", "INBOX")[1] is None
    assert find(mx, ALICE, "personal note")[1] is not None
    c = imaplib.IMAP4_SSL("127.0.0.1", mx.imaps_port, ssl_context=CTX, timeout=30)
    c.login(ALICE, PASSWORD)
    typ, _ = c.select("Lists")
    assert typ == "OK", "fileinto :create made the mailbox"
    typ, data = c.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK"
    text = b" ".join(p if isinstance(p, bytes) else b" ".join(p) for p in data)
    assert b"\\Seen" in text and b"$List" in text and b"weekly digest" in text
    c.logout()


def test_redirect_and_reject(mx):
    upload(mx, 'require ["reject", "copy"];\n'
               'if header :contains "subject" "forward me" { redirect :copy "carol@example.test"; }\n'
               'if header :contains "subject" "unwanted" { reject "I do not want this."; }\n')
    assert send(mx, "forward me please")[0] == 250
    assert find(mx, ALICE, "forward me please")[1] is not None, ":copy keeps a copy"
    assert find(mx, CAROL, "forward me please")[1] is not None, "redirected to carol"
    code, text = send(mx, "unwanted offer")
    assert code == 550 and "I do not want this." in text, (code, text)
    assert find(mx, ALICE, "unwanted offer")[1] is None


def test_reject_with_another_recipient_delivers_to_the_other_and_notifies(mx):
    upload(mx, 'require "reject";\nreject "Not here.";\n')
    code, _ = send(mx, "to both", sender=BOB, rcpts=(ALICE, CAROL))
    assert code == 250
    assert find(mx, CAROL, "to both")[1] is not None
    assert find(mx, ALICE, "to both")[1] is None
    _, notice = find(mx, BOB, "Message rejected by alice@example.test")
    assert notice is not None and b"Not here." in notice


def test_vacation_answers_once_per_period_and_never_lists(mx):
    upload(mx, 'require "vacation";\n'
               'vacation :days 3 :subject "Out of office" "Back on Monday.";\n')
    assert send(mx, "question one", sender=BOB, rcpts=(ALICE,))[0] == 250
    assert send(mx, "question two", sender=BOB, rcpts=(ALICE,))[0] == 250
    assert send(mx, "list post", sender=CAROL, rcpts=(ALICE,),
                extra="List-Id: <team.example.test>\r\n")[0] == 250
    deadline = time.time() + 10
    replies = []
    while time.time() < deadline:
        replies = [m for m in mx.messages(BOB) if b"Out of office" in mx.message_bytes(BOB, m["uid"])]
        if replies:
            break
        time.sleep(0.2)
    assert len(replies) == 1, "one reply for two messages within :days"
    raw = mx.message_bytes(BOB, replies[0]["uid"])
    assert b"Auto-Submitted: auto-replied" in raw and b"Back on Monday." in raw
    assert b"In-Reply-To: <question.one@remote.test>" in raw
    assert not [m for m in mx.messages(CAROL) if b"Out of office" in mx.message_bytes(CAROL, m["uid"])], \
        "list mail gets no vacation reply"


def test_editheader_and_the_global_before_script(mx):
    upload(mx, 'require ["editheader"];\n'
               'addheader "X-Rule" "matched";\n'
               'deleteheader "X-Tracking";\n')
    assert send(mx, "edited", sender="news@partner.test", extra="X-Tracking: abc123\r\n")[0] == 250
    _, raw = find(mx, ALICE, "edited")
    head = raw.split(b"\r\n\r\n")[0]
    assert b"X-Rule: matched" in head
    assert b"X-Partner: yes" in head, "the global before script ran"
    assert b"X-Tracking" not in head


def test_a_failing_script_delivers_to_inbox_and_says_why(mx):
    upload(mx, 'require ["include", "fileinto"];\n'
               'include :personal "missing-script";\n'
               'fileinto "Never";\n')
    assert send(mx, "still delivered")[0] == 250
    _, raw = find(mx, ALICE, "still delivered")
    assert raw is not None
    assert b"X-Sieve-Error:" in raw.split(b"\r\n\r\n")[0]
