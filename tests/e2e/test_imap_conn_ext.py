"""COMPRESS=DEFLATE (RFC 4978), NOTIFY (RFC 5465) and UTF8=ACCEPT / modified UTF-7 mailbox
names (RFC 6855, RFC 3501 section 5.1.3) against a running Mailfleet.

imaplib has no COMPRESS and no NOTIFY: those tests speak IMAP over raw sockets (COMPRESS with
Python's zlib, raw DEFLATE: wbits -15, a sync flush after every command), inside TLS after
STARTTLS. Mailbox names go through imaplib, which sends what it is given (modified UTF-7) and
UTF-8 after ``enable("UTF8=ACCEPT")``.
"""

import imaplib
import select
import smtplib
import socket
import ssl
import time
import zlib

from conftest import PASSWORD

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE

ALICE = "alice@example.test"


class Raw:
    """A line-based IMAP client over a socket, optionally TLS and COMPRESS."""

    def __init__(self, port: int, tls: bool = False):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.buf = b""
        self.z_out = None
        self.z_in = None
        assert self.line().startswith(b"* OK")
        if tls:
            assert self.cmd(b"s STARTTLS")[-1].startswith(b"s OK")
            self.sock = CTX.wrap_socket(self.sock, server_hostname="mx.example.test")

    def send(self, data: bytes):
        if self.z_out is not None:
            data = self.z_out.compress(data) + self.z_out.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _fill(self, timeout: float) -> bool:
        self.sock.settimeout(timeout)
        try:
            chunk = self.sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return False
        assert chunk, "connection closed"
        if self.z_in is not None:
            chunk = self.z_in.decompress(chunk)
        self.buf += chunk
        return True

    def line(self, timeout: float = 20) -> bytes:
        deadline = time.time() + timeout
        while b"\r\n" not in self.buf:
            left = deadline - time.time()
            if left <= 0 or not self._fill(left):
                raise AssertionError(f"no line within {timeout}s; have {self.buf!r}")
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def quiet(self, seconds: float) -> bool:
        """True when nothing arrives for ``seconds``."""
        if self.buf:
            return False
        return not self._fill(seconds)

    def cmd(self, line: bytes) -> list[bytes]:
        tag = line.split(b" ", 1)[0]
        self.send(line + b"\r\n")
        out = []
        while True:
            got = self.line()
            out.append(got)
            if got.startswith(tag + b" "):
                return out

    def compress(self):
        r = self.cmd(b"z COMPRESS DEFLATE")
        assert r[-1].startswith(b"z OK"), r
        assert not self.buf, "nothing may follow the OK uncompressed"
        self.z_out = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.z_in = zlib.decompressobj(-15)

    def close(self):
        self.sock.close()


def deliver(server, subject: str):
    msg = (f"From: s@remote.test\r\nTo: {ALICE}\r\nSubject: {subject}\r\n\r\nbody\r\n").encode()
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail("s@remote.test", [ALICE], msg)


def logged_in(server, tls: bool = True) -> Raw:
    c = Raw(server.imap_port, tls=tls)
    r = c.cmd(f"l LOGIN {ALICE} {PASSWORD}".encode())
    assert r[-1].startswith(b"l OK"), r
    return c


