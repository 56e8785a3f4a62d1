"""POP3, authenticated submission and login security against a running Mailfleet, with
real clients: Python's poplib, smtplib and imaplib, Debian's fetchmail and swaks."""

import imaplib
import json
import os
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from conftest import PASSWORD, Server

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE

ALICE = "alice@example.test"
BOB = "bob@example.test"


def deliver(server, rcpt, subject, body="Hello.\r\n"):
    msg = (
        f"From: Sender <sender@remote.test>\r\nTo: {rcpt}\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '-')}@remote.test>\r\n"
        "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n"
    ) + body
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail("sender@remote.test", [rcpt], msg.encode())


def pop3s(server, user=ALICE, password=PASSWORD):
    p = poplib.POP3_SSL("127.0.0.1", server.pop3s_port, timeout=30, context=CTX)
    p.user(user)
    p.pass_(password)
    return p


class RawPop3:
    """A minimal POP3-over-TLS client that can pick its source address (poplib cannot)."""

    def __init__(self, server, source="127.0.0.1"):
        sock = socket.create_connection(
            ("127.0.0.1", server.pop3s_port), timeout=30, source_address=(source, 0)
        )
        self.s = CTX.wrap_socket(sock)
        self.f = self.s.makefile("rb")
        self.greeting = self.line()

    def line(self):
        return self.f.readline().decode().rstrip("\r\n")

    def cmd(self, c):
        self.s.sendall(c.encode() + b"\r\n")
        return self.line()

    def login(self, user, password):
        self.cmd(f"USER {user}")
        return self.cmd(f"PASS {password}")

    def close(self):
        # The file object holds a reference: the socket only really closes with both.
        for c in (self.f, self.s):
            try:
                c.close()
            except OSError:
                pass


def imap_login(server, user=ALICE, password=PASSWORD):
    c = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, timeout=30, ssl_context=CTX)
    c.login(user, password)
    return c


def submit(server, user, password, sender, rcpts, message, implicit=False, source=None):
    src = (source, 0) if source else None
    if implicit:
        s = smtplib.SMTP_SSL("127.0.0.1", server.submissions_port, timeout=30, context=CTX,
                             source_address=src)
    else:
        s = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30, source_address=src)
        s.starttls(context=CTX)
    with s:
        s.login(user, password)
        return s.sendmail(sender, rcpts, message)


# ---------------------------------------------------------------- POP3


def test_pop3_poplib_plain_stls_and_implicit_tls(server):
    deliver(server, ALICE, "first pop")
    deliver(server, ALICE, "second pop", body=".dotted line\r\nend\r\n")

    p = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    caps = p.capa()
    assert "STLS" in caps and "UIDL" in caps and "TOP" in caps
    assert "USER" not in caps, "no plaintext login offered before TLS"
    with pytest.raises(poplib.error_proto, match="Plaintext authentication disallowed"):
        p.user(ALICE)
    p.stls(context=CTX)
    assert "USER" in p.capa() and "STLS" not in p.capa()
    p.user(ALICE)
    p.pass_(PASSWORD)
    count, size = p.stat()
    assert count == 2 and size > 0
    resp, lines, _ = p.retr(2)
    assert resp.startswith(b"+OK")
    assert b"Subject: second pop" in lines
    assert b".dotted line" in lines, "dot-stuffing is undone by the client"
    _, top, _ = p.top(1, 0)
    assert b"Subject: first pop" in top and b"Hello." not in top
    _, uidls, _ = p.uidl()
    mailbox = [b for b in server.cli_json("mailbox", "list", ALICE) if b["name"] == "INBOX"][0]
    uids = [m["uid"] for m in server.messages(ALICE)]
    assert uidls == [f"{i + 1} {mailbox['uid_validity']}.{u}".encode() for i, u in enumerate(uids)]
    p.quit()

    p = pop3s(server)
    assert p.stat()[0] == 2
    assert len(p.list()[1]) == 2
    p.quit()
    assert len(server.messages(ALICE)) == 2, "nothing deleted without DELE"


