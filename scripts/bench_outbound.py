"""Outbound delivery throughput (docs/benchmarks.md): N messages queued through submission
while delivery is off, then timed from `serve` start until Postfix's smtp-sink has them all.

Usage: python3 scripts/bench_outbound.py [N]   (needs the debug binary and /usr/sbin/smtp-sink)
"""
import shutil
import smtplib
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "e2e"))
from conftest import Server, PASSWORD, free_port
from test_delivery import Sink, CTX
N = int(sys.argv[1]) if len(sys.argv) > 1 else 500
tmp = Path(tempfile.mkdtemp())
port = free_port()
sink = Sink(tmp / "sink", port)
env = {"MAILFLEET_DELIVERY__POLL_INTERVAL_SECS": "1",
       "MAILFLEET_DELIVERY__RESOLVER": "127.0.0.1:9",
       "MAILFLEET_DELIVERY__ROUTES__REMOTE.TEST": f"127.0.0.1:{port}"}
s = Server(tmp / "data", extra_env=env)
s.cli("domain", "add", "example.test")
s.cli("user", "add", "alice@example.test", "--password-stdin", stdin=PASSWORD + "\n")
s.cli("dkim", "generate", "example.test")
s.start()
body = "x" * 70 + "\r\n"
msg = ("From: alice@example.test\r\nTo: friend@remote.test\r\nSubject: bench\r\n\r\n" + body * 40)
sent = 0
while sent < N:
    with smtplib.SMTP("127.0.0.1", s.submission_port, timeout=30) as c:
        c.starttls(context=CTX); c.login("alice@example.test", PASSWORD)
        for _ in range(min(100, N - sent)):
            c.sendmail("alice@example.test", ["friend@remote.test"], msg); sent += 1
s.stop()
s.env["MAILFLEET_DELIVERY__ENABLED"] = "true"
t0 = time.time()
s.start()
while len(sink.messages()) < N:
    time.sleep(0.05)
    if time.time() - t0 > 600: break
t = time.time() - t0
print(f"{N} messages ({len(msg)} bytes, DKIM-signed) delivered in {t:.2f}s: {N/t:.0f} msg/s; sink got {len(sink.messages())}")
s.stop(); sink.stop()
shutil.rmtree(tmp)
