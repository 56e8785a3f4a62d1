"""ARC sealing when Mailfleet forwards (RFC 8617 §5.1): a Sieve `redirect` of a message
from another domain goes out to Postfix's smtp-sink with an ARC set that dkimpy (an
implementation independent of mail-auth) verifies: `cv=pass` at `i=1`, signed by the
forwarding domain's DKIM key, its ARC-Authentication-Results carrying the verdicts
Mailfleet saw on arrival (SPF and DKIM pass), which the forward itself breaks for SPF.
"""

import shutil
import time
from pathlib import Path

import dkim
import pytest
import sievelib.managesieve as managesieve
from dnslib import PTR, A
from sievelib.managesieve import Client

from conftest import PASSWORD, Server, free_port
from dnszone import start_zone, txt
from test_delivery import Sink, crlf, dkim_records
from test_sender_auth import dkim_sign, keys, message, send  # noqa: F401 (fixture)
from test_sieve_delivery import self_signed_tls  # noqa: F401 (autouse fixture)

SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
pytestmark = pytest.mark.skipif(
    not Path(SMTP_SINK).exists(), reason="Postfix's smtp-sink is not installed"
)
ALICE = "alice@example.test"


@pytest.fixture
def dns(keys):  # noqa: F811
    records = {
        ("pass.test", "TXT"): [txt("v=spf1 ip4:127.0.0.1 -all")],
        ("_dmarc.pass.test", "TXT"): [txt("v=DMARC1; p=reject")],
        ("sel._domainkey.pass.test", "TXT"): [txt(f"v=DKIM1; k=rsa; p={keys['pass'][1]}")],
        ("1.0.0.127.in-addr.arpa", "PTR"): [PTR("client.pass.test.")],
        ("client.pass.test", "A"): [A("127.0.0.1")],
        ("client.pass.test", "TXT"): [txt("v=spf1 ip4:127.0.0.1 -all")],
    }
    running = start_zone(records)
    yield running
    running.stop()


def test_sieve_redirect_to_another_host_is_arc_sealed(tmp_path, dns, keys):  # noqa: F811
    sink = Sink(tmp_path / "sink", free_port())
    mx = Server(
        tmp_path / "data",
        {
            "MAILFLEET_SMTP__AUTHENTICATION__RESOLVER": f"127.0.0.1:{dns.port}",
            "MAILFLEET_SMTP__AUTHENTICATION__SKIP_NETWORKS": "[]",
            "MAILFLEET_DELIVERY__ENABLED": "true",
            "MAILFLEET_DELIVERY__POLL_INTERVAL_SECS": "1",
            "MAILFLEET_DELIVERY__RESOLVER": "127.0.0.1:9",
            "MAILFLEET_DELIVERY__ROUTES__REMOTE.TEST": f"127.0.0.1:{sink.port}",
        },
    )
    try:
        mx.cli("domain", "add", "example.test")
        mx.cli("user", "add", ALICE, "--password-stdin", stdin=PASSWORD + "\n")
        mx.cli("dkim", "generate", "example.test")
        published = dkim_records(mx)
        mx.start()
        c = Client("127.0.0.1", mx.managesieve_port)
        assert c.connect(ALICE, PASSWORD, starttls=True, authmech="PLAIN"), c.errmsg
        assert c.putscript("fwd", 'redirect "friend@remote.test";\n'), c.errmsg
        assert c.setactive("fwd"), c.errmsg
        c.logout()

        signed = dkim_sign(message("news@pass.test", "forward this"), keys)
        code, _ = send(mx, "bounce@pass.test", signed)
        assert code == 250
        deadline = time.time() + 30
        while time.time() < deadline and not sink.messages():
            time.sleep(0.2)
        files = sink.messages()
        assert len(files) == 1, "the redirect reached the next hop"
        # smtp-sink writes its file once the whole message is in: wait until it stops growing.
        time.sleep(0.5)
        raw = crlf(files[0].read_bytes())
        head = raw.split(b"\r\n\r\n", 1)[0]
        assert b"ARC-Seal: i=1;" in head
        assert b"ARC-Message-Signature: i=1;" in head
        aar = [l for l in head.split(b"\r\n") if l.startswith(b"ARC-Authentication-Results:")]
        assert aar, head.decode()

        def dnsfunc(name, timeout=5):
            name = name.decode() if isinstance(name, bytes) else name
            name = name.rstrip(".")
            if name == "sel._domainkey.pass.test":
                return f"v=DKIM1; k=rsa; p={keys['pass'][1]}".encode()
            return published.get(name.encode(), b"")

        cv, results, reason = dkim.arc_verify(raw, dnsfunc=dnsfunc)
        assert cv == b"pass", (cv, results, reason)
        assert results[0]["instance"] == 1
        assert results[0]["ams-domain"] == b"example.test"
        # The ARC-Authentication-Results say what Mailfleet saw on arrival.
        unfolded = b" ".join(l.strip() for l in head.split(b"\r\n"))
        start = unfolded.index(b"ARC-Authentication-Results:")
        text = unfolded[start:start + 2000]
        assert b"spf=pass" in text and b"dkim=pass" in text and b"dmarc=pass" in text, text
    finally:
        mx.stop()
        sink.stop()
