"""A real Postfix, privately run, as the remote MX that Mailfleet delivers to.

What: `PostfixPeer` starts a Postfix instance of its own (its own config_directory,
queue_directory and data_directory, all under one directory; `postfix -c DIR start`), that
listens only on 127.0.0.1:<port>, accepts mail for one domain and delivers every recipient
of that domain into one Maildir through the virtual(8) delivery agent. It never touches the
system's Postfix (/etc/postfix is only read for postfix-files and dynamicmaps.cf), makes no
DNS lookups, relays nothing and binds no other port.

Why: a test double (smtp-sink, a Python SMTP server) tells us what *our* client sent; a real
MTA is an independent judge of what a real peer accepted. Its Maildir is the oracle for
"delivered exactly once": one file per accepted recipient, written only after Postfix
queued the message and answered 250, so lost or duplicated deliveries show up as missing or
extra files, and its maillog says why when they do.

The instance's directory must be reachable by the `postfix` user, since virtual(8) writes
the Maildir under its uid through an absolute path. pytest's tmp_path lives under a 0700
directory (/tmp/pytest-of-root), so tests use the `postfix_peer()` context manager below,
which makes a 0755 directory under /tmp, copies the maillog into tmp_path when it is done
and removes the directory.
"""

import contextlib
import os
import pwd
import shutil
import signal
import smtplib
import stat
import subprocess
import tempfile
import time
from pathlib import Path

from conftest import free_port

POSTFIX = shutil.which("postfix") or "/usr/sbin/postfix"
DAEMON_DIR = Path("/usr/lib/postfix/sbin")


def postfix_installed() -> bool:
    return Path(POSTFIX).exists() and (DAEMON_DIR / "master").exists()


