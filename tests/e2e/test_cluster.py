"""Cluster mode: two front-end processes share one S3 server (Garage), one redis-server and
one metadata store (a SQLite file both can reach, since ScyllaDB cannot run here).

Shows: a message sent over SMTP to front-end A reaches an IMAP IDLE session on front-end B
through Redis; SIGKILL of A under SMTP load loses and duplicates nothing that got a 250;
stopping Redis or the S3 server gives temporary errors, and service comes back by itself
with no lost or partial message.
"""

import imaplib
import json
import os
import poplib
import shutil
import signal
import smtplib
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from email.message import EmailMessage
from pathlib import Path

import pytest

from conftest import PASSWORD, Server, cluster_tls_env, free_port, mailfleet_bin

from s3server import Garage, garage_bin

USER = "carol@cluster.test"


def _need(binary_found: bool, what: str, how: str):
    if binary_found:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is not installed: {how}")
    pytest.skip(f"{what} is not installed")


class RedisServer:
    """Debian's redis-server on a loopback port; stop() and start() keep the port."""

    def __init__(self, dir: Path):
        self.dir = dir
        self.port = free_port()
        self.proc = None

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)

    @property
    def url(self):
        return f"redis://127.0.0.1:{self.port}/0"


class Cluster:
    def __init__(self, tmp_path: Path, extra_env=None):
        _need(shutil.which("redis-server") is not None, "redis-server",
              "scripts/test.sh installs Debian's redis-server")
        _need(garage_bin() is not None, "garage", "run scripts/install-garage.sh")
        self.redis = RedisServer(tmp_path / "redis").start()
        self.s3 = Garage(tmp_path / "garage").start()
        env = {
            **self.s3.env(),
            "MAILFLEET_STORAGE__S3__TIMEOUT_SECS": "5",
            "MAILFLEET_STORAGE__S3__MAX_ATTEMPTS": "2",
            **cluster_tls_env(tmp_path / "tls"),
            "MAILFLEET_STORAGE__COORDINATION": "redis",
            "MAILFLEET_STORAGE__REDIS__URL": self.redis.url,
            "MAILFLEET_STORAGE__REDIS__TIMEOUT_MS": "1000",
            "MAILFLEET_STORAGE__SQLITE_PATH": str(tmp_path / "shared" / "metadata.sqlite3"),
            "MAILFLEET_IMAP__ALLOW_PLAINTEXT_AUTH": "true",
            "MAILFLEET_POP3__ALLOW_PLAINTEXT_AUTH": "true",
            # IDLE may only learn of new mail through Redis, never by polling the store.
            "MAILFLEET_IMAP__IDLE_RECHECK_SECS": "3600",
            **(extra_env or {}),
        }
        self.a = Server(tmp_path / "a", env)
        self.b = Server(tmp_path / "b", env)
        self.a.cli("domain", "add", "cluster.test")
        self.a.cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
        self.a.start()
        self.b.start()

    def close(self):
        for s in (self.a, self.b):
            s.stop()
        self.s3.stop()
        self.redis.stop()


