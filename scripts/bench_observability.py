#!/usr/bin/env python3
"""What metrics and traces cost: SMTP ingest and IMAP FETCH throughput of one release build
with trace export off and on, beside a build from before the metrics existed.

    cargo build --release -p mailfleet -p mailfleet-load-tests
    # the baseline: a release build of the commit before the metrics (5bb35de)
    python3 scripts/bench_observability.py --baseline /tmp/mailfleet-5bb35de [--rounds 2]

Modes, each on a fresh data directory, interleaved round by round so that drift on the
machine hits every mode alike:

- `no metrics`: the baseline binary (no counters, no /metrics);
- `metrics`: this build, trace export off, with `/metrics` scraped every second during the
  load (what Prometheus does, at a faster interval than usual);
- `traces 100%`: this build, spans exported over OTLP/HTTP to a receiver in this script
  (it reads each request and answers an empty ExportTraceServiceResponse), every trace
  sampled, plus the scrapes;
- `traces 10%`: the same with `tracing.sample_ratio = 0.1`.

Loads (`load-tests/`): `smtp-load`, 50 sessions, 5,000 messages of 10 KiB to one user,
each durable before its 250; then `imap-load --scenario fetch`, 10 sessions, 20,000
`UID FETCH <random uid> (FLAGS BODY.PEEK[])` on that user's INBOX of 5,000 messages.

A benchmark, never part of the test suite. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", Path.home() / ".cache/mailfleet/target"))
RELEASE = TARGET / "release"
os.environ.setdefault("MAILFLEET_BIN", str(RELEASE / "mailfleet"))

import conftest  # noqa: E402
from conftest import PASSWORD, Server  # noqa: E402

USER = "load@example.test"
ENV = {
    "MAILFLEET_LOG__LEVEL": "warn",
    "MAILFLEET_IMAP__ALLOW_PLAINTEXT_AUTH": "true",
    "MAILFLEET_SMTP__MAX_MESSAGES_PER_IP_PER_MINUTE": "0",
    "MAILFLEET_SERVER__MAX_CONNECTIONS_PER_IP": "0",
}


class Receiver:
    """An OTLP/HTTP endpoint that reads each export and answers success."""

    def __init__(self):
        self.requests = 0
        self.bytes = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                self.rfile.read(n)
                outer.requests += 1
                outer.bytes += n
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.port = conftest.free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self):
        self.httpd.shutdown()


class Scraper:
    """GET /metrics every second, as Prometheus would (it usually scrapes every 15-60 s)."""

    def __init__(self, port: int):
        self.port = port
        self.stop_flag = threading.Event()
        self.scrapes = 0
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop_flag.wait(1.0):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
                    r.read()
                    self.scrapes += 1
            except OSError:
                pass

    def stop(self):
        self.stop_flag.set()
        self.thread.join()


def run_tool(cmd: list[str]) -> dict:
    env = dict(os.environ, IMAP_LOAD_PASSWORD=PASSWORD)
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return json.loads(lines[-1])


def one_run(binary: str, mode: str, extra: dict, args) -> dict:
    conftest.mailfleet_bin = lambda: binary  # noqa: E731  (Server.cli/start read it)
    tmp = Path(tempfile.mkdtemp(prefix="mfbench-obs-"))
    receiver = Receiver() if mode.startswith("traces") else None
    env = dict(ENV, **extra)
    if receiver:
        env["MAILFLEET_TRACING__OTLP_ENDPOINT"] = f"http://127.0.0.1:{receiver.port}/v1/traces"
    server = Server(tmp / "data", env)
    server.cli("domain", "add", "example.test")
    server.cli("user", "add", USER, "--password-stdin", stdin=PASSWORD + "\n")
    server.start()
    scraper = Scraper(server.http_port) if mode != "no metrics" else None
    try:
        smtp = run_tool([str(RELEASE / "smtp-load"), "--target", f"127.0.0.1:{server.smtp_port}",
                         "--connections", "50", "--messages", str(args.messages), "--size", "10240",
                         "--rcpt", USER, "--duration-secs", "300"])
        fetch = run_tool([str(RELEASE / "imap-load"), "--scenario", "fetch",
                          "--target", f"127.0.0.1:{server.imap_port}", "--connections", "10",
                          "--count", str(args.fetches), "--user", USER,
                          "--items", "FLAGS BODY.PEEK[]", "--duration-secs", "300"])
    finally:
        if scraper:
            scraper.stop()
        server.stop()
        if receiver:
            receiver.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    out = {
        "smtp": float(smtp["msgs_per_sec"]),
        "fetch": float(fetch["ops_per_sec"]),
        "fetch_failed": fetch.get("failed", 0),
        "smtp_failed": smtp.get("failed", 0),
    }
    if receiver:
        out["otlp_requests"] = receiver.requests
        out["otlp_bytes"] = receiver.bytes
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", required=True, help="mailfleet binary built before the metrics")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--messages", type=int, default=5000)
    p.add_argument("--fetches", type=int, default=20000)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    current = str(RELEASE / "mailfleet")
    modes = [
        ("no metrics", args.baseline, {}),
        ("metrics", current, {}),
        ("traces 100%", current, {"OTEL_BSP_SCHEDULE_DELAY": "1000"}),
        ("traces 10%", current, {"OTEL_BSP_SCHEDULE_DELAY": "1000",
                                 "MAILFLEET_TRACING__SAMPLE_RATIO": "0.1"}),
    ]
    results: dict[str, list[dict]] = {m: [] for m, _, _ in modes}
    for r in range(args.rounds):
        for mode, binary, extra in modes:
            res = one_run(binary, mode, extra, args)
            results[mode].append(res)
            print(f"round {r + 1} {mode:12} SMTP {res['smtp']:7.0f} msg/s   "
                  f"FETCH {res['fetch']:7.0f} cmd/s   {res}", flush=True)
    base = results["no metrics"]
    b_smtp = sum(x["smtp"] for x in base) / len(base)
    b_fetch = sum(x["fetch"] for x in base) / len(base)
    print("\n| mode | SMTP ingest (msg/s) | vs no metrics | IMAP FETCH (commands/s) | vs no metrics |")
    print("| --- | --- | --- | --- | --- |")
    for mode, _, _ in modes:
        rs = results[mode]
        smtp = sum(x["smtp"] for x in rs) / len(rs)
        fetch = sum(x["fetch"] for x in rs) / len(rs)
        spread_s = "–".join(f"{x['smtp']:,.0f}" for x in rs)
        spread_f = "–".join(f"{x['fetch']:,.0f}" for x in rs)
        print(f"| {mode} | {smtp:,.0f} ({spread_s}) | {smtp / b_smtp - 1:+.1%} | "
              f"{fetch:,.0f} ({spread_f}) | {fetch / b_fetch - 1:+.1%} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
