"""ACL (RFC 4314), the other users' namespace (RFC 2342) and DELETE of a parent
(RFC 3501 section 6.3.4), with Python's imaplib against a running Mailfleet: alice owns,
bob is granted and refused."""

import imaplib
import select
import socket
import ssl
import time

import pytest

from conftest import PASSWORD

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE

# imaplib has GETACL, SETACL, DELETEACL and MYRIGHTS but not LISTRIGHTS.
imaplib.Commands.setdefault("LISTRIGHTS", ("AUTH", "SELECTED"))
# Nor METADATA's commands (RFC 5464).
imaplib.Commands.setdefault("GETMETADATA", ("AUTH", "SELECTED"))
imaplib.Commands.setdefault("SETMETADATA", ("AUTH", "SELECTED"))

ALICE = "alice@example.test"
BOB = "bob@example.test"
SHARED = f'"Other Users/{ALICE}/Team"'
MSG = (
    b"From: a@example.test\r\nTo: b@example.test\r\nSubject: shared hello\r\n"
    b"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\nHello team.\r\n"
)


def login(server, user):
    c = imaplib.IMAP4("127.0.0.1", server.imap_port, timeout=30)
    c.starttls(ssl_context=CTX)
    c.login(user, PASSWORD)
    return c


def code_of(resp):
    """The response code of a tagged answer's text, e.g. b'NOPERM'."""
    text = resp[1][0] if resp[1] else b""
    if isinstance(text, tuple):
        text = text[0]
    if text.startswith(b"["):
        return text[1:text.index(b"]")].split(b" ")[0]
    return b""


def test_capabilities_and_namespace_advertise_acl_and_other_users(server):
    c = login(server, ALICE)
    typ, data = c.capability()
    caps = data[0].split()
    assert b"ACL" in caps and b"RIGHTS=texk" in caps
    typ, data = c.namespace()
    assert typ == "OK"
    assert b'(("Other Users/" "/"))' in data[0]
    c.logout()


