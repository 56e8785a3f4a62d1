"""ManageSieve (RFC 5804) against a running Mailfleet, with a real client: sievelib's
`Client` (STARTTLS, then AUTHENTICATE PLAIN, then the script commands)."""

import socket
import ssl

import pytest
import sievelib.managesieve as managesieve
from sievelib.managesieve import Client

from conftest import PASSWORD

ALICE = "alice@example.test"

VALID = (
    'require ["fileinto", "envelope"];\n'
    'if header :contains "subject" "[list]" {\n'
    '  fileinto "Lists";\n'
    "}\n"
)
# Line 3 uses an action that does not exist.
INVALID = 'require "fileinto";\nkeep;\nfrobnicate "Junk";\n'


_DEFAULT_CONTEXT = ssl.create_default_context


def insecure_context(*_args, **_kwargs):
    ctx = _DEFAULT_CONTEXT()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


@pytest.fixture(autouse=True)
def self_signed_tls(monkeypatch):
    # The test server's certificate is self-signed; sievelib builds its own TLS context.
    monkeypatch.setattr(managesieve.ssllib, "create_default_context", insecure_context)


def connect(server, password=PASSWORD, starttls=True):
    c = Client("127.0.0.1", server.managesieve_port)
    ok = c.connect(ALICE, password, starttls=starttls, authmech="PLAIN")
    return c, ok


def test_script_lifecycle_with_sievelib(server):
    c, ok = connect(server)
    assert ok, c.errmsg
    assert c.get_implementation() == "Mailfleet"
    caps = c.get_sieve_capabilities()
    assert "fileinto" in caps and "vacation" in caps, caps

    assert c.putscript("main", VALID), c.errmsg
    # A script that does not compile is refused with the line of the error.
    assert not c.putscript("broken", INVALID)
    assert c.errmsg.startswith(b"line 3:"), c.errmsg
    assert not c.checkscript(INVALID)
    assert c.errmsg.startswith(b"line 3:"), c.errmsg
    assert c.checkscript(VALID), c.errmsg
    assert c.listscripts() == (None, ["main"])

    assert c.setactive("main"), c.errmsg
    assert c.listscripts() == ("main", [])
    # sievelib joins the lines it read with "\n".
    assert c.getscript("main") == VALID.rstrip("\n")

    assert c.renamescript("main", "filters"), c.errmsg
    assert c.listscripts() == ("filters", [])
    assert c.getscript("main") is None
    assert c.errcode == b"NONEXISTENT", c.errcode

    # The active script cannot be deleted until it is deactivated.
    assert not c.deletescript("filters")
    assert c.errcode == b"ACTIVE", c.errcode
    assert c.setactive(""), c.errmsg
    assert c.listscripts() == (None, ["filters"])
    assert c.deletescript("filters"), c.errmsg
    assert c.listscripts() == (None, [])

    assert c.havespace("next", 1000), c.errmsg
    assert not c.havespace("next", 64 * 1024 + 1)
    assert c.errcode == b"QUOTA/MAXSIZE", c.errcode
    too_big = "# " + "x" * (70 * 1024) + "\nkeep;\n"
    assert not c.putscript("huge", too_big)
    assert c.errcode == b"QUOTA/MAXSIZE", c.errcode
    # The session goes on after the refused literal.
    assert c.listscripts() == (None, [])
    c.logout()


def test_scripts_belong_to_their_account(server):
    c, ok = connect(server)
    assert ok, c.errmsg
    assert c.putscript("alice-only", "keep;\n"), c.errmsg
    c.logout()
    bob = Client("127.0.0.1", server.managesieve_port)
    assert bob.connect("bob@example.test", PASSWORD, starttls=True, authmech="PLAIN")
    assert bob.listscripts() == (None, [])
    bob.logout()


def test_sasl_login_mechanism(server):
    c = Client("127.0.0.1", server.managesieve_port)
    assert c.connect(ALICE, PASSWORD, starttls=True, authmech="LOGIN"), c.errmsg
    # The capabilities sievelib read again after STARTTLS offer both mechanisms.
    assert sorted(c.get_sasl_mechanisms()) == ["LOGIN", "PLAIN"]
    # After login, no mechanism and no STARTTLS.
    caps = c.capability().decode()
    assert '"SASL" ""' in caps and '"STARTTLS"' not in caps and f'"OWNER" "{ALICE}"' in caps, caps
    assert c.listscripts() == (None, [])
    c.logout()


def test_bad_password_is_refused(server):
    c, ok = connect(server, password="wrong-password")
    assert not ok
    assert c.errmsg == b"Authentication failed", c.errmsg
    assert not c.authenticated


def test_authentication_needs_tls(server):
    # Without STARTTLS the server offers no mechanism, and refuses one anyway.
    with pytest.warns(UserWarning, match="unencrypted"):
        c, ok = connect(server, starttls=False)
    assert not ok
    with socket.create_connection(("127.0.0.1", server.managesieve_port), timeout=10) as s:
        f = s.makefile("rb")
        greeting = []
        while not (line := f.readline()).startswith(b"OK"):
            greeting.append(line)
        assert b'"SASL" ""\r\n' in greeting and b'"STARTTLS"\r\n' in greeting, greeting
        s.sendall(b'AUTHENTICATE "PLAIN" "AGFsaWNlQGV4YW1wbGUudGVzdABwdw=="\r\n')
        assert f.readline().startswith(b"NO (ENCRYPT-NEEDED)")
        s.sendall(b"LOGOUT\r\n")
        assert f.readline().startswith(b"OK")
