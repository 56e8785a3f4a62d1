"""Two Mailfleet processes share one outbound queue under load; every message reaches the
remote MX exactly once.

Setup as in test_cluster.py: two front-ends share a redis-server (leases), Garage (queued
message bodies) and one SQLite metadata file (the queue itself). Both run delivery workers
with a static route for `remote.test` to a private real Postfix (postfix_peer.py), whose
Maildir is the oracle: one file per message it accepted.

Each node says a different EHLO name (server.hostname), and Postfix writes that name into
the Received field it adds, so every delivered file names the node that delivered it.
"""

import re
import smtplib
import shutil
import threading
import time
from email.message import EmailMessage

import pytest

from conftest import PASSWORD, Server, cluster_tls_env
from postfix_peer import postfix_installed, postfix_peer
from s3server import Garage, garage_bin
from test_cluster import USER, RedisServer, _need
from test_pop3_submission import CTX

FRIEND = "friend@remote.test"
THREADS = 4
PER_THREAD = 50
TOTAL = THREADS * PER_THREAD
NODES = {"a": "node-a.cluster.test", "b": "node-b.cluster.test"}


def _message(n: int) -> EmailMessage:
    m = EmailMessage()
    m["From"] = USER
    m["To"] = FRIEND
    m["Subject"] = f"shared queue {n}"
    m["Message-ID"] = f"<shared-{n}@cluster.test>"
    m.set_content(f"body of shared queue message {n}\n" + "y" * 300)
    return m


class Submitter:
    """One authenticated submission session per server, reopened if the server ends it."""

    def __init__(self, server: Server):
        self.server = server
        self.s = None

    def send(self, msg: EmailMessage):
        for attempt in range(2):
            if self.s is None:
                s = smtplib.SMTP("127.0.0.1", self.server.submission_port, timeout=60)
                s.starttls(context=CTX)
                s.login(USER, PASSWORD)
                self.s = s
            try:
                refused = self.s.send_message(msg)
                assert refused == {}, refused
                return
            except smtplib.SMTPServerDisconnected:
                # e.g. the per-session message limit; nothing was acknowledged.
                self.s = None
                if attempt:
                    raise

    def close(self):
        if self.s is not None:
            try:
                self.s.quit()
            except (OSError, smtplib.SMTPException):
                pass


@pytest.mark.skipif(not postfix_installed(), reason="Postfix is not installed")
def test_two_nodes_share_the_outbound_queue_and_deliver_each_message_once(tmp_path):
    _need(shutil.which("redis-server") is not None, "redis-server",
          "scripts/test.sh installs Debian's redis-server")
    _need(garage_bin() is not None, "garage", "run scripts/install-garage.sh")
    with postfix_peer(tmp_path) as peer:
        redis = RedisServer(tmp_path / "redis").start()
        s3 = Garage(tmp_path / "garage").start()
        servers = {}
        try:
            env = {
                **s3.env(),
                "MAILFLEET_STORAGE__S3__TIMEOUT_SECS": "5",
                "MAILFLEET_STORAGE__S3__MAX_ATTEMPTS": "2",
                **cluster_tls_env(tmp_path / "tls"),
                "MAILFLEET_STORAGE__COORDINATION": "redis",
                "MAILFLEET_STORAGE__REDIS__URL": redis.url,
                "MAILFLEET_STORAGE__REDIS__TIMEOUT_MS": "1000",
                "MAILFLEET_STORAGE__SQLITE_PATH": str(tmp_path / "shared" / "metadata.sqlite3"),
                "MAILFLEET_DELIVERY__ENABLED": "true",
                "MAILFLEET_DELIVERY__POLL_INTERVAL_SECS": "1",
                "MAILFLEET_DELIVERY__RETRY_BASE_SECS": "1",
                "MAILFLEET_DELIVERY__RETRY_MAX_SECS": "2",
                "MAILFLEET_DELIVERY__RESOLVER": "127.0.0.1:9",
                "MAILFLEET_DELIVERY__ROUTES__REMOTE.TEST": f"127.0.0.1:{peer.port}",
            }
            for name, host in NODES.items():
                servers[name] = Server(tmp_path / name,
                                       {**env, "MAILFLEET_SERVER__HOSTNAME": host})
            a, b = servers["a"], servers["b"]
            a.cli("domain", "add", "cluster.test")
            a.cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
            a.start()
            b.start()

            errors = []

            def worker(t: int):
                subs = [Submitter(a), Submitter(b)]
                try:
                    for i in range(PER_THREAD):
                        n = t * PER_THREAD + i
                        subs[n % 2].send(_message(n))
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(e)
                finally:
                    for s in subs:
                        s.close()

            threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=600)
            assert not errors, errors
            assert not any(t.is_alive() for t in threads)

            peer.wait_for(TOTAL, timeout=300)
            # The shared queue, as either node sees it, drains once every entry is done.
            deadline_ok = _wait(lambda: a.cli_json("queue", "list") == [], 120)
            assert deadline_ok, a.cli("queue", "list").stdout
            assert b.cli_json("queue", "list") == []
        finally:
            # A graceful stop waits for deliveries in flight, so nothing can reach Postfix
            # after this; then Postfix finishes what it accepted.
            for s in servers.values():
                s.stop()
            s3.stop()
            redis.stop()
        assert _wait(peer.queue_empty, 60), peer.maillog_tail()
        messages = peer.messages()

    ids = []
    by_node = {name: 0 for name in NODES}
    for raw in messages:
        m = re.search(rb"^Message-ID: (<[^>]*>)", raw, re.M | re.I)
        assert m, raw[:500]
        ids.append(m.group(1).decode())
        # The first Received field is Postfix's: "from <EHLO name> (...) by peer.remote.test".
        r = re.search(rb"^Received: from (\S+) ", raw, re.M)
        assert r, raw[:500]
        helo = r.group(1).decode()
        node = [k for k, v in NODES.items() if v == helo]
        assert node, f"delivered by an unknown EHLO name {helo!r}"
        by_node[node[0]] += 1
    want = sorted(f"<shared-{n}@cluster.test>" for n in range(TOTAL))
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"{len(dupes)} Message-IDs delivered more than once: {dupes[:5]}"
    assert len(messages) == TOTAL
    assert sorted(ids) == want
    print(f"{TOTAL} messages delivered once each; by node: {by_node}")
    assert all(by_node.values()), f"one node delivered nothing: {by_node}"


def _wait(check, timeout: float) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return bool(check())
