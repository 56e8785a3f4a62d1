"""The pieces of the IMAP differential test (test_imap_dovecot_diff.py) that know IMAP:

* ``parse_script``: the command-script format of tests/imap-diff/*.imap (described in
  tests/imap-diff/README.md);
* ``Connection``: a tiny raw-socket client that sends one command (synchronizing literals wait
  for the server's ``+``, LITERAL+ ones do not), answers continuation requests from the script
  and reads everything up to the tagged response, literals included;
* ``parse_response`` and ``normalise_command``: responses parsed into values and normalised so
  that only what both servers must agree on is left (see the module docstring of the test for
  the list of normalisations and why each is legitimate).

Parsing and normalising work on bytes and never touch a socket.
"""

from __future__ import annotations

import email.utils
import pathlib
import re
import socket
import time
from dataclasses import dataclass, field

# ---------------------------------------------------------------------------------------------
# Scripts


@dataclass
class Literal:
    data: bytes
    # LITERAL+ (RFC 7888): sent as {n+} without waiting for the server's continuation request.
    non_sync: bool


@dataclass
class Step:
    """One line of a script."""

    kind: str  # "command", "continue", "reconnect", "include"
    conn: int = 1  # which connection: 1 (the main one) or 2 (a second login of the same user)
    tag: str = ""
    # A command is text and literals alternating, starting and ending with text.
    parts: list = field(default_factory=list)
    # "continue": wait (up to a few seconds) for an untagged response before sending.
    wait_untagged: bool = False
    line_no: int = 0
    source: str = ""
    counted: bool = True


_LITERAL = re.compile(r"\{\{(\+?)(.*?)\}\}(?!\})")
_ESCAPE = re.compile(rb"\\(r|n|t|0|\\|x[0-9a-fA-F]{2})")


def unescape(text: str) -> bytes:
    """``\\r``, ``\\n``, ``\\t``, ``\\0``, ``\\\\`` and ``\\xHH`` in a script line."""

    def one(m: re.Match) -> bytes:
        e = m.group(1)
        if e.startswith(b"x"):
            return bytes([int(e[1:], 16)])
        return {b"r": b"\r", b"n": b"\n", b"t": b"\t", b"0": b"\0", b"\\": b"\\"}[e]

    return _ESCAPE.sub(one, text.encode("utf-8"))


def parse_script(path: pathlib.Path, corpus: pathlib.Path, counted: bool = True) -> list[Step]:
    steps: list[Step] = []
    tags: set[str] = set()
    for no, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        where = f"{path.name}:{no}"
        if line == "!reconnect":
            steps.append(Step("reconnect", line_no=no, source=line, counted=False))
            continue
        if line.startswith("!include "):
            steps.append(Step("include", tag=line.split(None, 1)[1], line_no=no, source=line))
            continue
        conn = 1
        if line.startswith("2:"):
            conn, line = 2, line[2:].lstrip()
        if line.startswith(">"):
            wait = line.startswith(">>")
            text = line[2:] if wait else line[1:]
            steps.append(
                Step("continue", conn, parts=[unescape(text.lstrip())], wait_untagged=wait,
                     line_no=no, source=raw, counted=False)
            )
            continue
        tag = line.split(" ", 1)[0]
        assert tag and tag not in tags, f"{where}: tag {tag!r} missing or used twice"
        tags.add(tag)
        parts: list = []
        pos = 0
        for m in _LITERAL.finditer(line):
            parts.append(unescape(line[pos : m.start()]))
            body = m.group(2)
            if body.startswith("@"):
                data = (corpus / body[1:]).read_bytes()
            else:
                data = unescape(body)
            parts.append(Literal(data, m.group(1) == "+"))
            pos = m.end()
        parts.append(unescape(line[pos:]))
        steps.append(Step("command", conn, tag, parts, line_no=no, source=raw, counted=counted))
    return steps


def substitute(part: bytes, variables: dict[str, str]) -> bytes:
    """``${NAME}`` in command text: the value this server gave (UIDVALIDITY, HIGHESTMODSEQ...)."""

    def one(m: re.Match) -> bytes:
        name = m.group(1).decode()
        if name not in variables:
            raise KeyError(f"${{{name}}} used before any response set it")
        return variables[name].encode()

    return re.sub(rb"\$\{([A-Z_]+)\}", one, part)