def test_compress_deflate_inside_tls(server):
    for i in range(3):
        deliver(server, f"zipped {i}")
    c = logged_in(server, tls=True)
    caps = c.cmd(b"c CAPABILITY")
    assert b" COMPRESS=DEFLATE" in caps[0], caps
    c.compress()
    r = c.cmd(b"a SELECT INBOX")
    assert b"* 3 EXISTS" in r and r[-1].startswith(b"a OK"), r
    r = c.cmd(b"b FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert sum(1 for x in r if x.startswith(b"Subject: zipped")) == 3, r
    r = c.cmd(b"d COMPRESS DEFLATE")
    assert r[-1].startswith(b"d NO [COMPRESSIONACTIVE]"), r
    # A synchronizing literal through the compressed stream: the "+" comes back compressed.
    body = b"Subject: appended\r\n\r\nx\r\n"
    c.send(b"e APPEND INBOX {%d}\r\n" % len(body))
    assert c.line().startswith(b"+"), "continuation"
    c.send(body + b"\r\n")
    while not (got := c.line()).startswith(b"e "):
        pass
    assert got.startswith(b"e OK"), got
    r = c.cmd(b"f LOGOUT")
    assert r[0].startswith(b"* BYE"), r
    c.close()


def test_compress_before_login_is_refused_and_bombs_hit_the_limit(server):
    c = Raw(server.imap_port)
    r = c.cmd(b"a COMPRESS DEFLATE")
    assert r[-1].startswith(b"a BAD"), r
    c.close()
    c = logged_in(server)
    c.compress()
    # 64 MiB of one byte is about 64 KiB compressed: the server must stop at its command
    # limit, not inflate the lot.
    bomb = zlib.compressobj(9, zlib.DEFLATED, -15)
    c.sock.sendall(bomb.compress(b"x NOOP ") + bomb.flush(zlib.Z_SYNC_FLUSH))
    c.z_out = bomb
    chunk = b"a" * (1 << 20)
    for _ in range(64):
        try:
            c.sock.sendall(bomb.compress(chunk) + bomb.flush(zlib.Z_SYNC_FLUSH))
        except (OSError, ssl.SSLError):
            break  # the server hung up, as it should
    # The server answers BYE (if the client can still read it) and closes: either way the
    # connection ends instead of the server buffering the inflated 64 MiB.
    try:
        line = c.line(timeout=20)
        assert line.startswith(b"* BYE"), line
    except (OSError, ssl.SSLError):
        pass
    except AssertionError as e:
        assert "closed" in str(e), e
    c.close()
    # The server is still there.
    c = logged_in(server)
    assert c.cmd(b"n NOOP")[-1].startswith(b"n OK")
    c.close()


def test_notify_across_two_connections(server):
    a = logged_in(server)
    b = logged_in(server)
    assert b" NOTIFY" in a.cmd(b"c CAPABILITY")[0]
    r = a.cmd(b"a1 SELECT Drafts")
    assert r[-1].startswith(b"a1 OK"), r
    r = a.cmd(b"a2 NOTIFY SET STATUS (SELECTED (MessageNew (UID) MessageExpunge)) "
              b"(INBOXES (MessageNew MessageExpunge)) (PERSONAL (MailboxName SubscriptionChange))")
    assert r[-1].startswith(b"a2 OK"), r
    assert any(x.startswith(b"* STATUS INBOX (MESSAGES 0 UIDNEXT 1 ") for x in r), r

    # Mail over SMTP reaches a without a command: STATUS for INBOX.
    deliver(server, "notified")
    line = a.line(timeout=5)
    assert line.startswith(b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 "), line

    # Mailbox events from the other connection.
    assert b.cmd(b"b1 CREATE Projects")[-1].startswith(b"b1 OK")
    assert a.line(timeout=5) == b'* LIST (\\HasNoChildren) "/" Projects'
    assert b.cmd(b"b2 RENAME Projects Done")[-1].startswith(b"b2 OK")
    assert a.line(timeout=5) == b'* LIST (\\HasNoChildren) "/" Done ("OLDNAME" ("Projects"))'
    assert b.cmd(b"b3 SUBSCRIBE Done")[-1].startswith(b"b3 OK")
    assert a.line(timeout=5) == b'* LIST (\\HasNoChildren \\Subscribed) "/" Done'

    # The selected mailbox: EXISTS and MessageNew's FETCH, at once.
    r = b.cmd(b"b4 APPEND Drafts {14+}\r\nSubject: x\r\n\r\n")
    assert r[-1].startswith(b"b4 OK"), r
    got = [a.line(timeout=5)]
    while b"FETCH" not in got[-1]:
        got.append(a.line(timeout=5))
    assert got[0] == b"* 1 EXISTS" and got[-1] == b"* 1 FETCH (UID 1)", got

    # NOTIFY NONE: nothing more arrives.
    assert a.cmd(b"a3 NOTIFY NONE")[-1].startswith(b"a3 OK")
    assert b.cmd(b"b5 CREATE Later")[-1].startswith(b"b5 OK")
    deliver(server, "not notified")
    assert a.quiet(1.0)
    a.close()
    b.close()


def test_mailbox_names_in_modified_utf7_and_utf8(server):
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    c.starttls(ssl_context=CTX)
    c.login(ALICE, PASSWORD)
    assert "UTF8=ACCEPT" in c.capabilities
    typ, _ = c.create("Entw&APw-rfe")
    assert typ == "OK"
    typ, data = c.list('""', "Entw*")
    assert data == [b'(\\HasNoChildren) "/" Entw&APw-rfe'], data
    typ, data = c.rename("Entw&APw-rfe", "&ZeVnLIqe-")
    assert typ == "OK", data
    typ, data = c.status("&ZeVnLIqe-", "(MESSAGES)")
    assert data == [b"&ZeVnLIqe- (MESSAGES 0)"], data
    typ, data = c.create("&AGE-")  # an encoded 'a': not valid modified UTF-7
    assert typ == "NO", data
    c.logout()

    u = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    u.starttls(ssl_context=CTX)
    u.login(ALICE, PASSWORD)
    typ, data = u.enable("UTF8=ACCEPT")
    assert typ == "OK", data
    typ, data = u.list('""', "*")
    assert b'(\\HasNoChildren) "/" "\xe6\x97\xa5\xe6\x9c\xac\xe8\xaa\x9e"' in data, data
    typ, data = u.create('"Stra\u00dfe"')
    assert typ == "OK", data
    typ, data = u.select('"Stra\u00dfe"')
    assert typ == "OK", data
    u.logout()

    # And back to an IMAP4rev1 client in modified UTF-7.
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    c.starttls(ssl_context=CTX)
    c.login(ALICE, PASSWORD)
    typ, data = c.list('""', "Stra*")
    assert data == [b'(\\HasNoChildren) "/" Stra&AN8-e'], data
    c.logout()


def with_literal(c: Raw, head: bytes, data: bytes, tail: bytes) -> list[bytes]:
    """Sends ``head`` ending in a synchronizing literal announcement, waits for the
    continuation request, then the literal's data and ``tail``; returns the answer."""
    tag = head.split(b" ", 1)[0]
    c.send(head + b"\r\n")
    cont = c.line()
    assert cont.startswith(b"+"), cont
    c.send(data + tail + b"\r\n")
    out = []
    while True:
        got = c.line()
        out.append(got)
        if got.startswith(tag + b" "):
            return out


def test_append_utf8_data_item_and_multiappend_names(server):
    """RFC 6855 section 4: APPEND's ``UTF8 (~{n})`` data item is BAD before ENABLE
    UTF8=ACCEPT and stores the message as sent after it; MULTIAPPEND and REPLACE take
    modified UTF-7 mailbox names like APPEND does."""
    msg = "From: j\u00f6rg@example.test\r\nSubject: Gr\u00fc\u00dfe\r\n\r\nhallo\r\n".encode()
    c = logged_in(server)
    r = with_literal(c, b"a1 APPEND INBOX UTF8 (~{%d}" % len(msg), msg, b")")
    assert r[-1].startswith(b"a1 BAD"), r
    assert c.cmd(b"e ENABLE UTF8=ACCEPT")[-1].startswith(b"e OK")
    r = with_literal(c, b"a2 APPEND INBOX (\\Seen) UTF8 (~{%d}" % len(msg), msg, b")")
    assert r[-1].startswith(b"a2 OK [APPENDUID "), r
    # One plain and one UTF8 message in one MULTIAPPEND (LITERAL+ throughout).
    r = c.cmd(b"a3 APPEND INBOX {1+}\r\nx UTF8 (~{%d+}\r\n" % len(msg) + msg + b")")
    assert r[-1].startswith(b"a3 OK [APPENDUID "), r
    assert c.cmd(b"s SELECT INBOX")[-1].startswith(b"s OK")
    r = c.cmd(b"f FETCH 1:3 (RFC822.SIZE)")
    assert any(b"* 1 FETCH (RFC822.SIZE %d)" % len(msg) in x for x in r), r
    assert any(b"* 3 FETCH (RFC822.SIZE %d)" % len(msg) in x for x in r), r
    c.close()

    # An IMAP4rev1 session: MULTIAPPEND and REPLACE into a modified UTF-7 name.
    c = logged_in(server)
    assert c.cmd(b"c CREATE Entw&APw-rfe")[-1].startswith(b"c OK")
    r = c.cmd(b"m APPEND Entw&APw-rfe {1+}\r\nx (\\Seen) {1+}\r\ny")
    assert r[-1].startswith(b"m OK [APPENDUID "), r
    r = c.cmd(b"t STATUS Entw&APw-rfe (MESSAGES)")
    assert b"* STATUS Entw&APw-rfe (MESSAGES 2)" in r, r
    assert c.cmd(b"s SELECT Entw&APw-rfe")[-1].startswith(b"s OK")
    r = c.cmd(b"r REPLACE 1 Entw&APw-rfe {1+}\r\nz")
    assert r[-1].startswith(b"r OK"), r
    r = c.cmd(b"t2 STATUS INBOX (MESSAGES)")
    assert r[-1].startswith(b"t2 OK"), r
    r = c.cmd(b"f FETCH 1:* (RFC822.SIZE)")
    assert sum(1 for x in r if x.startswith(b"* ") and b" FETCH " in x) == 2, r
    # Not valid modified UTF-7 (an encoded 'a'): the name is refused, nothing stored.
    r = c.cmd(b"m2 APPEND &AGE- {1+}\r\nx {1+}\r\ny")
    assert r[-1].startswith(b"m2 NO"), r
    c.close()
