"""Differential test: Mailfleet's ENVELOPE, BODYSTRUCTURE and BODY[section] against Dovecot's.

Every message in ``tests/corpus/`` is APPENDed to a throw-away Dovecot (started here from a
minimal configuration in a temporary directory, listening on 127.0.0.1 only) and fetched back
with ``FETCH (ENVELOPE BODYSTRUCTURE BODY)``, then with ``BODY.PEEK[...]`` for every section
(the message's HEADER, TEXT, HEADER.FIELDS[.NOT]; each part and its MIME header; HEADER, TEXT
and HEADER.FIELDS of each message/rfc822 part). The answers are compared with what
``mime-dump`` (and ``mime-dump --sections``) prints for the same file; sections compare as bytes.

Both answers are parsed into values before comparing, so only insignificant differences are
normalised away (see ``normalise_body``):

* quoted string versus literal for the same bytes (both are an IMAP ``string``);
* the case of the media *type* of text parts and of ``message/rfc822`` parts: imap-codec writes
  ``"TEXT"`` and ``"MESSAGE" "RFC822"`` as fixed words, Dovecot copies the header's case, and
  media type names are case-insensitive (RFC 2045 section 5.1).

Anything else that differs must be fixed in Mailfleet or listed in ``ALLOWED`` with a reason,
and documented in ``docs/imap-structure-differences.md``.

Nothing is installed here: without ``/usr/sbin/dovecot`` (or ``$MAILFLEET_DOVECOT``) the test is
skipped (``scripts/test.sh`` installs the Debian package ``dovecot-imapd``). ``mime-dump`` is built
with cargo into ``$CARGO_TARGET_DIR`` (default ``~/.cache/mailfleet/target``, as scripts/test.sh
uses) unless ``$MAILFLEET_MIME_DUMP`` names the binary.

Run: ``python3 -m pytest -q services/mime/tests/dovecot_diff.py``
"""

from __future__ import annotations

import grp
import imaplib
import os
import pathlib
import pwd
import re
import shutil
import socket
import subprocess
import sys

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[3] / "tests" / "e2e"))
from dovecot_server import DovecotProcess  # noqa: E402

# MAILFLEET_DOVECOT points at another Dovecot binary (a local build, another distribution).
DOVECOT = os.environ.get("MAILFLEET_DOVECOT", "/usr/sbin/dovecot")
HERE = pathlib.Path(__file__).resolve().parent
CORPUS = HERE / "corpus"
CRATE = HERE.parent
WORKSPACE = CRATE.parent.parent
USER = "diff"
PASSWORD = "diff-password"
# One FETCH response line holds a whole BODYSTRUCTURE; 65-too-many-parts needs more than
# imaplib's default of 1 MB.
imaplib._MAXLINE = 50_000_000

# Corpus file name -> (the fetch items that differ, one-line reason). Each entry is explained
# in docs/imap-structure-differences.md. An entry that stops differing fails the test, so the
# list never hides a fixed difference.
ALLOWED: dict[str, tuple[tuple[str, ...], str]] = {
    "32-header-only.eml": (
        ("BODY[HEADER.FIELDS (FROM SUBJECT TO)]",),
        "no blank line is added to a header that has none (RFC 9051 6.4.5); "
        "Dovecot adds one to HEADER.FIELDS (not to HEADER or HEADER.FIELDS.NOT)",
    ),
    "40-header-cut-by-boundary.eml": (
        ("BODY[2.HEADER.FIELDS (SUBJECT)]",),
        "same rule for an encapsulated message whose header a boundary cuts short",
    ),
    "63-message-rfc822-part-header-cut.eml": (
        ("BODY[1.HEADER.FIELDS (SUBJECT)]",),
        "same rule for an encapsulated message that is empty (its part header was cut short)",
    ),
    "59-rfc2231-lone-extended-after-continuation.eml": (
        ("BODYSTRUCTURE", "BODY"),
        "name*= after title*0/title*1 is reported as name*, not Dovecot's name*1* "
        "(a stale index in Dovecot's RFC 2231 merge)",
    ),
    "60-duplicate-content-disposition.eml": (
        ("BODYSTRUCTURE",),
        "the first of two Content-Disposition headers wins, as for every other Content-* "
        "header; Dovecot lets a later one replace one without parameters",
    ),
}


