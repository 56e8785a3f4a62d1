"""A real Prometheus (Debian's `prometheus`) scrapes a running Mailfleet under a short SMTP,
IMAP and POP3 load; PromQL through its HTTP API must return what the test sent, and every
expression of the shipped dashboards and alert rules must return data."""

import imaplib
import json
import poplib
import shutil
import smtplib
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

import observability_assets
from conftest import PASSWORD, free_port

ALICE = "alice@example.test"
MESSAGES = 7
CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE
SCRAPE = "1s"

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="Debian's prometheus is not installed"
)


def query(port, expr):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        body = json.load(r)
    assert body["status"] == "success", (expr, body)
    return body["data"]["result"]


def value(port, expr):
    """The single sample of `expr`, as a float."""
    result = query(port, expr)
    assert len(result) == 1, (expr, result)
    return float(result[0]["value"][1])


def wait_for(port, expr, want, timeout=30):
    """Waits until `expr` has one sample equal to `want` (a scrape lands every second)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            result = query(port, expr)
        except urllib.error.URLError:
            # Prometheus is still starting.
            time.sleep(0.5)
            continue
        if len(result) == 1:
            last = float(result[0]["value"][1])
            if last == want:
                return
        time.sleep(0.5)
    raise AssertionError(f"{expr} = {last}, want {want}")


@pytest.fixture
def prometheus(server, tmp_path):
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""global:
  scrape_interval: {SCRAPE}
  evaluation_interval: {SCRAPE}
rule_files:
  - {observability_assets.RULES}
scrape_configs:
  - job_name: mailfleet
    static_configs:
      - targets: ["127.0.0.1:{server.http_port}"]
"""
    )
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--web.enable-lifecycle",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "prometheus.log", "w"),
    )
    try:
        wait_for(port, 'up{job="mailfleet"}', 1.0)
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def send_load(server):
    for i in range(MESSAGES):
        with smtplib.SMTP("127.0.0.1", server.smtp_port, timeout=30) as s:
            msg = (
                f"From: <sender@remote.test>\r\nTo: <{ALICE}>\r\nSubject: metrics {i}\r\n"
                f"Message-ID: <metrics-{i}@remote.test>\r\n\r\nbody {i}\r\n"
            )
            s.sendmail("sender@remote.test", [ALICE], msg.encode())
    imap = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=CTX)
    imap.login(ALICE, PASSWORD)
    imap.select("INBOX")
    for _ in range(3):
        typ, _ = imap.fetch("1:*", "(FLAGS BODY.PEEK[])")
        assert typ == "OK"
    typ, _ = imap.store("1", "+FLAGS", "(\\Flagged)")
    assert typ == "OK"
    try:
        imap.select("No-Such-Box")
    except imaplib.IMAP4.error:
        pass
    imap.logout()
    bad = imaplib.IMAP4_SSL("127.0.0.1", server.imaps_port, ssl_context=CTX)
    with pytest.raises(imaplib.IMAP4.error):
        bad.login(ALICE, "wrong password")
    bad.logout()
    pop = poplib.POP3_SSL("127.0.0.1", server.pop3s_port, timeout=30, context=CTX)
    pop.user(ALICE)
    pop.pass_(PASSWORD)
    count, _ = pop.stat()
    assert count == MESSAGES
    for n in range(1, count + 1):
        pop.retr(n)
    pop.quit()


