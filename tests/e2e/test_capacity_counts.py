"""The operation counts docs/capacity.md is built on, measured in cluster mode.

Issue 15 asks for a capacity model whose per-message and per-command figures are measured
through counters in the storage layer, not estimated. Every storage call goes through the
metered layer (services/storage/src/metered.rs), which counts it by backend and trait
method in `mailfleet_storage_operation_duration_seconds_count`; redis-server's own
`INFO commandstats` counts the Redis commands on the other side of the wire. This test
runs the two-front-end cluster of test_cluster.py (Garage for S3, Debian's redis-server,
a shared SQLite file for metadata), delivers messages and runs IMAP commands on front-end
A, and reads the deltas:

- per message delivered over SMTP (one recipient): S3 requests, Redis commands and
  metadata-store calls;
- per IMAP command of the issue 11 mix: the same.

The figures are written to `$MAILFLEET_CAPACITY_OUT` (JSON) when set, and printed;
docs/capacity.md quotes a run of this test. The assertions pin the
counts that the model's arithmetic depends on, so a change that adds a store round trip
per message fails here and the model is updated with it.
"""

import imaplib
import json
import os
import re
import smtplib
import subprocess
import time
import urllib.request
from email.message import EmailMessage

import pytest

from conftest import PASSWORD
from test_cluster import USER, Cluster

MESSAGES = 40
SERIES = re.compile(
    r'^mailfleet_storage_operation_duration_seconds_count\{backend="([^"]+)",'
    r'operation="([^"]+)"\} (\d+)'
)


def storage_counts(server) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics",
                                timeout=10) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        m = SERIES.match(line)
        if m:
            out[f"{m.group(1)}:{m.group(2)}"] = int(m.group(3))
    assert out, "no storage series in /metrics"
    return out


def redis_counts(port: int) -> dict:
    info = subprocess.run(["redis-cli", "-p", str(port), "INFO", "commandstats"],
                          capture_output=True, text=True, timeout=10, check=True).stdout
    out = {}
    for line in info.splitlines():
        m = re.match(r"cmdstat_([a-z|]+):calls=(\d+)", line)
        if m and m.group(1) not in ("info",):
            out[f"redis-server:{m.group(1)}"] = int(m.group(2))
    return out


SCRAPES = {"n": 0}


def snapshot(cluster) -> dict:
    SCRAPES["n"] += 1
    return {**storage_counts(cluster.a), **redis_counts(cluster.redis.port)}


def raw_delta(before: dict, after: dict) -> dict:
    keys = set(before) | set(after)
    d = {k: after.get(k, 0) - before.get(k, 0) for k in keys}
    return {k: v for k, v in sorted(d.items()) if v}


class Meter:
    """Deltas between snapshots, less what the snapshots themselves cost: a scrape of
    /metrics runs the readiness probe and the queue gauges (a few store calls), measured
    on an idle cluster first and taken off every delta once per scrape in between."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.scrape = {}
        a = self.settle()
        b = snapshot(cluster)
        c = snapshot(cluster)
        self.scrape = raw_delta(b, c)
        del a

    def take(self):
        return (SCRAPES["n"], snapshot(self.cluster))

    def delta(self, before, after) -> dict:
        (n0, s0), (n1, s1) = before, after
        scrapes = n1 - n0
        d = raw_delta(s0, s1)
        for k, v in self.scrape.items():
            d[k] = d.get(k, 0) - v * scrapes
        return {k: v for k, v in sorted(d.items()) if v > 0}

    def settle(self, timeout=30.0):
        """A snapshot once background work (indexing, notifications) has stopped."""
        last = self.take()
        deadline = time.time() + timeout
        while time.time() < deadline:
            time.sleep(0.5)
            now = self.take()
            if not [k for k in self.delta(last, now) if not k.startswith("redis-server:")]:
                return now
            last = now
        return last


@pytest.fixture
def quiet_cluster(tmp_path):
    # No queue polls, TLS-RPT or sweeps during the measurement: only what the messages
    # and commands cause is counted.
    c = Cluster(tmp_path, extra_env={
        "MAILFLEET_DELIVERY__POLL_INTERVAL_SECS": "3600",
    })
    yield c
    c.close()


def per(d: dict, n: int) -> dict:
    return {k: round(v / n, 3) for k, v in d.items()}


def test_operation_counts_per_message_and_per_command(quiet_cluster):
    cluster = quiet_cluster
    results = {}
    meter = Meter(cluster)
    results["scrape_cost"] = meter.scrape
    base = meter.settle()
    with smtplib.SMTP("127.0.0.1", cluster.a.smtp_port, timeout=30) as s:
        for i in range(MESSAGES):
            m = EmailMessage()
            m["From"] = "sender@remote.test"
            m["To"] = USER
            m["Subject"] = f"capacity {i}"
            m["Message-ID"] = f"<capacity-{i}@load.test>"
            m.set_content("x" * 2000)
            s.send_message(m)
    after = meter.settle()
    d = meter.delta(base, after)
    results["smtp_message"] = per(d, MESSAGES)
    # One body put per message, one append per message: what the model multiplies by.
    puts = d.get("s3:blob_put", 0)
    assert puts == MESSAGES, d
    assert d.get("sqlite:meta_append", 0) == MESSAGES, d
    # Every delivery tells the other front-ends once (IDLE, JMAP push).
    assert d.get("redis-server:publish", 0) >= MESSAGES, d

    c = imaplib.IMAP4("127.0.0.1", cluster.a.imap_port, timeout=30)
    c.login(USER, PASSWORD)
    commands = [
        ("select", lambda: c.select("INBOX")),
        ("fetch_flags_all", lambda: c.fetch("1:*", "(UID FLAGS)")),
        ("fetch_body_one", lambda: c.fetch("7", "(BODY.PEEK[])")),
        ("fetch_envelope_20", lambda: c.fetch("1:20", "(ENVELOPE BODYSTRUCTURE)")),
        ("store_one", lambda: c.store("3", "+FLAGS", "(\\Seen)")),
        ("status", lambda: c.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)")),
        ("noop", lambda: c.noop()),
        ("list", lambda: c.list()),
        ("expunge_one", lambda: (c.store("5", "+FLAGS", "(\\Deleted)"), c.expunge())),
    ]
    for name, run in commands:
        before = meter.settle(timeout=5)
        typ = run()
        assert typ, name
        results[f"imap_{name}"] = meter.delta(before, meter.settle(timeout=5))
    c.logout()
    # STATUS costs one read of kept counts, whatever the mailbox holds (point 5).
    status = {k: v for k, v in results["imap_status"].items() if k.startswith("sqlite:")}
    assert sum(status.values()) <= 4, status
    out = os.environ.get("MAILFLEET_CAPACITY_OUT")
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=2, sort_keys=True)
    print(json.dumps(results, indent=2, sort_keys=True))
