"""PROXY protocol v2 against a running Mailfleet: the client address a trusted load
balancer's header carries is the one the server names (EHLO, Received, logs) and throttles;
a header from an untrusted address is refused.

The headers are built here byte by byte with struct (not with a library), from the
HAProxy specification: 12-byte signature, version/command, family/transport, length,
then the addresses and ports."""

import imaplib
import json
import smtplib
import socket
import ssl
import struct
import time

import pytest

from conftest import PASSWORD, Server

ALICE = "alice@example.test"

SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
CMD_LOCAL, CMD_PROXY = 0x0, 0x1
TCP_OVER_IPV4 = 0x11

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def v2_header(src, src_port, dst="127.0.0.1", dst_port=25, command=CMD_PROXY):
    addrs = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", src_port, dst_port)
    return SIGNATURE + struct.pack("!BBH", 0x20 | command, TCP_OVER_IPV4, len(addrs)) + addrs


def connect(port, header=b"", source="127.0.0.1"):
    s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    if header:
        s.sendall(header)
    return s


class ProxiedSMTP(smtplib.SMTP):
    """smtplib over a connection that starts with a PROXY header."""

    def __init__(self, port, header, source="127.0.0.1"):
        self._header, self._source = header, source
        super().__init__("127.0.0.1", port, timeout=30)

    def _get_socket(self, host, port, timeout):
        return connect(port, self._header, self._source)


class ProxiedSMTPS(smtplib.SMTP_SSL):
    """smtplib on the implicit-TLS submission port, the PROXY header before TLS."""

    def __init__(self, port, header):
        self._header = header
        super().__init__("127.0.0.1", port, timeout=30, context=CTX)

    def _get_socket(self, host, port, timeout):
        return self.context.wrap_socket(connect(port, self._header), server_hostname=host)


class ProxiedIMAPS(imaplib.IMAP4_SSL):
    """imaplib on an implicit-TLS port: the header goes first, before the ClientHello."""

    def __init__(self, port, header):
        self._header = header
        super().__init__("127.0.0.1", port, ssl_context=CTX, timeout=30)

    def _create_socket(self, timeout):
        return self.ssl_context.wrap_socket(connect(self.port, self._header), server_hostname=self.host)


