"""Static tests of the Terraform modules under terraform/.

No provider can be downloaded here (the Terraform registry is out of reach), so nothing is
planned or applied. Instead every .tf file is parsed with python-hcl2, the conventions the
modules promise are checked on the parse tree, the provider-independent locals (records.tf,
txt.tf, values.tf) are evaluated with `terraform console` when a terraform binary is on PATH
(it needs no provider for locals and variables) and compared with a Python model of the
same string logic, and checkov scans the whole directory offline.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dkim.util
import hcl2
import pytest

REPO = Path(__file__).resolve().parents[2]
TF = REPO / "terraform"
MODULES = sorted(p for p in (TF / "modules").iterdir() if p.is_dir())
EXAMPLES = TF / "examples"
CHECKOV_REQUIREMENTS = Path(__file__).with_name("requirements-checkov.txt")
TERRAFORM = shutil.which("terraform")
needs_terraform = pytest.mark.skipif(
    TERRAFORM is None, reason="no terraform binary on PATH: the HCL is only parsed, not evaluated"
)


def labelled(entry: dict):
    """The (label, body) pairs of a parsed block, without python-hcl2's __comments__ and
    __is_block__ bookkeeping keys."""
    return [(label, body) for label, body in entry.items() if not label.startswith("__")]


def unquote(value):
    """python-hcl2 8.x keeps the quotes of string literals and block labels."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse(path: Path) -> dict:
    with path.open() as handle:
        return hcl2.load(handle)


def blocks(module: Path, kind: str) -> dict[str, dict]:
    """All `kind` blocks (variable, output) of a module by unquoted label."""
    found = {}
    for tf in sorted(module.glob("*.tf")):
        for entry in parse(tf).get(kind, []):
            for label, body in labelled(entry):
                found[unquote(label)] = body
    return found


def tf_files() -> list[Path]:
    return sorted(TF.rglob("*.tf"))


# ---------------------------------------------------------------------------------------------
# Python model of the string logic in records.tf / txt.tf.


def split_255(value: str) -> list[str]:
    """The model of `regexall(".{1,255}", value)`: consecutive pieces of at most 255
    characters. The values are printable ASCII (the variables' validations refuse anything
    else), so characters are bytes."""
    return [value[i : i + 255] for i in range(0, len(value), 255)]


def route53_value(value: str) -> str:
    return '""'.join(split_255(value))


def cloudflare_content(value: str) -> str:
    return " ".join(f'"{chunk}"' for chunk in split_255(value))


def dmarc_model(d: dict) -> str:
    tags = ["v=DMARC1", f"p={d['policy']}"]
    if d.get("subdomain_policy"):
        tags.append(f"sp={d['subdomain_policy']}")
    if d.get("pct", 100) != 100:
        tags.append(f"pct={d['pct']}")
    if d.get("rua"):
        tags.append("rua=" + ",".join(d["rua"]))
    if d.get("ruf"):
        tags.append("ruf=" + ",".join(d["ruf"]))
    tags += [f"adkim={d.get('adkim', 'r')}", f"aspf={d.get('aspf', 'r')}"]
    if d.get("fo"):
        tags.append(f"fo={d['fo']}")
    return "; ".join(tags)


