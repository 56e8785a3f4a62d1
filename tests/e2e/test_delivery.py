"""Outbound delivery end to end: mail submitted to Mailfleet for `remote.test` goes, by a
static route, to a peer on a loopback port: Postfix's `smtp-sink`, or a private instance of
real Postfix (postfix_peer.py) that delivers into a Maildir.

- an accepting peer gets the message with a DKIM signature that dkimpy verifies against
  the record `mailfleet dns records` prints, both as smtp-sink saw it on the wire and as
  real Postfix delivered it into its Maildir;
- a peer that answers 4xx and later 2xx gets the message exactly once;
- a peer that answers 550 makes a DSN appear in the sender's INBOX.
"""

import email
import email.policy
import shutil
import signal
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from conftest import PASSWORD, Server, free_port
from postfix_peer import postfix_installed, postfix_peer
from test_pop3_submission import CTX

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
ALICE = "alice@example.test"
FRIEND = "friend@remote.test"

pytestmark = pytest.mark.skipif(
    not Path(SMTP_SINK).exists(), reason="Postfix's smtp-sink is not installed"
)


class Sink:
    """Postfix's smtp-sink writing each received message to a file in `dir`."""

    def __init__(self, dir: Path, port: int, *flags: str):
        self.dir = dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port
        self.proc = subprocess.Popen(
            [SMTP_SINK, "-u", "root", *flags, "-d", f"{dir}/msg-%H%M%S.", f"127.0.0.1:{port}", "100"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=2):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("smtp-sink did not start")

    def messages(self):
        return sorted(p for p in self.dir.iterdir() if p.name.startswith("msg-"))

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=10)


def start_server(tmp_path, sink_port) -> Server:
    s = Server(
        tmp_path / "data",
        extra_env={
            "MAILFLEET_DELIVERY__ENABLED": "true",
            "MAILFLEET_DELIVERY__POLL_INTERVAL_SECS": "1",
            "MAILFLEET_DELIVERY__RETRY_BASE_SECS": "1",
            "MAILFLEET_DELIVERY__RETRY_MAX_SECS": "2",
            # No DNS is needed: remote.test has a static route. An unused resolver keeps
            # the test independent of the machine's DNS configuration.
            "MAILFLEET_DELIVERY__RESOLVER": "127.0.0.1:9",
            "MAILFLEET_DELIVERY__ROUTES__REMOTE.TEST": f"127.0.0.1:{sink_port}",
        },
    )
    s.cli("domain", "add", "example.test")
    s.cli("user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    return s


def submit(server, subject):
    msg = (f"From: Alice <{ALICE}>\r\nTo: {FRIEND}\r\nSubject: {subject}\r\n"
           "Message-ID: <" + subject.replace(" ", "-") + "@example.test>\r\n"
           "Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nHello friend.\r\n.dot line\r\n")
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30) as s:
        s.starttls(context=CTX)
        s.login(ALICE, PASSWORD)
        assert s.sendmail(ALICE, [FRIEND], msg) == {}