def test_pop3_dele_quit_is_seen_by_imap(server):
    deliver(server, ALICE, "keep me")
    deliver(server, ALICE, "delete me")
    imap = imap_login(server)
    typ, data = imap.select("INBOX")
    assert typ == "OK" and data[0] == b"2"

    p = pop3s(server)
    p.dele(2)
    p.quit()

    remaining = server.messages(ALICE)
    assert len(remaining) == 1
    # The IMAP session learns of the expunge on its next command.
    typ, _ = imap.noop()
    assert typ == "OK"
    untagged = imap.untagged_responses
    assert b"2" in untagged.get("EXPUNGE", []), untagged
    typ, data = imap.search(None, "ALL")
    assert data[0] == b"1"
    typ, data = imap.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"keep me" in data[0][1]
    imap.logout()


def test_pop3_aborted_session_deletes_nothing(server):
    deliver(server, ALICE, "one")
    deliver(server, ALICE, "two")
    raw = RawPop3(server)
    assert raw.login(ALICE, PASSWORD).startswith("+OK")
    assert raw.cmd("DELE 1").startswith("+OK")
    assert raw.cmd("DELE 2").startswith("+OK")
    # A second session while the first holds the maildrop is refused.
    other = RawPop3(server)
    assert other.login(ALICE, PASSWORD) == "-ERR [IN-USE] Maildrop is locked by another POP3 session"
    other.close()
    raw.close()  # no QUIT: the UPDATE state is never entered
    deadline = time.time() + 10
    while True:
        p = RawPop3(server)
        r = p.login(ALICE, PASSWORD)
        if r.startswith("+OK") or time.time() > deadline:
            break
        p.close()
        time.sleep(0.1)
    assert r.startswith("+OK Logged in; maildrop has 2 messages"), r
    p.cmd("QUIT")
    p.close()
    assert len(server.messages(ALICE)) == 2


@pytest.mark.skipif(shutil.which("fetchmail") is None,
                    reason="fetchmail not installed (scripts/test.sh installs it)")
@pytest.mark.parametrize("mode", ["stls", "implicit"])
def test_pop3_fetchmail_retrieves_and_deletes(server, tmp_path, mode):
    deliver(server, ALICE, "for fetchmail one")
    deliver(server, ALICE, "for fetchmail two", body="Line.\r\n.starts with a dot\r\n")
    mbox = tmp_path / "fetched.mbox"
    port = server.pop3_port if mode == "stls" else server.pop3s_port
    tls = "sslproto TLS1.2+" if mode == "stls" else "ssl"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        "set no bouncemail\n"
        f"poll 127.0.0.1 service {port} protocol pop3 uidl\n"
        f"  user '{ALICE}' there with password '{PASSWORD}' is 'root' here\n"
        f"  options {tls} no sslcertck fetchall\n"
        f"  mda \"/bin/sh -c 'cat >> {mbox}'\"\n"
    )
    rc.chmod(0o600)
    env = dict(os.environ, FETCHMAILHOME=str(tmp_path), HOME=str(tmp_path))
    r = subprocess.run(
        ["fetchmail", "-f", str(rc), "--nodetach", "--nosyslog", "-v"],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    fetched = mbox.read_text()
    assert "Subject: for fetchmail one" in fetched
    assert "Subject: for fetchmail two" in fetched
    assert "\n.starts with a dot" in fetched
    assert server.messages(ALICE) == [], "fetchmail deleted what it fetched"


# ---------------------------------------------------------------- submission


def test_submission_starttls_smtplib_local_delivery(server):
    s = smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30)
    s.ehlo("client.test")
    assert not s.has_extn("auth"), "AUTH is not offered before TLS"
    code, msg = s.docmd("AUTH", "PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABwdw==")
    assert code == 538, msg
    code, msg = s.docmd("MAIL", f"FROM:<{ALICE}>")
    assert code == 530, msg
    s.starttls(context=CTX)
    s.ehlo("client.test")
    assert "PLAIN" in s.esmtp_features["auth"]
    s.login(ALICE, PASSWORD)
    s.sendmail(ALICE, [BOB], f"From: Alice <{ALICE}>\r\nTo: {BOB}\r\nSubject: via 587\r\n\r\nHi Bob.\r\n")
    s.quit()
    msgs = server.messages(BOB)
    assert len(msgs) == 1
    stored = server.message_bytes(BOB, msgs[0]["uid"])
    head = stored.split(b"\r\n\r\n", 1)[0]
    assert b"with ESMTPSA id" in head
    assert b"\r\nMessage-ID: <" in head, "missing Message-ID added"
    assert b"\r\nDate: " in head, "missing Date added"
    assert stored.endswith(b"Hi Bob.\r\n")


