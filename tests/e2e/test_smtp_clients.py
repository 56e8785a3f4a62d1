"""Real SMTP clients (Python's smtplib, swaks) against a running Mailfleet."""

import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

MESSAGE = (
    b"From: Sender <sender@remote.test>\r\n"
    b"To: alice@example.test, bob@example.test, sales@example.test\r\n"
    b"Subject: Hello from smtplib\r\n"
    b"Message-ID: <e2e-1@remote.test>\r\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Gr\xc3\xbc\xc3\x9fe aus dem Test.\r\n"
    b".a line that starts with a dot\r\n"
    b"Last line.\r\n"
)


def split_trace(stored: bytes):
    """Returns (trace header lines, rest) where trace = Return-Path + Received (folded)."""
    lines = stored.split(b"\r\n")
    assert lines[0].startswith(b"Return-Path: <"), lines[0]
    i = 1
    assert lines[i].startswith(b"Received: "), lines[i]
    i += 1
    while lines[i].startswith(b"\t"):
        i += 1
    trace = b"\r\n".join(lines[:i]) + b"\r\n"
    return trace, stored[len(trace):]


def assert_delivered_once_to_all(server, sent: bytes):
    alice = server.messages("alice@example.test")
    bob = server.messages("bob@example.test")
    assert len(alice) == 1, "the alias and the direct address yield one copy"
    assert len(bob) == 1
    assert alice[0]["blob"] == bob[0]["blob"], "one stored body for all recipients"
    assert alice[0]["uid"] == 1 and bob[0]["uid"] == 1
    stored = server.message_bytes("alice@example.test", 1)
    trace, rest = split_trace(stored)
    assert rest == sent, "stored bytes are the sent bytes plus trace headers"
    assert b"mx.example.test (Mailfleet)" in trace
    assert server.message_bytes("bob@example.test", 1) == stored
    files = [p for p in server.blob_files() if p.name == alice[0]["blob"]]
    assert len(files) == 1 and files[0].read_bytes() == stored


def test_smtplib_plain_to_two_users_and_alias(server):
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        code, caps = s.ehlo("client.remote.test")
        assert code == 250
        for ext in (b"PIPELINING", b"8BITMIME", b"SMTPUTF8", b"ENHANCEDSTATUSCODES", b"CHUNKING", b"STARTTLS"):
            assert ext in caps
        refused = s.sendmail(
            "sender@remote.test",
            ["alice@example.test", "bob@example.test", "sales@example.test"],
            MESSAGE,
        )
        assert refused == {}
    assert_delivered_once_to_all(server, MESSAGE)


def test_smtplib_starttls(server):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.ehlo("client.remote.test")
        s.starttls(context=ctx)
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
        code, caps = s.ehlo("client.remote.test")
        assert b"STARTTLS" not in caps, "STARTTLS is not offered twice"
        s.sendmail("sender@remote.test", ["bob@example.test"], MESSAGE)
    stored = server.message_bytes("bob@example.test", 1)
    trace, rest = split_trace(stored)
    assert rest == MESSAGE
    assert b"with ESMTPS" in trace and b"for <bob@example.test>" in trace


def test_smtplib_implicit_tls_refuses_old_protocols(server):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP_SSL("127.0.0.1", server.smtps_port, timeout=30, context=ctx) as s:
        s.sendmail("sender@remote.test", ["alice@example.test"], MESSAGE)
    assert len(server.messages("alice@example.test")) == 1
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.check_hostname = False
    old.verify_mode = ssl.CERT_NONE
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        with socket.create_connection(("127.0.0.1", server.smtps_port), timeout=10) as raw:
            with old.wrap_socket(raw) as tls:
                tls.recv(100)


def test_unknown_user_and_relay_are_refused(server):
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.ehlo("client.remote.test")
        s.mail("sender@remote.test")
        code, msg = s.rcpt("nobody@example.test")
        assert code == 550 and msg.startswith(b"5.1.1"), msg
        code, msg = s.rcpt("victim@gmail.example")
        assert code == 554 and msg.startswith(b"5.7.1"), msg


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks not installed (scripts/test.sh installs it)")
@pytest.mark.parametrize("mode", ["plain", "starttls", "implicit"])
def test_swaks_to_two_users_and_alias(server, mode, tmp_path):
    body = tmp_path / "msg.eml"
    # swaks ends DATA with CRLF.CRLF after the file, so the file omits the final CRLF.
    body.write_bytes(MESSAGE[:-2])
    port = server.smtps_port if mode == "implicit" else server.smtp_port
    args = [
        "swaks", "--server", f"127.0.0.1:{port}", "--helo", "swaks.remote.test",
        "--from", "sender@remote.test",
        "--to", "alice@example.test,bob@example.test,sales@example.test",
        "--data", str(body), "--timeout", "30",
    ]
    if mode == "starttls":
        args.append("--tls")
    if mode == "implicit":
        args.append("--tlsc")
    r = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "250 2.0.0 Ok: queued as" in r.stdout
    assert_delivered_once_to_all(server, MESSAGE)


def test_raw_smuggling_over_tcp(server):
    """<LF>.<LF> inside DATA does not end the message over a real socket either."""
    with socket.create_connection(("127.0.0.1", server.smtp_port), timeout=30) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220")
        s.sendall(b"EHLO attacker.test\r\n")
        while not f.readline().startswith(b"250 "):
            pass
        s.sendall(b"MAIL FROM:<a@remote.test>\r\nRCPT TO:<alice@example.test>\r\nDATA\r\n")
        for expect in (b"250", b"250", b"354"):
            assert f.readline().startswith(expect)
        s.sendall(
            b"Subject: one\r\n\r\nx\n.\nMAIL FROM:<ceo@example.test>\r\n"
            b"RCPT TO:<bob@example.test>\r\nDATA\r\nSubject: two\r\n\r\ny\r\n.\r\n"
        )
        assert f.readline().startswith(b"250 2.0.0")
        s.sendall(b"QUIT\r\n")
        assert f.readline().startswith(b"221")
    assert len(server.messages("alice@example.test")) == 1
    assert server.messages("bob@example.test") == []


def test_stalled_client_is_disconnected(tmp_path):
    from conftest import Server

    s = Server(tmp_path / "d", {"MAILFLEET_SMTP__COMMAND_TIMEOUT_SECS": "2"})
    s.start()
    try:
        with socket.create_connection(("127.0.0.1", s.smtp_port), timeout=30) as c:
            f = c.makefile("rb")
            assert f.readline().startswith(b"220")
            started = time.time()
            line = f.readline()
            assert line.startswith(b"421 4.4.2"), line
            assert f.readline() == b"", "closed after the timeout reply"
            assert time.time() - started < 25
        # The server is still serving.
        with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=30) as c:
            assert c.noop()[0] == 250
    finally:
        s.stop()