def test_prometheus_scrapes_what_was_sent(server, prometheus):
    port = prometheus
    send_load(server)
    # Counts equal to what the test sent.
    wait_for(port, 'mailfleet_smtp_messages_accepted_total{protocol="smtp"}', MESSAGES)
    wait_for(
        port,
        'sum(mailfleet_commands_total{protocol="smtp",command="DATA",result="2xx"})',
        MESSAGES,
    )
    # The fixture's start-up probe connects too.
    wait_for(
        port,
        f'sum(mailfleet_connections_total{{protocol="smtp",listener="plain"}}) >= bool {MESSAGES}',
        1,
    )
    wait_for(port, 'mailfleet_smtp_delivery_duration_seconds_count{protocol="smtp"}', MESSAGES)
    wait_for(port, 'sum(mailfleet_commands_total{protocol="imap",command="FETCH",result="ok"})', 3)
    wait_for(port, 'sum(mailfleet_commands_total{protocol="imap",command="STORE",result="ok"})', 1)
    wait_for(port, 'sum(mailfleet_commands_total{protocol="imap",command="SELECT",result="no"})', 1)
    wait_for(
        port,
        'mailfleet_logins_total{protocol="imap",mechanism="imap_login",result="success"}',
        1,
    )
    wait_for(
        port,
        'mailfleet_logins_total{protocol="imap",mechanism="imap_login",result="bad_password"}',
        1,
    )
    wait_for(port, 'sum(mailfleet_commands_total{protocol="pop3",command="RETR",result="ok"})', MESSAGES)
    wait_for(
        port, 'mailfleet_logins_total{protocol="pop3",mechanism="user_pass",result="success"}', 1
    )
    # Plausible values: sizes, latencies, storage and process figures.
    size_sum = value(port, 'mailfleet_smtp_message_size_bytes_sum{protocol="smtp"}')
    assert 100 * MESSAGES < size_sum < 10_000 * MESSAGES, size_sum
    fetch_time = value(
        port, 'mailfleet_command_duration_seconds_sum{protocol="imap",command="FETCH"}'
    )
    assert 0 < fetch_time < 30, fetch_time
    appends = value(
        port,
        'sum(mailfleet_storage_operation_duration_seconds_count{backend="sqlite",operation="meta_append"})',
    )
    assert appends >= MESSAGES, appends
    blob_puts = value(
        port,
        'mailfleet_storage_operation_duration_seconds_count{backend="fs",operation="blob_put"}',
    )
    assert blob_puts >= MESSAGES, blob_puts
    assert value(port, "sum(mailfleet_storage_errors_total)") == 0
    assert value(port, "mailfleet_ready") == 1
    assert value(port, 'mailfleet_queue_messages{state="due"}') == 0
    rss = value(port, 'process_resident_memory_bytes{job="mailfleet"}')
    assert 1 << 20 < rss < 4 << 30, rss
    assert value(port, 'process_open_fds{job="mailfleet"}') > 5
    expiry = value(port, 'mailfleet_tls_certificate_expiry_timestamp_seconds{certificate="server"}')
    assert expiry > time.time() + 86400, "the self-signed certificate is valid for a while"
    build = query(port, "mailfleet_build_info")
    assert build[0]["metric"]["version"], build
    # Labels stay low-cardinality: no address, domain or mailbox name in any series.
    with urllib.request.urlopen(f"http://127.0.0.1:{server.http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    for secret in ("alice", "example.test", "remote.test", "No-Such-Box", "INBOX", PASSWORD):
        assert secret not in text, secret


def test_every_dashboard_and_alert_expression_returns_data(server, prometheus):
    port = prometheus
    send_load(server)
    # Two scrapes after the load, so rate() windows hold two samples.
    time.sleep(3)
    failures = []
    exprs = observability_assets.all_expressions()
    assert len(exprs) > 50, len(exprs)
    for source, expr in exprs:
        if not query(port, expr):
            failures.append(f"{source}: {expr}")
    assert not failures, "expressions without data:\n" + "\n".join(failures)
    # The rules loaded and evaluate cleanly in this Prometheus.
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as r:
        groups = json.load(r)["data"]["groups"]
    rules = [rule for g in groups for rule in g["rules"]]
    assert rules, groups
    deadline = time.monotonic() + 20
    while any(r.get("health") != "ok" for r in rules) and time.monotonic() < deadline:
        time.sleep(1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=10) as r:
            rules = [rule for g in json.load(r)["data"]["groups"] for rule in g["rules"]]
    assert all(r.get("health") == "ok" for r in rules), [
        (r["name"], r.get("lastError")) for r in rules if r.get("health") != "ok"
    ]
    # A healthy node under a short load fires nothing.
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    assert not firing, firing