@pytest.fixture
def proxied(tmp_path):
    s = Server(tmp_path / "data", extra_env={
        "MAILFLEET_SERVER__PROXY_PROTOCOL": "true",
        "MAILFLEET_SERVER__PROXY_TRUSTED_NETWORKS": '["127.0.0.1/32"]',
        "MAILFLEET_SERVER__PROXY_HEADER_TIMEOUT_SECS": "1",
        "MAILFLEET_AUTH__MAX_FAILURES_PER_IP": "4",
        "MAILFLEET_AUTH__MAX_FAILURES_PER_ACCOUNT": "100000",
        "MAILFLEET_AUTH__DELAY_BASE_MS": "0",
        "MAILFLEET_AUTH__DELAY_MAX_MS": "0",
        # The carried addresses are documentation networks with no DNS here; sender
        # authentication (tests/e2e/test_sender_auth.py) would defer their mail.
        "MAILFLEET_SMTP__AUTHENTICATION__ENABLED": "false",
    })
    s.cli("domain", "add", "example.test")
    s.cli("user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    s.start()
    yield s
    s.stop()


def log_lines(server):
    out = []
    for line in server.log.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def wait_for_log(server, pred, timeout=5):
    deadline = time.time() + timeout
    while time.time() < deadline:
        hits = [l for l in log_lines(server) if pred(l)]
        if hits:
            return hits
        time.sleep(0.05)
    raise AssertionError(f"no such log line in {server.log.read_text()[-3000:]}")


def test_carried_client_is_named_in_ehlo_received_and_logs(proxied):
    header = v2_header("203.0.113.7", 40000)
    with ProxiedSMTP(proxied.smtp_port, header) as s:
        code, text = s.ehlo("client.example")
        assert code == 250 and b"[203.0.113.7]" in text, text
        s.sendmail("sender@remote.test", [ALICE], b"Subject: via proxy\r\n\r\nhello\r\n")
    uid = proxied.messages(ALICE)[0]["uid"]
    raw = proxied.message_bytes(ALICE, uid)
    received = raw.split(b"\r\n\r\n", 1)[0]
    assert b"203.0.113.7" in received, received
    assert b"127.0.0.1" not in received.split(b"Subject:")[0], received
    hits = wait_for_log(proxied, lambda l: l.get("fields", {}).get("message") == "PROXY header accepted")
    assert hits[0]["fields"]["client"] == "203.0.113.7:40000", hits[0]
    assert hits[0]["fields"]["proxy"].startswith("127.0.0.1:"), hits[0]


def test_failed_logins_throttle_the_carried_client_only(proxied):
    def login(client, password):
        c = ProxiedIMAPS(proxied.imaps_port, v2_header(client, 50000))
        try:
            c.login(ALICE, password)
            return "OK"
        except imaplib.IMAP4.error as e:
            return str(e)
        finally:
            try:
                c.shutdown()
            except OSError:
                pass

    replies = [login("203.0.113.7", f"guess-{i}") for i in range(6)]
    assert "AUTHENTICATIONFAILED" in replies[0] or "Invalid credentials" in replies[0], replies
    assert any("Too many failed logins" in r for r in replies), replies
    # The right password from the throttled client is refused, not even checked...
    assert "Too many failed logins" in login("203.0.113.7", PASSWORD)
    # ...while another client behind the same balancer (same TCP peer) logs in.
    assert login("198.51.100.9", PASSWORD) == "OK"


def test_failed_smtp_auth_throttles_the_carried_client_only(proxied):
    def auth(client, password):
        with ProxiedSMTPS(proxied.submissions_port, v2_header(client, 50001, dst_port=465)) as s:
            try:
                s.login(ALICE, password)
                return 235
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code

    codes = [auth("203.0.113.7", f"guess-{i}") for i in range(6)]
    assert codes[0] == 535 and 454 in codes, codes
    assert auth("203.0.113.7", PASSWORD) == 454, "throttled client refused"
    assert auth("198.51.100.9", PASSWORD) == 235, "another carried client is not"


def test_local_command_keeps_the_balancer_address(proxied):
    with ProxiedSMTP(proxied.smtp_port, v2_header("0.0.0.0", 0, "0.0.0.0", 0, CMD_LOCAL)) as s:
        code, text = s.ehlo("lb.example")
        assert code == 250 and b"[127.0.0.1]" in text, text


def test_trusted_peer_without_header_is_closed_before_the_greeting(proxied):
    s = connect(proxied.smtp_port)
    s.sendall(b"EHLO x\r\n")
    s.settimeout(5)
    assert s.recv(1024) == b"", "no greeting for a balancer that sends no header"
    s.close()
    wait_for_log(proxied, lambda l: "no valid PROXY header" in l.get("fields", {}).get("message", ""))


def test_header_from_untrusted_address_is_refused(proxied):
    # A direct client outside the trusted networks is served as itself...
    with smtplib.SMTP(timeout=30, source_address=("127.0.0.2", 0)) as s:
        s.connect("127.0.0.1", proxied.smtp_port)
        code, text = s.ehlo("direct.example")
        assert code == 250 and b"[127.0.0.2]" in text, text
    # ...but one that sends a header gets no further than the greeting (if it sees even
    # that before the reset): the header is never read as its address (nor as SMTP
    # commands), and the connection is closed.
    s = connect(proxied.smtp_port, v2_header("203.0.113.7", 1) + b"EHLO forged.example\r\n", source="127.0.0.2")
    s.settimeout(5)
    got = b""
    while True:
        try:
            chunk = s.recv(4096)
        except ConnectionResetError:
            # Closed with the unread header in its buffer, the server's kernel resets.
            break
        if not chunk:
            break
        got += chunk
    s.close()
    assert b"250" not in got, got
    hits = wait_for_log(proxied, lambda l: "outside server.proxy_trusted_networks" in l.get("fields", {}).get("message", ""))
    assert hits[0]["fields"]["peer"].startswith("127.0.0.2:"), hits[0]
    assert not [l for l in log_lines(proxied) if "203.0.113.7" in json.dumps(l)], "forged address never used"