def wait_for(what, check, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def crlf(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def dkim_txt(server) -> bytes:
    """The RSA DKIM TXT value from `mailfleet dns records`, its strings joined."""
    out = server.cli("dns", "records", "example.test").stdout
    for line in out.splitlines():
        if line.startswith("mailfleet-rsa._domainkey.example.test."):
            parts = line.split("\t")[-1]
            return "".join(p for p in parts.split('"') if p.strip()).encode()
    raise AssertionError(f"no DKIM record in:\n{out}")


def test_delivered_message_carries_a_dkim_signature_dkimpy_accepts(tmp_path):
    dkim = pytest.importorskip("dkim")
    sink = Sink(tmp_path / "sink", free_port())
    server = start_server(tmp_path, sink.port)
    try:
        server.cli("dkim", "generate", "example.test")
        records = server.cli("dns", "records", "example.test").stdout
        for want in (" MX ", "v=spf1", "_dmarc.example.test.", "_mta-sts.example.test.",
                     "_smtp._tls.example.test.", "k=ed25519"):
            assert want.strip() in records, want
        txt = dkim_txt(server)
        server.start()
        submit(server, "dkim test")
        # The queue empties once the sink has answered 250, i.e. written the whole file.
        wait_for("the queue to empty", lambda: server.cli_json("queue", "list") == [])
        files = sink.messages()
        assert len(files) == 1
        raw = crlf(files[0].read_bytes())
        assert b"\r\nDKIM-Signature: v=1; a=rsa-sha256" in raw
        assert b"Return-Path:" not in raw, "Return-Path must not be transmitted"
        assert b"\r\n.dot line\r\n" in raw
        # smtp-sink prepends X-* and Received fields; DKIM signs neither.
        asked = []

        def dnsfunc(name, timeout=5):
            asked.append(name)
            return txt

        assert dkim.verify(raw, dnsfunc=dnsfunc), "dkimpy rejected the signature"
        assert asked and b"mailfleet-rsa._domainkey.example.test" in (
            asked[0] if isinstance(asked[0], bytes) else asked[0].encode())
        assert "0 queued" in server.cli("queue", "list").stdout
    finally:
        server.stop()
        sink.stop()


def dkim_records(server) -> dict[bytes, bytes]:
    """Every DKIM TXT record `mailfleet dns records` prints, by DNS name."""
    out = {}
    for line in server.cli("dns", "records", "example.test").stdout.splitlines():
        if "._domainkey." in line and not line.startswith(";"):
            name = line.split("\t")[0].rstrip(".")
            parts = line.split("\t")[-1]
            out[name.encode()] = "".join(p for p in parts.split('"') if p.strip()).encode()
    return out


def signed_selectors(raw: bytes) -> list[str]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    sels = []
    for sig in msg.get_all("DKIM-Signature") or []:
        tags = dict(t.strip().split("=", 1) for t in "".join(sig.split()).split(";") if "=" in t)
        sels.append(tags["s"])
    return sels


def test_dkim_rotation_publishes_the_new_selector_before_signing_with_it(tmp_path):
    dkim = pytest.importorskip("dkim")
    sink = Sink(tmp_path / "sink", free_port())
    server = start_server(tmp_path, sink.port)
    try:
        server.cli("dkim", "generate", "example.test")
        rotated = server.cli_json("dkim", "rotate", "example.test")
        states = {r["selector"]: r["state"] for r in rotated}
        new = [s for s, st in states.items() if st == "published"]
        assert len(new) == 2 and all(s.startswith("mailfleet-") for s in new), states
        # Published: both generations are in DNS, the old one still signs.
        records = dkim_records(server)
        assert len(records) == 4, records
        assert "(not signing)" in server.cli("dns", "records", "example.test").stdout

        def deliver(subject):
            before = set(sink.messages())
            server.start()
            try:
                submit(server, subject)
                wait_for("the queue to empty", lambda: server.cli_json("queue", "list") == [])
            finally:
                server.stop()
            [path] = set(sink.messages()) - before
            raw = crlf(path.read_bytes())
            assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: records[name.rstrip(b".")])
            return signed_selectors(raw)

        assert deliver("before activation") == ["mailfleet-rsa", "mailfleet-ed25519"]
        server.cli("dkim", "activate", "example.test")
        keys = {k["selector"]: k["state"] for k in server.cli_json("dkim", "list", "example.test")}
        assert keys["mailfleet-rsa"] == "retired" and keys["mailfleet-ed25519"] == "retired"
        assert all(keys[s] == "active" for s in new), keys
        # The retired keys stay in DNS, so mail signed with them just before still verifies.
        assert len(dkim_records(server)) == 4
        after = deliver("after activation")
        assert sorted(after) == sorted(new) and after[0].startswith("mailfleet-rsa-"), after
    finally:
        server.stop()
        sink.stop()


def test_dkim_key_files_of_an_earlier_version_keep_signing(tmp_path):
    """Keys written as files by an earlier version are imported into the metadata store
    (every node signs with them from there)."""
    dkim = pytest.importorskip("dkim")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    sink = Sink(tmp_path / "sink", free_port())
    server = start_server(tmp_path, sink.port)
    kd = server.data_dir / "dkim" / "example.test"
    kd.mkdir(parents=True)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (kd / "rsa.der").write_bytes(rsa_key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption()))
    (kd / "ed25519.der").write_bytes(ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    try:
        server.start()
        submit(server, "file keys")
        wait_for("the queue to empty", lambda: server.cli_json("queue", "list") == [])
        raw = crlf(sink.messages()[-1].read_bytes())
        assert signed_selectors(raw) == ["mailfleet-rsa", "mailfleet-ed25519"]
        records = dkim_records(server)
        assert dkim.verify(raw, dnsfunc=lambda name, timeout=5: records[name.rstrip(b".")])
        # The public key in DNS is the file's.
        pub = rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        import base64
        assert base64.b64encode(pub) in records[b"mailfleet-rsa._domainkey.example.test"]
        assert [k["state"] for k in server.cli_json("dkim", "list", "example.test")] == [
            "active", "active"]
    finally:
        server.stop()
        sink.stop()


@pytest.mark.skipif(not postfix_installed(), reason="Postfix is not installed")
def test_dkim_signature_verifies_on_the_message_real_postfix_delivered(tmp_path):
    dkim = pytest.importorskip("dkim")
    with postfix_peer(tmp_path) as peer:
        server = start_server(tmp_path, peer.port)
        try:
            server.cli("dkim", "generate", "example.test")
            txt = dkim_txt(server)
            server.start()
            submit(server, "dkim postfix test")
            [raw] = peer.wait_for(1, timeout=60)
            wait_for("the queue to empty", lambda: server.cli_json("queue", "list") == [])
        finally:
            server.stop()
        # Mailfleet is stopped (in-flight deliveries finish first) and Postfix has
        # delivered all it accepted: any duplicate would be in the Maildir now.
        wait_for("Postfix's queue to empty", peer.queue_empty)
        assert len(peer.messages()) == 1, "delivered more than once"
    raw = crlf(raw)
    headers = raw.split(b"\r\n\r\n", 1)[0]
    # virtual(8) prepends Return-Path and Delivered-To, smtpd its Received (naming
    # Mailfleet's EHLO); the DKIM signature covers none of them.
    assert headers.startswith(b"Return-Path: <alice@example.test>\r\n"), headers
    assert b"\r\nDelivered-To: friend@remote.test\r\n" in headers
    received = headers.split(b"\r\nReceived: ", 1)[1].split(b"\r\n", 2)
    assert received[0].startswith(b"from mx.example.test "), received
    assert received[1].lstrip().startswith(b"by peer.remote.test (Postfix)"), received
    assert b"\r\nDKIM-Signature: v=1; a=rsa-sha256" in headers
    assert b"Message-ID: <dkim-postfix-test@example.test>" in headers
    assert raw.endswith(b"\r\nHello friend.\r\n.dot line\r\n"), raw[-80:]
    asked = []

    def dnsfunc(name, timeout=5):
        asked.append(name if isinstance(name, bytes) else name.encode())
        return txt

    assert dkim.verify(raw, dnsfunc=dnsfunc), "dkimpy rejected the signature"
    assert asked and asked[0].rstrip(b".") == b"mailfleet-rsa._domainkey.example.test", asked


def test_deferring_peer_gets_the_message_exactly_once(tmp_path):
    port = free_port()
    sink = Sink(tmp_path / "soft", port, "-r", "rcpt", "-b", "451 4.3.0 Try again later")
    server = start_server(tmp_path, port)
    server.start()
    try:
        submit(server, "retry test")

        def deferred():
            q = server.cli_json("queue", "list")
            # An attempt is counted when it is claimed (before connecting) and its outcome
            # is written when it ends: wait for the outcome, not just the count.
            r = q and q[0]["recipients"][0]
            return r and r["attempts"] >= 1 and r["last_error"] and q[0]
        entry = wait_for("a deferred attempt", deferred)
        r = entry["recipients"][0]
        assert r["state"] == "queued" and r["last_error"].startswith("451 4.3.0"), r
        shown = server.cli("queue", "show", str(entry["id"])).stdout
        assert FRIEND in shown and "queued" in shown
        sink.stop()
        assert sink.messages() == []
        sink = Sink(tmp_path / "ok", port)
        server.cli("queue", "retry", str(entry["id"]))
        wait_for("the message at the sink", sink.messages)
        wait_for("the queue to empty", lambda: server.cli_json("queue", "list") == [])
        time.sleep(3)  # several poll intervals: a duplicate would show up now
        assert len(sink.messages()) == 1
    finally:
        server.stop()
        sink.stop()


def test_refusing_peer_produces_a_dsn_in_the_senders_inbox(tmp_path):
    sink = Sink(tmp_path / "hard", free_port(), "-f", "rcpt",
                "-B", "550 5.1.1 <friend@remote.test>: Recipient address rejected")
    server = start_server(tmp_path, sink.port)
    server.start()
    try:
        submit(server, "bounce test")
        msgs = wait_for("the DSN", lambda: server.messages(ALICE))
        assert len(msgs) == 1
        raw = server.message_bytes(ALICE, msgs[0]["uid"])
        m = email.message_from_bytes(raw, policy=email.policy.default)
        assert m.get_content_type() == "multipart/report"
        assert m.get_param("report-type") == "delivery-status"
        assert m["Return-Path"] == "<>"
        parts = list(m.iter_parts())
        assert [p.get_content_type() for p in parts] == [
            "text/plain", "message/delivery-status", "text/rfc822-headers"]
        status = parts[1].get_payload()
        per_rcpt = status[1]
        assert per_rcpt["Final-Recipient"] == f"rfc822; {FRIEND}"
        assert per_rcpt["Action"] == "failed"
        assert per_rcpt["Status"] == "5.1.1"
        assert per_rcpt["Diagnostic-Code"] == (
            "smtp; 550 5.1.1 <friend@remote.test>: Recipient address rejected")
        assert "friend@remote.test" in parts[0].get_content()
        assert "Subject: bounce test" in parts[2].get_content()
        assert sink.messages() == []
        wait_for("the queue to empty", lambda: server.cli_json("queue", "list") == [])
        assert "1 failed" not in server.cli("queue", "list").stdout
    finally:
        server.stop()
        sink.stop()


class StallingPeer:
    """An SMTP peer that takes the message's DATA and never answers it: the delivery is
    in flight, on the wire, when the test kills the worker's process."""

    def __init__(self, port: int):
        import socket
        import threading

        self.port = port
        self.data_started = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(8)
        self.conns = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        import threading

        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    def _session(self, conn):
        f = conn.makefile("rwb")
        try:
            f.write(b"220 stall ESMTP\r\n")
            f.flush()
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.upper()
                if cmd.startswith(b"EHLO"):
                    f.write(b"250-stall\r\n250 8BITMIME\r\n")
                elif cmd.startswith(b"DATA"):
                    f.write(b"354 go ahead\r\n")
                    f.flush()
                    while f.readline() not in (b".\r\n", b""):
                        pass
                    # The whole message is here; the answer never comes.
                    self.data_started.set()
                    time.sleep(3600)
                    return
                else:
                    f.write(b"250 ok\r\n")
                f.flush()
        except OSError:
            return

    def stop(self):
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass


def test_worker_killed_mid_delivery_leaves_the_message_to_be_retried(tmp_path):
    stall_port = free_port()
    stalling = StallingPeer(stall_port)
    server = start_server(tmp_path, stall_port)
    server.start()
    try:
        submit(server, "killed mid delivery")
        assert stalling.data_started.wait(30), "the worker never reached the end of DATA"
        server.kill9()
    finally:
        stalling.stop()
    # Still queued, not lost: the attempt was claimed before it started (counted, and due
    # again only after the backoff), and no outcome was recorded (the reply never came).
    queue = server.cli_json("queue", "list")
    entries = queue["entries"] if isinstance(queue, dict) else queue
    assert len(entries) == 1, queue

    # The same data directory, now routed to a peer that answers: delivered, once.
    sink = Sink(tmp_path / "sink", free_port())
    try:
        server.env["MAILFLEET_DELIVERY__ROUTES__REMOTE.TEST"] = f"127.0.0.1:{sink.port}"
        server.start()
        got = wait_for("the retried delivery", lambda: sink.messages())
        wait_for("an empty queue", lambda: not _entries(server))
        time.sleep(1.5)  # one more poll interval: nothing else arrives
        assert len(sink.messages()) == 1
        assert b"Subject: killed mid delivery" in got[0].read_bytes()
    finally:
        server.stop()
        sink.stop()


def _entries(server):
    queue = server.cli_json("queue", "list")
    return queue["entries"] if isinstance(queue, dict) else queue
