"""DMARC aggregate reports (RFC 7489 §7.2) and TLS-RPT reports (RFC 8460) end to end.

A real DNS server (dnslib) publishes the senders' DMARC records with `rua` destinations
and a recipient domain's `_smtp._tls` record; messages arrive by smtplib (DKIM-signed by
dkimpy), one goes out to Postfix's smtp-sink. `mailfleet reports send --include-today`
runs what the server runs every hour for closed days; the reports travel through the
outbound queue to local mailboxes, where they are unpacked and read as a report reader
would: XML (ElementTree) and JSON, both gzip-compressed.
"""

import email
import email.policy
import gzip
import json
import shutil
import smtplib
import time
import xml.etree.ElementTree as ET
import zipfile
import io
from pathlib import Path

import pytest
from dnslib import PTR, A

from conftest import PASSWORD, Server, free_port
from dnszone import start_zone, txt
from test_delivery import Sink, submit, wait_for
from test_sender_auth import dkim_sign, keys, message, rsa_key  # noqa: F401 (fixture)

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
pytestmark = pytest.mark.skipif(
    not Path(SMTP_SINK).exists(), reason="Postfix's smtp-sink is not installed"
)

ALICE = "alice@example.test"
REPORTS = "reports@example.test"


@pytest.fixture
def dns(keys):  # noqa: F811
    records = {
        ("pass.test", "TXT"): [txt("v=spf1 ip4:127.0.0.1 -all")],
        ("_dmarc.pass.test", "TXT"): [txt(f"v=DMARC1; p=reject; rua=mailto:{REPORTS}")],
        # example.test takes pass.test's reports (RFC 7489 §7.1).
        ("pass.test._report._dmarc.example.test", "TXT"): [txt("v=DMARC1")],
        ("sel._domainkey.pass.test", "TXT"): [txt(f"v=DKIM1; k=rsa; p={keys['pass'][1]}")],
        # fail.test names a destination that never agreed to take its reports.
        ("fail.test", "TXT"): [txt("v=spf1 ip4:192.0.2.1 -all")],
        ("_dmarc.fail.test", "TXT"): [txt(f"v=DMARC1; p=reject; rua=mailto:{REPORTS}")],
        ("1.0.0.127.in-addr.arpa", "PTR"): [PTR("client.pass.test.")],
        ("client.pass.test", "A"): [A("127.0.0.1")],
        ("client.pass.test", "TXT"): [txt("v=spf1 ip4:127.0.0.1 -all")],
        ("_smtp._tls.remote.test", "TXT"): [txt(f"v=TLSRPTv1; rua=mailto:{REPORTS}")],
    }
    running = start_zone(records)
    yield running.port
    running.stop()


@pytest.fixture
def sink(tmp_path):
    s = Sink(tmp_path / "sink", free_port())
    yield s
    s.stop()


@pytest.fixture
def mx(tmp_path, dns, sink):
    s = Server(
        tmp_path / "data",
        {
            "MAILFLEET_SERVER__HOSTNAME": "mx.example.test",
            "MAILFLEET_SMTP__AUTHENTICATION__RESOLVER": f"127.0.0.1:{dns}",
            "MAILFLEET_SMTP__AUTHENTICATION__SKIP_NETWORKS": "[]",
            "MAILFLEET_DELIVERY__ENABLED": "true",
            "MAILFLEET_DELIVERY__POLL_INTERVAL_SECS": "1",
            "MAILFLEET_DELIVERY__RESOLVER": "127.0.0.1:9",
            "MAILFLEET_DELIVERY__ROUTES__REMOTE.TEST": f"127.0.0.1:{sink.port}",
            "MAILFLEET_REPORTS__DMARC_ENABLED": "true",
            "MAILFLEET_REPORTS__TLSRPT_ENABLED": "true",
            "MAILFLEET_REPORTS__FLUSH_SECS": "1",
            "MAILFLEET_REPORTS__ORG_NAME": "Example Mail",
        },
    )
    s.cli("domain", "add", "example.test")
    for user in (ALICE, REPORTS):
        s.cli("user", "add", user, "--password-stdin", stdin=PASSWORD + "\n")
    s.start()
    yield s
    s.stop()


def send(mx, mail_from, msg):
    with smtplib.SMTP("127.0.0.1", mx.smtp_port, timeout=60) as s:
        s.ehlo("client.pass.test")
        assert s.mail(mail_from)[0] == 250
        assert s.rcpt(ALICE)[0] == 250
        return s.data(msg)[0]


def pending(mx):
    return json.loads(mx.cli("--json", "reports", "pending").stdout)


def reports_received(mx):
    """The report messages in the reports mailbox, parsed."""
    out = []
    for m in mx.messages(REPORTS):
        raw = mx.message_bytes(REPORTS, m["uid"])
        out.append(email.message_from_bytes(raw, policy=email.policy.default))
    return out


