"""Checks of the shipped dashboards and alerting rules that need no Mailfleet process:
promtool's own checks and unit tests, the files' structure, the metric names they use, and
the rewriting `observability_assets.all_expressions()` does for the live-Prometheus test."""

import re
import shutil
import subprocess

import pytest
import yaml

import observability_assets as assets

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian: prometheus)")

# The families GET /metrics exports (docs/operations.md has the reference). A histogram
# `h` is used as h_bucket, h_sum and h_count.
COUNTERS_AND_GAUGES = {
    "mailfleet_build_info",
    "mailfleet_ready",
    "mailfleet_connections_active",
    "mailfleet_connections_total",
    "mailfleet_connections_refused_total",
    "mailfleet_tls_handshakes_total",
    "mailfleet_tls_certificate_expiry_timestamp_seconds",
    "mailfleet_commands_total",
    "mailfleet_logins_total",
    "mailfleet_smtp_messages_accepted_total",
    "mailfleet_smtp_messages_refused_total",
    "mailfleet_queue_messages",
    "mailfleet_queue_oldest_age_seconds",
    "mailfleet_delivery_attempts_total",
    "mailfleet_dsns_sent_total",
    "mailfleet_storage_errors_total",
    "mailfleet_blob_cache_requests_total",
    "mailfleet_coordinator_resyncs_total",
    "mailfleet_leases_held",
    "mailfleet_leases_lost_total",
    "mailfleet_rate_limit_hits_total",
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_max_fds",
    "process_start_time_seconds",
    "up",
}
HISTOGRAMS = {
    "mailfleet_command_duration_seconds",
    "mailfleet_smtp_message_size_bytes",
    "mailfleet_smtp_delivery_duration_seconds",
    "mailfleet_storage_operation_duration_seconds",
    "mailfleet_metadata_commit_batch_size",
    "mailfleet_coordinator_event_lag_seconds",
}
KNOWN_METRICS = COUNTERS_AND_GAUGES | {
    f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")
}


def promtool(*args):
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


# --- alerting rules ------------------------------------------------------------------------


