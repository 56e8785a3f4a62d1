"""The chart's CustomResourceDefinitions (charts/mailfleet/crds/, generated from
operator/src/crd.rs) as the API server would take them: each CRD is a valid
apiextensions.k8s.io/v1 object for the oldest and newest supported Kubernetes (PyPI
kubernetes-validate); the Domain and User examples in docs/kubernetes.md are valid
resources under the CRDs' schemas, and wrong ones are refused; the operator's RBAC names the
resources the CRDs define. The CEL rules themselves are evaluated in
operator/tests/crds.rs (the `cel` crate).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="PyPI kubernetes-validate is not installed (tests/helm/requirements.txt)")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (a kubernetes-validate dependency) is not installed")

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "charts" / "mailfleet" / "crds"
RBAC = REPO / "charts" / "mailfleet" / "templates" / "operator-rbac.yaml"
DOCS = REPO / "docs" / "kubernetes.md"
KUBE_VERSIONS = ["1.25.0", "1.37.0"]
GROUP = "mail.mailfleet.io"


def crds() -> dict[str, dict]:
    out = {}
    for path in sorted(CRDS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        out[doc["spec"]["names"]["kind"]] = doc
    return out


def structural(schema: dict) -> dict:
    """The CRD's OpenAPI v3 schema as JSON Schema: `nullable` allows null, and an object
    with properties refuses unknown fields (kubectl's default strict field validation)."""
    s = copy.deepcopy(schema)

    def walk(node):
        if not isinstance(node, dict):
            return
        if node.pop("nullable", False) and "type" in node:
            node["type"] = [node["type"], "null"]
        if node.get("type") in ("object", ["object", "null"]) and "properties" in node:
            node.setdefault("additionalProperties", False)
        for key in ("properties",):
            for sub in node.get(key, {}).values():
                walk(sub)
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                walk(node[key])
        for key in ("oneOf", "anyOf", "allOf"):
            for sub in node.get(key, []):
                walk(sub)

    walk(s)
    # metadata is the API server's, not the CRD's.
    s.get("properties", {}).pop("metadata", None)
    s["additionalProperties"] = True
    return s


def schema_of(kind: str) -> dict:
    return structural(crds()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def doc_examples() -> dict[str, dict]:
    text = DOCS.read_text()
    out = {}
    for block in re.findall(r"```yaml\n(.*?)```", text, re.S):
        for doc in yaml.safe_load_all(block):
            if isinstance(doc, dict) and str(doc.get("apiVersion", "")).startswith(GROUP + "/"):
                out[doc["kind"]] = doc
    return out


def errors(kind: str, resource: dict) -> list[str]:
    v = jsonschema.Draft7Validator(schema_of(kind))
    return sorted(f"{'.'.join(map(str, e.path))}: {e.message}" for e in v.iter_errors(resource))


def test_both_crds_are_there_with_status_and_one_served_version():
    found = crds()
    assert set(found) == {"Domain", "User"}
    for kind, crd in found.items():
        assert crd["spec"]["group"] == GROUP
        assert crd["spec"]["scope"] == "Namespaced"
        versions = crd["spec"]["versions"]
        assert [v["name"] for v in versions if v["served"] and v["storage"]] == ["v1alpha1"], kind
        assert "status" in versions[0]["subresources"], kind


@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_crds_are_valid_custom_resource_definitions(version):
    for kind, crd in crds().items():
        try:
            kubernetes_validate.validate(crd, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"CRD {kind} is not valid for Kubernetes {version}: {error.message} at {list(error.path)}")


def test_the_documented_examples_are_valid_resources():
    examples = doc_examples()
    assert set(examples) >= {"Domain", "User"}, "docs/kubernetes.md shows a Domain and a User"
    for kind, resource in examples.items():
        assert errors(kind, resource) == [], f"the {kind} example in docs/kubernetes.md"
    # The documented fields are there, so the example shows what the CRD offers.
    domain = examples["Domain"]["spec"]
    for field in ("domainName", "aliases", "quota", "catchAll", "dkim", "dmarc", "mtaSts", "deletionPolicy"):
        assert field in domain, field
    user = examples["User"]["spec"]
    for field in ("address", "quota", "aliases", "protocols", "passwordSecretRef", "appPasswords"):
        assert field in user, field


def test_wrong_resources_are_refused_by_the_schema():
    examples = doc_examples()
    user = copy.deepcopy(examples["User"])
    del user["spec"]["passwordSecretRef"]
    assert any("passwordSecretRef" in e for e in errors("User", user))
    user = copy.deepcopy(examples["User"])
    user["spec"]["protocols"] = ["imap", "smtp"]
    assert errors("User", user), "smtp is not a login protocol (submission is)"
    user = copy.deepcopy(examples["User"])
    user["spec"]["appPasswords"] = [{"name": "phone"}]
    assert any("secretRef" in e for e in errors("User", user))
    user = copy.deepcopy(examples["User"])
    user["spec"]["passwrd"] = "typo"
    assert any("passwrd" in e for e in errors("User", user)), "unknown fields are refused"

    domain = copy.deepcopy(examples["Domain"])
    domain["spec"]["dkim"]["algorithms"] = ["rsa-sha1"]
    assert errors("Domain", domain), "only rsa-sha256 and ed25519-sha256"
    domain = copy.deepcopy(examples["Domain"])
    domain["spec"]["dkim"]["algorithms"] = []
    assert errors("Domain", domain), "at least one algorithm"
    domain = copy.deepcopy(examples["Domain"])
    domain["spec"]["deletionPolicy"] = "Purge"
    assert errors("Domain", domain)
    domain = copy.deepcopy(examples["Domain"])
    del domain["spec"]["domainName"]
    assert any("domainName" in e for e in errors("Domain", domain))


def test_the_operator_rbac_covers_the_crds():
    text = RBAC.read_text()
    for crd in crds().values():
        plural = crd["spec"]["names"]["plural"]
        for resource in (plural, f"{plural}/status", f"{plural}/finalizers"):
            assert f'"{resource}"' in text, resource
    assert f'"{GROUP}"' in text