# ---------------------------------------------------------------------------------------------
# Dovecot


# Below the ephemeral range and below the e2e suite's range (see tests/e2e/conftest.py), each
# port handed out once, so no other socket can take it before Dovecot binds it.
_next_port = 15000 + os.getpid() % 4000


def _free_port() -> int:
    global _next_port
    while _next_port < 19999:
        port = _next_port
        _next_port += 1
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    raise RuntimeError("no free loopback port in 15000-19999")


def _dovecot_version() -> tuple[int, ...]:
    out = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, check=True)
    return tuple(int(x) for x in re.findall(r"\d+", out.stdout.split()[0])[:3])


def write_config(root: pathlib.Path, port: int) -> pathlib.Path:
    """A minimal dovecot.conf: plaintext IMAP on 127.0.0.1, one passwd-file user, Maildir."""
    uid, gid = os.getuid(), os.getgid()
    if uid == 0:
        # Dovecot never serves mail as UID 0 ("userdb returned 0 as uid"): as root, the mail
        # user is the unprivileged `nobody` account, which owns the mail directories.
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
    (root / "run").mkdir()
    (root / "state").mkdir()
    (root / "home").mkdir()
    (root / "Maildir").mkdir()
    for d in ("home", "Maildir"):
        os.chown(root / d, uid, gid)
    passwd = root / "passwd"
    passwd.write_text(f"{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{root / 'home'}::\n")
    version = _dovecot_version()
    # Not root: every Dovecot process runs as the current user and nothing is chrooted.
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
    if version >= (2, 4):
        # Dovecot 2.4 renamed and restructured these settings (Debian 13). Written from the
        # 2.4 documentation; Debian 12, which CI uses, ships 2.3.
        head = "dovecot_config_version = 2.4.0\ndovecot_storage_version = 2.4.0\n"
        auth = f"""
auth_allow_cleartext = yes
mail_driver = maildir
mail_path = {root / 'Maildir'}
passdb passwd-file {{
  passwd_file_path = {passwd}
}}
userdb static {{
  fields {{
    uid = {uid}
    gid = {gid}
    home = {root / 'home'}
  }}
}}
"""
    else:
        head = ""
        auth = f"""
disable_plaintext_auth = no
mail_location = maildir:{root / 'Maildir'}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {passwd}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root / 'home'}
}}
"""
    conf = root / "dovecot.conf"
    conf.write_text(
        f"""{head}
protocols = imap
listen = 127.0.0.1
base_dir = {root / 'run'}
state_dir = {root / 'state'}
log_path = {root / 'dovecot.log'}
info_log_path = {root / 'dovecot.log'}
ssl = no
auth_mechanisms = plain
first_valid_uid = 0
{auth}
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


class Dovecot(DovecotProcess):
    """A Dovecot from this test's minimal configuration (``write_config``); starting,
    waiting for its port and stopping are ``tests/e2e/dovecot_server.py``'s."""

    def __init__(self) -> None:
        super().__init__(write_config, _free_port())

    def connect(self) -> imaplib.IMAP4:
        imap = imaplib.IMAP4("127.0.0.1", self.port, timeout=30)
        imap.login(USER, PASSWORD)
        return imap


def append(imap: imaplib.IMAP4, raw: bytes) -> str:
    """APPENDs `raw` to INBOX and returns its UID."""
    # imaplib rewrites bare CR and bare LF to CRLF; the corpus is CRLF-only so it sends the
    # message unchanged (checked by test_corpus_is_usable).
    typ, data = imap.append("INBOX", None, None, raw)
    assert typ == "OK", data
    m = re.search(rb"APPENDUID \d+ (\d+)", data[0])
    assert m, data
    return m.group(1).decode()


def fetch(imap: imaplib.IMAP4, uid: str, items: str) -> dict:
    """FETCHes `items` and returns the parsed attributes as a dict."""
    typ, data = imap.uid("FETCH", uid, items)
    assert typ == "OK", data
    wire = b""
    for piece in data:
        if isinstance(piece, tuple):
            wire += piece[0] + b"\r\n" + piece[1]
        else:
            wire += piece
    # wire is now "<seq> (UID n ENVELOPE (...) BODYSTRUCTURE (...) ...)"
    values = parse_imap(wire)
    assert isinstance(values[1], list), wire
    attrs = values[1]
    return {str(attrs[i]).upper(): attrs[i + 1] for i in range(0, len(attrs), 2)}


def fetch_sections(imap: imaplib.IMAP4, uid: str, specs: list[str]) -> dict[str, bytes | None]:
    """The octets of BODY[spec] for each spec (None for NIL). Specs without spaces are fetched
    200 at a time; HEADER.FIELDS ones, whose names Dovecot echoes with spaces, one by one."""
    out: dict[str, bytes | None] = {}
    simple = [s for s in specs if " " not in s]
    for i in range(0, len(simple), 200):
        batch = simple[i : i + 200]
        items = "(" + " ".join(f"BODY.PEEK[{s}]" for s in batch) + ")"
        attrs = fetch(imap, uid, items)
        for spec in batch:
            out[spec] = attrs[f"BODY[{spec}]".upper()]
    for spec in (s for s in specs if " " in s):
        typ, data = imap.uid("FETCH", uid, f"(BODY.PEEK[{spec}])")
        assert typ == "OK", data
        literal = [piece[1] for piece in data if isinstance(piece, tuple)]
        if literal:
            out[spec] = literal[0]
            continue
        text = b"".join(p for p in data if isinstance(p, bytes))
        m = re.search(rb'BODY\[[^\]]*\] (NIL|"((?:[^"\\]|\\.)*)")', text)
        assert m, text
        out[spec] = None if m.group(1) == b"NIL" else re.sub(rb"\\(.)", rb"\1", m.group(2))
    return out


# ---------------------------------------------------------------------------------------------
# A small parser for IMAP response data: NIL -> None, number -> int, atom -> str,
# quoted string and literal -> bytes (so their form no longer matters), list -> list.


class Atom(str):
    pass


def parse_imap(data: bytes):
    pos = 0
    out = []
    stack = [out]
    n = len(data)
    while pos < n:
        c = data[pos : pos + 1]
        if c in (b" ", b"\r", b"\n"):
            pos += 1
        elif c == b"(":
            new: list = []
            stack[-1].append(new)
            stack.append(new)
            pos += 1
        elif c == b")":
            stack.pop()
            pos += 1
        elif c == b'"':
            pos += 1
            buf = bytearray()
            while data[pos : pos + 1] != b'"':
                if data[pos : pos + 1] == b"\\":
                    pos += 1
                buf += data[pos : pos + 1]
                pos += 1
            pos += 1
            stack[-1].append(bytes(buf))
        elif c == b"{":
            end = data.index(b"}", pos)
            length = int(data[pos + 1 : end].rstrip(b"+"))
            start = data.index(b"\n", end) + 1
            stack[-1].append(data[start : start + length])
            pos = start + length
        else:
            m = re.compile(rb"[^\s()]+").match(data, pos)
            assert m, data[pos:]
            tok = m.group(0)
            pos = m.end()
            if tok.upper() == b"NIL":
                stack[-1].append(None)
            elif tok.isdigit():
                stack[-1].append(int(tok))
            else:
                stack[-1].append(Atom(tok.decode()))
    return out


# ---------------------------------------------------------------------------------------------
# Mailfleet's answer


def mime_dump_binary() -> pathlib.Path:
    """MAILFLEET_MIME_DUMP, or the mime-dump binary built here with cargo."""
    explicit = os.environ.get("MAILFLEET_MIME_DUMP")
    if explicit:
        return pathlib.Path(explicit)
    if shutil.which("cargo") is None:
        pytest.skip("cargo is not installed and MAILFLEET_MIME_DUMP is not set")
    target = pathlib.Path(
        os.environ.get("CARGO_TARGET_DIR")
        or pathlib.Path.home() / ".cache" / "mailfleet" / "target"
    )
    env = dict(os.environ, CARGO_TARGET_DIR=str(target))
    subprocess.run(
        ["cargo", "build", "--quiet", "-p", "mailfleet-mime", "--bin", "mime-dump"],
        cwd=WORKSPACE,
        env=env,
        check=True,
    )
    return target / "debug" / "mime-dump"


def mailfleet_fetch(binary: pathlib.Path, path: pathlib.Path) -> dict:
    out = subprocess.run([str(binary), str(path)], capture_output=True, check=True).stdout
    values = parse_imap(out)
    return {values[i].upper(): values[i + 1] for i in range(0, len(values), 2)}


def mailfleet_sections(binary: pathlib.Path, path: pathlib.Path) -> list[tuple[str, bytes | None]]:
    """Every section mime-dump --sections prints: (section spec, octets or None)."""
    out = subprocess.run(
        [str(binary), "--sections", str(path)], capture_output=True, check=True
    ).stdout
    values = parse_imap(out)
    return [(values[i].decode(), values[i + 1]) for i in range(0, len(values), 2)]


# ---------------------------------------------------------------------------------------------
# Comparison


def _lower(value):
    return value.lower() if isinstance(value, bytes) else value


def normalise_body(node):
    """Makes two BODY[STRUCTURE] values comparable.

    imap-codec writes the media type of text parts as "TEXT" and of message/rfc822 parts as
    "MESSAGE" "RFC822" whatever the header said, while Dovecot copies the header's case (and
    writes "message" "rfc822"). Media type names are case-insensitive (RFC 2045 section 5.1),
    so only those words are lowercased; subtypes, parameters and everything else must match
    exactly.
    """
    if not isinstance(node, list) or not node:
        return node
    if isinstance(node[0], list):  # multipart: parts, then subtype and extension data
        i = 0
        parts = []
        while i < len(node) and isinstance(node[i], list):
            parts.append(normalise_body(node[i]))
            i += 1
        return parts + node[i:]
    node = list(node)
    if _lower(node[0]) == b"text":
        node[0] = b"text"
    elif _lower(node[0]) == b"message" and _lower(node[1]) == b"rfc822" and len(node) > 8:
        # fields, envelope (7), the encapsulated body (8), lines (9)
        node[0], node[1] = b"message", b"rfc822"
        node[8] = normalise_body(node[8])
    return node


ITEMS = ("ENVELOPE", "BODYSTRUCTURE", "BODY")


def differences(dovecot: dict, mailfleet: dict) -> dict[str, str]:
    diffs = {}
    for item in ITEMS:
        ours, theirs = mailfleet.get(item), dovecot.get(item)
        if item != "ENVELOPE":
            ours, theirs = normalise_body(ours), normalise_body(theirs)
        if ours != theirs:
            diffs[item] = f"{item}\n  dovecot:   {theirs!r}\n  mailfleet: {ours!r}"
    return diffs


CORPUS_FILES = sorted(CORPUS.glob("*.eml"))
# Corpus file name -> the fetch items that differed (allowed ones only; others fail).
DIFFERING: dict[str, set[str]] = {}
SECTION_COUNT: dict[str, int] = {}
UIDS: dict[str, str] = {}


def check_allowed(name: str, diffs: dict[str, str], kinds) -> None:
    """Fails on any difference that is not allow-listed for this message, and on an
    allow-listed difference (of the kinds this test checks) that no longer exists."""
    items, reason = ALLOWED.get(name, ((), ""))
    unexpected = {item: text for item, text in diffs.items() if item not in items}
    DIFFERING.setdefault(name, set()).update(diffs.keys() - unexpected.keys())
    assert not unexpected, f"{name} differs from Dovecot:\n" + "\n".join(unexpected.values())
    fixed = [item for item in items if kinds(item) and item not in diffs]
    assert not fixed, f"{name}: {fixed} allow-listed ({reason}) but now identical: remove it"


def uid_of(imap: imaplib.IMAP4, path: pathlib.Path) -> str:
    """Each corpus message is APPENDed once and shared by the tests."""
    if path.name not in UIDS:
        UIDS[path.name] = append(imap, path.read_bytes())
    return UIDS[path.name]


@pytest.fixture(scope="module")
def dovecot():
    if not os.path.exists(DOVECOT):
        pytest.skip(
            f"{DOVECOT} is missing: install the Debian package dovecot-imapd "
            "(scripts/test.sh does) to run the differential test"
        )
    server = Dovecot()
    try:
        imap = server.connect()
        typ, _ = imap.select("INBOX")
        assert typ == "OK"
        yield imap
        imap.logout()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mime_dump():
    return mime_dump_binary()


def test_corpus_is_usable():
    """At least 50 messages, CRLF only (imaplib would rewrite bare CR or LF), no NUL (no IMAP
    string can carry it, so each server substitutes its own way), none empty (Dovecot refuses
    zero-byte APPENDs)."""
    assert len(CORPUS_FILES) >= 50
    for path in CORPUS_FILES:
        raw = path.read_bytes()
        assert raw, path.name
        assert b"\0" not in raw, path.name
        assert re.search(rb"\r(?!\n)|(?<!\r)\n", raw) is None, f"{path.name}: bare CR or LF"
    assert set(ALLOWED) <= {p.name for p in CORPUS_FILES}, "allow-list names unknown files"


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_same_structure_as_dovecot(dovecot, mime_dump, path):
    """FETCH (ENVELOPE BODYSTRUCTURE BODY)."""
    theirs = fetch(dovecot, uid_of(dovecot, path), "(ENVELOPE BODYSTRUCTURE BODY)")
    ours = mailfleet_fetch(mime_dump, path)
    check_allowed(path.name, differences(theirs, ours), lambda item: item in ITEMS)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=[p.stem for p in CORPUS_FILES])
