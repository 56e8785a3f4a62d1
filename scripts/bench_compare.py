#!/usr/bin/env python3
"""Mailfleet beside Dovecot and Postfix: the same loads, one machine, one run, as ratios.

Starts, on 127.0.0.1 and from fresh temporary directories:
- a release `mailfleet serve` (embedded mode: SQLite metadata, blobs on local disk);
- Debian's Dovecot 2.3 (IMAP, POP3, LMTP; Maildir, its default `mail_fsync = optimized`),
  given the very argon2id hashes Mailfleet stored for the same users (passwd-file with
  `{ARGON2ID}`), and, for one extra row, the plaintext passwords (`{PLAIN}`, the setting
  Dovecot benchmarks usually run with);
- Debian's Postfix 3.7 as a private instance (its own config and queue directory), relaying
  into Dovecot over LMTP, and a second configuration delivering to Maildir with virtual(8).

Both IMAP servers get the same users and the same seeded messages (the same bytes, APPENDed
by imaplib; for the `big` load's 100,000-message INBOX, Dovecot's are written straight into
its Maildir, and both INBOXes are selected once before the load). Then each load runs
against each server:
- IMAP mix: persistent sessions (`imap-load --scenario mix`);
- IMAP churn: the same mix with LOGOUT/LOGIN every 10 operations (`--scenario churn`),
  Dovecot with the argon2id hashes and again with plaintext passwords;
- POP3: `pop3-load` (login, STAT, UIDL, RETR x20, QUIT per session);
- SMTP ingest: `smtp-load` into Mailfleet (its 250 comes after the message is in the
  mailbox) and into Postfix (timed until the last message is in the Dovecot or Maildir
  mailbox, so both figures mean "durable in the mailbox");
- IMAP idle memory, plain and implicit TLS, each on a freshly started server (Mailfleet
  only: Dovecot runs a process per session).

    apt-get install dovecot-imapd dovecot-pop3d dovecot-lmtpd postfix
    cargo build --release -p mailfleet -p mailfleet-load-tests
    python3 scripts/bench_compare.py [--quick] [--json out.json]

Prints one markdown table (load, Dovecot/Postfix, Mailfleet, ratio) for docs/benchmarks.md.
A benchmark, never part of the test suite: the figures depend on the machine, and the run
takes several minutes. Run it as root (Dovecot and Postfix drop to their own users) on a
quiet machine: a compiler on the other core halves every figure.
"""

from __future__ import annotations

import argparse
import imaplib
import json
import os
import pwd
import shutil
import socket
import sqlite3
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

from conftest import PASSWORD, Server, free_port  # noqa: E402
from dovecot_server import DovecotProcess  # noqa: E402

DOMAIN = "example.test"
USER = "load{n}@" + DOMAIN

MAILFLEET_ENV = {
    "MAILFLEET_LOG__LEVEL": "warn",
    "MAILFLEET_IMAP__ALLOW_PLAINTEXT_AUTH": "true",
    "MAILFLEET_POP3__ALLOW_PLAINTEXT_AUTH": "true",
    # Every load comes from 127.0.0.1: the per-address limits would measure themselves.
    "MAILFLEET_SMTP__MAX_MESSAGES_PER_IP_PER_MINUTE": "0",
    "MAILFLEET_SERVER__MAX_CONNECTIONS_PER_IP": "0",
    "MAILFLEET_AUTH__MAX_FAILURES_PER_IP": "100000",
    "MAILFLEET_AUTH__MAX_FAILURES_PER_ACCOUNT": "1000000",
    # The idle scenario holds --idle-sessions / --users sessions per account (100 by
    # default), over the default per-account cap of 50.
    "MAILFLEET_IMAP__MAX_SESSIONS_PER_USER": "100000",
}


def users(n: int) -> list[str]:
    return [USER.replace("{n}", str(i)) for i in range(n)]


