"""The shipped Grafana dashboards and Prometheus alerting rules, as data for tests.

Not a test module. `test_observability_assets.py` checks the files without a server; the
live-Prometheus test evaluates `all_expressions()` against a Prometheus scraping a real
`mailfleet` and expects every one to return data.

Two rewrites make every expression evaluable as is:
- dashboard variables are replaced: `$instance` by `.*` (every selector is written
  `instance=~"$instance"`), `$__rate_interval` and `$__interval` by a range (1m), `$__range`
  by a longer one (1h); an unknown variable is an error, not left in place;
- an alert expression `<signal> <op> <threshold>` gets `bool` after its one top-level
  comparison, so it returns the signal's 0/1 samples even when the alert does not fire.
"""

import json
import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailfleet"
DASHBOARDS_DIR = CHART / "dashboards"
RULES = CHART / "alerts" / "mailfleet.rules.yml"
RULES_TEST = CHART / "alerts" / "mailfleet.rules.test.yml"
OPERATIONS_DOC = REPO / "docs" / "operations.md"

COMPARISONS = ("==", "!=", ">=", "<=", ">", "<")


def dashboards():
    """Every dashboard: (path, parsed JSON), sorted by file name."""
    return [(p, json.loads(p.read_text())) for p in sorted(DASHBOARDS_DIR.glob("*.json"))]


def panels(dashboard):
    """Every panel of a dashboard, panels nested in collapsed rows included."""
    out = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def alert_rules():
    """Every alerting rule of RULES (recording rules left out), each with its group name
    under the key `group`."""
    doc = yaml.safe_load(RULES.read_text())
    return [
        {**rule, "group": group["name"]}
        for group in doc["groups"]
        for rule in group["rules"]
        if "alert" in rule
    ]


def substitute_variables(expr, rate_interval="1m", range_="1h"):
    """Replaces Grafana's variables in a panel's expression by values Prometheus accepts."""
    seconds = _duration_seconds(range_)
    values = {
        "instance": ".*",
        "__rate_interval": rate_interval,
        "__interval": rate_interval,
        "__interval_ms": str(_duration_seconds(rate_interval) * 1000),
        "__range": range_,
        "__range_s": str(seconds),
        "__range_ms": str(seconds * 1000),
    }

    def replace(m):
        name = m.group(1) or m.group(2)
        if name not in values:
            raise ValueError(f"unknown dashboard variable ${name} in {expr!r}")
        return values[name]

    # `${name}`, `${name:format}` or `$name`.
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", replace, expr)


def _duration_seconds(d):
    m = re.fullmatch(r"(\d+)([smhd])", d)
    if not m:
        raise ValueError(f"not a simple duration: {d!r}")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _top_level_tokens(expr):
    """(index, text) of each character outside strings, comments, (), [] and {}."""
    depth = 0
    i = 0
    n = len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if expr[j] == "\\" and c != "`" else 1
            i = j + 1
            continue
        if c == "#":
            while i < n and expr[i] != "\n":
                i += 1
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif depth == 0:
            yield i, c
        i += 1


def top_level_comparisons(expr):
    """(start, end) of every comparison operator outside parentheses, brackets and braces."""
    found = []
    tokens = list(_top_level_tokens(expr))
    k = 0
    while k < len(tokens):
        i, c = tokens[k]
        nxt = expr[i + 1] if i + 1 < len(expr) else ""
        if c in "=!<>" and nxt == "=":
            found.append((i, i + 2))
            k += 2
            continue
        if c in "<>":
            found.append((i, i + 1))
        k += 1
    return found


def with_bool(expr):
    """`<signal> <op> <threshold>` → `<signal> <op> bool <threshold>`.

    Raises ValueError unless the expression has exactly one top-level comparison."""
    comparisons = top_level_comparisons(expr)
    if len(comparisons) != 1:
        raise ValueError(f"expected one top-level comparison, found {len(comparisons)}: {expr!r}")
    _, end = comparisons[0]
    rest = expr[end:]
    if re.match(r"\s*bool\b", rest):
        return expr
    if not rest[:1].isspace():
        rest = " " + rest
    return f"{expr[:end]} bool{rest}"


def variable_queries(dashboard):
    """(name, PromQL) of each query variable: `label_values(m, label)` becomes `m`."""
    out = []
    for v in dashboard.get("templating", {}).get("list", []):
        if v.get("type") != "query":
            continue
        q = v.get("query")
        q = q.get("query", "") if isinstance(q, dict) else (q or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", q)
        out.append((v["name"], m.group(1).strip() if m else q))
    return out


def all_expressions(rate_interval="1m", range_="1h"):
    """(source, expr) for every panel target and query variable of every dashboard and every
    alert rule, rewritten as described in the module docstring."""
    out = []
    for path, dash in dashboards():
        name = path.relative_to(CHART)
        for var, q in variable_queries(dash):
            out.append((f"{name} variable {var}", substitute_variables(q, rate_interval, range_)))
        for p in panels(dash):
            for t in p.get("targets", []):
                if t.get("expr"):
                    src = f"{name} panel {p['id']} {p.get('title', '')!r} target {t.get('refId', '?')}"
                    out.append((src, substitute_variables(t["expr"], rate_interval, range_)))
    for rule in alert_rules():
        out.append((f"{RULES.relative_to(CHART)} alert {rule['alert']}", with_bool(rule["expr"].strip())))
    return out


_KEYWORDS = {
    "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
    "group_left", "group_right", "inf", "nan",
}


def metric_names(expr):
    """The metric names an expression selects (a small lexer, enough for these files)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?", s):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in _KEYWORDS:
            continue
        names.add(word)
    return names


def selectors(expr):
    """(metric, matchers text) of every `metric{...}` selector; a bare `metric` gives ''."""
    s = re.sub(r"\[[^\]]*\]", " ", expr)
    out = []
    for name in metric_names(expr):
        for m in re.finditer(rf"(?<![\w:]){re.escape(name)}(?![\w:])(\s*\{{([^}}]*)\}})?", s):
            out.append((name, m.group(2) or ""))
    return out