# Only the services this instance needs, none chrooted (chroot would need a copy of /etc
# files in the queue directory). No pickup (nothing is submitted locally), no postscreen,
# no tlsmgr. `-` in the private column means "private" (a unix socket under private/).
MASTER_CF = """\
# service type private unpriv chroot wakeup maxproc command
{listen} inet n       -       n       -       -       smtpd
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixPeer:
    def __init__(self, dir: Path, domain: str = "remote.test"):
        self.dir = Path(dir).resolve()
        self.domain = domain
        self.port = free_port()
        self.conf_dir = self.dir / "etc"
        self.queue_dir = self.dir / "spool"
        self.data_dir = self.dir / "data"
        self.mail_base = self.dir / "mail"
        self.maildir = self.mail_base / "Maildir"
        self.maillog = self.dir / "maillog"
        pw = pwd.getpwnam("postfix")
        self.uid, self.gid = pw.pw_uid, pw.pw_gid
        self.started = False

    # ---- setup ----

    def _check_reachable(self):
        """virtual(8) runs as the postfix user and opens the Maildir by absolute path."""
        for p in [self.dir, *self.dir.parents]:
            st = p.stat()
            if st.st_uid != self.uid and not st.st_mode & stat.S_IXOTH:
                raise ValueError(
                    f"{p} (mode {stat.S_IMODE(st.st_mode):o}) is not searchable by the postfix "
                    f"user, which must reach {self.maildir}; use postfix_peer() or a 0755 "
                    "directory outside pytest's tmp_path")

    def _write_config(self):
        for d in (self.conf_dir, self.queue_dir, self.data_dir, self.mail_base):
            d.mkdir(parents=True, exist_ok=True)
        # `postfix check` wants data_directory owned by mail_owner; the Maildir is created
        # by virtual(8) running as the uid/gid below.
        for d in (self.data_dir, self.mail_base):
            os.chown(d, self.uid, self.gid)
        main_cf = {
            "compatibility_level": "3.6",
            "config_directory": self.conf_dir,
            "queue_directory": self.queue_dir,
            "data_directory": self.data_dir,
            # postfix-files and dynamicmaps.cf stay the system's (read only).
            "meta_directory": "/etc/postfix",
            "mail_owner": "postfix",
            "myhostname": f"peer.{self.domain}",
            "mydomain": self.domain,
            "myorigin": "$myhostname",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_client_restrictions": "",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            # No DNS or NIS anywhere: the peer name comes from the socket, no aliases.
            "disable_dns_lookups": "yes",
            "smtp_dns_support_level": "disabled",
            "smtpd_peername_lookup": "no",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            # Leave the headers of mail from 127.0.0.1 exactly as received (DKIM).
            "local_header_rewrite_clients": "",
            "virtual_mailbox_domains": self.domain,
            "virtual_mailbox_base": self.mail_base,
            # Every recipient of the domain goes to the same Maildir (trailing '/').
            "virtual_mailbox_maps": "static:Maildir/",
            "virtual_uid_maps": f"static:{self.uid}",
            "virtual_gid_maps": f"static:{self.gid}",
            "virtual_minimum_uid": str(min(self.uid, 100)),
            "maillog_file_prefixes": self.dir,
            "maillog_file": self.maillog,
            "smtpd_banner": "$myhostname ESMTP Postfix (mailfleet e2e peer)",
        }
        (self.conf_dir / "main.cf").write_text(
            "".join(f"{k} = {v}\n" for k, v in main_cf.items()))
        # The default `smtp inet` on port 25 is absent: the only listener is ours.
        (self.conf_dir / "master.cf").write_text(
            MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))

    def _postfix(self, *args, timeout=60, check=True):
        r = subprocess.run([POSTFIX, "-c", str(self.conf_dir), *args],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(
                f"postfix -c {self.conf_dir} {' '.join(args)} failed ({r.returncode}): "
                f"{r.stdout}{r.stderr}\n{self.maillog_tail()}")
        return r

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self._check_reachable()
        self._write_config()
        # `check` creates the missing queue subdirectories (via post-install
        # create-missing) with the owners and modes Postfix wants, and checks main.cf.
        self._postfix("check")
        self.started = True
        self._postfix("start")
        deadline = time.time() + 30
        last = None
        while time.time() < deadline:
            try:
                with smtplib.SMTP(timeout=5) as s:
                    code, _ = s.connect("127.0.0.1", self.port)
                    if code == 220:
                        return self
                    last = code
            except (OSError, smtplib.SMTPException) as e:
                last = e
            time.sleep(0.05)
        raise AssertionError(f"Postfix did not answer 220 on port {self.port}: {last!r}\n"
                             f"{self.maillog_tail()}")

    # ---- teardown ----

    def _master_pid(self):
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return None
        # Only our own master: same binary name and not some recycled pid.
        return pid if b"master" in cmdline else None

    def stop(self):
        """Stop the instance; safe to call twice, after a failed start, or mid-test."""
        if not self.started:
            return
        self.started = False
        try:
            # `postfix stop` waits up to 5 s for master, then kills it with force.
            self._postfix("stop", timeout=30, check=False)
        except subprocess.TimeoutExpired:
            pass
        pid = self._master_pid()
        if pid is not None:
            # master runs in its own session and process group, with its children.
            for target in (-pid, pid):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(target, signal.SIGKILL)

    # ---- results ----

    def message_files(self) -> list[Path]:
        files = []
        for sub in ("new", "cur"):
            d = self.maildir / sub
            if d.is_dir():
                files.extend(p for p in d.iterdir() if p.is_file())
        return sorted(files)

    def messages(self) -> list[bytes]:
        """Every message delivered so far (one file per accepted recipient)."""
        return [p.read_bytes() for p in self.message_files()]

    def wait_for(self, n: int, timeout: float = 60) -> list[bytes]:
        deadline = time.time() + timeout
        while True:
            msgs = self.messages()
            if len(msgs) >= n:
                return msgs
            if time.time() >= deadline:
                raise AssertionError(
                    f"Postfix has {len(msgs)} of {n} messages after {timeout} s\n"
                    f"{self.maillog_tail()}")
            time.sleep(0.2)

    def queue_empty(self) -> bool:
        """No message waits in Postfix's own queue: all it accepted has been delivered
        (or, for a message it could not deliver, sits in deferred/hold and this is False)."""
        for sub in ("maildrop", "incoming", "active", "deferred", "hold"):
            d = self.queue_dir / sub
            if d.is_dir() and any(p.is_file() for p in d.rglob("*")):
                return False
        return True

    def maillog_tail(self, lines: int = 40) -> str:
        try:
            text = self.maillog.read_text(errors="replace")
        except OSError:
            return "(no maillog)"
        return "--- Postfix maillog (tail) ---\n" + "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def postfix_peer(tmp_path: Path, domain: str = "remote.test"):
    """A started PostfixPeer in a fresh directory the postfix user can reach; stopped and
    removed afterwards, its maillog kept as tmp_path/postfix-maillog."""
    base = Path(tempfile.mkdtemp(prefix="mailfleet-e2e-postfix-", dir="/tmp"))
    base.chmod(0o755)
    peer = PostfixPeer(base, domain)
    try:
        peer.start()
        yield peer
    finally:
        peer.stop()
        with contextlib.suppress(OSError):
            shutil.copyfile(peer.maillog, tmp_path / "postfix-maillog")
        shutil.rmtree(base, ignore_errors=True)
