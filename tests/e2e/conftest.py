"""Fixtures for end-to-end tests: a real `mailfleet` process on loopback ports.

The binary is taken from $MAILFLEET_BIN, or built by `scripts/test.sh` into
$CARGO_TARGET_DIR/debug/mailfleet. Each test gets its own data directory and ports.
"""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def mailfleet_bin() -> str:
    if os.environ.get("MAILFLEET_BIN"):
        return os.environ["MAILFLEET_BIN"]
    target = os.environ.get("CARGO_TARGET_DIR", str(REPO / "target"))
    return str(Path(target) / "debug" / "mailfleet")


# Ports come from below the kernel's ephemeral range (32768+ on Linux), so an outgoing
# connection can never take a port between the moment we pick it and the moment the server
# binds it, and each port is handed out once per test process: asking the kernel for port 0
# and closing the socket gave the same port twice in one Server and failed CI.
_PORT_LOW, _PORT_HIGH = 20000, 32000
_next_port = _PORT_LOW + (os.getpid() * 7919) % (_PORT_HIGH - _PORT_LOW)


def free_port() -> int:
    global _next_port
    for _ in range(_PORT_HIGH - _PORT_LOW):
        port = _next_port
        _next_port = _PORT_LOW + (_next_port + 1 - _PORT_LOW) % (_PORT_HIGH - _PORT_LOW)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port in 20000-32000")


PASSWORD = "Corr3ct-Horse-Battery"



def make_cert(dir: Path, cn: str):
    """A self-signed P-256 certificate for `cn` (key, cert paths), made by openssl."""
    dir.mkdir(parents=True, exist_ok=True)
    key, crt = dir / f"{cn}.key", dir / f"{cn}.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={cn}",
         "-addext", f"subjectAltName=DNS:{cn},DNS:localhost,IP:127.0.0.1"],
        check=True, capture_output=True,
    )
    return key, crt


def cluster_tls_env(dir: Path) -> dict:
    """The shared certificate every front-end of a cluster must be given."""
    key, crt = make_cert(dir, "mail.cluster.test")
    return {"MAILFLEET_TLS__CERT": str(crt), "MAILFLEET_TLS__KEY": str(key)}


class Server:
    """One Mailfleet process and its data directory."""

    def __init__(self, data_dir: Path, extra_env=None):
        self.data_dir = data_dir
        self.smtp_port = free_port()
        self.smtps_port = free_port()
        self.imap_port = free_port()
        self.imaps_port = free_port()
        self.pop3_port = free_port()
        self.pop3s_port = free_port()
        self.managesieve_port = free_port()
        self.submission_port = free_port()
        self.submissions_port = free_port()
        self.http_port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            {
                "MAILFLEET_SERVER__DATA_DIR": str(data_dir),
                "MAILFLEET_SERVER__HOSTNAME": "mx.example.test",
                "MAILFLEET_SERVER__SHUTDOWN_GRACE_SECS": "10",
                "MAILFLEET_SMTP__LISTEN": f'["127.0.0.1:{self.smtp_port}"]',
                "MAILFLEET_SMTP__LISTEN_TLS": f'["127.0.0.1:{self.smtps_port}"]',
                "MAILFLEET_IMAP__LISTEN": f'["127.0.0.1:{self.imap_port}"]',
                "MAILFLEET_IMAP__LISTEN_TLS": f'["127.0.0.1:{self.imaps_port}"]',
                "MAILFLEET_POP3__LISTEN": f'["127.0.0.1:{self.pop3_port}"]',
                "MAILFLEET_POP3__LISTEN_TLS": f'["127.0.0.1:{self.pop3s_port}"]',
                "MAILFLEET_MANAGESIEVE__LISTEN": f'["127.0.0.1:{self.managesieve_port}"]',
                "MAILFLEET_SUBMISSION__LISTEN": f'["127.0.0.1:{self.submission_port}"]',
                "MAILFLEET_SUBMISSION__LISTEN_TLS": f'["127.0.0.1:{self.submissions_port}"]',
                "MAILFLEET_HTTP__LISTEN": f'["127.0.0.1:{self.http_port}"]',
                "MAILFLEET_LOG__FORMAT": "json",
                # Queued mail stays put unless a test turns delivery on (extra_env) and
                # routes its remote domains to a local peer.
                "MAILFLEET_DELIVERY__ENABLED": "false",
            }
        )
        self.env.update(extra_env or {})
        self.proc = None
        self.log = data_dir / "server.log"

    def cli(self, *args, stdin=None, check=True):
        r = subprocess.run(
            [mailfleet_bin(), *args],
            env=self.env,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and r.returncode != 0:
            raise AssertionError(f"mailfleet {' '.join(args)} failed: {r.stderr}")
        return r

    def cli_json(self, *args):
        return json.loads(self.cli("--json", *args).stdout)

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [mailfleet_bin(), "serve"],
            env=self.env,
            stdout=self.log_file,
            stderr=self.log_file,
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited: {self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1):
                    return self
            except OSError:
                time.sleep(0.05)
        raise AssertionError("server did not start listening")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def messages(self, user, mailbox="INBOX"):
        return self.cli_json("message", "list", user, "--mailbox", mailbox)

    def message_bytes(self, user, uid, mailbox="INBOX") -> bytes:
        r = subprocess.run(
            [mailfleet_bin(), "message", "get", user, str(uid), "--mailbox", mailbox],
            env=self.env,
            capture_output=True,
            timeout=60,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    def blob_files(self):
        return [p for p in (self.data_dir / "blobs").rglob("*") if p.is_file() and p.parent.name != "tmp"]


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "data")
    s.cli("domain", "add", "example.test")
    for user in ("alice", "bob"):
        s.cli("user", "add", f"{user}@example.test", "--password-stdin", stdin=PASSWORD + "\n")
    s.cli("alias", "add", "sales@example.test", "alice@example.test")
    s.start()
    yield s
    s.stop()
