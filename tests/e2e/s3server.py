"""A real S3 server for end-to-end tests: one single-node Garage process on loopback ports.

Garage (AGPL-3.0) is a separate test peer, started as its own process and spoken to over
HTTP; it is never linked into Mailfleet. Build it once with `scripts/install-garage.sh`;
the binary is taken from $MAILFLEET_GARAGE_BIN or ~/.cache/mailfleet/tools/bin/garage.

    g = Garage(tmp_path / "garage").start()
    server = Server(tmp_path / "data", extra_env=g.env())
    ...
    g.stop()     # or g.kill(), then g.restart(): same data, same ports, same key/bucket
"""

import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

# Ports below the kernel's ephemeral range, handed out once per process (see conftest.py
# `free_port` for why not port 0). A range of its own, apart from conftest's 20000-32000,
# so a Garage and a Mailfleet server in one test never race for a port.
_PORT_LOW, _PORT_HIGH = 12000, 15000
_next_port = _PORT_LOW + (os.getpid() * 7919) % (_PORT_HIGH - _PORT_LOW)


def _free_port() -> int:
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
    raise RuntimeError("no free loopback port in 12000-14999")


def garage_bin() -> str | None:
    """The garage binary, or None when it is not installed."""
    explicit = os.environ.get("MAILFLEET_GARAGE_BIN")
    if explicit:
        return explicit
    cached = Path.home() / ".cache" / "mailfleet" / "tools" / "bin" / "garage"
    return str(cached) if cached.is_file() and os.access(cached, os.X_OK) else None


class Garage:
    """One Garage node with its data in `dir`, provisioned with one key and one bucket."""

    def __init__(self, dir: Path, bucket: str = "mailfleet", region: str = "garage"):
        self.dir = Path(dir)
        self.bin = garage_bin()
        if self.bin is None:
            raise RuntimeError("garage not found: run scripts/install-garage.sh")
        self.config = self.dir / "garage.toml"
        # Ports and credentials are kept beside the data, so a new Garage object on an
        # existing directory (a test reopening it) talks to the same node as before.
        self._state = self.dir / "harness.json"
        if self._state.exists():
            state = json.loads(self._state.read_text())
        else:
            state = {
                "s3_port": _free_port(),
                "rpc_port": _free_port(),
                "admin_port": _free_port(),
                "region": region,
                "bucket": bucket,
                # Garage's own formats: "GK" + 12 bytes of hex, and a 32-byte hex secret.
                "access_key_id": "GK" + secrets.token_hex(12),
                "secret_access_key": secrets.token_hex(32),
            }
        self.s3_port = state["s3_port"]
        self.rpc_port = state["rpc_port"]
        self.admin_port = state["admin_port"]
        self.region = state["region"]
        self.bucket = state["bucket"]
        self.access_key_id = state["access_key_id"]
        self.secret_access_key = state["secret_access_key"]
        self.endpoint = f"http://127.0.0.1:{self.s3_port}"
        self._state_data = state
        self.log = self.dir / "garage.log"
        self.proc = None
        self._log_file = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self, timeout: float = 60):
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.config.exists():
            self._write_config()
            self._state.write_text(json.dumps(self._state_data))
        self._log_file = open(self.log, "ab")
        self.proc = subprocess.Popen(
            [self.bin, "-c", str(self.config), "server"],
            stdout=self._log_file,
            stderr=self._log_file,
            env={**os.environ, "RUST_LOG": os.environ.get("GARAGE_LOG", "garage=info")},
        )
        deadline = time.time() + timeout
        # The RPC side answers first; provisioning needs only that.
        self._wait(deadline, lambda: self._cli_ok("status"), "garage RPC")
        marker = self.dir / "provisioned"
        if not marker.exists():
            self._provision()
            marker.write_text("ok\n")
        self._wait(deadline, self._healthy, "garage /health")
        return self

    def stop(self):
        """SIGTERM and wait: Garage flushes and exits."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._close_log()

    def kill(self):
        """SIGKILL: the crash case."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self._close_log()

    def restart(self):
        """Stops if running, then starts again on the same data and ports; the key and
        bucket provisioned at the first start are kept."""
        self.stop()
        return self.start()

    def env(self) -> dict:
        """Environment for a Mailfleet process storing its blobs in this bucket."""
        return {
            "MAILFLEET_STORAGE__BLOBS": "s3",
            "MAILFLEET_STORAGE__S3__ENDPOINT": self.endpoint,
            "MAILFLEET_STORAGE__S3__REGION": self.region,
            "MAILFLEET_STORAGE__S3__BUCKET": self.bucket,
            "MAILFLEET_STORAGE__S3__ACCESS_KEY_ID": self.access_key_id,
            "MAILFLEET_STORAGE__S3__SECRET_ACCESS_KEY": self.secret_access_key,
            "MAILFLEET_STORAGE__S3__PATH_STYLE": "true",
        }

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # -- internals ----------------------------------------------------------------------

    def _write_config(self):
        self.config.write_text(
            f"""\
metadata_dir = "{self.dir / 'meta'}"
data_dir = "{self.dir / 'data'}"
db_engine = "sqlite"
replication_factor = 1

rpc_bind_addr = "127.0.0.1:{self.rpc_port}"
rpc_public_addr = "127.0.0.1:{self.rpc_port}"
rpc_secret = "{secrets.token_hex(32)}"

[s3_api]
s3_region = "{self.region}"
api_bind_addr = "127.0.0.1:{self.s3_port}"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:{self.admin_port}"
admin_token = "{secrets.token_hex(32)}"
"""
        )

    def _provision(self):
        node = self._cli("node", "id", "-q").stdout.strip().split("@")[0]
        self._cli("layout", "assign", "-z", "dc1", "-c", "1GB", node)
        self._cli("layout", "apply", "--version", "1")
        self._cli(
            "key", "import", "--yes", "-n", "mailfleet-test",
            self.access_key_id, self.secret_access_key,
        )
        self._cli("bucket", "create", self.bucket)
        self._cli(
            "bucket", "allow", "--read", "--write", "--owner",
            self.bucket, "--key", self.access_key_id,
        )

    def _cli(self, *args, check=True):
        r = subprocess.run(
            [self.bin, "-c", str(self.config), *args],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and r.returncode != 0:
            raise AssertionError(
                f"garage {' '.join(args)} failed ({r.returncode}): {r.stderr}{r.stdout}"
            )
        return r

    def _cli_ok(self, *args) -> bool:
        try:
            return self._cli(*args, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def _healthy(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.admin_port}/health"
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _wait(self, deadline, ready, what):
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"garage exited: {self.log.read_text(errors='replace')}")
            if ready():
                return
            time.sleep(0.1)
        raise AssertionError(f"{what} not ready: {self.log.read_text(errors='replace')}")

    def _close_log(self):
        if self._log_file:
            self._log_file.close()
            self._log_file = None