def test_owner_grants_grantee_lists_selects_and_is_refused(server):
    alice = login(server, ALICE)
    assert alice.create("Team")[0] == "OK"
    assert alice.create("Private")[0] == "OK"
    assert alice.append("Team", r"(\Seen)", None, MSG)[0] == "OK"

    # Owner's view: every right, listed with the obsolete c and d too.
    typ, data = alice.myrights("Team")
    assert typ == "OK" and data[0] == b"Team lrwstipekxacd"
    typ, data = alice.getacl("Team")
    assert data[0] == f"Team {ALICE} lrwstipekxacd".encode()

    bob = login(server, BOB)
    # Before the grant: nothing leaks (RFC 4314 section 6).
    typ, data = bob.list('""', "*")
    assert not any(b"Other Users" in d for d in data)
    typ, data = bob.select(SHARED)
    assert typ == "NO" and code_of((typ, data)) == b"NONEXISTENT"

    # Read-only sharing: l and r.
    assert alice.setacl("Team", BOB, "lr")[0] == "OK"
    typ, data = alice.getacl("Team")
    assert data[0] == f"Team {BOB} lr {ALICE} lrwstipekxacd".encode()
    typ, data = bob.list('""', "*")
    names = b"\n".join(data)
    assert f'"Other Users/{ALICE}/Team"'.encode() in names
    assert b'(\\Noselect \\HasChildren) "/" "Other Users"' in names
    assert b"Private" not in names
    typ, data = bob.myrights(SHARED)
    assert data[0] == f'"Other Users/{ALICE}/Team" lr'.encode()
    # GETACL needs the a right; bob has l, so he is told NOPERM.
    typ, data = bob._simple_command("GETACL", SHARED)
    assert typ == "NO" and code_of((typ, data)) == b"NOPERM"

    # Without any right that changes the mailbox, SELECT opens it READ-ONLY (imaplib
    # raises for that, after entering the selected state).
    with pytest.raises(imaplib.IMAP4.readonly):
        bob.select(SHARED)
    bob.untagged_responses.pop("READ-ONLY", None)
    bob.is_readonly = True
    typ, data = bob.fetch("1", "(FLAGS BODY[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK" and b"shared hello" in data[0][1]
    typ, data = bob.search(None, "SUBJECT", "shared")
    assert data[0] == b"1"
    # STORE without s/w/t, EXPUNGE without e, APPEND without i: refused.
    typ, data = bob.store("1", "-FLAGS", r"(\Seen)")
    assert typ == "NO"
    typ, data = bob.append(SHARED, None, None, MSG)
    assert typ == "NO" and code_of((typ, data)) == b"NOPERM"
    # The private mailbox stays invisible, whatever bob tries.
    for cmd in (lambda: bob.select(f'"Other Users/{ALICE}/Private"'),
                lambda: bob.status(f'"Other Users/{ALICE}/Private"', "(MESSAGES)"),
                lambda: bob.myrights(f'"Other Users/{ALICE}/Private"')):
        try:
            typ, data = cmd()
        except imaplib.IMAP4.error as e:
            assert "NONEXISTENT" in str(e)
            continue
        assert typ == "NO" and code_of((typ, data)) == b"NONEXISTENT"
    # (The failed SELECT closed the shared mailbox, RFC 9051 section 6.3.2.)

    # Write sharing: add i, s, t, e, w.
    assert alice.setacl("Team", BOB, "+iwste")[0] == "OK"
    typ, data = bob.myrights(SHARED)
    assert data[0] == f'"Other Users/{ALICE}/Team" lrwstied'.encode()
    typ, data = bob.select(SHARED)
    assert typ == "OK"
    assert bob.store("1", "+FLAGS", r"(\Flagged)")[0] == "OK"
    assert bob.append(SHARED, r"(\Seen)", None, MSG)[0] == "OK"
    typ, data = bob.status(SHARED, "(MESSAGES)")
    assert b"MESSAGES 2" in data[0]
    # The owner sees the grantee's changes; the message counts against alice's quota.
    alice.select("Team")
    typ, data = alice.fetch("1:*", "(FLAGS)")
    assert b"\\Flagged" in data[0]
    assert len([d for d in data if d]) == 2
    # COPY from the shared mailbox into bob's own, and EXPUNGE there.
    assert bob.copy("2", "INBOX")[0] == "OK"
    assert bob.store("2", "+FLAGS", r"(\Deleted)")[0] == "OK"
    assert bob.expunge()[0] == "OK"
    typ, data = bob.status("INBOX", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0]
    bob.close()

    # Revoking: the mailbox disappears from bob's view.
    assert alice.deleteacl("Team", BOB)[0] == "OK"
    typ, data = bob.list('""', "*")
    assert not any(b"Other Users" in d for d in data)
    typ, data = bob.select(SHARED)
    assert typ == "NO" and code_of((typ, data)) == b"NONEXISTENT"
    alice.logout()
    bob.logout()


def test_setacl_refuses_unknown_rights_identifiers_and_owner_changes(server):
    alice = login(server, ALICE)
    alice.create("Box")
    # An unknown right is BAD (RFC 4314 section 3.1); imaplib raises for BAD.
    with pytest.raises(imaplib.IMAP4.error, match="Unknown right"):
        alice._simple_command("SETACL", "Box", BOB, "lrz")
    typ, data = alice.setacl("Box", "nobody@example.test", "lr")
    assert typ == "NO"
    typ, data = alice.setacl("Box", ALICE, "lr")
    assert typ == "NO"
    typ, data = alice.setacl("Box", "-" + BOB, "lr")
    assert typ == "NO"
    # Obsolete c and d map to k and x, t, e.
    assert alice.setacl("Box", "anyone", "lcd")[0] == "OK"
    typ, data = alice.getacl("Box")
    assert b"anyone ltekxcd" in data[0]
    typ, data = alice._simple_command("LISTRIGHTS", "Box", BOB)
    typ, data = alice._untagged_response(typ, data, "LISTRIGHTS")
    assert data[0] == f'Box {BOB} "" l r w s t p i e k x a c d'.encode()
    typ, data = alice._simple_command("LISTRIGHTS", "Box", ALICE)
    typ, data = alice._untagged_response(typ, data, "LISTRIGHTS")
    assert data[0] == f"Box {ALICE} lrwstipekxa".encode()
    # Nonexistent mailbox.
    typ, data = alice.getacl("Nope")
    assert typ == "NO"
    alice.logout()


def test_grantee_with_k_and_x_creates_and_deletes_under_shared_mailbox(server):
    alice = login(server, ALICE)
    alice.create("Projects")
    alice.setacl("Projects", BOB, "lrk")
    bob = login(server, BOB)
    typ, data = bob.create(f'"Other Users/{ALICE}/Projects/New"')
    assert typ == "OK"
    typ, data = alice.list('""', "Projects/*")
    assert b"Projects/New" in data[0]
    # Deleting needs x on the mailbox itself.
    alice.setacl("Projects/New", BOB, "lr")
    typ, data = bob.delete(f'"Other Users/{ALICE}/Projects/New"')
    assert typ == "NO" and code_of((typ, data)) == b"NOPERM"
    alice.setacl("Projects/New", BOB, "lrx")
    assert bob.delete(f'"Other Users/{ALICE}/Projects/New"')[0] == "OK"
    # Directly under the owner there is nothing to hold k.
    typ, data = bob.create(f'"Other Users/{ALICE}/Top"')
    assert typ == "NO"
    alice.logout()
    bob.logout()


def test_idle_on_a_shared_mailbox_sees_the_owners_changes(server):
    alice = login(server, ALICE)
    alice.create("Live")
    alice.setacl("Live", BOB, "lr")
    # Raw socket for IDLE (imaplib has no IDLE before Python 3.14).
    raw = socket.create_connection(("127.0.0.1", server.imap_port), timeout=30)
    raw.recv(4096)
    raw.sendall(b"s STARTTLS\r\n")
    buf = b""
    while b"s OK" not in buf:
        buf += raw.recv(4096)
    tls = CTX.wrap_socket(raw, server_hostname="localhost")

    def cmd(line, tag):
        tls.sendall(line)
        out = b""
        while f"{tag} ".encode() not in out:
            out += tls.recv(65536)
        return out

    cmd(f"a LOGIN {BOB} {PASSWORD}\r\n".encode(), "a")
    assert b"b OK" in cmd(f'b SELECT "Other Users/{ALICE}/Live"\r\n'.encode(), "b")
    tls.sendall(b"c IDLE\r\n")
    got = b""
    while b"+ " not in got:
        got += tls.recv(4096)
    alice.append("Live", None, None, MSG)
    deadline = time.time() + 10
    while b"EXISTS" not in got and time.time() < deadline:
        r, _, _ = select.select([tls], [], [], 1)
        if r:
            got += tls.recv(4096)
    assert b"* 1 EXISTS" in got
    tls.sendall(b"DONE\r\n")
    tls.close()
    alice.logout()


def test_delete_of_a_parent_keeps_it_as_noselect(server):
    c = login(server, ALICE)
    assert c.create("Parent/Child")[0] == "OK"
    c.append("Parent", None, None, MSG)
    assert c.delete("Parent")[0] == "OK"
    typ, data = c.list('""', "Parent*")
    assert b'(\\Noselect \\HasChildren) "/" Parent' in data[0]
    typ, data = c.select("Parent")
    assert typ == "NO"
    # A placeholder with inferiors cannot be deleted (RFC 3501 section 6.3.4).
    typ, data = c.delete("Parent")
    assert typ == "NO"
    # CREATE makes it a mailbox again, empty.
    assert c.create("Parent")[0] == "OK"
    typ, data = c.select("Parent")
    assert typ == "OK" and data[0] == b"0"
    c.close()
    # Without inferiors, DELETE removes the name.
    assert c.delete("Parent/Child")[0] == "OK"
    assert c.delete("Parent")[0] == "OK"
    typ, data = c.list('""', "Parent*")
    assert data == [None]
    c.logout()


def metadata(c, *args):
    """GETMETADATA; returns (status, [untagged METADATA data], tagged text)."""
    # imaplib files `[METADATA ...]` response codes under the same key: start clean.
    c.untagged_responses.pop("METADATA", None)
    typ, data = c._simple_command("GETMETADATA", *args)
    _, md = c._untagged_response(typ, data, "METADATA")
    return typ, [m for m in md if m is not None], data


def test_metadata_private_shared_server_depth_maxsize_and_limits(server):
    alice = login(server, ALICE)
    typ, data = alice.capability()
    assert b"METADATA" in data[0].split()
    alice.create("Notes")
    typ, data = alice._simple_command(
        "SETMETADATA", "Notes", '(/private/comment "mine" /shared/comment "ours")'
    )
    assert typ == "OK"
    typ, md, _ = metadata(alice, "Notes", "(/private/comment /shared/comment)")
    assert typ == "OK"
    joined = b" ".join(x if isinstance(x, bytes) else b"".join(x) for x in md)
    assert b'/private/comment "mine"' in joined and b'/shared/comment "ours"' in joined
    # A missing entry is NIL.
    typ, md, _ = metadata(alice, "Notes", "/private/missing")
    assert md == [b"Notes (/private/missing NIL)"]
    # DEPTH and MAXSIZE.
    alice._simple_command(
        "SETMETADATA", "Notes", '(/private/vendor/a "1" /private/vendor/a/b "22" /private/vendor/c "333")'
    )
    typ, md, _ = metadata(alice, "(DEPTH 1)", "Notes", "/private/vendor")
    assert b"/private/vendor/a " in md[0] and b"/private/vendor/c" in md[0]
    assert b"/private/vendor/a/b" not in md[0]
    typ, md, _ = metadata(alice, "(DEPTH infinity)", "Notes", "/private/vendor")
    assert b"/private/vendor/a/b" in md[0]
    typ, md, data = metadata(alice, "(MAXSIZE 2 DEPTH infinity)", "Notes", "/private/vendor")
    assert b"/private/vendor/c" not in md[0]
    assert b"[METADATA LONGENTRIES 3]" in data[0]
    # Removing with NIL.
    alice._simple_command("SETMETADATA", "Notes", "(/private/vendor/c NIL)")
    typ, md, _ = metadata(alice, "Notes", "/private/vendor/c")
    assert md == [b"Notes (/private/vendor/c NIL)"]
    # Server entries: /private is the user's, /shared/admin is the server's.
    assert alice._simple_command("SETMETADATA", '""', '(/private/comment "srv")')[0] == "OK"
    typ, md, _ = metadata(alice, '""', "(/private/comment /shared/admin)")
    assert b'/private/comment "srv"' in md[0] and b"mailto:postmaster@" in md[0]
    typ, data = alice._simple_command("SETMETADATA", '""', '(/shared/comment "x")')
    assert typ == "NO"
    # Limits: value size (MAXSIZE code) and entry count (TOOMANY).
    big = "x" * (32 * 1024 + 1)
    typ, data = alice._simple_command("SETMETADATA", "Notes", f"(/private/big {{{len(big)}+}}\r\n{big})")
    assert typ == "NO" and b"[METADATA MAXSIZE 32768]" in data[0]
    entries = " ".join(f'/private/n{i} "v"' for i in range(101))
    typ, data = alice._simple_command("SETMETADATA", "Notes", f"({entries})")
    assert typ == "NO" and b"[METADATA TOOMANY]" in data[0]
    # Invalid names are BAD (imaplib raises).
    with pytest.raises(imaplib.IMAP4.error):
        alice._simple_command("SETMETADATA", "Notes", '(/other/x "1")')
    # Metadata moves with RENAME and goes with DELETE.
    assert alice.rename("Notes", "Renamed")[0] == "OK"
    typ, md, _ = metadata(alice, "Renamed", "/shared/comment")
    assert md == [b'Renamed (/shared/comment "ours")']
    assert alice.delete("Renamed")[0] == "OK"
    alice.create("Renamed")
    typ, md, _ = metadata(alice, "Renamed", "/shared/comment")
    assert md == [b"Renamed (/shared/comment NIL)"]
    typ, md, _ = metadata(alice, "Nonexistent", "/shared/comment")
    assert typ == "NO"
    alice.logout()


def test_metadata_on_a_shared_mailbox_follows_the_rights(server):
    alice = login(server, ALICE)
    alice.create("Board")
    alice._simple_command("SETMETADATA", "Board", '(/shared/comment "team board")')
    alice.setacl("Board", BOB, "lr")
    bob = login(server, BOB)
    name = f'"Other Users/{ALICE}/Board"'
    typ, md, _ = metadata(bob, name, "/shared/comment")
    assert typ == "OK" and b'"team board"' in md[0]
    # Writing /shared needs w; /private entries are bob's own.
    typ, data = bob._simple_command("SETMETADATA", name, '(/shared/comment "bob")')
    assert typ == "NO" and code_of((typ, data)) == b"NOPERM"
    assert bob._simple_command("SETMETADATA", name, '(/private/comment "bob only")')[0] == "OK"
    typ, md, _ = metadata(alice, "Board", "/private/comment")
    assert md == [b"Board (/private/comment NIL)"]
    typ, md, _ = metadata(bob, name, "/private/comment")
    assert b'"bob only"' in md[0]
    alice.logout()
    bob.logout()
