"""Public folders: the `Shared/` namespace (RFC 2342) with ACLs (RFC 4314), set up with
`mailfleet public-folder ...` and used by alice and bob with Python's imaplib against a
running Mailfleet."""

import imaplib
import ssl

from conftest import PASSWORD

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE

ALICE = "alice@example.test"
BOB = "bob@example.test"
MSG = b"From: a@example.test\r\nSubject: public hello\r\n\r\nHello all.\r\n"


def login(server, user):
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    c.starttls(ssl_context=CTX)
    c.login(user, PASSWORD)
    return c


def test_admin_tool_creates_folders_and_acls(server):
    server.cli("public-folder", "create", "example.test", "News")
    server.cli("public-folder", "create", "example.test", "Board")
    server.cli("public-folder", "acl", "example.test", "News", "authenticated", "lrsi")
    server.cli("public-folder", "acl", "example.test", "Board", BOB, "lra")
    folders = {f["name"]: f["acl"] for f in server.cli_json("public-folder", "list", "example.test")}
    assert folders["News"] == {"authenticated": "lrsi"}, folders
    assert folders["Board"] == {BOB: "lra"}, folders
    bad = server.cli("public-folder", "acl", "example.test", "News", "anyone", "lz", check=False)
    assert bad.returncode != 0 and "no right" in bad.stderr
    bad = server.cli("public-folder", "acl", "example.test", "News", "nobody@example.test", "l", check=False)
    assert bad.returncode != 0
    # Nobody logs in as the public account.
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    c.starttls(ssl_context=CTX)
    try:
        c.login("public@example.test", PASSWORD)
        raise AssertionError("the public account logged in")
    except imaplib.IMAP4.error:
        pass
    c.logout()


def test_two_users_share_a_public_folder(server):
    server.cli("public-folder", "create", "example.test", "News")
    server.cli("public-folder", "create", "example.test", "Board")
    server.cli("public-folder", "acl", "example.test", "News", "authenticated", "lrswi")
    server.cli("public-folder", "acl", "example.test", "Board", BOB, "lra")
    a = login(server, ALICE)
    typ, data = a._simple_command("NAMESPACE")
    assert typ == "OK"
    typ, ns = a._untagged_response(typ, data, "NAMESPACE")
    assert ns == [b'(("" "/")) (("Other Users/" "/")) (("Shared/" "/"))'], ns
    typ, data = a.list('""', "Shared*")
    assert b'(\\HasNoChildren) "/" Shared/News' in data, data
    assert not any(b"Board" in d for d in data), data
    typ, data = a.append("Shared/News", "(\\Seen)", None, MSG)
    assert typ == "OK", data
    typ, data = a.status("Shared/News", "(MESSAGES)")
    assert data == [b"Shared/News (MESSAGES 1)"], data
    typ, data = a.myrights("Shared/News")
    assert data == [b"Shared/News lrwsi"], data
    typ, data = a.append("Shared/Board", None, None, MSG)
    # Answered as for a mailbox that does not exist (RFC 4314 section 6).
    assert typ == "NO" and b"TRYCREATE" in data[0], data

    b = login(server, BOB)
    typ, data = b.select("Shared/News")
    assert typ == "OK" and data == [b"1"], data
    typ, data = b.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and b"public hello" in data[0][1], data
    # COPY out of the public folder into his own INBOX.
    typ, data = b.copy("1", "INBOX")
    assert typ == "OK", data
    # Bob administers Board (`a`) and shares it with everybody.
    typ, data = b.getacl("Shared/Board")
    assert typ == "OK" and b"bob@example.test lra" in data[0], data
    typ, data = b.setacl("Shared/Board", "anyone", "lr")
    assert typ == "OK", data
    typ, data = a.list('""', "Shared/%")
    assert b'(\\HasNoChildren) "/" Shared/Board' in data, data
    typ, data = a.setacl("Shared/Board", "anyone", "lrwi")
    assert typ == "NO", data
    a.logout()
    b.logout()