def test_cluster_mode_refuses_to_start_without_a_shared_certificate(tmp_path):
    """Issue 15, point 10: a certificate generated per pod would differ between
    front-ends behind one name, so cluster mode needs `tls.cert` and `tls.key`."""
    env = dict(os.environ)
    env.update({
        "MAILFLEET_SERVER__DATA_DIR": str(tmp_path / "d"),
        "MAILFLEET_STORAGE__BLOBS": "s3",
        "MAILFLEET_STORAGE__S3__BUCKET": "unused",
        "MAILFLEET_STORAGE__S3__ENDPOINT": "http://127.0.0.1:9",
        "MAILFLEET_STORAGE__COORDINATION": "redis",
        "MAILFLEET_STORAGE__REDIS__URL": "redis://127.0.0.1:9/0",
    })
    env.pop("MAILFLEET_TLS__CERT", None)
    env.pop("MAILFLEET_TLS__KEY", None)
    r = subprocess.run([mailfleet_bin(), "serve"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0
    assert "tls.cert" in r.stderr and "cluster mode" in r.stderr, r.stderr
    assert not (tmp_path / "d" / "tls" / "self-signed.crt").exists()


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    yield c
    c.close()


def message(n: int, tag: str) -> EmailMessage:
    m = EmailMessage()
    m["From"] = "sender@remote.test"
    m["To"] = USER
    m["Subject"] = f"{tag} {n}"
    m["Message-ID"] = f"<{tag}-{n}@load.test>"
    m.set_content(f"body of {tag} {n}\n" + "x" * 200)
    return m


def send(server: Server, msg: EmailMessage):
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.send_message(msg)


def imap(server: Server) -> imaplib.IMAP4:
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    c.login(USER, PASSWORD)
    return c


def message_ids(server: Server) -> list[str]:
    c = imap(server)
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
    assert typ == "OK", data
    ids = []
    for item in data:
        if isinstance(item, tuple):
            line = item[1].decode().strip()
            ids.append(line.split(":", 1)[1].strip())
    c.logout()
    return ids


def ready(server: Server):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/readyz",
                                    timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_smtp_on_a_reaches_idle_on_b_within_a_second(cluster):
    status, body = ready(cluster.b)
    assert status == 200 and body["ready"], body

    # IDLE by hand: imaplib in Python 3.11 has no IDLE.
    sock = socket.create_connection(("127.0.0.1", cluster.b.imap_port), timeout=10)
    f = sock.makefile("rwb")

    def cmd(line: bytes, until: bytes):
        f.write(line + b"\r\n")
        f.flush()
        while True:
            got = f.readline()
            assert got, "connection closed"
            if got.startswith(until):
                return got

    assert f.readline().startswith(b"* OK")
    assert b"OK" in cmd(f"a LOGIN {USER} {PASSWORD}".encode(), b"a ")
    assert b"OK" in cmd(b"b SELECT INBOX", b"b ")
    cmd(b"c IDLE", b"+")

    # Timed from before the SMTP transaction starts, so the figure covers the whole path:
    # SMTP on A, the blob in S3, the metadata commit, Redis, B re-reading the mailbox.
    started = time.monotonic()
    send(cluster.a, message(1, "idle"))
    acked = time.monotonic() - started
    sock.settimeout(5)
    line = f.readline()
    latency = time.monotonic() - started
    assert line.strip() == b"* 1 EXISTS", line
    print(f"SMTP transaction on A took {acked * 1000:.1f} ms; "
          f"EXISTS on B {latency * 1000:.1f} ms after it began")
    assert latency < 1.0, f"EXISTS arrived after {latency:.2f} s"
    cmd(b"DONE", b"c ")
    sock.close()


def test_sigkill_of_a_under_load_loses_and_duplicates_nothing(cluster):
    acked: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()
    threads = 4
    per_thread = 40
    killed = threading.Event()

    def worker(t: int):
        for i in range(per_thread):
            n = t * per_thread + i
            msg = message(n, "load")
            target = cluster.a if n % 2 == 0 else cluster.b
            try:
                send(target, msg)
                with lock:
                    acked.append(msg["Message-ID"])
            except (OSError, smtplib.SMTPException):
                with lock:
                    refused.append(msg["Message-ID"])
                if target is cluster.a:
                    assert killed.is_set(), "A failed before it was killed"

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    # Kill A once a quarter of the load has been acknowledged, while sessions are open.
    deadline = time.time() + 120
    while time.time() < deadline:
        with lock:
            if len(acked) >= threads * per_thread // 4:
                break
        time.sleep(0.01)
    killed.set()
    cluster.a.kill9()
    for t in ts:
        t.join(timeout=300)

    assert len(acked) + len(refused) == threads * per_thread
    assert refused, "A's clients saw it die"
    stored = message_ids(cluster.b)
    assert len(stored) == len(set(stored)), "a message was stored twice"
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged messages lost: {sorted(missing)[:5]}"
    # Every stored message is whole: its body comes back from S3 through B.
    c = imap(cluster.b)
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("1:*", "(BODY.PEEK[TEXT])")
    assert typ == "OK"
    bodies = [item[1] for item in data if isinstance(item, tuple)]
    assert len(bodies) == len(stored)
    assert all(b.startswith(b"body of load") for b in bodies)
    c.logout()
    print(f"{len(acked)} acknowledged, {len(refused)} refused after SIGKILL, "
          f"{len(stored)} stored, 0 lost, 0 duplicated")


def eventually(what: str, attempt, timeout=30):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            return attempt()
        except Exception as e:  # noqa: BLE001 - retried until the deadline
            last = e
            time.sleep(0.25)
    raise AssertionError(f"{what} did not come back: {last!r}")


@pytest.fixture
def uncached_cluster(tmp_path):
    # Without the in-memory blob cache, so every body read goes to S3 (with it, bodies
    # already cached keep being served during an S3 outage; see the next test).
    c = Cluster(tmp_path, {"MAILFLEET_STORAGE__BLOB_CACHE_MIB": "0"})
    yield c
    c.close()


def test_cached_bodies_are_served_while_s3_is_down(cluster):
    send(cluster.a, message(0, "cached"))
    session = imap(cluster.b)
    session.select("INBOX")
    typ, data = session.fetch("1", "(BODY.PEEK[TEXT])")
    assert typ == "OK" and data[0][1].startswith(b"body of cached 0")
    cluster.s3.stop()
    try:
        # B read it once, so B has it in memory; S3 is not asked.
        typ, data = session.fetch("1", "(BODY.PEEK[TEXT])")
        assert typ == "OK" and data[0][1].startswith(b"body of cached 0"), (typ, data)
        # New mail still cannot be stored.
        with pytest.raises(smtplib.SMTPResponseException) as e:
            send(cluster.a, message(1, "cached"))
        assert e.value.smtp_code == 451
    finally:
        cluster.s3.start()
    session.logout()


def test_redis_and_s3_outages_give_temporary_errors_then_full_service(uncached_cluster):
    cluster = uncached_cluster
    sent = []

    def deliver(n):
        msg = message(n, "outage")
        send(cluster.a, msg)
        sent.append(msg["Message-ID"])

    deliver(0)
    session = imap(cluster.b)
    session.select("INBOX")

    # ---- Redis down ----
    cluster.redis.stop()
    with pytest.raises(smtplib.SMTPResponseException) as e:
        deliver(1)
    assert e.value.smtp_code == 451 and b"4.3.0" in e.value.smtp_error, e.value
    with pytest.raises(imaplib.IMAP4.error) as e:
        imap(cluster.b)
    assert "UNAVAILABLE" in str(e.value)
    pop = poplib.POP3("127.0.0.1", cluster.b.pop3_port, timeout=30)
    pop.user(USER)
    with pytest.raises(poplib.error_proto) as e:
        pop.pass_(PASSWORD)
    assert str(e.value).startswith("b'-ERR [SYS/TEMP]") or "[SYS/TEMP]" in str(e.value)
    status, body = ready(cluster.b)
    assert status == 503 and not body["checks"]["coordination"]["ok"], body
    # The open session keeps reading (metadata and blobs are up).
    typ, _ = session.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK"

    cluster.redis.start()
    eventually("SMTP after Redis restart", lambda: deliver(2))
    eventually("IMAP login after Redis restart", lambda: imap(cluster.b).logout())
    assert ready(cluster.b)[0] == 200

    # ---- S3 down ----
    cluster.s3.stop()
    with pytest.raises(smtplib.SMTPResponseException) as e:
        deliver(3)
    assert e.value.smtp_code == 451 and b"4.3.0" in e.value.smtp_error, e.value
    typ, data = session.fetch("1", "(BODY.PEEK[TEXT])")
    assert typ == "NO" and b"UNAVAILABLE" in data[0], (typ, data)
    pop = poplib.POP3("127.0.0.1", cluster.b.pop3_port, timeout=30)
    pop.user(USER)
    pop.pass_(PASSWORD)
    with pytest.raises(poplib.error_proto) as e:
        pop.retr(1)
    assert "-ERR" in str(e.value)
    pop.quit()
    status, body = ready(cluster.a)
    assert status == 503 and not body["checks"]["blobs"]["ok"], body

    cluster.s3.start()
    eventually("SMTP after S3 restart", lambda: deliver(4))
    typ, _ = eventually("IMAP FETCH after S3 restart",
                        lambda: _fetch_ok(session, "1"))
    session.logout()
    assert ready(cluster.a)[0] == 200

    # Nothing lost, nothing partial, nothing from the refused attempts.
    stored = message_ids(cluster.b)
    assert sorted(stored) == sorted(sent), (stored, sent)
    c = imap(cluster.a)
    c.select("INBOX", readonly=True)
    typ, data = c.fetch("1:*", "(BODY.PEEK[TEXT])")
    assert typ == "OK"
    bodies = [item[1] for item in data if isinstance(item, tuple)]
    assert len(bodies) == len(sent)
    assert all(b.startswith(b"body of outage") for b in bodies)
    c.logout()


def _fetch_ok(session, seq):
    typ, data = session.fetch(seq, "(BODY.PEEK[TEXT])")
    assert typ == "OK", data
    return typ, data


def test_notify_on_b_hears_of_smtp_on_a_and_of_a_mailbox_created_on_a(cluster):
    """NOTIFY (RFC 5465) across nodes: B learns through Redis, between commands."""
    sock = socket.create_connection(("127.0.0.1", cluster.b.imap_port), timeout=10)
    f = sock.makefile("rwb")

    def cmd(line: bytes, tag: bytes):
        f.write(line + b"\r\n")
        f.flush()
        while True:
            got = f.readline()
            assert got, "connection closed"
            if got.startswith(tag + b" "):
                return got

    assert f.readline().startswith(b"* OK")
    assert b"OK" in cmd(f"a LOGIN {USER} {PASSWORD}".encode(), b"a")
    assert b"OK" in cmd(b"b NOTIFY SET (INBOXES (MessageNew MessageExpunge)) "
                        b"(PERSONAL (MailboxName))", b"b")
    sock.settimeout(5)
    send(cluster.a, message(1, "notify"))
    line = f.readline()
    assert line.startswith(b"* STATUS INBOX (MESSAGES 1 UIDNEXT 2 "), line
    c = imap(cluster.a)
    assert c.create("FromA")[0] == "OK"
    c.logout()
    line = f.readline()
    assert line.strip() == b'* LIST (\\HasNoChildren) "/" FromA', line
    sock.close()
