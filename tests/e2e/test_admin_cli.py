"""The admin CLI and configuration errors, as an administrator sees them."""

import subprocess

from conftest import PASSWORD, Server, mailfleet_bin


def test_cli_lifecycle_and_clear_errors(tmp_path):
    s = Server(tmp_path / "d")
    assert "added" in s.cli("domain", "add", "Example.ORG").stdout
    r = s.cli("domain", "add", "example.org", check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    r = s.cli("user", "add", "x@unknown.org", "--password", PASSWORD, check=False)
    assert r.returncode == 1 and "unknown domain unknown.org" in r.stderr
    r = s.cli("user", "add", "carol@example.org", "--password", "password1", check=False)
    assert r.returncode == 1 and "too" in r.stderr and "password" in r.stderr
    s.cli("user", "add", "carol@example.org", "--password-stdin", "--quota", "10M", stdin=PASSWORD)
    r = s.cli("user", "add", "Carol@example.org", "--password", PASSWORD, check=False)
    assert r.returncode == 1 and "already exists" in r.stderr
    users = s.cli_json("user", "list")
    assert users == [{"address": "carol@example.org", "quota_bytes": 10 << 20, "used_bytes": 0, "messages": 0,
                      "suspended": False, "managed_by": None}]
    boxes = {b["name"]: b["special_use"] for b in s.cli_json("mailbox", "list", "carol@example.org")}
    assert boxes == {"INBOX": "inbox", "Sent": "sent", "Drafts": "drafts", "Junk": "junk", "Trash": "trash", "Archive": "archive"}
    s.cli("alias", "add", "info@example.org", "carol@example.org")
    s.cli("alias", "add", "@example.org", "carol@example.org")
    r = s.cli("alias", "add", "fwd@example.org", "someone@remote.test", check=False)
    assert r.returncode == 1 and "not hosted" in r.stderr
    assert len(s.cli_json("alias", "list")) == 2
    r = s.cli("domain", "remove", "example.org", check=False)
    assert r.returncode == 1 and "still has" in r.stderr
    s.cli("user", "quota", "carol@example.org", "1G")
    s.cli("user", "passwd", "carol@example.org", "--password-stdin", stdin="Another-L0ng-Passphrase")
    s.cli("alias", "remove", "info@example.org")
    s.cli("alias", "remove", "@example.org")
    s.cli("user", "remove", "carol@example.org")
    s.cli("domain", "remove", "example.org")
    assert s.cli_json("domain", "list") == []


def run_serve(env_extra, tmp_path, config_text=None):
    import os

    env = dict(os.environ)
    env["MAILFLEET_SERVER__DATA_DIR"] = str(tmp_path / "d")
    env.update(env_extra)
    args = [mailfleet_bin()]
    if config_text is not None:
        cfg = tmp_path / "mailfleet.toml"
        cfg.write_text(config_text)
        args += ["--config", str(cfg)]
    args.append("serve")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=30)


def test_bad_config_fails_at_start_naming_the_key(tmp_path):
    r = run_serve({"MAILFLEET_SMTP__MAX_RECIPIENTS": "many"}, tmp_path)
    assert r.returncode == 1 and "smtp.max_recipients" in r.stderr, r.stderr
    r = run_serve({}, tmp_path, "[smtp]\nmax_line_lenght = 5000\n")
    assert r.returncode == 1 and "max_line_lenght" in r.stderr, r.stderr
    r = run_serve({}, tmp_path, "[tls]\ncert = \"/nonexistent.pem\"\n")
    assert r.returncode == 1 and "tls.key" in r.stderr, r.stderr
    r = run_serve({}, tmp_path, "[smtp\n")
    assert r.returncode == 1 and "not valid TOML" in r.stderr, r.stderr
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        r = run_serve({"MAILFLEET_SMTP__LISTEN": f'["127.0.0.1:{port}"]'}, tmp_path)
    assert r.returncode == 1 and "smtp.listen" in r.stderr, r.stderr
