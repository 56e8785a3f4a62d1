"""Certificates given as PEM files are reloaded without a restart."""

import smtplib
import ssl
import subprocess
import time

from conftest import Server, make_cert


def served_cn(port):
    pem = ssl.get_server_certificate(("127.0.0.1", port), timeout=10)
    out = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=pem, capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_certificate_is_reloaded(tmp_path):
    k1, c1 = make_cert(tmp_path, "first.example.test")
    k2, c2 = make_cert(tmp_path, "second.example.test")
    live_key, live_crt = tmp_path / "live.key", tmp_path / "live.crt"
    live_key.write_bytes(k1.read_bytes())
    live_crt.write_bytes(c1.read_bytes())
    s = Server(tmp_path / "d", {
        "MAILFLEET_TLS__CERT": str(live_crt),
        "MAILFLEET_TLS__KEY": str(live_key),
        "MAILFLEET_TLS__RELOAD_INTERVAL_SECS": "1",
    })
    s.start()
    try:
        assert "first.example.test" in served_cn(s.smtps_port)
        time.sleep(1.1)  # make sure the modification time changes
        live_key.write_bytes(k2.read_bytes())
        live_crt.write_bytes(c2.read_bytes())
        deadline = time.time() + 15
        while "second.example.test" not in served_cn(s.smtps_port):
            assert time.time() < deadline, "certificate not reloaded"
            time.sleep(0.3)
        # STARTTLS on the plain port uses the new certificate too.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", s.smtp_port, timeout=30) as c:
            c.starttls(context=ctx)
            der = c.sock.getpeercert(binary_form=True)
            assert der == ssl.PEM_cert_to_DER_cert(c2.read_text())
    finally:
        s.stop()