def message(user: str, i: int, size: int) -> bytes:
    """The i-th seeded message of a user: the same bytes for both servers."""
    line = ("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod "
            "tempor.\r\n")
    body = line * max(1, size // len(line))
    return (f"From: Sender {i} <sender{i}@load.test>\r\nTo: {user}\r\n"
            f"Subject: seeded message {i}\r\nDate: Thu, 03 Dec 2026 12:00:00 +0000\r\n"
            f"Message-ID: <seed{i}.{user}>\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{body}").encode()


def seed_imap(port: int, names: list[str], per_user: int, size: int) -> None:
    """APPENDs each user's messages, pipelined with non-synchronizing literals (LITERAL+,
    which both servers offer). imaplib waits for a continuation and then an answer per
    APPEND, ~20 messages/s here: most of a full run went into seeding."""
    for user in names:
        seed_range(port, user, range(per_user), size)


def seed_range(port: int, user: str, numbers: range, size: int) -> None:
    """One connection APPENDs messages `numbers` of `user`, in chunks of 1,000 (so the
    answers never fill the socket buffers while the requests are still being sent)."""
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(user, PASSWORD)
    caps = c.capability()[1][0].split()  # after login: LITERAL+ is offered from here
    assert b"LITERAL+" in caps, caps
    sock = c.socket()
    for start in range(numbers.start, numbers.stop, 1000):
        chunk_numbers = range(start, min(start + 1000, numbers.stop))
        out = bytearray()
        for i in chunk_numbers:
            m = message(user, i, size)
            out += f"s{i} APPEND INBOX {{{len(m)}+}}\r\n".encode() + m + b"\r\n"
        sock.sendall(bytes(out))
        done, buf = 0, b""
        while done < len(chunk_numbers):
            chunk = sock.recv(65536)
            assert chunk, f"seeding {user}: connection closed after {done} answers"
            buf += chunk
            *lines, buf = buf.split(b"\r\n")
            for line in lines:
                if line.startswith(b"s"):
                    assert b" OK " in line, f"seeding {user}: {line!r}"
                    done += 1
    c.logout()


def seed_big(port: int, user: str, count: int, size: int, connections: int = 10) -> None:
    """`count` messages into one INBOX over several connections (group commits batch them)."""
    import threading
    step = -(-count // connections)
    threads = [threading.Thread(target=seed_range,
                                args=(port, user, range(k, min(k + step, count)), size))
               for k in range(0, count, step)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def seed_maildir(dovecot: "DovecotProcess", user: str, numbers: range, size: int) -> None:
    """Writes messages `numbers` of `user` straight into Dovecot's Maildir (`cur/`, seen by
    no one yet), the files owned by the user Dovecot runs mail processes as. Seeding
    100,000 messages by APPEND took Dovecot more than 23 minutes here; the files take
    seconds, and Dovecot indexes them at the first SELECT (done before measuring)."""
    home = dovecot.root / "home" / user
    st = os.stat(dovecot.root / "home")
    for d in (home, home / "Maildir", *(home / "Maildir" / s for s in ("cur", "new", "tmp"))):
        d.mkdir(exist_ok=True)
        os.chown(d, st.st_uid, st.st_gid)
    cur = home / "Maildir" / "cur"
    t0 = int(time.time())
    for i in numbers:
        m = message(user, i, size)
        f = cur / f"{t0}.M{i}P{os.getpid()}.bench,S={len(m)}:2,"
        f.write_bytes(m)
        os.chown(f, st.st_uid, st.st_gid)


def wait_quiet(pid: int, timeout: float = 600.0) -> float:
    """Waits until process `pid` uses under 5% of a core over 2 s (Mailfleet's full-text
    index catching up after a seeding): the mix is measured on a server at rest, as
    Dovecot's is. Returns the seconds waited."""
    hz = os.sysconf("SC_CLK_TCK")

    def ticks() -> int:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return int(f[11]) + int(f[12])

    t0 = time.time()
    while time.time() - t0 < timeout:
        a = ticks()
        time.sleep(2)
        if (ticks() - a) / hz < 0.1:
            break
    return time.time() - t0


def warm_inbox(port: int, user: str) -> float:
    """SELECT and a FLAGS fetch of the whole INBOX, once: Dovecot builds its index of
    seeded Maildir files here, Mailfleet reads its rows. Returns the seconds it took."""
    t0 = time.time()
    c = imaplib.IMAP4("127.0.0.1", port)
    c.login(user, PASSWORD)
    c.select("INBOX")
    c.fetch("1:*", "(FLAGS)")
    c.logout()
    return time.time() - t0


# ---- Dovecot ----

def dovecot_config(hashes: dict[str, str]):
    """A configure(root, port) for DovecotProcess: IMAP on `port`, POP3 and LMTP on the
    ports after it, Maildir, passwd-file with the given `{SCHEME}hash` per user."""

    def configure(root: Path, port: int) -> Path:
        if os.getuid() == 0:
            nobody = pwd.getpwnam("nobody")
            uid, gid = nobody.pw_uid, nobody.pw_gid
        else:
            uid, gid = os.getuid(), os.getgid()
        for d in ("run", "state", "home"):
            (root / d).mkdir()
        os.chown(root / "home", uid, gid)
        passwd = root / "passwd"
        passwd.write_text("".join(
            f"{u}:{h}:{uid}:{gid}::{root / 'home' / u}::\n" for u, h in hashes.items()))
        passwd.chmod(0o644)
        unprivileged = ""
        if os.getuid() != 0:
            name = pwd.getpwuid(os.getuid()).pw_name
            unprivileged = (f"default_login_user = {name}\ndefault_internal_user = {name}\n"
                            "service anvil {\n  chroot =\n}\n")
        conf = root / "dovecot.conf"
        conf.write_text(f"""
protocols = imap pop3 lmtp
listen = 127.0.0.1
base_dir = {root / 'run'}
state_dir = {root / 'state'}
log_path = {root / 'dovecot.log'}
info_log_path = /dev/null
ssl = no
disable_plaintext_auth = no
auth_failure_delay = 0
first_valid_uid = 0
mail_location = maildir:~/Maildir
# Every load comes from one address; Dovecot's default is 10 per user and address.
mail_max_userip_connections = 1000
default_process_limit = 200
default_client_limit = 5000
passdb {{
  driver = passwd-file
  args = {passwd}
}}
userdb {{
  driver = passwd-file
  args = {passwd}
}}
namespace inbox {{
  inbox = yes
  separator = /
}}
service imap-login {{
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {port + 1}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port + 2}
  }}
}}
protocol lmtp {{
  # Addresses are the passwd-file user names (user@domain).
  auth_username_format = %Lu
}}
{unprivileged}
""")
        return conf

    return configure


def start_dovecot(hashes: dict[str, str]) -> DovecotProcess:
    while True:
        port = free_port()
        if all(port_free(port + k) for k in (1, 2)):
            return DovecotProcess(dovecot_config(hashes), port, prefix="mfbench-dovecot-")


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def maildir_count(root: Path) -> int:
    n = 0
    for d in root.rglob("new"):
        n += sum(1 for _ in d.iterdir())
    for d in root.rglob("cur"):
        n += sum(1 for _ in d.iterdir())
    return n


# ---- Postfix ----

class Postfix:
    """A private Postfix instance: its own config directory, queue and port. `transport`
    is `lmtp:inet:127.0.0.1:PORT` (into Dovecot) or `virtual` (Maildir under `vmail`)."""

    def __init__(self, root: Path, port: int, transport: str, names: list[str]):
        self.root, self.port = root, port
        self.conf = root / "etc"
        self.vmail = root / "vmail"
        for d in (self.conf, root / "queue", root / "data", self.vmail):
            d.mkdir(parents=True)
        pf = pwd.getpwnam("postfix")
        os.chown(root / "data", pf.pw_uid, pf.pw_gid)
        nobody = pwd.getpwnam("nobody")
        os.chown(self.vmail, nobody.pw_uid, nobody.pw_gid)
        (self.conf / "vmailbox").write_text(
            "".join(f"{u} {u.split('@')[1]}/{u.split('@')[0]}/\n" for u in names))
        (self.conf / "main.cf").write_text(f"""
compatibility_level = 3.6
queue_directory = {root / 'queue'}
data_directory = {root / 'data'}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench.localhost
mydestination =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_recipient_restrictions = permit_mynetworks, reject
smtpd_client_connection_rate_limit = 0
default_process_limit = 100
smtputf8_enable = no
biff = no
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = {DOMAIN}
virtual_mailbox_maps = texthash:{self.conf / 'vmailbox'}
virtual_mailbox_base = {self.vmail}
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
virtual_transport = {transport}
lmtp_destination_concurrency_limit = 20
virtual_destination_concurrency_limit = 20
maillog_file = {root / 'maillog'}
maillog_file_prefixes = {root}
meta_directory = /etc/postfix
""")
        master = Path("/etc/postfix/master.cf").read_text().splitlines()
        out = []
        for line in master:
            fields = line.split()
            if fields[:2] == ["smtp", "inet"]:
                fields[0] = f"127.0.0.1:{port}"
            if len(fields) >= 8 and not line.startswith((" ", "\t", "#")):
                fields[4] = "n"  # no chroot: the private queue has no copied /etc files
                line = "  ".join(fields[:8]) + (" " + " ".join(fields[8:]) if fields[8:] else "")
            out.append(line)
        if not any(l.startswith("postlog") for l in out):
            out.append("postlog   unix-dgram n  -       n       -       1       postlogd")
        (self.conf / "master.cf").write_text("\n".join(out) + "\n")
        run = lambda *a: subprocess.run(["postfix", "-c", str(self.conf), *a],  # noqa: E731
                                        capture_output=True, text=True)
        r = run("check")
        if r.returncode != 0:
            raise RuntimeError(f"postfix check: {r.stderr}")
        r = run("start")
        if r.returncode != 0:
            raise RuntimeError(f"postfix start: {r.stderr}{self.maillog()}")
        deadline = time.monotonic() + 20
        while not listening(port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix did not listen\n{self.maillog()}")
            time.sleep(0.1)

    def maillog(self) -> str:
        p = self.root / "maillog"
        return p.read_text(errors="replace")[-3000:] if p.exists() else ""

    def stop(self) -> None:
        subprocess.run(["postfix", "-c", str(self.conf), "stop"], capture_output=True)
        time.sleep(0.5)


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


# ---- loads ----

def run_tool(cmd: list[str], env_pw: str | None = None) -> dict:
    env = dict(os.environ)
    if env_pw:
        env["IMAP_LOAD_PASSWORD"] = env_pw
        env["POP3_LOAD_PASSWORD"] = env_pw
    r = subprocess.run([*cmd, "--json"], capture_output=True, text=True, env=env)
    lines = r.stdout.strip().splitlines()
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    print("   ", "\n    ".join(lines[:-1]), flush=True)
    return json.loads(lines[-1])


def imap_load(port: int, scenario: str, args) -> dict:
    return run_tool([str(RELEASE / "imap-load"), "--scenario", scenario,
                     "--target", f"127.0.0.1:{port}", "--connections", str(args.imap_clients),
                     "--count", str(args.imap_count if scenario == "mix" else args.churn_count),
                     "--user", USER, "--users", str(args.users),
                     "--items", "FLAGS BODY.PEEK[]", "--duration-secs", "300"], PASSWORD)


def imap_load_one(port: int, user: str, args) -> dict:
    """The mix with every session on one account's INBOX, for at most 90 s (Dovecot's
    Maildir answered ~15 commands/s on the 100,000-message INBOX: the full count would take
    it half an hour)."""
    return run_tool([str(RELEASE / "imap-load"), "--scenario", "mix",
                     "--target", f"127.0.0.1:{port}", "--connections", str(args.imap_clients),
                     "--count", str(args.imap_count), "--user", user,
                     "--items", "FLAGS BODY.PEEK[]", "--duration-secs", "90"], PASSWORD)


def pop3_load(port: int, args) -> dict:
    return run_tool([str(RELEASE / "pop3-load"), "--target", f"127.0.0.1:{port}",
                     "--workers", str(args.pop3_workers), "--users", str(args.users),
                     "--user", USER, "--sessions", str(args.pop3_sessions),
                     "--retr", "20", "--duration-secs", "300"], PASSWORD)


def smtp_load(port: int, args) -> dict:
    return run_tool([str(RELEASE / "smtp-load"), "--target", f"127.0.0.1:{port}",
                     "--connections", str(args.smtp_sessions), "--messages", str(args.smtp_messages),
                     "--size", "10240", "--rcpt", USER.replace("{n}", "0"),
                     "--messages-per-connection", "100", "--duration-secs", "300"])


def rate(res: dict, key: str) -> float:
    return float(res.get(key) or 0.0)


def commands_per_sec(res: dict) -> float:
    if res.get("failed"):
        print(f"    WARNING: {res['failed']} failed operations: {res.get('failures')}")
    return float(res["ops_per_sec"])


LOADS = ("mix", "churn", "pop3", "idle", "smtp", "churn-plain", "big")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small counts, to try the script")
    p.add_argument("--users", type=int, default=20)
    p.add_argument("--messages-per-user", type=int, default=200)
    p.add_argument("--imap-clients", type=int, default=50)
    p.add_argument("--imap-count", type=int, default=30000)
    p.add_argument("--churn-count", type=int, default=6000)
    p.add_argument("--pop3-workers", type=int, default=20)
    p.add_argument("--pop3-sessions", type=int, default=400)
    p.add_argument("--smtp-sessions", type=int, default=20)
    p.add_argument("--smtp-messages", type=int, default=5000)
    p.add_argument("--idle-sessions", type=int, default=2000)
    p.add_argument("--skip-postfix", action="store_true")
    p.add_argument("--big-messages", type=int, default=100_000,
                   help="messages in the one INBOX of the `big` load (the mix on it, beside "
                        "the same mix on a --messages-per-user INBOX)")
    p.add_argument("--json", type=Path, help="also write every raw result here")
    p.add_argument("--only", default=",".join(load for load in LOADS if load != "big"),
                   help=f"comma-separated loads to run, of: {', '.join(LOADS)} (default: all "
                        "but big, which seeds --big-messages into each server first)")
    args = p.parse_args()
    only = set(args.only.split(","))
    if only - set(LOADS):
        sys.exit(f"unknown loads: {', '.join(sorted(only - set(LOADS)))}")
    if args.quick:
        args.messages_per_user, args.imap_count, args.churn_count = 20, 2000, 500
        args.pop3_sessions, args.smtp_messages, args.idle_sessions = 40, 500, 200
        args.big_messages = 2000
    for tool in ("mailfleet", "imap-load", "pop3-load", "smtp-load"):
        if not (RELEASE / tool).exists():
            sys.exit(f"{RELEASE / tool} missing: cargo build --release -p mailfleet "
                     "-p mailfleet-load-tests")
    names = users(args.users)
    big_user = "big@" + DOMAIN
    small_user = "small@" + DOMAIN
    all_names = names + [big_user, small_user]
    results: dict[str, dict] = {}
    rows: list[tuple[str, str, str, str]] = []

    def row(load: str, theirs: float, ours: float, unit: str) -> None:
        ratio = ours / theirs if theirs else float("nan")
        rows.append((load, f"{theirs:,.0f} {unit}", f"{ours:,.0f} {unit}", f"{ratio:.2f}×"))

    tmp = Path(tempfile.mkdtemp(prefix="mfbench-"))
    tmp.chmod(0o755)
    mf = Server(tmp / "mailfleet", MAILFLEET_ENV)
    mf.cli("domain", "add", DOMAIN)
    for u in all_names:
        mf.cli("user", "add", u, "--password-stdin", stdin=PASSWORD + "\n")
    db = sqlite3.connect(tmp / "mailfleet" / "metadata.sqlite3")
    hashes = dict(db.execute("SELECT address, password_hash FROM accounts"))
    db.close()
    mf.start()
    dovecot = start_dovecot({u: "{ARGON2ID}" + hashes[u] for u in all_names})
    try:
        if only & {"mix", "churn", "pop3", "churn-plain"}:
            print(f"== seeding {args.users} users x {args.messages_per_user} messages",
                  flush=True)
            t0 = time.time()
            seed_imap(mf.imap_port, names, args.messages_per_user, 10240)
            t1 = time.time()
            seed_imap(dovecot.port, names, args.messages_per_user, 10240)
            print(f"    Mailfleet {t1 - t0:.1f} s, Dovecot {time.time() - t1:.1f} s", flush=True)

        if "mix" in only:
            print("== IMAP mix", flush=True)
            results["dovecot_mix"] = imap_load(dovecot.port, "mix", args)
            results["mailfleet_mix"] = imap_load(mf.imap_port, "mix", args)
            row(f"IMAP mix, {args.imap_clients} persistent sessions (commands/s)",
                commands_per_sec(results["dovecot_mix"]),
                commands_per_sec(results["mailfleet_mix"]), "cmd/s")

        if only & {"churn", "churn-plain"}:
            print("== IMAP churn (equal argon2id hashes)", flush=True)
            results["dovecot_churn"] = imap_load(dovecot.port, "churn", args)
            results["mailfleet_churn"] = imap_load(mf.imap_port, "churn", args)
            row("IMAP churn, LOGIN/LOGOUT every 10 ops, equal argon2id hashes (commands/s)",
                commands_per_sec(results["dovecot_churn"]),
                commands_per_sec(results["mailfleet_churn"]), "cmd/s")

        if "pop3" in only:
            print("== POP3", flush=True)
            results["dovecot_pop3"] = pop3_load(dovecot.port + 1, args)
            results["mailfleet_pop3"] = pop3_load(mf.pop3_port, args)
            row(f"POP3, {args.pop3_workers} workers, login+STAT+UIDL+RETR x20+QUIT (RETR/s)",
                rate(results["dovecot_pop3"], "retr_per_sec"),
                rate(results["mailfleet_pop3"], "retr_per_sec"), "RETR/s")

        if "idle" in only:
            # Each idle figure is over a freshly started server's baseline: memory the
            # loads before it touched would otherwise hide in the "before" reading.
            mf.stop()
            mf.start()
            print("== IMAP idle memory (Mailfleet)", flush=True)
            results["mailfleet_idle"] = run_tool(
                [str(RELEASE / "imap-load"), "--scenario", "idle",
                 "--target", f"127.0.0.1:{mf.imap_port}",
                 "--connections", str(args.idle_sessions),
                 "--user", USER, "--users", str(args.users), "--hold-secs", "3",
                 "--server-pid", str(mf.proc.pid)], PASSWORD)
            mf.stop()
            mf.start()
            print("== IMAP idle memory over implicit TLS (Mailfleet)", flush=True)
            results["mailfleet_idle_tls"] = run_tool(
                [str(RELEASE / "imap-load"), "--scenario", "idle",
                 "--target", f"127.0.0.1:{mf.imaps_port}",
                 "--tls-ca", str(tmp / "mailfleet" / "tls" / "self-signed.crt"),
                 "--tls-name", "mx.example.test",
                 "--connections", str(args.idle_sessions),
                 "--user", USER, "--users", str(args.users), "--hold-secs", "3",
                 "--server-pid", str(mf.proc.pid)], PASSWORD)

        if "smtp" in only and not args.skip_postfix:
            print("== SMTP ingest", flush=True)
            results["mailfleet_smtp"] = smtp_load(mf.smtp_port, args)
            for label, transport in (
                ("Postfix → Dovecot LMTP", f"lmtp:inet:127.0.0.1:{dovecot.port + 2}"),
                ("Postfix → Maildir (virtual)", "virtual"),
            ):
                results[label] = postfix_ingest(tmp, transport, names, dovecot, args)
                row(f"SMTP ingest, {args.smtp_messages} × 10 KB, {args.smtp_sessions} sessions, "
                    f"durable in the mailbox: {label} (msg/s)",
                    results[label]["durable_per_sec"],
                    rate(results["mailfleet_smtp"], "msgs_per_sec"), "msg/s")

        if "big" in only:
            # The same mix, 50 sessions on one INBOX: first a small one, then a large one.
            print(f"== seeding {small_user} ({args.messages_per_user}) and {big_user} "
                  f"({args.big_messages})", flush=True)
            t0 = time.time()
            seed_range(mf.imap_port, small_user, range(args.messages_per_user), 10240)
            seed_big(mf.imap_port, big_user, args.big_messages, 10240)
            print(f"    mailfleet, by APPEND: {time.time() - t0:.0f} s; waited "
                  f"{wait_quiet(mf.proc.pid):.0f} s for the index to catch up", flush=True)
            t0 = time.time()
            seed_maildir(dovecot, small_user, range(args.messages_per_user), 10240)
            seed_maildir(dovecot, big_user, range(args.big_messages), 10240)
            print(f"    dovecot, Maildir files: {time.time() - t0:.0f} s", flush=True)
            for user in (small_user, big_user):
                for server, port in (("dovecot", dovecot.port), ("mailfleet", mf.imap_port)):
                    print(f"    first SELECT + FETCH 1:* FLAGS of {user} on {server}: "
                          f"{warm_inbox(port, user):.1f} s", flush=True)
            for label, user in (("small", small_user), ("big", big_user)):
                print(f"== IMAP mix on one {label} INBOX", flush=True)
                for server, port in (("dovecot", dovecot.port), ("mailfleet", mf.imap_port)):
                    results[f"{server}_mix_{label}"] = imap_load_one(port, user, args)
            for label, count in (("small", args.messages_per_user), ("big", args.big_messages)):
                row(f"IMAP mix, {args.imap_clients} sessions on one {count:,}-message INBOX "
                    "(commands/s)", commands_per_sec(results[f"dovecot_mix_{label}"]),
                    commands_per_sec(results[f"mailfleet_mix_{label}"]), "cmd/s")

        if "churn-plain" in only:
            print("== IMAP churn, Dovecot with plaintext passwords", flush=True)
            dovecot.stop()
            dovecot = start_dovecot({u: "{PLAIN}" + PASSWORD for u in names})
            seed_imap(dovecot.port, names, args.messages_per_user, 10240)
            results["dovecot_churn_plain"] = imap_load(dovecot.port, "churn", args)
            row("IMAP churn, Dovecot with plaintext passwords (commands/s)",
                commands_per_sec(results["dovecot_churn_plain"]),
                commands_per_sec(results["mailfleet_churn"]), "cmd/s")
    finally:
        dovecot.stop()
        mf.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    idle = results.get("mailfleet_idle", {})
    print()
    print(f"Run of {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
          f"{os.cpu_count()} cores, release build; command: "
          + " ".join(["python3", "scripts/bench_compare.py", *sys.argv[1:]]))
    print()
    print("| load | Dovecot / Postfix | Mailfleet | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if idle:
        print(f"| IMAP IDLE, {idle['idling']} plain sessions | a process per session | "
              f"{idle['rss_per_connection_kib']:.1f} KiB per extra session | |")
    idle_tls = results.get("mailfleet_idle_tls", {})
    if idle_tls:
        print(f"| IMAP IDLE, {idle_tls['idling']} implicit-TLS sessions | a process per session | "
              f"{idle_tls['rss_per_connection_kib']:.1f} KiB per extra session | |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def postfix_ingest(tmp: Path, transport: str, names: list[str], dovecot, args) -> dict:
    """Sends the SMTP load into a fresh Postfix and waits until every accepted message is in
    a mailbox; the rate is accepted messages over that whole time."""
    root = Path(tempfile.mkdtemp(prefix="postfix-", dir=tmp))
    root.chmod(0o755)
    port = free_port()
    pf = Postfix(root, port, transport, names)
    try:
        if transport == "virtual":
            box = root / "vmail"
        else:
            box = dovecot.root / "home" / USER.replace("{n}", "0")
        before = maildir_count(box) if box.exists() else 0
        start = time.monotonic()
        res = smtp_load(port, args)
        accepted = int(res["ok"])
        deadline = time.monotonic() + 600
        while (maildir_count(box) if box.exists() else 0) - before < accepted:
            if time.monotonic() > deadline:
                raise RuntimeError(f"postfix did not deliver everything\n{pf.maillog()}")
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        res["durable_per_sec"] = accepted / elapsed
        res["durable_secs"] = elapsed
        print(f"    durable in the mailbox after {elapsed:.2f} s: "
              f"{res['durable_per_sec']:.0f} msg/s", flush=True)
        return res
    finally:
        pf.stop()


if __name__ == "__main__":
    main()
