"""OpenTelemetry traces end to end: a Mailfleet process exports OTLP/HTTP (protobuf) to a
receiver in this test, which decodes every request with the official OpenTelemetry protobuf
definitions (PyPI's `opentelemetry-proto`). Checked:

- one message submitted over SMTP, delivered to a local INBOX and to a remote peer
  (Postfix's smtp-sink), then read with IMAP FETCH: its receipt, pipeline stages, storage
  writes, change notification, outbound delivery attempt and the FETCH body read are spans
  of one trace, whose id the transaction's log line carries;
- IMAP and POP3 commands are spans under their session's span;
- an HTTP request with a W3C `traceparent` continues the caller's trace;
- neither the password nor the message's content appears in any span or log line.
"""

import http.server
import imaplib
import json
import poplib
import shutil
import smtplib
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import PASSWORD, Server, free_port
from test_delivery import SMTP_SINK, Sink
from test_pop3_submission import CTX

trace_pb2 = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")

ALICE = "alice@example.test"
FRIEND = "friend@remote.test"
SECRET_BODY = "the-secret-body-marker-4711"


class Receiver:
    """An OTLP/HTTP traces endpoint: POST /v1/traces, protobuf in, protobuf out."""

    def __init__(self):
        self.spans = []  # (resource attributes, span)
        self.requests = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                req = trace_pb2.ExportTraceServiceRequest()
                req.ParseFromString(body)
                with receiver.lock:
                    receiver.requests += 1
                    for rs in req.resource_spans:
                        res = {a.key: a.value.string_value for a in rs.resource.attributes}
                        for ss in rs.scope_spans:
                            for span in ss.spans:
                                receiver.spans.append((res, span))
                out = trace_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args):
                pass

        self.port = free_port()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def all(self):
        with self.lock:
            return list(self.spans)

    def named(self, name):
        return [s for _, s in self.all() if s.name == name]

    def stop(self):
        self.httpd.shutdown()


def attrs(span):
    out = {}
    for a in span.attributes:
        v = a.value
        out[a.key] = v.string_value or v.int_value or v.bool_value
    return out


