#!/usr/bin/env python3
"""Hostile load: attackers against one embedded server while honest clients work.

Starts a release `mailfleet serve` (embedded mode, fresh data directory), provisions an
honest user with 500 messages of 10 KB and an attacker account with 4 messages of 1 MiB,
then runs `hostile-load`: a baseline phase with only the honest IMAP and SMTP clients, then
an attack phase with pipelined RETR and `FETCH 1:* BODY[]` that never read, slowloris
senders, a login flood against the honest user's name and 1 MiB pre-auth lines, beside the
same honest clients. The server's RSS is sampled throughout.

    cargo build --release -p mailfleet -p mailfleet-load-tests
    python3 scripts/bench_hostile.py [--phase-secs 20] [--max-rss-mib 400] [--max-p99-factor 5]

Prints hostile-load's table and one markdown row for docs/benchmarks.md; exits non-zero
when a bound is passed. A benchmark, never part of the test suite.
"""

import argparse
import json
import os
import smtplib
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

from conftest import PASSWORD, Server  # noqa: E402

HONEST = "honest@example.test"
ATTACKER = "attacker@example.test"
ENV = {
    "MAILFLEET_LOG__LEVEL": "warn",
    "MAILFLEET_IMAP__ALLOW_PLAINTEXT_AUTH": "true",
    "MAILFLEET_POP3__ALLOW_PLAINTEXT_AUTH": "true",
    # The honest SMTP client sends from 127.0.0.1 all run long.
    "MAILFLEET_SMTP__MAX_MESSAGES_PER_IP_PER_MINUTE": "0",
}


def seed(server: Server, rcpt: str, count: int, size: int):
    body = ("x" * 76 + "\r\n") * (size // 78)
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=60) as s:
        for i in range(count):
            msg = (f"From: seed@load.test\r\nTo: {rcpt}\r\nSubject: seed {i}\r\n"
                   f"Message-ID: <seed{i}.{time.time()}@load.test>\r\n\r\n{body}")
            s.sendmail("seed@load.test", [rcpt], msg.encode())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--phase-secs", type=int, default=20)
    p.add_argument("--max-rss-mib", type=int, default=400)
    p.add_argument("--max-p99-factor", type=float, default=5.0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="mfhostile-") as tmp:
        server = Server(Path(tmp) / "data", ENV)
        server.cli("domain", "add", "example.test")
        for user in (HONEST, ATTACKER):
            server.cli("user", "add", user, "--password-stdin", stdin=PASSWORD + "\n")
        server.start()
        try:
            seed(server, HONEST, 500, 10 * 1024)
            seed(server, ATTACKER, 4, 1 << 20)
            env = {**os.environ, "HOSTILE_LOAD_PASSWORD": PASSWORD}
            r = subprocess.run(
                [str(RELEASE / "hostile-load"),
                 "--imap", f"127.0.0.1:{server.imap_port}",
                 "--pop3", f"127.0.0.1:{server.pop3_port}",
                 "--smtp", f"127.0.0.1:{server.smtp_port}",
                 "--honest-user", HONEST, "--attacker-user", ATTACKER,
                 "--phase-secs", str(args.phase_secs),
                 "--server-pid", str(server.proc.pid),
                 "--max-rss-mib", str(args.max_rss_mib),
                 "--max-p99-factor", str(args.max_p99_factor), "--json"],
                env=env, capture_output=True, text=True)
            alive = server.proc.poll() is None
        finally:
            server.stop()
    lines = r.stdout.strip().splitlines()
    print("\n".join(lines[:-1]))
    if r.stderr.strip():
        print(r.stderr.strip(), file=sys.stderr)
    res = json.loads(lines[-1])
    b, a = res["baseline_imap_us"] or {}, res["attack_imap_us"] or {}
    sb, sa = res["baseline_smtp_us"] or {}, res["attack_smtp_us"] or {}
    print()
    print("| date | IMAP p99 idle → attack | factor | SMTP p99 idle → attack "
          "| honest failures | server peak RSS idle → attack | server survived |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {time.strftime('%Y-%m-%d')} | {b.get('p99', 0) / 1000:.2f} → "
          f"{a.get('p99', 0) / 1000:.2f} ms | {res['p99_factor']:.2f}× | "
          f"{sb.get('p99', 0) / 1000:.1f} → {sa.get('p99', 0) / 1000:.1f} ms | "
          f"{res['attack_imap_failed']} IMAP, {res['attack_smtp_failed']} SMTP | "
          f"{res['baseline_peak_rss_kib'] / 1024:.0f} → {res['attack_peak_rss_kib'] / 1024:.0f} MiB "
          f"| {'yes' if alive else 'NO'} |")
    sys.exit(0 if r.returncode == 0 and alive else 1)


if __name__ == "__main__":
    main()
