#!/usr/bin/env python3
"""SMTP ingest and IMAP FETCH, embedded mode beside cluster mode, on this machine.

Embedded: one `mailfleet serve` with its defaults (SQLite, blob directory, in-process
coordinator). Cluster: two front-ends sharing Garage (S3), redis-server and one SQLite file
(ScyllaDB cannot run here), loaded round-robin through both. Same load for both: smtp-load
then imap-load fetch, release builds, all on the same 2 cores as the servers.

    cargo build --release -p mailfleet -p mailfleet-load-tests
    MAILFLEET_GARAGE_BIN=$(scripts/install-garage.sh) python3 scripts/bench_cluster.py

Prints one markdown row per run (the rows of docs/benchmarks.md).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/mailfleet/target"))
RELEASE = TARGET / "release"
os.environ.setdefault("MAILFLEET_BIN", str(RELEASE / "mailfleet"))

from conftest import PASSWORD, Server, cluster_tls_env  # noqa: E402
from s3server import Garage  # noqa: E402
from test_cluster import RedisServer  # noqa: E402

USER = "load@example.test"
QUIET = {
    "MAILFLEET_LOG__LEVEL": "warn",
    "MAILFLEET_IMAP__ALLOW_PLAINTEXT_AUTH": "true",
    # One client address sends everything here: no per-client rate limit.
    "MAILFLEET_SMTP__MAX_MESSAGES_PER_IP_PER_MINUTE": "0",
}


def load(binary: str, *args: str) -> dict:
    env = {**os.environ, "IMAP_LOAD_PASSWORD": PASSWORD}
    out = subprocess.run([str(RELEASE / binary), *args, "--json"], env=env,
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def rss_mib(server: Server) -> float:
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def run(mode: str, servers: list[Server], args) -> list[str]:
    smtp_targets = [x for s in servers for x in ("--target", f"127.0.0.1:{s.smtp_port}")]
    imap_targets = [x for s in servers for x in ("--target", f"127.0.0.1:{s.imap_port}")]
    smtp = load("smtp-load", *smtp_targets, "--connections", str(args.connections),
                "--messages", str(args.messages), "--size", "10240", "--rcpt", USER)
    fetch = load("imap-load", "--scenario", "fetch", *imap_targets, "--connections", "10",
                 "--count", str(args.fetches), "--user", USER)
    rss = " + ".join(f"{rss_mib(s):.0f}" for s in servers)
    lat = smtp["latency_us"] or {}
    flat = fetch["latency_us"] or {}
    return [
        f"| {time.strftime('%Y-%m-%d')} | {mode} | SMTP ingest, {args.connections} conns, 10 KB "
        f"| {smtp['ok']:,} ok / {smtp['failed']} failed | {smtp['msgs_per_sec']:,.0f} msg/s "
        f"| {lat.get('p50', 0) / 1000:.1f} ms | {lat.get('p99', 0) / 1000:.1f} ms | {rss} MiB |",
        f"| {time.strftime('%Y-%m-%d')} | {mode} | IMAP FETCH `FLAGS BODY.PEEK[]`, 10 conns "
        f"| {fetch['ok']:,} ok / {fetch['failed']} failed | {fetch['ops_per_sec']:,.0f} fetches/s "
        f"| {flat.get('p50', 0) / 1000:.2f} ms | {flat.get('p99', 0) / 1000:.2f} ms | {rss} MiB |",
    ]


def provision(server: Server):
    server.cli("domain", "add", "example.test")
    server.cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--fetches", type=int, default=20000)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mfbench-") as tmp:
        tmp = Path(tmp)
        # ---- embedded ----
        e = Server(tmp / "embedded", QUIET)
        provision(e)
        e.start()
        try:
            rows += run("embedded", [e], args)
        finally:
            e.stop()
        # ---- cluster: two front-ends ----
        redis = RedisServer(tmp / "redis").start()
        garage = Garage(tmp / "garage").start()
        env = {
            **QUIET,
            **garage.env(),
            **cluster_tls_env(tmp / "tls"),
            "MAILFLEET_STORAGE__COORDINATION": "redis",
            "MAILFLEET_STORAGE__REDIS__URL": redis.url,
            "MAILFLEET_STORAGE__SQLITE_PATH": str(tmp / "shared" / "metadata.sqlite3"),
        }
        try:
            # One front-end on S3 + Redis: what the remote stores cost, without two
            # processes contending for one SQLite file.
            solo = Server(tmp / "solo", {**env, "MAILFLEET_STORAGE__SQLITE_PATH":
                                         str(tmp / "solo" / "metadata.sqlite3"),
                                         "MAILFLEET_STORAGE__S3__KEY_PREFIX": "solo/"})
            provision(solo)
            solo.start()
            try:
                rows += run("cluster (1 front-end)", [solo], args)
            finally:
                solo.stop()
            a = Server(tmp / "a", env)
            b = Server(tmp / "b", env)
            provision(a)
            a.start()
            b.start()
            try:
                rows += run("cluster (2 front-ends)", [a, b], args)
            finally:
                a.stop()
                b.stop()
        finally:
            garage.stop()
            redis.stop()
    print("| date | mode | load | result | throughput | p50 | p99 | server RSS |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
