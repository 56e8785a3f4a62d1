"""mbsync (Debian isync) syncs a 500-message mailbox down, changes up, then nothing."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import PASSWORD

pytestmark = pytest.mark.skipif(shutil.which("mbsync") is None, reason="isync not installed (scripts/test.sh installs it)")


def seed(server, user, n):
    """Puts n messages in the INBOX over SMTP, 50 per connection."""
    import smtplib

    for start in range(0, n, 50):
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=60) as s:
            for i in range(start, min(n, start + 50)):
                body = (
                    f"From: bulk@remote.test\r\nTo: {user}\r\nSubject: bulk {i}\r\n"
                    f"Message-ID: <bulk-{i}@remote.test>\r\n\r\nmessage number {i}\r\n"
                )
                s.sendmail("bulk@remote.test", [user], body.encode())


def mbsync(cfg, home, debug=False):
    r = subprocess.run(
        ["mbsync", "-c", str(cfg), "-Dn" if debug else "-V", "-a"],
        capture_output=True, text=True, timeout=300, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout + r.stderr


def transfers(out):
    """IMAP commands in mbsync's protocol trace that move data or change state."""
    cmds = re.findall(r"^>>> \d+ (.*)$", out, re.M)
    assert any(c.upper().startswith(("SELECT", "EXAMINE")) for c in cmds), cmds
    return [c for c in cmds if re.search(r"APPEND|STORE|EXPUNGE|BODY\.PEEK\[\]|BODY\[\]|RFC822", c, re.I)]


def test_mbsync_round_trip(server, tmp_path):
    user = "bob@example.test"
    seed(server, user, 500)
    maildir = tmp_path / "Mail"
    maildir.mkdir()
    cert = server.data_dir / "tls" / "self-signed.crt"
    cfg = tmp_path / "mbsyncrc"
    cfg.write_text(f"""
IMAPAccount mf
Host localhost
Port {server.imaps_port}
User {user}
Pass {PASSWORD}
SSLType IMAPS
CertificateFile {cert}
AuthMechs LOGIN PLAIN

IMAPStore mf-remote
Account mf

MaildirStore mf-local
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel mf
Far :mf-remote:
Near :mf-local:
Patterns INBOX
Create Both
Expunge Both
SyncState *
Sync All
""")
    out = mbsync(cfg, tmp_path)
    files = list((maildir / "INBOX" / "cur").iterdir()) + list((maildir / "INBOX" / "new").iterdir())
    assert len(files) == 500, out

    # Flag one message and delete another locally, then sync up.
    files.sort()
    flagged = files[0]
    flagged.rename(flagged.parent.parent / "cur" / (flagged.name.split(":2,")[0] + ":2,FS"))
    files[1].unlink()
    out = mbsync(cfg, tmp_path)

    msgs = server.messages(user)
    assert len(msgs) == 499, "the deletion reached the server"
    assert sum(1 for m in msgs if "\\Flagged" in m["flags"]) == 1, "the flag reached the server"

    # Nothing changed since: a second run transfers nothing, in either direction.
    before_local = sorted(p.name for p in (maildir / "INBOX").rglob("*") if p.is_file())
    before_remote = server.messages(user)
    out = mbsync(cfg, tmp_path, debug=True)
    assert ">>> " in out, "the protocol trace is visible"
    assert transfers(out) == [], transfers(out)
    assert sorted(p.name for p in (maildir / "INBOX").rglob("*") if p.is_file()) == before_local
    assert server.messages(user) == before_remote