@needs_promtool
def test_promtool_check_rules():
    r = promtool("check", "rules", str(assets.RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


@needs_promtool
def test_promtool_test_rules():
    r = promtool("test", "rules", str(assets.RULES_TEST))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SUCCESS" in r.stdout


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    alerts = {r["alert"] for r in assets.alert_rules()}
    doc = yaml.safe_load(assets.RULES_TEST.read_text())
    assert doc["rule_files"] == [assets.RULES.name]
    firing, quiet = set(), set()
    for test in doc["tests"]:
        for case in test.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    assert alerts - firing == set(), "alerts with no case where they fire"
    assert alerts - quiet == set(), "alerts with no case where they stay quiet"
    assert (firing | quiet) - alerts == set(), "tests of alerts that do not exist"


def _doc_anchors():
    """GitHub's anchors of docs/operations.md's headings."""
    anchors = set()
    fenced = False
    for line in assets.OPERATIONS_DOC.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        m = None if fenced else re.match(r"#{1,6}\s+(.*)", line)
        if m:
            text = re.sub(r"[`*_]", "", m.group(1)).strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


def test_alert_rules_follow_the_conventions():
    rules = assets.alert_rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names must be unique"
    anchors = _doc_anchors()
    assert "alerts" in anchors, "docs/operations.md needs its ## Alerts section"
    for r in rules:
        name = r["alert"]
        assert re.fullmatch(r"Mailfleet[A-Z]\w+", name), name
        assert re.fullmatch(r"\d+[smh]", r.get("for", "")), f"{name}: needs a `for`"
        assert r.get("labels", {}).get("severity") in {"critical", "warning"}, name
        ann = r.get("annotations", {})
        assert {"summary", "description", "runbook"} <= set(ann), f"{name}: annotations {sorted(ann)}"
        doc, _, anchor = ann["runbook"].partition("#")
        assert doc == "docs/operations.md", f"{name}: runbook {ann['runbook']}"
        assert anchor == name.lower(), f"{name}: runbook anchor {anchor}"
        assert anchor in anchors, f"{name}: docs/operations.md has no heading for #{anchor}"
        # One top-level comparison, so the live test can evaluate it with `bool`.
        assert len(assets.top_level_comparisons(r["expr"])) == 1, f"{name}: {r['expr']}"


# --- dashboards ----------------------------------------------------------------------------


def test_dashboards_are_valid_and_unique():
    dashes = assets.dashboards()
    assert {p.stem for p, _ in dashes} >= {"overview", "inbound", "outbound", "sessions", "storage", "node"}
    uids = [d["uid"] for _, d in dashes]
    titles = [d["title"] for _, d in dashes]
    assert len(set(uids)) == len(uids), uids
    assert len(set(titles)) == len(titles), titles
    for path, d in dashes:
        assert d["schemaVersion"] == 39, path
        assert d.get("id") is None, f"{path}: a provisioned dashboard has no id"
        assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]), path
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert variables["datasource"]["type"] == "datasource", path
        assert variables["datasource"]["query"] == "prometheus", path
        inst = variables["instance"]
        assert inst["type"] == "query" and inst["query"]["query"] == "label_values(mailfleet_build_info, instance)"
        assert inst["datasource"]["uid"] == "${datasource}", path
        ids = [p["id"] for p in assets.panels(d)]
        assert len(ids) == len(set(ids)), f"{path}: panel ids {ids}"
        for p in assets.panels(d):
            if p["type"] == "row":
                continue
            where = f"{path.name} panel {p['id']} {p['title']!r}"
            assert p["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}, where
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            targets = p.get("targets", [])
            assert targets and all(t.get("expr", "").strip() for t in targets), where
            refs = [t["refId"] for t in targets]
            assert len(refs) == len(set(refs)), where
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, where


def test_every_dashboard_selector_filters_by_instance():
    for path, d in assets.dashboards():
        for p in assets.panels(d):
            for t in p.get("targets", []):
                for metric, matchers in assets.selectors(t["expr"]):
                    assert 'instance=~"$instance"' in matchers, (
                        f"{path.name} panel {p['title']!r}: {metric} without instance=~\"$instance\""
                    )


# --- every expression ----------------------------------------------------------------------


def test_expressions_use_only_exported_metrics():
    for source, expr in assets.all_expressions():
        names = assets.metric_names(expr)
        assert names, f"{source}: selects no metric: {expr}"
        for name in names:
            assert name.startswith(("mailfleet_", "process_")) or name == "up", f"{source}: {name}"
            assert name in KNOWN_METRICS, f"{source}: {name} is not a metric Mailfleet exports"


@needs_promtool
def test_every_expression_parses(tmp_path):
    """promtool checks PromQL syntax of recording rules: one per expression."""
    exprs = assets.all_expressions()
    rules = {
        "groups": [
            {
                "name": "parse",
                "rules": [{"record": f"check:expr_{i}", "expr": e} for i, (_, e) in enumerate(exprs)],
            }
        ]
    }
    f = tmp_path / "parse.rules.yml"
    f.write_text(yaml.safe_dump(rules))
    r = promtool("check", "rules", str(f))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in r.stdout


def test_all_expressions_substitutes_and_rewrites():
    exprs = assets.all_expressions()
    sources = [s for s, _ in exprs]
    assert len(sources) == len(set(sources))
    n_targets = sum(len(p.get("targets", [])) for _, d in assets.dashboards() for p in assets.panels(d))
    n_vars = len(assets.dashboards())
    assert len(exprs) == n_targets + n_vars + len(assets.alert_rules())
    for source, expr in exprs:
        assert "$" not in expr, f"{source}: {expr}"
    alerts = dict(exprs)
    assert alerts["alerts/mailfleet.rules.yml alert MailfleetNodeNotReady"] == 'mailfleet_ready{job="mailfleet"} == bool 0'
    assert alerts["alerts/mailfleet.rules.yml alert MailfleetNodeDown"] == 'up{job="mailfleet"} == bool 0'
    assert all(" bool " in e for s, e in exprs if " alert " in s)
    assert "variable instance" in sources[0] and exprs[0][1] == "mailfleet_build_info"


def test_with_bool_rewrites_the_top_level_comparison_only():
    w = assets.with_bool
    assert w("a > 1") == "a > bool 1"
    assert w("a>1") == "a> bool 1"
    assert w("x{l=~\"a|b\", m!=\"c\"} <= 3") == 'x{l=~"a|b", m!="c"} <= bool 3'
    # Comparisons inside parentheses, strings and brackets stay as they are.
    assert w("sum(a > 2) / count(b == 1) != 0") == "sum(a > 2) / count(b == 1) != bool 0"
    assert w('a{l=">"} < 5') == 'a{l=">"} < bool 5'
    assert w("(a - time()) / 86400 < 14") == "(a - time()) / 86400 < bool 14"
    assert w("a > bool 1") == "a > bool 1"
    with pytest.raises(ValueError):
        w("a")
    with pytest.raises(ValueError):
        w("a > 1 and b < 2")


def test_variable_substitution():
    s = assets.substitute_variables
    assert s('rate(x{instance=~"$instance"}[$__rate_interval])') == 'rate(x{instance=~".*"}[1m])'
    assert s('increase(x{instance=~"${instance}"}[$__range])', range_="2h") == 'increase(x{instance=~".*"}[2h])'
    assert s("x[$__interval]", rate_interval="30s") == "x[30s]"
    assert s("x / $__range_s") == "x / 3600"
    with pytest.raises(ValueError):
        s('x{job="$job"}')


def test_metric_names_lexer():
    m = assets.metric_names
    assert m('histogram_quantile(0.99, sum by (le, protocol) (rate(a_bucket{protocol="imap"}[5m])))') == {"a_bucket"}
    assert m("sum without (state) (delta(q[1h])) > 1e3") == {"q"}
    assert m("process_open_fds / on (instance) group_left (version) mailfleet_build_info") == {
        "process_open_fds",
        "mailfleet_build_info",
    }
    assert m('time() - up{job="mailfleet"} offset 5m') == {"up"}