def attachment(msg):
    """The report in a report message: (content type, decompressed bytes)."""
    for part in msg.walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True)
        ctype = part.get_content_type()
        if data[:2] == b"\x1f\x8b":
            return ctype, gzip.decompress(data)
        if data[:2] == b"PK":
            with zipfile.ZipFile(io.BytesIO(data)) as z:
                return ctype, z.read(z.namelist()[0])
    raise AssertionError(f"no compressed report in:\n{msg}")


def test_dmarc_and_tls_reports_reach_their_destinations(mx, keys, sink):  # noqa: F811
    # Three DKIM-signed messages that pass DMARC, two from a domain whose destination
    # never authorised it (p=reject: refused at DATA, still counted for its report).
    for i in range(3):
        code = send(mx, "bounce@pass.test", dkim_sign(message("news@pass.test", f"ok{i}"), keys))
        assert code == 250
    for i in range(2):
        assert send(mx, "x@fail.test", message("ceo@fail.test", f"forged{i}")) == 550
    # One message out to remote.test, which publishes a TLSRPT record.
    submit(mx, "to the remote")
    wait_for("the delivery to smtp-sink", lambda: sink.messages())

    kinds = wait_for(
        "the collected counts in the store",
        lambda: (lambda p: p if {("dmarc", "pass.test"), ("dmarc", "fail.test"), ("tlsrpt", "remote.test")}
                 <= {(g["kind"], g["domain"]) for g in p} else None)(pending(mx)),
    )
    assert all(g["day"] == time.strftime("%Y-%m-%d", time.gmtime()) for g in kinds)

    # Today is not closed: the server's own run would leave it; the admin run sends it.
    out = json.loads(mx.cli("--json", "reports", "send").stdout)
    assert out["dmarc_reports"] == 0 and out["tls_reports"] == 0
    out = json.loads(mx.cli("--json", "reports", "send", "--include-today").stdout)
    assert out["dmarc_reports"] == 1, out
    assert out["tls_reports"] == 1, out
    assert out["discarded"] == 1, out  # fail.test: its destination did not authorise it
    assert pending(mx) == []

    try:
        got = wait_for("two reports in the reports mailbox",
                       lambda: (lambda r: r if len(r) >= 2 else None)(reports_received(mx)), timeout=60)
    except AssertionError:
        raise AssertionError(f"queue: {mx.cli('--json', 'queue', 'list').stdout}")
    assert len(got) == 2
    by_kind = {}
    for msg in got:
        assert msg["From"].addresses[0].addr_spec == "noreply-dmarc@mx.example.test"
        assert REPORTS in msg["To"]
        ctype, body = attachment(msg)
        by_kind["tls" if "tlsrpt" in ctype or body.lstrip().startswith(b"{") else "dmarc"] = (msg, body)

    msg, xml = by_kind["dmarc"]
    assert "pass.test" in msg["Subject"]
    root = ET.fromstring(xml)
    # mail-auth writes the DMARCbis namespace (urn:ietf:params:xml:ns:dmarc-2.0); the
    # element names are RFC 7489 appendix C's.
    assert root.tag.split("}")[-1] == "feedback"
    for el in root.iter():
        el.tag = el.tag.split("}")[-1]
    assert root.findtext("report_metadata/org_name") == "Example Mail"
    assert root.findtext("policy_published/domain") == "pass.test"
    assert root.findtext("policy_published/p") == "reject"
    rows = root.findall("record")
    assert sum(int(r.findtext("row/count")) for r in rows) == 3
    for r in rows:
        assert r.findtext("row/source_ip") == "127.0.0.1"
        assert r.findtext("row/policy_evaluated/disposition") == "none"
        assert r.findtext("row/policy_evaluated/dkim") == "pass"
        assert r.findtext("identifiers/header_from") == "pass.test"
        assert r.findtext("auth_results/dkim/domain") == "pass.test"
        assert r.findtext("auth_results/dkim/result") == "pass"
        assert r.findtext("auth_results/spf/result") == "pass"
    begin = int(root.findtext("report_metadata/date_range/begin"))
    end = int(root.findtext("report_metadata/date_range/end"))
    assert end - begin == 86_399 and begin % 86_400 == 0

    msg, body = by_kind["tls"]
    report = json.loads(body)
    assert report["organization-name"] == "Example Mail"
    (policy,) = report["policies"]
    assert policy["policy"]["policy-type"] == "no-policy-found"
    assert policy["policy"]["policy-domain"] == "remote.test"
    assert policy["summary"]["total-successful-session-count"] == 1
    assert policy["summary"]["total-failure-session-count"] == 0