def test_same_sections_as_dovecot(dovecot, mime_dump, path):
    """BODY[...] of the message and of every part, as cut by offsets from the summary."""
    uid = uid_of(dovecot, path)
    diffs = {}
    ours = mailfleet_sections(mime_dump, path)
    dovecots = fetch_sections(dovecot, uid, [spec for spec, _ in ours])
    for spec, octets in ours:
        theirs = dovecots[spec]
        if theirs != octets:
            item = f"BODY[{spec}]"
            diffs[item] = f"{item}\n  dovecot:   {theirs!r}\n  mailfleet: {octets!r}"
    SECTION_COUNT[path.name] = len(ours)
    check_allowed(path.name, diffs, lambda item: item.startswith("BODY["))


def test_report():
    """Prints the tally (run pytest with -s to see it)."""
    if not SECTION_COUNT:
        pytest.skip("the differential test did not run")
    allowed = sorted(name for name, items in DIFFERING.items() if items)
    print(
        f"\nDovecot differential: {len(CORPUS_FILES)} messages, "
        f"{len(CORPUS_FILES) - len(allowed)} identical, {len(allowed)} allow-listed; "
        f"{sum(SECTION_COUNT.values())} BODY[section] values compared"
    )
    for name in allowed:
        print(f"  {name} {sorted(DIFFERING[name])}: {ALLOWED[name][1]}")
