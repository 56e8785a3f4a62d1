"""A throw-away Dovecot on 127.0.0.1 for the IMAP differential test (test_imap_dovecot_diff.py).

The configuration is written into a temporary directory: plaintext LOGIN (loopback only), a
passwd-file with one line per user, sdbox mail storage under the same directory, the hierarchy
separator ``/`` (Mailfleet's), the mailboxes every Mailfleet account starts with (Sent, Drafts,
Junk, Trash, Archive with their SPECIAL-USE attributes, created but, like Mailfleet's,
not subscribed), a 1 GiB storage quota so QUOTA has something to report, the acl and
imap_acl plugins with a shared namespace ``Other Users/<user>/`` (as Mailfleet's), an empty
public namespace ``Shared/`` (as Mailfleet's NAMESPACE lists), and
METADATA with a file attribute dict.

Written for Dovecot 2.3 (Debian 12, what CI installs). Dovecot 2.4 renamed most of these
settings; with 2.4 the test is skipped rather than run against a half-understood configuration.
The same start-up dance as services/mime/tests/dovecot_diff.py: not root means every Dovecot
process runs as the current user and nothing is chrooted; as root, mail is owned by `nobody`
because Dovecot never serves mail as UID 0.
"""

from __future__ import annotations

import grp
import os
import pathlib
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time

DOVECOT = os.environ.get("MAILFLEET_DOVECOT", "/usr/sbin/dovecot")

# The mailboxes every Mailfleet account gets (mailfleet_storage::SpecialUse::DEFAULTS).
SPECIAL_MAILBOXES = [
    ("Sent", "\\Sent"),
    ("Drafts", "\\Drafts"),
    ("Junk", "\\Junk"),
    ("Trash", "\\Trash"),
    ("Archive", "\\Archive"),
]

# Below the e2e suite's range (tests/e2e/conftest.py hands out 20000-32000) and not the range
# of services/mime/tests/dovecot_diff.py's Dovecot (15000-19999), so the two can run at once.
_next_port = 12000 + os.getpid() % 2900


def _free_port() -> int:
    global _next_port
    while _next_port < 14999:
        port = _next_port
        _next_port += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port in 12000-14999")


def version() -> tuple[int, ...]:
    out = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, check=True)
    return tuple(int(x) for x in re.findall(r"\d+", out.stdout.split()[0])[:3])


def _mail_owner() -> tuple[int, int]:
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
    return uid, gid


def write_config(root: pathlib.Path, port: int, users: dict[str, str]) -> pathlib.Path:
    uid, gid = _mail_owner()
    for d in ("run", "state", "home", "public"):
        (root / d).mkdir()
    os.chown(root / "home", uid, gid)
    os.chown(root / "public", uid, gid)
    passwd = root / "passwd"
    passwd.write_text(
        "".join(
            f"{user}:{{PLAIN}}{password}:{uid}:{gid}::{root / 'home' / user}::\n"
            for user, password in users.items()
        )
    )
    unprivileged = ""
    login_chroot = ""
    if os.getuid() != 0:
        name = pwd.getpwuid(os.getuid()).pw_name
        group = grp.getgrgid(os.getgid()).gr_name
        unprivileged = f"""
default_login_user = {name}
default_internal_user = {name}
default_internal_group = {group}
service anvil {{
  chroot =
}}
"""
        login_chroot = "chroot ="
    specials = "".join(
        f"""
  mailbox {name} {{
    special_use = {use}
    auto = create
  }}"""
        for name, use in SPECIAL_MAILBOXES
    )
    conf = root / "dovecot.conf"
    conf.write_text(
        f"""
protocols = imap
listen = 127.0.0.1
base_dir = {root / 'run'}
state_dir = {root / 'state'}
log_path = {root / 'dovecot.log'}
info_log_path = {root / 'dovecot.log'}
ssl = no
auth_mechanisms = plain
disable_plaintext_auth = no
# A failed LOGIN in the scripts must not cost two seconds.
auth_failure_delay = 0
first_valid_uid = 0
mail_location = sdbox:~/mail
mail_attribute_dict = file:%h/dovecot-attributes
mail_plugins = quota acl
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
namespace inbox {{
  inbox = yes
  separator = /
  prefix =
{specials}
}}
# Other users' mailboxes shared through ACLs, under Mailfleet's prefix
# ("Other Users/<address>/<mailbox>"); acl_shared_dict records who shares what with whom.
namespace shared {{
  type = shared
  separator = /
  prefix = Other Users/%%u/
  location = sdbox:%%h/mail
  subscriptions = no
  list = children
}}
# Public folders under Mailfleet's prefix "Shared/" (no folder is created in it: NAMESPACE
# lists it, LIST shows it only with children, as Mailfleet does).
namespace public {{
  type = public
  separator = /
  prefix = Shared/
  location = sdbox:{root / 'public'}
  subscriptions = no
  list = children
}}
plugin {{
  # No ACL cache: a grantee's session must see a SETACL at once, as in Mailfleet.
  acl = vfile::cache_secs=0
  acl_anyone = allow
  acl_shared_dict = file:{root / 'shared-mailboxes.db'}
  quota = count:User quota
  quota_rule = *:storage=1G
  quota_vsizes = yes
}}
protocol imap {{
  mail_plugins = $mail_plugins imap_quota imap_acl
  # METADATA (RFC 5464), kept in a per-user file dict.
  imap_metadata = yes
}}
service imap-login {{
  {login_chroot}
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
{unprivileged}
"""
    )
    return conf


class DovecotProcess:
    """A Dovecot started in the foreground (-F) from a private configuration in a fresh
    temporary directory; ``configure(root, port)`` writes that configuration and returns
    its path. Shared by this module's differential IMAP test and by
    services/mime/tests/dovecot_diff.py, which each bring their own configuration; the
    port picker is the caller's, so their port ranges stay apart."""

    def __init__(self, configure, port: int, prefix: str = "mailfleet-dovecot-") -> None:
        self.root = pathlib.Path(tempfile.mkdtemp(prefix=prefix))
        # Dovecot's auth process runs as its own user when we are root: it must reach passwd.
        self.root.chmod(0o755)
        self.port = port
        self.conf = configure(self.root, self.port)
        # Output goes to a file: a pipe nobody reads could fill up and block Dovecot.
        with open(self.root / "stderr.log", "wb") as stderr:
            self.proc = subprocess.Popen(
                [DOVECOT, "-F", "-c", str(self.conf)],
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                err = (self.root / "stderr.log").read_text(errors="replace")
                log = self.log()
                self.stop()
                raise RuntimeError(f"dovecot exited: {err}\n{log}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    log = self.log()
                    self.stop()
                    raise RuntimeError(f"dovecot did not listen on {self.port}\n{log}")
                time.sleep(0.1)

    def log(self) -> str:
        path = self.root / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.root, ignore_errors=True)


class Dovecot(DovecotProcess):
    """The differential test's Dovecot: sdbox, separator "/", the special-use mailboxes and
    a quota, one passwd-file user per entry of ``users``."""

    def __init__(self, users: dict[str, str]) -> None:
        super().__init__(
            lambda root, port: write_config(root, port, users),
            _free_port(),
            prefix="mailfleet-imapdiff-dovecot-",
        )