def rsa_2048_public_key() -> str:
    """A fresh 2048-bit RSA public key as the bare base64 DER that DKIM's p= carries."""
    private = subprocess.run(
        ["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
        check=True, capture_output=True,
    ).stdout
    der = subprocess.run(
        ["openssl", "pkey", "-pubout", "-outform", "DER"],
        input=private, check=True, capture_output=True,
    ).stdout
    return base64.b64encode(der).decode()


# ---------------------------------------------------------------------------------------------
# Conventions every module keeps.


def test_every_tf_file_parses():
    files = tf_files()
    assert len(files) >= 20, files
    for tf in files:
        parse(tf)  # raises on a syntax error


def test_every_variable_has_a_description_and_a_type():
    count = 0
    for tf in tf_files():
        for entry in parse(tf).get("variable", []):
            for name, body in labelled(entry):
                count += 1
                assert unquote(body.get("description", "")).strip(), f"{tf}: variable {name} has no description"
                assert "type" in body, f"{tf}: variable {name} has no type"
    assert count > 40


def test_every_output_has_a_description():
    count = 0
    for tf in tf_files():
        for entry in parse(tf).get("output", []):
            for name, body in labelled(entry):
                count += 1
                assert unquote(body.get("description", "")).strip(), f"{tf}: output {name} has no description"
    assert count > 15


def test_credential_outputs_are_sensitive():
    outputs = blocks(TF / "modules" / "s3-bucket", "output")
    for name in ("access_key_id", "secret_access_key"):
        assert outputs[name].get("sensitive") is True, name


def test_modules_pin_terraform_and_provider_ranges():
    assert {m.name for m in MODULES} == {"s3-bucket", "dns-route53", "dns-cloudflare", "helm-release"}
    for module in MODULES:
        (terraform,) = parse(module / "versions.tf")["terraform"]
        assert unquote(terraform["required_version"]).startswith(">="), module
        (providers,) = terraform["required_providers"]
        assert providers, module
        for name, spec in labelled(providers):
            version = unquote(spec["version"])
            # A lower bound and an upper bound below the next major version.
            assert re.fullmatch(r">= \d+\.\d+, < \d+\.0", version), f"{module.name}: {name} {version}"
            assert "/" in unquote(spec["source"]), f"{module.name}: {name} has no source"


def test_every_module_has_a_readme_listing_its_inputs_and_outputs():
    for module in MODULES:
        readme = (module / "README.md").read_text()
        for kind, header in (("variable", "## Inputs"), ("output", "## Outputs")):
            assert header in readme, f"{module.name}/README.md has no {header}"
            section = readme.split(header, 1)[1].split("\n## ", 1)[0]
            for name in blocks(module, kind):
                assert re.search(rf"^\| `{re.escape(name)}` \|", section, re.M), (
                    f"{module.name}/README.md {header} does not list {name}"
                )


def test_readme_tables_are_generated_from_the_current_modules():
    sys.path.insert(0, str(Path(__file__).parent))
    import readme_tables

    for module in MODULES:
        tables = (module / "README.md").read_text().split("## Inputs", 1)[1]
        assert "## Inputs" + tables == readme_tables.render(module), (
            f"{module.name}/README.md is stale: run python3 tests/terraform/readme_tables.py"
        )


def test_every_module_has_an_example_that_sets_all_required_variables():
    for module in MODULES:
        example = EXAMPLES / module.name / "main.tf"
        assert example.exists(), f"no example for {module.name}"
        calls = [
            body
            for entry in parse(example).get("module", [])
            for _, body in labelled(entry)
            if unquote(body["source"]) == f"../../modules/{module.name}"
        ]
        assert len(calls) == 1, f"{example} does not use modules/{module.name}"
        required = {name for name, body in blocks(module, "variable").items() if "default" not in body}
        assert required, module.name
        missing = required - set(calls[0])
        assert not missing, f"{example} leaves required variables unset: {missing}"
        unknown = {k for k in calls[0] if not k.startswith("__")} - set(blocks(module, "variable")) - {"source", "version", "providers"}
        assert not unknown, f"{example} sets variables {module.name} does not have: {unknown}"


def test_dns_modules_share_their_variables_and_records_verbatim():
    for name in ("variables.tf", "records.tf"):
        route53 = (TF / "modules" / "dns-route53" / name).read_text()
        cloudflare = (TF / "modules" / "dns-cloudflare" / name).read_text()
        assert route53 == cloudflare, f"dns-route53/{name} and dns-cloudflare/{name} differ"


def test_txt_split_uses_the_modelled_expressions():
    """The Python model above is only worth something if the HCL is what it models."""
    records = (TF / "modules" / "dns-route53" / "records.tf").read_text()
    assert 'values = [for value in record.values : regexall(".{1,255}", value)]' in records
    route53 = (TF / "modules" / "dns-route53" / "txt.tf").read_text()
    assert 'records = [for chunks in record.values : join("\\"\\"", chunks)]' in route53
    cloudflare = (TF / "modules" / "dns-cloudflare" / "txt.tf").read_text()
    assert 'content = join(" ", [for chunk in chunks : "\\"${chunk}\\""])' in cloudflare
    assert "each.value.records" in (TF / "modules" / "dns-route53" / "main.tf").read_text()
    assert "each.value.content" in (TF / "modules" / "dns-cloudflare" / "main.tf").read_text()


def test_model_splits_a_2048_bit_dkim_key_into_255_byte_strings():
    key = rsa_2048_public_key()
    assert len(key) == 392  # base64 of the 294-byte SubjectPublicKeyInfo
    value = f"v=DKIM1; k=rsa; p={key}"
    chunks = split_255(value)
    assert [len(c) for c in chunks] == [255, len(value) - 255]
    assert chunks == re.findall(r".{1,255}", value)  # what regexall returns
    assert "".join(chunks) == value
    # Route 53's and Cloudflare's forms both carry exactly these strings.
    assert re.findall(r'"([^"]*)"', f'"{route53_value(value)}"') == chunks
    assert re.findall(r'"([^"]*)"', cloudflare_content(value)) == chunks
    # A verifier joins the strings (RFC 6376 section 3.6.2.2) and reads the key back.
    tags = dkim.util.parse_tag_value("".join(chunks).encode())
    assert tags[b"p"].decode() == key and tags[b"k"] == b"rsa"
    # Short values stay one string; exactly 255 too; 256 makes two.
    assert split_255("v=spf1 mx -all") == ["v=spf1 mx -all"]
    assert split_255("a" * 255) == ["a" * 255]
    assert split_255("a" * 256) == ["a" * 255, "a"]


def test_s3_policy_grants_only_the_six_actions_on_its_bucket():
    main = parse(TF / "modules" / "s3-bucket" / "main.tf")
    access = next(
        body
        for entry in main["data"]
        for kind, named in labelled(entry)
        if unquote(kind) == "aws_iam_policy_document"
        for name, body in labelled(named)
        if unquote(name) == "access"
    )
    actions = {unquote(a) for statement in access["statement"] for a in statement["actions"]}
    assert actions == {
        "s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket",
        "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts",
    }
    for statement in access["statement"]:
        assert unquote(statement["effect"]) == "Allow"
        for resource in statement["resources"]:
            assert "aws_s3_bucket.this.arn" in resource, resource
    text = (TF / "modules" / "s3-bucket" / "main.tf").read_text()
    assert '"aws:SecureTransport"' in text and "days_after_initiation" in text


# ---------------------------------------------------------------------------------------------
# Evaluation of the locals with `terraform console` (no provider needed).


def console(files: list[Path], tfvars: dict, expression: str, tmp_path: Path) -> subprocess.CompletedProcess:
    work = tmp_path / "console"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    for f in files:
        shutil.copy(f, work / f.name)
    (work / "test.auto.tfvars.json").write_text(json.dumps(tfvars))
    env = dict(os.environ, CHECKPOINT_DISABLE="1", TF_IN_AUTOMATION="1", TF_CLI_CONFIG_FILE="/dev/null")
    return subprocess.run(
        [TERRAFORM, "console", "-no-color"], input=f"jsonencode({expression})\n", cwd=work,
        capture_output=True, text=True, env=env, timeout=120,
    )


def evaluate(files, tfvars, expression, tmp_path):
    done = console(files, tfvars, expression, tmp_path)
    assert done.returncode == 0, done.stderr
    return json.loads(json.loads(done.stdout.strip()))


def dns_files(provider: str) -> list[Path]:
    module = TF / "modules" / f"dns-{provider}"
    return [module / "variables.tf", module / "records.tf", module / "txt.tf"]


FULL_DNS = {
    "zone_id": "Z0123456789",
    "domain": "example.com",
    "mx": [{"host": "mx1.example.com", "priority": 10}, {"host": "mx2.example.com.", "priority": 20}],
    "spf": {"mechanisms": ["mx", "include:_spf.example.net"], "all": "~all"},
    "extra_apex_txt": ["site-verification=abc"],
    "dmarc": {
        "policy": "reject", "subdomain_policy": "quarantine", "pct": 50,
        "rua": ["mailto:dmarc@example.com", "mailto:agg@example.net"], "ruf": ["mailto:ruf@example.com"],
        "adkim": "s", "aspf": "r", "fo": "1",
    },
    "mta_sts": {"id": "20261203T000000", "policy_host_cname": "lb.example.net"},
    "tls_rpt_rua": ["mailto:tls@example.com", "https://reports.example.com/tlsrpt"],
    "autoconfig": {"host": "mail.example.com", "imap_port": 0},
}


@needs_terraform
@pytest.mark.parametrize("provider", ["route53", "cloudflare"])
def test_terraform_evaluates_the_records_as_the_model_says(provider, tmp_path):
    key = rsa_2048_public_key()
    tfvars = dict(FULL_DNS, dkim_keys=[
        {"selector": "mailfleet-rsa", "public_key": key},
        {"selector": "mailfleet-ed25519", "algorithm": "ed25519", "public_key": "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="},
    ])
    got = evaluate(dns_files(provider), tfvars, "{chunks = local.txt_chunks, srv = local.srv, mx = local.mx, "
                   + ("txt = local.route53_txt}" if provider == "route53" else "txt = local.cloudflare_txt}"), tmp_path)
    dkim_rsa = f"v=DKIM1; k=rsa; p={key}"
    expected = {
        "apex": ("example.com", ["v=spf1 mx include:_spf.example.net ~all", "site-verification=abc"]),
        "dkim-mailfleet-rsa": ("mailfleet-rsa._domainkey.example.com", [dkim_rsa]),
        "dkim-mailfleet-ed25519": ("mailfleet-ed25519._domainkey.example.com",
                                   ["v=DKIM1; k=ed25519; p=11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="]),
        "dmarc": ("_dmarc.example.com", [dmarc_model(FULL_DNS["dmarc"])]),
        "mta_sts": ("_mta-sts.example.com", ["v=STSv1; id=20261203T000000"]),
        "tls_rpt": ("_smtp._tls.example.com", ["v=TLSRPTv1; rua=mailto:tls@example.com,https://reports.example.com/tlsrpt"]),
    }
    assert expected["dmarc"][1] == [
        "v=DMARC1; p=reject; sp=quarantine; pct=50; rua=mailto:dmarc@example.com,mailto:agg@example.net; "
        "ruf=mailto:ruf@example.com; adkim=s; aspf=r; fo=1"
    ]
    assert got["chunks"] == {k: {"name": n, "values": [split_255(v) for v in vs]} for k, (n, vs) in expected.items()}
    assert [len(c) for c in got["chunks"]["dkim-mailfleet-rsa"]["values"][0]] == [255, len(dkim_rsa) - 255]
    if provider == "route53":
        assert got["txt"] == {k: {"name": n, "records": [route53_value(v) for v in vs]} for k, (n, vs) in expected.items()}
    else:
        assert got["txt"] == {
            f"{k}-{i}": {"name": n, "content": cloudflare_content(v)}
            for k, (n, vs) in expected.items() for i, v in enumerate(vs)
        }
    assert got["mx"] == [{"host": "mx1.example.com", "priority": 10}, {"host": "mx2.example.com", "priority": 20}]
    served = {"name", "priority", "weight", "port", "target"}
    assert all(set(r) == served for r in got["srv"].values())
    assert {s: (r["priority"], r["weight"], r["port"], r["target"]) for s, r in got["srv"].items()} == {
        "_submissions._tcp": (0, 1, 465, "mail.example.com"),
        "_submission._tcp": (0, 1, 587, "mail.example.com"),
        "_imaps._tcp": (0, 1, 993, "mail.example.com"),
        "_imap._tcp": (0, 0, 0, "."),  # port 0: not offered (RFC 2782, RFC 6186 section 3)
        "_pop3s._tcp": (0, 1, 995, "mail.example.com"),
        "_pop3._tcp": (0, 0, 0, "."),
    }


@needs_terraform
def test_minimal_dns_inputs_publish_spf_and_dmarc_only(tmp_path):
    got = evaluate(dns_files("route53"), {"zone_id": "Z1", "domain": "example.org", "mx": []},
                   "{chunks = local.txt_chunks, srv = local.srv}", tmp_path)
    assert got == {
        "chunks": {
            "apex": {"name": "example.org", "values": [["v=spf1 mx -all"]]},
            "dmarc": {"name": "_dmarc.example.org", "values": [["v=DMARC1; p=none; adkim=r; aspf=r"]]},
        },
        "srv": {},
    }
    got = evaluate(dns_files("route53"), {"zone_id": "Z1", "domain": "example.org", "mx": [], "dmarc": None},
                   "keys(local.txt_chunks)", tmp_path)
    assert got == ["apex"]


BAD_DNS_INPUTS = [
    ({"domain": "Example.COM"}, "domain must be"),
    ({"domain": "example.com."}, "domain must be"),
    ({"domain": "-bad.example"}, "domain must be"),
    ({"mx": [{"host": "mx.example.com", "priority": 65536}]}, "MX priority"),
    ({"mx": [{"host": "mx.example.com", "priority": -1}]}, "MX priority"),
    ({"mx": [{"host": "192.0.2.1", "priority": 10}]}, "MX host"),
    ({"dmarc": {"policy": "block"}}, "dmarc.policy must be"),
    ({"dmarc": {"policy": "none", "pct": 101}}, "dmarc.pct"),
    ({"dmarc": {"policy": "none", "adkim": "x"}}, "adkim"),
    ({"dmarc": {"policy": "none", "rua": ["dmarc@example.com"]}}, "mailto:"),
    ({"dkim_keys": [{"selector": "bad_selector", "public_key": "QUJD"}]}, "DKIM selector"),
    ({"dkim_keys": [{"selector": "s1", "public_key": "-----BEGIN PUBLIC KEY-----"}]}, "public_key"),
    ({"dkim_keys": [{"selector": "s1", "public_key": "QUJD", "algorithm": "dsa"}]}, "algorithm"),
    ({"spf": {"mechanisms": ["mx"], "all": "+all"}}, "spf.all"),
    ({"spf": {"mechanisms": ["v=spf1 mx"]}}, "spf.mechanisms"),
    ({"extra_apex_txt": ['say "hi"']}, "extra_apex_txt"),
    ({"mta_sts": {"id": "has-dash"}}, "mta_sts.id"),
    ({"mta_sts": {"id": "1", "policy_host_cname": "a.example", "policy_host_ipv4": ["192.0.2.1"]}}, "exactly one"),
    ({"autoconfig": {"host": "mail.example.com", "imaps_port": 70000}}, "ports"),
]


@needs_terraform
@pytest.mark.parametrize("override,message", BAD_DNS_INPUTS, ids=[m for _, m in BAD_DNS_INPUTS])
def test_dns_variable_validations_refuse_bad_inputs(override, message, tmp_path):
    tfvars = dict({"zone_id": "Z1", "domain": "example.com", "mx": []}, **override)
    done = console(dns_files("route53"), tfvars, "local.txt_chunks", tmp_path)
    # console reports some failed validations as errors (exit 1) and others as diagnostics
    # before evaluating anyway (exit 0): the validation's own message is what counts.
    output = " ".join((done.stdout + done.stderr).split())
    assert "This was checked by the validation rule" in output, output
    assert message in output, output


HELM_FILES = [TF / "modules" / "helm-release" / "variables.tf", TF / "modules" / "helm-release" / "values.tf"]


@needs_terraform
def test_helm_values_carry_secret_names_only(tmp_path):
    tfvars = {
        "chart": "../../charts/mailfleet", "hostname": "mail.example.com", "mode": "cluster", "replicas": 3,
        "s3": {"bucket": "bodies", "region": "eu-west-1", "existing_secret": "mailfleet-s3"},
        "redis": {"existing_secret": "mailfleet-redis"},
        "scylla": {"nodes": ["scylla:9042"], "existing_secret": "mailfleet-scylla"},
        "values": {"smtp": {"maxRecipients": 100}},
    }
    documents = evaluate(HELM_FILES, tfvars, "local.values_documents", tmp_path)
    assert len(documents) == 3
    text = "\n".join(documents)
    assert '"existingSecret": "mailfleet-s3"' in text and '"existingSecret": "mailfleet-redis"' in text
    assert '"mode": "cluster"' in text and '"keep": true' in text and '"maxRecipients": 100' in text
    embedded = evaluate(HELM_FILES, {"chart": "c", "hostname": "mail.example.com"}, "local.values_documents", tmp_path)
    assert len(embedded) == 2 and '"storage":' not in "".join(embedded)


@needs_terraform
@pytest.mark.parametrize("values", [
    {"s3": {"secretAccessKey": "x"}},
    {"redis": {"password": "x"}},
    {"scylla": {"auth": {"db_password": "x"}}},
    {"apiToken": "x"},
])
def test_helm_values_refuse_credentials(values, tmp_path):
    done = console(HELM_FILES, {"chart": "c", "hostname": "mail.example.com", "values": values},
                   "local.values_documents", tmp_path)
    output = " ".join((done.stdout + done.stderr).split())
    assert "must not contain credentials" in output, output


@needs_terraform
def test_terraform_fmt_is_clean():
    env = dict(os.environ, CHECKPOINT_DISABLE="1", TF_CLI_CONFIG_FILE="/dev/null")
    done = subprocess.run([TERRAFORM, "fmt", "-check", "-recursive", "-diff", str(TF)],
                          capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------------
# checkov


def checkov_skips() -> dict[str, str]:
    """skip-check entries of terraform/.checkov.yaml with the comment above each."""
    skips, reason, in_list = {}, [], False
    for line in (TF / ".checkov.yaml").read_text().splitlines():
        stripped = line.strip()
        if not line.startswith(" ") and stripped:
            in_list = stripped == "skip-check:"
            reason = []
        elif in_list and stripped.startswith("#"):
            reason.append(stripped.lstrip("# "))
        elif in_list and stripped.startswith("- "):
            skips[stripped[2:].strip()] = " ".join(reason)
            reason = []
    return skips


def checkov_binary() -> str:
    """checkov from PATH, else from a virtual environment under ~/.cache/mailfleet built once
    from requirements-checkov.txt (about 50 s here; checkov cannot live beside python-hcl2)."""
    found = shutil.which("checkov")
    if found:
        return found
    pin = CHECKOV_REQUIREMENTS.read_text()
    version = re.search(r"^checkov==(\S+)", pin, re.M).group(1)
    venv = Path.home() / ".cache" / "mailfleet" / f"checkov-{version}"
    binary = venv / "bin" / "checkov"
    if binary.exists():
        return str(binary)
    started = time.monotonic()
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-r", str(CHECKOV_REQUIREMENTS)],
            check=True, capture_output=True, text=True, timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        shutil.rmtree(venv, ignore_errors=True)
        pytest.skip(f"checkov {version} could not be installed, so terraform/ was not scanned: "
                    f"{getattr(error, 'stderr', '') or error}")
    print(f"installed checkov {version} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return str(binary)


def test_checkov_skip_list_gives_a_reason_for_every_entry():
    skips = checkov_skips()
    assert skips, "no skip-check entries parsed"
    for check, reason in skips.items():
        assert re.fullmatch(r"CKV2?_[A-Z0-9]+_\d+", check), check
        assert len(reason) > 20, f"{check} has no reason comment"


def run_checkov(binary: str, directory: Path, *extra: str) -> list[dict]:
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false")
    env.pop("BC_API_KEY", None)
    done = subprocess.run(
        [binary, "-d", str(directory), "--framework", "terraform", "--quiet", "--compact", "-o", "json",
         "--skip-download", *extra],
        capture_output=True, text=True, env=env, timeout=600,
    )
    # checkov exits 1 when a check fails; anything else (or no JSON) is an error of its own.
    assert done.returncode in (0, 1), done.stderr
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    assert reports and all(r["summary"]["parsing_errors"] == 0 for r in reports), done.stdout[:2000]
    assert sum(r["summary"]["passed"] for r in reports) > 20
    return reports


def failed_checks(reports: list[dict]) -> set[tuple[str, str, str]]:
    return {(f["check_id"], f["resource"], f["file_path"]) for r in reports for f in r["results"]["failed_checks"]}


def test_checkov_finds_nothing_unexplained(tmp_path):
    binary = checkov_binary()
    # With terraform/.checkov.yaml, as an operator would run it: nothing may fail.
    configured = failed_checks(run_checkov(binary, TF, "--config-file", str(TF / ".checkov.yaml")))
    assert not configured, f"checkov failures not explained in terraform/.checkov.yaml: {sorted(configured)}"
    # Without it (checkov drops skipped checks from its report, and finds .checkov.yaml in the
    # scanned directory by itself, so a copy without the file is scanned): every failure is
    # one the file explains, and every entry of the file still matters.
    bare = tmp_path / "terraform"
    shutil.copytree(TF, bare)
    (bare / ".checkov.yaml").unlink()
    failing = {check for check, _, _ in failed_checks(run_checkov(binary, bare))}
    skips = checkov_skips()
    assert failing - set(skips) == set(), f"checkov failures not in terraform/.checkov.yaml: {failing - set(skips)}"
    stale = sorted(set(skips) - failing)
    assert not stale, f"terraform/.checkov.yaml skips checks that no longer fail: {stale}"
