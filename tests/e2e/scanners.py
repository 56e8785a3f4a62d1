"""Real rspamd and clamd processes for the tests and benchmarks (Debian's packages).

rspamd runs with its stock rules and a local.d of ours: loopback ports, no DNS, every
GTUBE pattern on, greylisting off, and one multimap rule that scores a marker in the
Subject (`junk-marker`) past the `add header` threshold. clamd cannot download its
database here, so it gets a signature file of ours matching the EICAR test file.
"""

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import free_port

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def wait_port(port, proc, what, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"{what} did not listen on {port}")


class Scanner:
    def __init__(self, proc, port):
        self.proc, self.port = proc, port

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_rspamd(d: Path, workers: int = 1) -> Scanner:
    binary = shutil.which("rspamd")
    assert binary, "rspamd is not installed (scripts/test.sh installs Debian's rspamd)"
    port, controller, proxy = free_port(), free_port(), free_port()
    local = d / "local.d"
    local.mkdir(parents=True)
    (local / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{port}";\ncount = {workers};\n')
    (local / "worker-controller.inc").write_text(f'bind_socket = "127.0.0.1:{controller}";\n')
    (local / "worker-proxy.inc").write_text(f'bind_socket = "127.0.0.1:{proxy}";\n')
    (local / "logging.inc").write_text(f'type = "file";\nfilename = "{d}/rspamd.log";\nlevel = "info";\n')
    # No DNS here: a dead resolver answers at once instead of RBL lookups timing out.
    (local / "options.inc").write_text(
        'dns { nameserver = ["127.0.0.1:9"]; timeout = 0.2s; retransmits = 1; }\n'
        'gtube_patterns = "all";\n'
    )
    (local / "actions.conf").write_text("greylist = null;\n")
    (d / "junk_subjects.map").write_text("/junk-marker/i\n")
    (local / "multimap.conf").write_text(
        "MAILFLEET_TEST_JUNK {\n"
        '  type = "header"; header = "Subject"; regexp = true;\n'
        f'  map = "{d}/junk_subjects.map"; score = 8.0;\n'
        '  description = "A test marker in the Subject";\n'
        "}\n"
    )
    for sub in ("db", "run"):
        (d / sub).mkdir()
    proc = subprocess.Popen(
        [
            binary, "-f", "-i", "-u", "root", "-g", "root",
            f"--var=LOCAL_CONFDIR={d}", f"--var=DBDIR={d}/db", f"--var=RUNDIR={d}/run",
            f"--var=LOGDIR={d}", "-c", "/etc/rspamd/rspamd.conf",
        ],
        stdout=open(d / "stdout.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    wait_port(port, proc, "rspamd")
    return Scanner(proc, port)


def start_clamd(d: Path) -> Scanner:
    binary = shutil.which("clamd") or "/usr/sbin/clamd"
    assert Path(binary).exists(), "clamd is not installed (scripts/test.sh installs clamav-daemon)"
    (d / "db").mkdir(parents=True)
    # An extended signature (ndb) of the EICAR test file, matched in any file type and,
    # since clamd decodes MIME, in a base64 attachment too.
    (d / "db" / "mailfleet-test.ndb").write_text(f"Eicar-Test-Signature:0:*:{EICAR.hex()}\n")
    port = free_port()
    (d / "clamd.conf").write_text(
        f"DatabaseDirectory {d}/db\nTCPSocket {port}\nTCPAddr 127.0.0.1\nForeground yes\n"
        f"LogFile {d}/clamd.log\nPidFile {d}/clamd.pid\nUser root\nStreamMaxLength 25M\n"
    )
    proc = subprocess.Popen([binary, "-c", str(d / "clamd.conf")], stdout=open(d / "out.log", "wb"), stderr=subprocess.STDOUT)
    wait_port(port, proc, "clamd")
    return Scanner(proc, port)
