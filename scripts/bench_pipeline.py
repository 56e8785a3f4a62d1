#!/usr/bin/env python3
"""What the inbound pipeline's trust stages cost: SMTP ingest with sender authentication,
clamd and rspamd on, beside all of them off.

    cargo build --release --locked -p mailfleet -p mailfleet-load-tests
    python3 scripts/bench_pipeline.py [--rounds 2] [--messages 3000]

Modes, each on a fresh embedded data directory, interleaved round by round:

- `off`: `smtp.authentication.enabled = false`, no scanners;
- `auth`: SPF (HELO and MAIL FROM), DKIM, ARC, DMARC and iprev against a DNS zone served
  on loopback by dnslib (`tests/e2e/dnszone.py`: SPF pass for the load's sender domain,
  a DMARC `p=none` record, a PTR that resolves back); the load's messages are unsigned;
- `auth+builtin`: the same, and the built-in spam filter (header/structure heuristics and
  the recipient's Bayes model, untrained here; no DNS lists);
- `auth+clamd`: the same (without the built-in filter), and every message scanned by a real clamd (the tests' one-
  signature database: clamd's scanning cost without the full ClamAV database's);
- `auth+clamd+rspamd`: the same, and every message scored by a real rspamd (Debian's stock
  rules, two normal workers, no DNS: `tests/e2e/scanners.py`).

Load (`load-tests/` `smtp-load`): 50 sessions, 10 KiB messages to one user, each durable
before its 250. A benchmark, never part of the test suite; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/mailfleet/target"))
RELEASE = TARGET / "release"
os.environ.setdefault("MAILFLEET_BIN", str(RELEASE / "mailfleet"))

from dnslib import PTR, A  # noqa: E402

from conftest import PASSWORD, Server  # noqa: E402
from dnszone import start_zone, txt  # noqa: E402
from scanners import start_clamd, start_rspamd  # noqa: E402

USER = "load@example.test"
MODES = ["off", "auth", "auth+builtin", "auth+clamd", "auth+clamd+rspamd"]


def run_load(port: int, messages: int) -> dict:
    cmd = [str(RELEASE / "smtp-load"), "--target", f"127.0.0.1:{port}", "--connections", "50",
           "--messages", str(messages), "--size", "10240", "--rcpt", USER,
           "--duration-secs", "300", "--json"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"smtp-load failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return json.loads(lines[-1])


def one_run(mode: str, dns_port: int, scanners: dict, messages: int) -> dict:
    env = {
        "MAILFLEET_LOG__LEVEL": "warn",
        "MAILFLEET_SMTP__MAX_MESSAGES_PER_IP_PER_MINUTE": "0",
        "MAILFLEET_SERVER__MAX_CONNECTIONS_PER_IP": "0",
    }
    if mode == "off":
        env["MAILFLEET_SMTP__AUTHENTICATION__ENABLED"] = "false"
    else:
        env["MAILFLEET_SMTP__AUTHENTICATION__RESOLVER"] = f"127.0.0.1:{dns_port}"
        env["MAILFLEET_SMTP__AUTHENTICATION__SKIP_NETWORKS"] = "[]"
    if "builtin" in mode:
        # The built-in filter (heuristics and the user's Bayes model; no DNS lists).
        env["MAILFLEET_SMTP__SPAM__ENABLED"] = "true"
    if "clamd" in mode:
        env["MAILFLEET_SMTP__CLAMAV__ADDRESS"] = f"127.0.0.1:{scanners['clamd'].port}"
    if "rspamd" in mode:
        env["MAILFLEET_SMTP__RSPAMD__ADDRESS"] = f"127.0.0.1:{scanners['rspamd'].port}"
    tmp = Path(tempfile.mkdtemp(prefix="mfbench-pipe-"))
    server = Server(tmp / "data", env)
    server.cli("domain", "add", "example.test")
    server.cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
    server.start()
    try:
        result = run_load(server.smtp_port, messages)
    finally:
        server.stop()
    return result


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--messages", type=int, default=3000)
    args = p.parse_args()
    zone = start_zone({
        ("load.test", "TXT"): [txt("v=spf1 ip4:127.0.0.1 -all")],
        ("_dmarc.load.test", "TXT"): [txt("v=DMARC1; p=none")],
        ("smtp-load.localhost", "TXT"): [txt("v=spf1 ip4:127.0.0.1 -all")],
        ("1.0.0.127.in-addr.arpa", "PTR"): [PTR("smtp-load.localhost.")],
        ("smtp-load.localhost", "A"): [A("127.0.0.1")],
    })
    work = Path(tempfile.mkdtemp(prefix="mfbench-scanners-"))
    scanners = {"clamd": start_clamd(work / "clamd"), "rspamd": start_rspamd(work / "rspamd", workers=2)}
    results: dict[str, list[dict]] = {m: [] for m in MODES}
    try:
        for r in range(args.rounds):
            for mode in MODES:
                res = one_run(mode, zone.port, scanners, args.messages)
                results[mode].append(res)
                print(f"round {r + 1} {mode}: {json.dumps(res)}", file=sys.stderr)
    finally:
        for s in scanners.values():
            s.stop()
        zone.stop()
    print("| mode | msg/s (median) | p50 ms | p99 ms | failed |")
    print("| --- | --- | --- | --- | --- |")
    base = None
    for mode in MODES:
        rs = results[mode]
        rate = statistics.median(x["msgs_per_sec"] for x in rs)
        base = base or rate
        p50 = statistics.median(x["latency_us"]["p50"] for x in rs) / 1000
        p99 = statistics.median(x["latency_us"]["p99"] for x in rs) / 1000
        failed = sum(x["failed"] for x in rs)
        print(f"| {mode} | {rate:,.0f} ({(rate / base - 1) * 100:+.0f}%) | {p50:.1f} | {p99:.1f} | {failed} |")


if __name__ == "__main__":
    main()