def test_submission_implicit_tls_remote_recipient_is_queued(server):
    msg = (f"From: {ALICE}\r\nTo: friend@remote.example\r\nSubject: out\r\n"
           "Message-ID: <out-1@client>\r\nDate: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nBye.\r\n")
    refused = submit(server, ALICE, PASSWORD, ALICE, ["friend@remote.example", BOB], msg,
                     implicit=True)
    assert refused == {}
    queue = server.cli_json("queue", "list")
    assert len(queue) == 1
    entry = queue[0]
    assert entry["sender"] == ALICE
    assert [(r["address"], r["state"]) for r in entry["recipients"]] == [
        ("friend@remote.example", "queued")
    ]
    bob = server.messages(BOB)
    assert len(bob) == 1 and bob[0]["blob"] == entry["blob"], "one blob for both"
    assert "friend@remote.example" in server.cli("queue", "list").stdout
    # It stays queued across a restart (durable, never dropped).
    server.stop()
    server.start()
    assert server.cli_json("queue", "list")[0]["recipients"][0]["state"] == "queued"


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed")
@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_submission_swaks_auth(server, mode):
    port = server.submission_port if mode == "starttls" else server.submissions_port
    tls = ["--tls"] if mode == "starttls" else ["--tls-on-connect"]
    for mech in ["PLAIN", "LOGIN"]:
        r = subprocess.run(
            ["swaks", "--server", f"127.0.0.1:{port}", *tls, "--auth", mech,
             "--auth-user", ALICE, "--auth-password", PASSWORD,
             "--from", ALICE, "--to", BOB, "--header", f"Subject: swaks {mode} {mech}",
             "--timeout", "30"],
            capture_output=True, text=True, timeout=60,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert "235 2.7.0 Authentication successful" in r.stdout
    subjects = [server.message_bytes(BOB, m["uid"]) for m in server.messages(BOB)]
    assert any(f"swaks {mode} LOGIN".encode() in s for s in subjects)


def test_submission_forged_senders_are_refused(server):
    with smtplib.SMTP_SSL("127.0.0.1", server.submissions_port, timeout=30, context=CTX) as s:
        s.login(ALICE, PASSWORD)
        with pytest.raises(smtplib.SMTPSenderRefused) as e:
            s.sendmail(BOB, [BOB], f"From: {BOB}\r\n\r\nforged\r\n")
        assert e.value.smtp_code == 553 and b"5.7.1" in e.value.smtp_error
        s.rset()
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail(ALICE, [BOB], f"From: Boss <ceo@example.test>\r\nSubject: x\r\n\r\nforged\r\n")
        assert e.value.smtp_code == 550 and b"5.7.1" in e.value.smtp_error
        s.rset()
        # Its alias (sales -> alice) and +tags are its own.
        s.sendmail("sales@example.test", [BOB], "From: sales@example.test\r\n\r\nok\r\n")
        s.sendmail("alice+news@example.test", [BOB], f"From: {ALICE}\r\n\r\nok\r\n")
    assert len(server.messages(BOB)) == 2
    # A grant lets alice send as another address.
    server.cli("send-as", "add", ALICE, "@shared.example")
    submit(server, ALICE, PASSWORD, "team@shared.example", [BOB],
           "From: team@shared.example\r\n\r\ngranted\r\n", implicit=True)
    assert len(server.messages(BOB)) == 3
    # Relaying stays refused for unauthenticated clients on the inbound port.
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as e:
            s.sendmail(ALICE, ["friend@remote.example"], "Subject: relay\r\n\r\nx\r\n")
        assert e.value.recipients["friend@remote.example"][0] == 554
    assert server.cli_json("queue", "list") == []


# ---------------------------------------------------------------- login security


@pytest.fixture
def throttled_server(tmp_path):
    s = Server(tmp_path / "data", extra_env={
        "MAILFLEET_AUTH__MAX_FAILURES_PER_IP": "20",
        "MAILFLEET_AUTH__MAX_FAILURES_PER_ACCOUNT": "100000",
        "MAILFLEET_AUTH__DELAY_BASE_MS": "20",
        "MAILFLEET_AUTH__DELAY_MAX_MS": "400",
    })
    s.cli("domain", "add", "example.test")
    for user in ("alice", "bob"):
        s.cli("user", "add", f"{user}@example.test", "--password-stdin", stdin=PASSWORD + "\n")
    s.start()
    yield s
    s.stop()


def test_login_security_brute_force_is_slowed_then_refused(throttled_server):
    server = throttled_server
    attempts, timings, replies = 0, [], []
    while attempts < 300:
        # One connection per guess: the per-connection limit is not what is tested here.
        conn = RawPop3(server)
        start = time.monotonic()
        replies.append(conn.login(ALICE, f"guess-{attempts}"))
        timings.append(time.monotonic() - start)
        conn.close()
        attempts += 1
    assert attempts == 300
    assert all(not r.startswith("+OK") for r in replies)
    throttled = [i for i, r in enumerate(replies) if "Too many failed logins" in r]
    assert throttled, replies[:40]
    first = throttled[0]
    assert first <= 25, f"refused after about 20 failures, not {first}"
    assert all("Too many failed logins" in r for r in replies[first + 1:] if r), "stays refused"
    # Slowed before being refused: by then each failure waits 400 ms more than the first.
    early = sum(timings[:3]) / 3
    late = sum(timings[10:first]) / len(timings[10:first])
    assert late - early > 0.25, (early, late)
    # The right password from the attacking address is refused too (not even checked)...
    c = RawPop3(server)
    assert "Too many failed logins" in c.login(ALICE, PASSWORD)
    c.close()
    with pytest.raises(smtplib.SMTPAuthenticationError) as e:
        submit(server, ALICE, PASSWORD, ALICE, [BOB], "Subject: x\r\n\r\nx\r\n", implicit=True)
    assert e.value.smtp_code == 454
    # ...while the same account logs in from another address.
    c = RawPop3(server, source="127.0.0.2")
    assert c.login(ALICE, PASSWORD).startswith("+OK Logged in")
    c.cmd("QUIT")
    c.close()
    submit(server, ALICE, PASSWORD, ALICE, [BOB], f"From: {ALICE}\r\n\r\nfrom .2\r\n",
           implicit=True, source="127.0.0.2")
    assert len(server.messages(BOB)) == 1
    log = server.log.read_text()
    assert "authentication failed" in log and "too many failed logins" in log


def test_login_security_app_password_until_revoked(server):
    out = server.cli_json("app-password", "add", ALICE, "phone")
    app = out["password"]
    assert len(app.replace("-", "")) == 20
    assert server.cli_json("app-password", "list", ALICE)[0]["name"] == "phone"
    p = pop3s(server, password=app)
    p.quit()
    imap_login(server, password=app).logout()
    submit(server, ALICE, app, ALICE, [BOB], f"From: {ALICE}\r\n\r\nvia app password\r\n",
           implicit=True)
    listed = server.cli_json("app-password", "list", ALICE)
    assert listed[0]["last_used"] is not None
    server.cli("app-password", "revoke", ALICE, "phone")
    assert server.cli_json("app-password", "list", ALICE) == []
    with pytest.raises(poplib.error_proto):
        pop3s(server, password=app)
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(server, password=app)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submit(server, ALICE, app, ALICE, [BOB], "x", implicit=True)
    r = server.cli("app-password", "revoke", ALICE, "phone", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr


def test_login_security_totp_requires_app_passwords(server):
    r = server.cli("totp", "enable", ALICE)
    assert "otpauth://totp/" in r.stdout and "secret: " in r.stdout
    secret = [l for l in r.stdout.splitlines() if l.startswith("secret: ")][0].split()[1]
    assert server.cli_json("totp", "show", ALICE)["secret"] == secret
    again = server.cli("totp", "enable", ALICE, check=False)
    assert again.returncode != 0 and "--force" in again.stderr
    app = server.cli_json("app-password", "add", ALICE, "laptop")["password"]
    # The main password no longer opens IMAP, POP3 or submission...
    with pytest.raises(imaplib.IMAP4.error):
        imap_login(server)
    with pytest.raises(poplib.error_proto):
        pop3s(server)
    with pytest.raises(smtplib.SMTPAuthenticationError):
        submit(server, ALICE, PASSWORD, ALICE, [BOB], "x", implicit=True)
    # ...app passwords do.
    imap_login(server, password=app).logout()
    pop3s(server, password=app).quit()
    submit(server, ALICE, app, ALICE, [BOB], f"From: {ALICE}\r\n\r\n2fa\r\n", implicit=True)
    # Bob, without TOTP, is unaffected; disabling brings the main password back.
    pop3s(server, user=BOB).quit()
    server.cli("totp", "disable", ALICE)
    pop3s(server).quit()


# ---------------------------------------------------------------- suspension


def test_a_suspended_account_keeps_receiving_but_cannot_log_in(server):
    """`user suspend` refuses the right password on IMAP (RFC 5530 CONTACTADMIN), POP3
    (-ERR [AUTH]) and submission (RFC 4954 525 5.7.13), while mail to the account is still
    accepted and kept; a wrong password still gets the plain failure; `user resume` and the
    same clients log in again and see the mail that came meanwhile."""
    assert "suspended" in server.cli("user", "suspend", ALICE).stdout
    assert "already suspended" in server.cli("user", "suspend", ALICE).stdout
    [alice] = [u for u in server.cli_json("user", "list") if u["address"] == ALICE]
    assert alice["suspended"] is True

    deliver(server, ALICE, "while suspended")

    with pytest.raises(imaplib.IMAP4.error) as e:
        imap_login(server)
    assert "CONTACTADMIN" in str(e.value) and "suspended" in str(e.value)
    with pytest.raises(imaplib.IMAP4.error) as e:
        imap_login(server, password="Wrong-" + PASSWORD)
    assert "AUTHENTICATIONFAILED" in str(e.value)

    with pytest.raises(poplib.error_proto) as e:
        pop3s(server)
    assert b"[AUTH]" in e.value.args[0] and b"suspended" in e.value.args[0]

    msg = f"From: {ALICE}\r\nTo: {BOB}\r\nSubject: x\r\n\r\nx\r\n"
    with pytest.raises(smtplib.SMTPAuthenticationError) as e:
        submit(server, ALICE, PASSWORD, ALICE, [BOB], msg)
    assert e.value.smtp_code == 525 and b"5.7.13" in e.value.smtp_error

    # The refusals of a right password did not use up the lockout: resume, log in at once.
    assert "is active" in server.cli("user", "resume", ALICE).stdout
    c = imap_login(server)
    try:
        c.select("INBOX", readonly=True)
        typ, data = c.search(None, "SUBJECT", '"while suspended"')
        assert typ == "OK" and data[0].split(), "mail that came while suspended is kept"
    finally:
        c.logout()
    p = pop3s(server)
    p.quit()
    submit(server, ALICE, PASSWORD, ALICE, [BOB], msg)


# ---------------------------------------------------------------- domain alias and quota


def test_a_domain_alias_and_a_domain_quota_from_the_cli(server):
    """`domain add-alias` makes smtplib's mail to alice@alias.test land in alice@example.test's
    INBOX (seen with imaplib), an unknown local part of the alias is refused at RCPT like at
    the real domain; `domain quota` refuses while an account is unlimited and then bounds
    the quotas `user quota` may give."""
    out = server.cli("domain", "add-alias", "example.test", "alias.test").stdout
    assert "domain alias of example.test" in out
    deliver(server, "alice@alias.test", "via the alias domain")
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.ehlo("client.test")
        s.mail("sender@remote.test")
        code, _ = s.rcpt("nobody@alias.test")
        assert code == 550
    c = imap_login(server)
    try:
        c.select("INBOX", readonly=True)
        typ, data = c.search(None, "SUBJECT", '"via the alias domain"')
        assert typ == "OK" and data[0].split(), "delivered to the same local part"
    finally:
        c.logout()

    users = server.cli_json("user", "list", "example.test")
    limit = f"{len(users) + 1}G"
    r = server.cli("domain", "quota", "example.test", limit, check=False)
    assert r.returncode == 1 and "without a quota" in r.stderr, r.stderr
    for u in users:
        server.cli("user", "quota", u["address"], "1G")
    assert "quota" in server.cli("domain", "quota", "example.test", limit).stdout
    listed = {d["name"]: d for d in server.cli_json("domain", "list")}
    assert listed["example.test"]["quota_bytes"] == (len(users) + 1) << 30
    r = server.cli("user", "quota", ALICE, "3G", check=False)
    assert r.returncode == 1 and "over the domain's quota" in r.stderr, r.stderr
    server.cli("domain", "quota", "example.test", "0")
    server.cli("domain", "remove-alias", "example.test", "alias.test")
    deliver_refused = False
    try:
        deliver(server, "alice@alias.test", "after removal")
    except smtplib.SMTPRecipientsRefused:
        deliver_refused = True
    assert deliver_refused, "the alias no longer delivers"
    server.cli("domain", "remove", "alias.test")