# ---------------------------------------------------------------------------------------------
# The client


class Connection:
    """One IMAP connection over a raw socket; responses are returned as raw bytes."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.greeting = self.read_response()
        # The command waiting for a continuation line from the script, if any.
        self.pending: tuple[str, list[bytes]] | None = None
        self.closed = False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed by the server")
        self.buf += data

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def read_response(self) -> bytes:
        """One response: a line, and for each literal it announces, the literal and the rest."""
        out = self._line()
        while True:
            m = re.search(rb"~?\{(\d+)\+?\}\r\n$", out)
            if not m:
                return out[:-2]
            n = int(m.group(1))
            while len(self.buf) < n:
                self._fill()
            out += self.buf[:n]
            self.buf = self.buf[n:]
            out += self._line()

    def has_data(self, wait: float) -> bool:
        if self.buf:
            return True
        self.sock.settimeout(wait)
        try:
            self._fill()
            return True
        except (socket.timeout, TimeoutError):
            return False
        finally:
            self.sock.settimeout(10.0)

    def send_command(self, tag: str, parts: list) -> list[bytes] | None:
        """Sends a command; returns every response up to the tagged one, or None when the
        server asked for a continuation line (see ``send_continuation``). Once the server has
        closed the connection, every command gets ``<connection closed>``."""
        if self.closed:
            return [b"<connection closed>"]
        try:
            return self._send_command(tag, parts)
        except (EOFError, ConnectionError):
            self.closed = True
            return [b"<connection closed>"]

    def _send_command(self, tag: str, parts: list) -> list[bytes] | None:
        responses: list[bytes] = []
        # Bytes are sent in as few writes as possible (a write per piece met Nagle's algorithm
        # and delayed ACKs: 40 ms a command).
        pending = b""
        for part in parts:
            if isinstance(part, Literal):
                if part.non_sync:
                    pending += b"{%d+}\r\n" % len(part.data) + part.data
                    continue
                self.sock.sendall(pending + b"{%d}\r\n" % len(part.data))
                pending = b""
                while True:
                    r = self.read_response()
                    responses.append(r)
                    if r.startswith(b"+"):
                        break
                    if self._is_tagged(r, tag):
                        # Refused before the literal was sent (e.g. too big, bad state).
                        return responses
                pending = part.data
            else:
                pending += part
        self.sock.sendall(pending + b"\r\n")
        return self._read_until_tagged(tag, responses)

    def send_continuation(self, line: bytes, wait_untagged: bool) -> list[bytes] | None:
        assert self.pending, "a '>' line with no command waiting for one"
        tag, responses = self.pending
        self.pending = None
        try:
            return self._send_continuation(tag, responses, line, wait_untagged)
        except (EOFError, ConnectionError):
            self.closed = True
            return responses + [b"<connection closed>"]

    def _send_continuation(self, tag: str, responses: list[bytes], line: bytes, wait_untagged: bool):
        if wait_untagged:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.has_data(0.2) is False:
                pass
            # Whatever arrived (an update during IDLE) is read now, before DONE.
            while self.buf or self.has_data(0.3):
                r = self.read_response()
                responses.append(r)
        self.sock.sendall(line + b"\r\n")
        return self._read_until_tagged(tag, responses)

    @staticmethod
    def _is_tagged(r: bytes, tag: str) -> bool:
        return r.startswith(tag.encode() + b" ")

    def _read_until_tagged(self, tag: str, responses: list[bytes]) -> list[bytes] | None:
        while True:
            try:
                r = self.read_response()
            except (EOFError, ConnectionError):
                self.closed = True
                responses.append(b"<connection closed>")
                return responses
            responses.append(r)
            if self._is_tagged(r, tag):
                return responses
            if r.startswith(b"+"):
                self.pending = (tag, responses)
                return None
            if r.startswith(b"* BYE") and not tag.upper().startswith("LOGOUT"):
                # A BYE ends the connection; LOGOUT's tagged OK still follows.
                continue


# ---------------------------------------------------------------------------------------------
# Parsing responses into values: NIL -> None, number -> int, atom -> Atom, quoted string and
# literal -> bytes (so their form no longer matters), parenthesised list -> list.


class Atom(str):
    pass


_ATOM = re.compile(rb"[^\s()\[\]{\"]+")


def _matching_bracket(data: bytes, pos: int) -> int:
    """Index of the ']' closing the '[' at pos, skipping quoted strings."""
    depth = 0
    i = pos
    while i < len(data):
        c = data[i : i + 1]
        if c == b'"':
            i += 1
            while data[i : i + 1] != b'"':
                i += 2 if data[i : i + 1] == b"\\" else 1
        elif c == b"[":
            depth += 1
        elif c == b"]":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    raise ValueError(f"unbalanced [ in {data!r}")


def parse_values(data: bytes) -> list:
    pos = 0
    out: list = []
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
            if len(stack) > 1:
                stack.pop()
            pos += 1
        elif c == b'"':
            pos += 1
            buf = bytearray()
            while pos < n and data[pos : pos + 1] != b'"':
                if data[pos : pos + 1] == b"\\":
                    pos += 1
                buf += data[pos : pos + 1]
                pos += 1
            pos += 1
            stack[-1].append(bytes(buf))
        elif c in (b"{", b"~") and re.match(rb"~?\{\d+\+?\}\r\n", data[pos:]):
            end = data.index(b"}", pos)
            length = int(data[data.index(b"{", pos) + 1 : end].rstrip(b"+"))
            start = data.index(b"\n", end) + 1
            stack[-1].append(data[start : start + length])
            pos = start + length
        elif c == b"[":
            # A response code: kept as a list whose first element is "[".
            end = _matching_bracket(data, pos)
            stack[-1].append(["["] + parse_values(data[pos + 1 : end]))
            pos = end + 1
        else:
            m = _ATOM.match(data, pos)
            if not m:
                stack[-1].append(Atom(data[pos : pos + 1].decode("latin-1")))
                pos += 1
                continue
            tok = m.group(0)
            pos = m.end()
            if data[pos : pos + 1] == b"[" and tok.upper() in (b"BODY", b"BODY.PEEK", b"BINARY",
                                                               b"BINARY.PEEK", b"BINARY.SIZE"):
                # A section, e.g. BODY[HEADER.FIELDS (FROM TO)]<0>: one atom, whitespace
                # collapsed and upper-cased (section names and header names are
                # case-insensitive).
                end = _matching_bracket(data, pos)
                tok += data[pos : end + 1]
                pos = end + 1
                m2 = re.compile(rb"<\d+>").match(data, pos)
                if m2:
                    tok += m2.group(0)
                    pos = m2.end()
                stack[-1].append(Atom(re.sub(rb"\s+", b" ", tok).decode("latin-1").upper()))
            elif tok.upper() == b"NIL":
                stack[-1].append(None)
            elif tok.isdigit():
                stack[-1].append(int(tok))
            else:
                stack[-1].append(Atom(tok.decode("latin-1")))
    return out


# ---------------------------------------------------------------------------------------------
# Normalising


class ModSeq(int):
    """A MODSEQ value: replaced by its rank among the MODSEQ values of the same command."""


def expand_set(value) -> tuple:
    """A sequence set ``1:3,5`` as the sorted tuple of its numbers (``*`` kept)."""
    if isinstance(value, int):
        return (value,)
    text = value.decode() if isinstance(value, bytes) else str(value)
    out: set = set()
    for piece in text.split(","):
        if ":" in piece:
            a, b = piece.split(":", 1)
            if a == "*" or b == "*":
                out.add(piece)
                continue
            lo, hi = sorted((int(a), int(b)))
            if hi - lo > 10000:
                out.add(f"{lo}:{hi}")
                continue
            out.update(range(lo, hi + 1))
        elif piece:
            out.add(piece if piece == "*" else int(piece))
    return tuple(sorted(out, key=lambda x: (isinstance(x, str), x if isinstance(x, int) else 0, str(x))))


def _flags(values) -> tuple:
    """A flag list as a set: order is not significant; \\Recent is dropped (see the test's
    docstring: which session holds a message as recent is not compared)."""
    if not isinstance(values, list):
        return ("<not a list>", repr(values))
    return tuple(sorted({str(v) for v in values if str(v).lower() != "\\recent"}, key=str.lower))


def _freeze(v):
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _freeze(x)) for k, x in v.items()))
    if isinstance(v, Atom):
        return str(v)
    return v


def _upper_media_types(body):
    """BODY/BODYSTRUCTURE with media type and subtype names upper-cased (case-insensitive,
    RFC 2045 section 5.1; Dovecot copies the header's case, Mailfleet writes some as words)."""
    if not isinstance(body, list) or not body:
        return body
    if isinstance(body[0], list):
        # multipart: parts..., subtype, extension data
        out = []
        i = 0
        while i < len(body) and isinstance(body[i], list):
            out.append(_upper_media_types(body[i]))
            i += 1
        if i < len(body) and isinstance(body[i], bytes):
            out.append(body[i].upper())
            i += 1
        out.extend(body[i:])
        return out
    out = list(body)
    for i in (0, 1):
        if i < len(out) and isinstance(out[i], bytes):
            out[i] = out[i].upper()
    # message/rfc822: envelope, body structure, lines follow the 7 basic fields.
    if len(out) > 8 and isinstance(out[0], bytes) and out[0] == b"MESSAGE" and isinstance(out[8], list):
        out[8] = _upper_media_types(out[8])
    return out


_RECENT_NOW = 36 * 3600


def _internaldate(value) -> object:
    """An INTERNALDATE within a day and a half of now was set by an APPEND without a date:
    the two servers took it a few milliseconds apart, so only "recent" is compared."""
    if not isinstance(value, bytes):
        return value
    try:
        t = email.utils.parsedate_to_datetime(value.decode().replace("-", " ", 2))
    except (TypeError, ValueError):
        return value
    if abs(time.time() - t.timestamp()) < _RECENT_NOW:
        return "<now>"
    return value


def _fetch_items(attrs: list) -> dict:
    out = {}
    for i in range(0, len(attrs) - 1, 2):
        key = str(attrs[i]).upper()
        val = attrs[i + 1]
        if key == "FLAGS":
            val = _flags(val)
        elif key == "MODSEQ" and isinstance(val, list) and val:
            val = [ModSeq(val[0])] if isinstance(val[0], int) else val
        elif key in ("INTERNALDATE", "SAVEDATE"):
            # A save date (RFC 8514) is "now" for every message these scripts save.
            val = _internaldate(val)
        elif key in ("BODYSTRUCTURE", "BODY"):
            val = _upper_media_types(val)
        out[key] = _freeze(val)
    if len(attrs) % 2:
        out["<odd item>"] = _freeze(attrs[-1])
    return out


# Response codes whose arguments are server-specific or human-readable: only the name is kept.
_CODE_NAME_ONLY = {"BADCHARSET", "REFERRAL", "CAPABILITY"}


def normalise_code(code) -> tuple | None:
    """A response code ``[NAME args]`` (as parsed: ``["[", NAME, args...]``)."""
    if not code:
        return None
    name = str(code[1]).upper() if len(code) > 1 else ""
    args = code[2:]
    if name in _CODE_NAME_ONLY:
        return (name,)
    if name == "UIDVALIDITY":
        return (name, "<uidvalidity>")
    if name in ("HIGHESTMODSEQ",) and args and isinstance(args[0], int):
        return (name, ModSeq(args[0]))
    if name == "APPENDUID" and len(args) == 2:
        return (name, "<uidvalidity>", expand_set(args[1]))
    if name == "COPYUID" and len(args) == 3:
        return (name, "<uidvalidity>", expand_set(args[1]), expand_set(args[2]))
    if name == "MODIFIED" and args:
        return (name, expand_set(args[0]))
    if name == "PERMANENTFLAGS" and args:
        return (name, _flags(args[0]))
    return (name,) + _freeze(args)


def _split_status(values: list, start: int) -> tuple[str, tuple | None]:
    status = str(values[start]).upper()
    code = None
    if len(values) > start + 1 and isinstance(values[start + 1], list) and values[start + 1][:1] == ["["]:
        code = values[start + 1]
    return status, normalise_code(code)


def _status_items(items: list) -> tuple:
    out = {}
    for i in range(0, len(items) - 1, 2):
        key = str(items[i]).upper()
        val = items[i + 1]
        if key == "UIDVALIDITY":
            val = "<uidvalidity>"
        elif key == "HIGHESTMODSEQ" and isinstance(val, int):
            val = ModSeq(val)
        elif key == "RECENT":
            val = "<recent>"
        out[key] = val
    return tuple(sorted(out.items()))


def _search_tail(values: list) -> tuple[list, object]:
    """SEARCH/SORT numbers and the trailing (MODSEQ n) of CONDSTORE, if any."""
    nums = [v for v in values if isinstance(v, int)]
    modseq = None
    for v in values:
        if isinstance(v, list) and len(v) == 2 and str(v[0]).upper() == "MODSEQ":
            modseq = ModSeq(v[1])
    return nums, modseq


def _esearch(values: list) -> tuple:
    out: list = ["ESEARCH"]
    i = 0
    if i < len(values) and isinstance(values[i], list):
        out.append(("TAG",) + _freeze(values[i][1:]))
        i += 1
    if i < len(values) and str(values[i]).upper() == "UID":
        out.append("UID")
        i += 1
    returns = {}
    while i + 1 < len(values):
        key = str(values[i]).upper()
        val = values[i + 1]
        if key == "ALL":
            val = expand_set(val)
        elif key == "MODSEQ" and isinstance(val, int):
            val = ModSeq(val)
        returns[key] = _freeze(val)
        i += 2
    out.append(tuple(sorted(returns.items())))
    return tuple(out)


def _list_extended_items(items):
    """A LIST response's extended items (RFC 5258 mbox-list-extended): each item's tag is an
    astring, so an atom CHILDINFO and a quoted "CHILDINFO" are the same tag."""
    if not isinstance(items, list):
        return items
    return [
        (x.decode("utf-8", "replace") if isinstance(x, bytes) else str(x)).upper()
        if i % 2 == 0 and isinstance(x, (bytes, str))
        else x
        for i, x in enumerate(items)
    ]


def normalise_untagged(values: list) -> tuple | None:
    """One untagged response; None for one that carries nothing comparable."""
    if not values:
        return ("<empty>",)
    if isinstance(values[0], int) and len(values) > 1:
        n, kind = values[0], str(values[1]).upper()
        if kind == "RECENT":
            # Not compared (see _flags): Dovecot also sends one after every new message.
            return None
        if kind == "FETCH":
            attrs = values[2] if len(values) > 2 and isinstance(values[2], list) else []
            return ("FETCH", n, tuple(sorted(_fetch_items(attrs).items())))
        return (kind, n) + _freeze(values[2:])
    kind = str(values[0]).upper()
    rest = values[1:]
    if kind in ("OK", "NO", "BAD", "BYE", "PREAUTH"):
        status, code = _split_status(values, 0)
        if status == "OK" and code in (None, ("CAPABILITY",)):
            # Text only ("Still here", "Searched 50%..."): nothing to compare.
            return None
        return (status, code)
    if kind == "CAPABILITY":
        return ("CAPABILITY",)
    if kind == "ID":
        return ("ID",)
    if kind == "FLAGS":
        return ("FLAGS", _flags(rest[0]) if rest else ())
    if kind in ("LIST", "LSUB"):
        attrs = _flags(rest[0]) if rest else ()
        attrs = tuple(sorted(a.lower() for a in attrs))
        delim = rest[1] if len(rest) > 1 else None
        name = _inbox(rest[2] if len(rest) > 2 else None)
        ext = _freeze([_list_extended_items(x) for x in rest[3:]])
        return (kind, attrs, delim, name) + ((ext,) if ext else ())
    if kind == "STATUS":
        name = _inbox(rest[0])
        items = rest[1] if len(rest) > 1 and isinstance(rest[1], list) else []
        return ("STATUS", name, _status_items(items))
    if kind == "SEARCH":
        nums, modseq = _search_tail(rest)
        return ("SEARCH", tuple(sorted(nums)), modseq)
    if kind == "SORT":
        nums, modseq = _search_tail(rest)
        return ("SORT", tuple(nums), modseq)
    if kind == "ESEARCH":
        return _esearch(rest)
    if kind == "VANISHED":
        earlier = bool(rest) and isinstance(rest[0], list)
        sets = rest[1:] if earlier else rest
        return ("VANISHED", earlier, expand_set(sets[0]) if sets else ())
    if kind == "ENABLED":
        return ("ENABLED", tuple(sorted(str(v).upper() for v in rest)))
    if kind == "QUOTA":
        return ("QUOTA", "<root>", _freeze(rest[1:]))
    if kind == "QUOTAROOT":
        name = _inbox(rest[0]) if rest else None
        return ("QUOTAROOT", name, len(rest) - 1)
    return (kind,) + _freeze(rest)


def parse_response(raw: bytes) -> tuple[str, list]:
    """(tag or "*" or "+", values after the tag)."""
    if raw.startswith(b"+"):
        return "+", []
    head, _, rest = raw.partition(b" ")
    return head.decode("latin-1"), parse_values(rest)


def _rank_modseqs(obj, ranks: dict[int, str]):
    if isinstance(obj, ModSeq):
        return ranks[int(obj)]
    if isinstance(obj, tuple):
        return tuple(_rank_modseqs(x, ranks) for x in obj)
    return obj


def _collect_modseqs(obj, into: set) -> None:
    if isinstance(obj, ModSeq):
        into.add(int(obj))
    elif isinstance(obj, tuple):
        for x in obj:
            _collect_modseqs(x, into)


@dataclass
class Result:
    status: str  # OK, NO, BAD, or "<none>" when no tagged response came
    code: object
    untagged: tuple

    def as_tuple(self) -> tuple:
        return (self.status, self.code, self.untagged)


def _inbox(name):
    """INBOX is case-insensitive (RFC 9051 section 5.1): Dovecot echoes the client's case."""
    if isinstance(name, str):
        name = name.encode()
    if isinstance(name, bytes) and name.upper() == b"INBOX":
        return b"INBOX"
    return name


def normalise_command(tag: str, responses: list[bytes], condstore: bool = True, verb: str = "") -> Result:
    """The normalised answer to one command: the tagged status and code, and the untagged
    responses as a sorted tuple (RFC 9051 fixes no order between untagged responses of
    different kinds, and the FETCH items within one response are a dict).

    Before the session used CONDSTORE (``condstore`` false), an untagged ``OK
    [HIGHESTMODSEQ]`` is dropped: RFC 7162 section 3.1.2.1 has a server that keeps modseqs
    send it at every SELECT, as Mailfleet does; Dovecot sends it only once the client used
    CONDSTORE."""
    status, code = "<none>", None
    untagged = []
    for raw in responses:
        if raw == b"<connection closed>":
            untagged.append(("<connection closed>",))
            continue
        who, values = parse_response(raw)
        if who == "+":
            continue
        if who == tag:
            if values:
                status, code = _split_status(values, 0)
                if code == ("CAPABILITY",):
                    # Optional in a tagged OK (RFC 9051 section 7.1); CAPABILITY is compared
                    # nowhere anyway.
                    code = None
            continue
        if who != "*":
            untagged.append(("<unexpected tag>", who))
            continue
        u = normalise_untagged(values)
        if not condstore and u is not None and u[0] == "OK" and (u[1] or ("",))[0] == "HIGHESTMODSEQ":
            continue
        if u == ("CAPABILITY",) and verb != "CAPABILITY":
            # Sent unasked after LOGIN by Dovecot, as a response code by Mailfleet: both optional.
            continue
        if u is not None:
            untagged.append(u)
    seen: set[int] = set()
    for obj in untagged + [code]:
        _collect_modseqs(obj, seen)
    ranks = {v: f"<modseq {i + 1}>" for i, v in enumerate(sorted(seen))}
    untagged = [_rank_modseqs(u, ranks) for u in untagged]
    code = _rank_modseqs(code, ranks)
    return Result(status, code, tuple(sorted(untagged, key=repr)))


def capture_variables(responses: list[bytes], variables: dict[str, str]) -> None:
    """Remembers the last UIDVALIDITY and HIGHESTMODSEQ a server sent, for ``${...}``."""
    for raw in responses:
        for name in ("UIDVALIDITY", "HIGHESTMODSEQ"):
            for m in re.finditer(rb"\b" + name.encode() + rb" (\d+)", raw):
                variables[name] = m.group(1).decode()