def wait_for(what, check, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = check()
        if v:
            return v
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def traced(tmp_path):
    receiver = Receiver()
    sink = Sink(tmp_path / "sink", free_port())
    server = Server(
        tmp_path / "data",
        extra_env={
            "MAILFLEET_TRACING__OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.port}/v1/traces",
            "MAILFLEET_TRACING__SERVICE_NAME": "mailfleet-e2e",
            # Export every 200 ms instead of every 5 s (the SDK reads the OpenTelemetry
            # environment variables).
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "MAILFLEET_DELIVERY__ENABLED": "true",
            "MAILFLEET_DELIVERY__POLL_INTERVAL_SECS": "1",
            "MAILFLEET_DELIVERY__RESOLVER": "127.0.0.1:9",
            "MAILFLEET_DELIVERY__ROUTES__REMOTE.TEST": f"127.0.0.1:{sink.port}",
        },
    )
    server.cli("domain", "add", "example.test")
    server.cli("user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
    server.start()
    yield server, receiver, sink
    server.stop()
    sink.stop()
    receiver.stop()


pytestmark = pytest.mark.skipif(
    not Path(SMTP_SINK).exists(), reason="Postfix's smtp-sink is not installed"
)


def test_one_message_is_one_trace_from_smtp_to_imap_fetch(traced):
    server, receiver, sink = traced
    msg = (
        f"From: Alice <{ALICE}>\r\nTo: {ALICE}, {FRIEND}\r\nSubject: traced\r\n"
        "Message-ID: <traced@example.test>\r\n"
        f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\n\r\n{SECRET_BODY}\r\n"
    )
    with smtplib.SMTP("127.0.0.1", server.submission_port, timeout=30) as s:
        s.starttls(context=CTX)
        s.login(ALICE, PASSWORD)
        assert s.sendmail(ALICE, [ALICE, FRIEND], msg) == {}
    wait_for("the remote copy", lambda: sink.messages())

    imap = imaplib.IMAP4("127.0.0.1", server.imap_port)
    imap.starttls(ssl_context=CTX)
    imap.login(ALICE, PASSWORD)
    imap.select("INBOX")
    typ, data = imap.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and SECRET_BODY.encode() in data[0][1]
    imap.logout()

    received = wait_for("the message span", lambda: receiver.named("smtp message"))
    assert len(received) == 1
    root = received[0]
    trace = root.trace_id
    assert root.parent_span_id == b"", "a message starts a trace of its own"
    assert root.kind == root.SPAN_KIND_SERVER
    queue_id = attrs(root)["smtp.queue_id"]

    def in_trace():
        return [s for _, s in receiver.all() if s.trace_id == trace]

    want = {
        "cleanup",
        "deliver locally",
        "analyze message",
        "blob_put",
        "meta_append",
        "coord_publish",
        "queue for remote delivery",
        "meta_enqueue_outbound",
        "outbound delivery attempt",
        "deliver to domain",
        "imap FETCH message",
    }
    names = wait_for(
        "every stage in the message's trace",
        lambda: (lambda n: n if want <= n else None)({s.name for s in in_trace()}),
    )
    assert want <= names, want - names

    by_id = {s.span_id: s for s in in_trace()}
    # The pipeline stages and storage writes hang under the message span.
    def ancestors(span):
        out = []
        while span.parent_span_id and span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            out.append(span.name)
        return out

    for name in ("cleanup", "deliver locally", "meta_append", "coord_publish", "queue for remote delivery"):
        span = next(s for s in in_trace() if s.name == name)
        assert "smtp message" in ancestors(span), (name, ancestors(span))
    storage = next(s for s in in_trace() if s.name == "meta_append")
    assert attrs(storage)["db.system.name"] == "sqlite"
    assert storage.kind == storage.SPAN_KIND_CLIENT

    # The delivery attempt (a later task) continues the stored trace context.
    attempt = next(s for s in in_trace() if s.name == "outbound delivery attempt")
    assert attempt.parent_span_id == root.span_id
    assert attrs(attempt)["smtp.queue_id"]

    # The FETCH's body read is in the message's trace and linked to the IMAP command span.
    fetched = next(s for s in in_trace() if s.name == "imap FETCH message")
    assert fetched.parent_span_id == root.span_id
    assert len(fetched.links) == 1
    command = wait_for(
        "the FETCH command span",
        lambda: [s for s in receiver.named("FETCH") if s.span_id == fetched.links[0].span_id],
    )[0]
    assert attrs(command)["imap.status"] == "ok"
    session = wait_for(
        "the IMAP session span",
        lambda: [s for s in receiver.named("imap session") if s.span_id == command.parent_span_id],
    )[0]
    assert attrs(session)["network.peer.address"] == "127.0.0.1"
    assert attrs(session)["network.peer.port"] > 0
    assert attrs(root)["smtp.recipients"] == 2
    assert {"LOGIN", "SELECT", "LOGOUT"} <= {
        s.name for _, s in receiver.all() if s.parent_span_id == session.span_id
    }

    # Resource attributes name the service.
    res = next(r for r, s in receiver.all() if s.span_id == root.span_id)
    assert res["service.name"] == "mailfleet-e2e"
    assert res["service.version"]

    # The transaction's log line carries the queue id and the same trace id.
    hex_trace = trace.hex()
    lines = [json.loads(l) for l in server.log.read_text().splitlines() if l.startswith("{")]
    tx = [l for l in lines if l.get("fields", {}).get("message") == "smtp transaction"]
    assert len(tx) == 1, tx
    assert tx[0]["fields"]["queue_id"] == queue_id
    assert tx[0]["fields"]["trace_id"] == hex_trace
    assert tx[0]["fields"]["result"] == "accepted"
    delivered = [l for l in lines if l.get("fields", {}).get("message") == "delivered"]
    assert delivered and delivered[0]["fields"]["trace_id"] == hex_trace
    logins = [l for l in lines if l.get("fields", {}).get("message") == "login"]
    assert {l["fields"]["protocol"] for l in logins} >= {"submission", "imap"}
    assert all(len(l["fields"]["trace_id"]) == 32 for l in logins)

    # No secrets and no content in spans or logs.
    for _, span in receiver.all():
        blob = span.SerializeToString()
        assert PASSWORD.encode() not in blob, span.name
        assert SECRET_BODY.encode() not in blob, span.name
    log = server.log.read_text()
    assert PASSWORD not in log
    assert SECRET_BODY not in log


def test_pop3_commands_are_spans_under_their_session(traced):
    server, receiver, _ = traced
    with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
        s.sendmail("someone@elsewhere.test", [ALICE], "Subject: hi\r\n\r\nhello\r\n")
    pop = poplib.POP3("127.0.0.1", server.pop3_port, timeout=30)
    pop.stls(context=CTX)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    pop.retr(1)
    pop.quit()
    session = wait_for("the POP3 session span", lambda: receiver.named("pop3 session"))[0]
    children = wait_for(
        "the POP3 command spans",
        lambda: (lambda c: c if {"USER", "PASS", "RETR", "QUIT"} <= set(c) else None)(
            {s.name: s for _, s in receiver.all() if s.parent_span_id == session.span_id}
        ),
    )
    assert attrs(children["RETR"])["pop3.status"] == "ok"
    assert children["RETR"].trace_id == session.trace_id


def test_http_request_continues_the_callers_trace(traced):
    server, receiver, _ = traced
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    parent = "00f067aa0ba902b7"
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/healthz",
        headers={"traceparent": f"00-{trace_id}-{parent}-01"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    span = wait_for("the HTTP span", lambda: receiver.named("GET /healthz"))[0]
    assert span.trace_id.hex() == trace_id
    assert span.parent_span_id.hex() == parent
    assert attrs(span)["http.response.status_code"] == 200
    # A malformed header starts a new trace instead.
    req = urllib.request.Request(
        f"http://127.0.0.1:{server.http_port}/readyz", headers={"traceparent": "00-zz-bad-01"}
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200
    span = wait_for("the second HTTP span", lambda: receiver.named("GET /readyz"))[0]
    assert span.parent_span_id == b"" and span.trace_id.hex() != trace_id
