"""Offline tests of the Helm chart charts/mailfleet.

No Kubernetes control plane runs on the development machines or in CI, so nothing is
installed. Instead Helm's own SDK (PyPI helm-python-sdk, Helm 4 as a shared library) lints
the chart and renders it for several values sets, with the chart's values.schema.json
applied as `helm install` applies it; the rendered manifests are checked here, validated
against the Kubernetes OpenAPI schemas (PyPI kubernetes-validate) of the oldest and newest
supported Kubernetes versions, and scanned with checkov. See docs/kubernetes.md.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml

helm_python = pytest.importorskip("helm_python", reason="PyPI helm-python-sdk is not installed (tests/helm/requirements.txt)")
kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="PyPI kubernetes-validate is not installed (tests/helm/requirements.txt)")
jsonschema = pytest.importorskip("jsonschema", reason="jsonschema (a kubernetes-validate dependency) is not installed")

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "mailfleet"
CHECKOV_CONFIG = CHART / ".checkov.yaml"
# One pinned checkov, shared with tests/terraform (one virtual environment under ~/.cache).
CHECKOV_REQUIREMENTS = REPO / "tests" / "terraform" / "requirements-checkov.txt"
RELEASE = "mf"
NAMESPACE = "mail"
FULLNAME = "mf-mailfleet"
# The oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest schemas
# kubernetes-validate ships.
KUBE_VERSIONS = ["1.25.0", "1.37.0"]
# Custom resources of cert-manager and the Prometheus Operator: not in the Kubernetes
# OpenAPI, validated against CRD_SCHEMAS below instead.
CRD_KINDS = {"ServiceMonitor", "PrometheusRule", "Certificate"}
CONTAINER_PORTS = {"smtp": 2525, "submission": 5870, "submissions": 4650, "imap": 1430,
                   "imaps": 9930, "pop3": 1100, "pop3s": 9950, "managesieve": 4190}
SERVICE_PORTS = {"smtp": 25, "submission": 587, "submissions": 465, "imap": 143, "imaps": 993,
                 "pop3": 110, "pop3s": 995, "managesieve": 4190}

S3_KEY_ID = "AKIAEXAMPLEINLINEKEY"
S3_SECRET = "inline-s3-secret-Zq8vR2"
REDIS_URL = "redis://:inline-redis-pw-Jx4@redis.mail:6379/0"
SCYLLA_USER = "mailfleet-inline-user"
SCYLLA_PASSWORD = "inline-scylla-pw-Kw7"

CLUSTER_SECRETS = {
    "mode": "cluster",
    "replicaCount": 3,
    "hostname": "mail.example.com",
    "tls": {"existingSecret": "mail-example-com-tls"},
    "storage": {
        "s3": {"bucket": "mail-bodies", "region": "eu-west-1", "endpoint": "https://s3.eu-west-1.amazonaws.com",
               "pathStyle": False, "existingSecret": "mailfleet-s3"},
        "redis": {"existingSecret": "mailfleet-redis"},
        "scylla": {"nodes": ["scylla-0.scylla:9042", "scylla-1.scylla:9042"], "localDc": "eu-west-1",
                   "existingSecret": "mailfleet-scylla"},
    },
    "monitoring": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                   "grafanaDashboards": {"enabled": True}},
}

CLUSTER_INLINE = {
    "mode": "cluster",
    "replicaCount": 2,
    "hostname": "mx.example.net",
    "tls": {"existingSecret": "mx-tls"},
    "image": {"repository": "registry.example.com/mailfleet", "tag": "0.1.0",
              "digest": "sha256:" + "ab" * 32, "pullPolicy": "Always"},
    "imagePullSecrets": ["regcred"],
    "podAnnotations": {"example.com/team": "mail"},
    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/mailfleet"}},
    "nodeSelector": {"example.com/pool": "mail"},
    "tolerations": [{"key": "mail", "operator": "Exists", "effect": "NoSchedule"}],
    "priorityClassName": "mail-critical",
    "delivery": {"enabled": True, "smarthost": "relay.example.net:587"},
    "tracing": {"otlpEndpoint": "http://otel-agent.observability:4318/v1/traces", "sampleRatio": 0.25},
    "cluster": {"autoscaling": {"enabled": False}, "podDisruptionBudget": {"enabled": False}},
    "storage": {
        "s3": {"bucket": "bodies", "endpoint": "http://garage.storage:3900", "region": "garage",
               "accessKeyId": S3_KEY_ID, "secretAccessKey": S3_SECRET},
        "redis": {"url": REDIS_URL},
        "scylla": {"nodes": ["scylla:9042"], "username": SCYLLA_USER, "password": SCYLLA_PASSWORD},
    },
}

EMBEDDED_FULL = {
    "hostname": "mail.example.org",
    "proxyProtocol": {"enabled": True, "trustedNetworks": ["10.0.0.0/16", "fd00::/8"], "headerTimeoutSecs": 3},
    "certManager": {"enabled": True, "issuerRef": {"name": "letsencrypt"}},
    "persistence": {"storageClass": "retained-ssd", "size": "50Gi"},
    "service": {"mail": {"annotations": {"service.beta.kubernetes.io/aws-load-balancer-proxy-protocol": "*"},
                         "loadBalancerClass": "service.k8s.aws/nlb",
                         "loadBalancerSourceRanges": ["0.0.0.0/0"]}},
    "monitoring": {"serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
                   "prometheusRule": {"enabled": True, "labels": {"release": "prometheus"}},
                   "grafanaDashboards": {"enabled": True}},
}

# The documents terraform/modules/helm-release passes (docs/terraform.md, the values
# contract), merged as Helm merges them, plus the certificate cluster mode needs.
TERRAFORM_CONTRACT = {
    "mode": "cluster",
    "replicaCount": 3,
    "hostname": "mail.example.com",
    "persistence": {"size": "1Gi", "storageClass": None, "keep": True},
    "storage": {
        "s3": {"bucket": "example-mailfleet-bodies", "region": "eu-west-1", "endpoint": "", "keyPrefix": "blobs/",
               "pathStyle": False, "existingSecret": None, "accessKeyIdKey": "access-key-id",
               "secretAccessKeyKey": "secret-access-key"},
        "redis": {"existingSecret": "mailfleet-redis", "urlKey": "url", "keyPrefix": "mailfleet:"},
        "scylla": {"nodes": ["scylla-client.scylla:9042"], "keyspace": "mailfleet", "localDc": "eu-west-1",
                   "replicationFactor": 3, "existingSecret": None, "usernameKey": "username",
                   "passwordKey": "password"},
    },
    "resources": {"requests": {"cpu": "500m", "memory": "512Mi"}},
    "smtp": {"maxRecipients": 100},
    "tls": {"existingSecret": "mailfleet-tls"},
}

CASES = {
    "embedded-default": {},
    "cluster": CLUSTER_SECRETS,
    "cluster-inline-credentials": CLUSTER_INLINE,
    "proxy-protocol": {"proxyProtocol": {"enabled": True, "trustedNetworks": ["10.0.0.0/16"]},
                       "tls": {"existingSecret": "mail-tls"}},
    "cert-manager": {"hostname": "mail.example.com",
                     "certManager": {"enabled": True, "issuerRef": {"name": "letsencrypt", "kind": "Issuer"},
                                     "dnsNames": ["mail.example.com", "imap.example.com"],
                                     "privateKeyAlgorithm": "RSA"}},
    "operator-off": {"operator": {"enabled": False}, "networkPolicy": {"enabled": True},
                     "monitoring": {"serviceMonitor": {"enabled": True}},
                     "persistence": {"keep": False}, "log": {"format": "text"},
                     "service": {"mail": {"type": "NodePort", "externalTrafficPolicy": "Cluster"},
                                 "http": {"type": "NodePort"}}},
    "embedded-full": EMBEDDED_FULL,
    "terraform-contract": TERRAFORM_CONTRACT,
}


# ---------------------------------------------------------------------------------------------
# Rendering.


@pytest.fixture(scope="module")
def chart():
    loaded = helm_python.Chart.load(str(CHART))
    yield loaded
    loaded.close()


def render_raw(chart, values: dict) -> dict[str, str]:
    return chart.render(copy.deepcopy(values), name=RELEASE, namespace=NAMESPACE)


def documents(rendered: dict[str, str]) -> list[dict]:
    docs = []
    for path, text in sorted(rendered.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__template__", path)
                docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def rendered(chart):
    return {case: render_raw(chart, values) for case, values in CASES.items()}


@pytest.fixture(scope="module")
def manifests(rendered):
    return {case: documents(out) for case, out in rendered.items()}


def strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k != "__template__"}


def find(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert found, f"no {kind} {name or ''} rendered"
    return found


def one(docs, kind, name=None):
    (found,) = find(docs, kind, name)
    return found


def kinds(docs):
    return sorted(d["kind"] for d in docs)


def config_of(docs) -> dict:
    cm = one(docs, "ConfigMap", FULLNAME)
    return tomllib.loads(cm["data"]["mailfleet.toml"])


def workload(docs):
    (found,) = [d for d in docs if d["kind"] in ("StatefulSet", "Deployment") and d["metadata"]["name"] == FULLNAME]
    return found


def mail_container(docs):
    (container,) = [c for c in workload(docs)["spec"]["template"]["spec"]["containers"] if c["name"] == "mailfleet"]
    return container


def env_of(container) -> dict:
    return {e["name"]: e for e in container.get("env", [])}


def secret_refs(container) -> dict:
    """The container's variables from Secrets: name -> (Secret, key)."""
    return {name: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for name, e in env_of(container).items() if "secretKeyRef" in e.get("valueFrom", {})}


def mounts_of(container) -> dict:
    return {m["name"]: m for m in container.get("volumeMounts", [])}


TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


# ---------------------------------------------------------------------------------------------
# Lint, and every template rendered by some case.


def test_lint_is_clean():
    report = helm_python.lint(str(CHART), strict=True, namespace=NAMESPACE)
    assert report["errors"] == [], report
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert problems == [], problems
    for values in CASES.values():
        report = helm_python.lint(str(CHART), copy.deepcopy(values), strict=True, namespace=NAMESPACE)
        assert report["errors"] == [] and not [m for m in report["messages"] if m["severity"] >= 2], report


def test_chart_metadata(chart):
    meta = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert meta["apiVersion"] == "v2" and meta["name"] == "mailfleet" and meta["type"] == "application"
    workspace = tomllib.loads((REPO / "Cargo.toml").read_text())
    assert meta["appVersion"] == workspace["workspace"]["package"]["version"] == "0.1.0"
    assert chart.name == "mailfleet"


def test_every_template_is_rendered_by_some_case(rendered):
    templates = sorted(p.name for p in (CHART / "templates").iterdir() if not p.name.startswith("_"))
    assert len(templates) >= 18, templates
    for template in templates:
        path = f"mailfleet/templates/{template}"
        cases = [case for case, out in rendered.items() if out.get(path, "").strip()]
        assert cases, f"{template} renders nothing in any test case"


def test_chart_packages_the_dashboards_and_alerts(chart, tmp_path):
    import tarfile

    archive = chart.save(str(tmp_path))  # `helm package`
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    for path in sorted((CHART / "dashboards").glob("*.json")) + sorted((CHART / "alerts").glob("*.yml")):
        assert f"mailfleet/{path.relative_to(CHART)}" in names, f"{path.name} is not packaged: {sorted(names)}"
    assert "mailfleet/values.schema.json" in names
    assert "mailfleet/.checkov.yaml" not in names


# ---------------------------------------------------------------------------------------------
# values.yaml and values.schema.json.


def value_leaves(tree, prefix=()):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from value_leaves(value, prefix + (key,))
        else:
            yield prefix + (key,), value


def test_every_value_is_commented():
    lines = (CHART / "values.yaml").read_text().splitlines()
    # A key line is documented by a comment right above it, or above an ancestor block.
    stack: list[tuple[int, bool]] = []
    checked = 0
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z0-9_-]+):( .*)?$", line)
        if not match:
            continue
        indent = len(match.group(1))
        while stack and stack[-1][0] >= indent:
            stack.pop()
        above = next((lines[i] for i in range(number - 1, -1, -1) if lines[i].strip()), "")
        commented = above.strip().startswith("#")
        inherited = any(c for _, c in stack)
        leaf = bool(match.group(3) and match.group(3).strip())
        if leaf:
            checked += 1
            assert commented or inherited, f"values.yaml line {number + 1} ({line.strip()}) has no comment"
        stack.append((indent, commented))
    assert checked > 90


def schema_nodes(node, path="#"):
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from schema_nodes(child, f"{path}/{key}")
    if isinstance(node.get("items"), dict):
        yield from schema_nodes(node["items"], f"{path}[]")


def test_schema_is_draft7_and_closed_at_every_level():
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(schema)
    string_maps = []
    for path, node in schema_nodes(schema):
        types = node.get("type")
        if types == "object" or (isinstance(types, list) and "object" in types):
            extra = node.get("additionalProperties")
            if extra == {"type": "string"}:
                string_maps.append(path)  # labels, annotations, nodeSelector: string to string
            else:
                assert extra is False, f"{path} accepts unknown keys"
    assert sorted(string_maps) == sorted([
        "#/serviceAccount/annotations", "#/podAnnotations", "#/nodeSelector", "#/service/mail/annotations",
        "#/monitoring/serviceMonitor/labels", "#/monitoring/prometheusRule/labels",
    ])
    # values.yaml passes its own schema, and the schema knows every key of values.yaml.
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    jsonschema.Draft7Validator(schema).validate(values)


BAD_VALUES = [
    ({"mode": "standalone"}, "/mode"),
    ({"replicaCount": 3}, "/replicaCount"),
    ({"smtp": {"maxRecipents": 50}}, "maxRecipents"),
    ({"smtp": {"maxRecipients": "lots"}}, "/smtp/maxRecipients"),
    ({"hostname": "Mail Server"}, "/hostname"),
    ({"proxyProtocol": {"enabled": True, "trustedNetworks": []}}, "/proxyProtocol/trustedNetworks"),
    ({"proxyProtocol": {"enabled": True, "trustedNetworks": ["ten.zero/8"]}}, "/proxyProtocol/trustedNetworks/0"),
    ({"mode": "cluster", "replicaCount": 2, "tls": {"existingSecret": "t"}}, "/storage/s3/bucket"),
    ({**CLUSTER_SECRETS, "storage": {**CLUSTER_SECRETS["storage"], "redis": {}}}, "/storage/redis"),
    ({**CLUSTER_SECRETS, "storage": {**CLUSTER_SECRETS["storage"], "redis": {"clusterNodes": []}}}, "/storage/redis"),
    # Seeds go into the ConfigMap: no password there.
    ({"storage": {"redis": {"clusterNodes": ["redis://:pw@redis-0:6379"]}}}, "/storage/redis/clusterNodes/0"),
    ({"storage": {"redis": {"clusterNodes": ["redis://redis-0:6379/2"]}}}, "/storage/redis/clusterNodes/0"),
    ({"certManager": {"enabled": True}}, "/certManager/issuerRef/name"),
    ({"service": {"mail": {"externalTrafficPolicy": "Global"}}}, "/service/mail/externalTrafficPolicy"),
    ({"service": {"mail": {"ports": {"smtp": 70000}}}}, "/service/mail/ports/smtp"),
    ({"persistence": {"size": "lots"}}, "/persistence/size"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"storage": {"s3": {"accessKeyId": "AKIA"}}}, "/storage/s3/secretAccessKey"),
    ({"operator": {"enabled": "yes"}}, "/operator/enabled"),
    ({"config": {"smtp": {"listen": ["0.0.0.0:25"]}}}, "config"),
]


@pytest.mark.parametrize("values,where", BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_refuses_wrong_values(chart, values, where):
    with pytest.raises(helm_python.HelmValuesError) as refused:
        render_raw(chart, values)
    message = str(refused.value)
    assert "schema" in message and where in message, message


TEMPLATE_FAILURES = [
    ({"mode": "cluster", "replicaCount": 2, "storage": CLUSTER_SECRETS["storage"]}, "needs a certificate"),
    ({"smtp": {"maxMessageSize": 104857600, "maxInflightBytes": 52428800}}, "maxInflightBytes"),
    ({**CLUSTER_INLINE, "storage": {**CLUSTER_INLINE["storage"], "scylla": {"nodes": ["s:9042"], "username": "u"}}},
     "storage.scylla.password"),
]


@pytest.mark.parametrize("values,message", TEMPLATE_FAILURES, ids=[m for _, m in TEMPLATE_FAILURES])
def test_rules_the_schema_cannot_express_fail_the_render(chart, values, message):
    with pytest.raises(helm_python.HelmError) as refused:
        render_raw(chart, values)
    assert message in str(refused.value)


# Values whose change must change the rendered output: each leaf of values.yaml, changed
# to another valid value in one of three bases that turn on what it depends on.
MUTATION_BASES = [EMBEDDED_FULL, CLUSTER_SECRETS, CLUSTER_INLINE]
MUTATIONS = {
    "hostname": "mx.example.org", "nameOverride": "mail", "fullnameOverride": "mailer",
    "image.repository": "registry.example.com/mf", "image.tag": "0.1.1", "image.digest": "sha256:" + "c" * 64,
    "image.pullPolicy": "Never", "imagePullSecrets": ["pull"], "tolerations": [{"key": "k", "operator": "Exists"}],
    "resources.requests.cpu": "1", "resources.requests.memory": "1Gi", "resources.limits.memory": "3Gi",
    "priorityClassName": "high", "server.dataDir": "/data", "log.format": "text", "log.level": "debug",
    "delivery.smarthost": "relay.example.org:25", "tracing.otlpEndpoint": "http://collector:4318/v1/traces",
    "tracing.sampleRatio": 0.5, "proxyProtocol.trustedNetworks": ["192.0.2.0/24"],
    "tls.existingSecret": "another-tls", "certManager.issuerRef.name": "other", "certManager.issuerRef.kind": "Issuer",
    "certManager.issuerRef.group": "awspca.cert-manager.io", "certManager.dnsNames": ["a.example.org"],
    "certManager.privateKeyAlgorithm": "RSA", "persistence.size": "20Gi", "persistence.storageClass": "other",
    "storage.s3.bucket": "b2", "storage.s3.region": "us-west-2", "storage.s3.endpoint": "http://minio:9000",
    "storage.s3.keyPrefix": "x/", "storage.s3.existingSecret": "s3-2", "storage.s3.accessKeyIdKey": "id",
    "storage.s3.secretAccessKeyKey": "secret", "storage.s3.accessKeyId": "AKIA2", "storage.s3.secretAccessKey": "s2",
    "storage.redis.existingSecret": "r2", "storage.redis.urlKey": "redis-url", "storage.redis.url": "redis://r2:6379/1",
    "storage.redis.keyPrefix": "mf2:", "storage.redis.clusterNodes": ["redis://redis-0.redis:6379"],
    "storage.scylla.nodes": ["n1:9042"], "storage.scylla.keyspace": "mail2",
    "storage.scylla.localDc": "dc2", "storage.scylla.existingSecret": "sc2", "storage.scylla.usernameKey": "user",
    "storage.scylla.passwordKey": "pass", "storage.scylla.username": "u2", "storage.scylla.password": "p2",
    "service.mail.type": "NodePort", "service.mail.externalTrafficPolicy": "Cluster",
    "service.mail.loadBalancerClass": "example.com/lb", "service.mail.loadBalancerSourceRanges": ["192.0.2.0/24"],
    "service.http.type": "NodePort", "cluster.topologySpread.whenUnsatisfiable": "DoNotSchedule",
    "cluster.topologySpread.topologyKeys": ["kubernetes.io/hostname"],
    "networkPolicy.httpFromNamespaces": ["observability"], "networkPolicy.egressTcpPorts": [25],
    "networkPolicy.apiServerPorts": [16443], "monitoring.serviceMonitor.interval": "1m",
    "monitoring.grafanaDashboards.folder": "Mail", "operator.resources.requests.cpu": "100m",
    "operator.resources.requests.memory": "128Mi", "operator.resources.limits.memory": "512Mi",
}
# mode is what the cases differ in.
NOT_MUTATED = {"mode"}


def get_path(tree: dict, path: tuple, default):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


def set_path(tree: dict, path: tuple, value):
    for key in path[:-1]:
        tree = tree.setdefault(key, {})
    tree[path[-1]] = value


def mutated(path: tuple, current):
    dotted = ".".join(path)
    if dotted in MUTATIONS:
        return MUTATIONS[dotted]
    if isinstance(current, bool):
        return not current
    if isinstance(current, int):
        return current + 1
    if isinstance(current, dict):
        return {"example.com/mutated": "yes"}
    raise AssertionError(f"no mutation for {dotted} = {current!r}: add one to MUTATIONS")


def test_every_value_changes_the_output(chart):
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    base_outputs = [render_raw(chart, base) for base in MUTATION_BASES]
    unused = []
    for path, default in value_leaves(values):
        if ".".join(path) in NOT_MUTATED:
            continue
        changed = False
        for base, before in zip(MUTATION_BASES, base_outputs):
            candidate = copy.deepcopy(base)
            current = get_path(base, path, default)
            set_path(candidate, path, mutated(path, current))
            try:
                after = render_raw(chart, candidate)
            except helm_python.HelmError:
                continue
            if after != before:
                changed = True
                break
        if not changed:
            unused.append(".".join(path))
    assert not unused, f"values that change nothing in any base: {unused}"


# ---------------------------------------------------------------------------------------------
# What the rendered manifests say.


def test_embedded_default(manifests):
    docs = manifests["embedded-default"]
    # The operator is a container of the StatefulSet's pod: no Deployment, ServiceAccount or
    # NetworkPolicy of its own.
    assert kinds(docs) == sorted([
        "ClusterRole", "ClusterRoleBinding", "ConfigMap", "NetworkPolicy",
        "PersistentVolumeClaim", "Role", "RoleBinding", "Service", "Service", "Service", "Service",
        "ServiceAccount", "StatefulSet",
    ])
    sts = one(docs, "StatefulSet", FULLNAME)
    assert sts["spec"]["replicas"] == 1
    assert sts["spec"]["serviceName"] == f"{FULLNAME}-headless"
    one(docs, "Service", f"{FULLNAME}-headless")
    pvc = one(docs, "PersistentVolumeClaim", f"{FULLNAME}-data")
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert "storageClassName" not in pvc["spec"]
    pod = sts["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-data"
    mounts = {m["name"]: m["mountPath"] for m in mail_container(docs)["volumeMounts"]}
    config = config_of(docs)
    assert mounts["data"] == config["server"]["data_dir"] == "/var/lib/mailfleet"
    assert config["storage"] == {"metadata": "sqlite", "blobs": "local", "coordination": "local"}
    # No certificate Secret: the server generates its self-signed one under data_dir.
    assert "cert" not in config["tls"] and "key" not in config["tls"] and "tls" not in volumes
    assert not [d for d in docs if d["kind"] in ("Deployment",) and d["metadata"]["name"] == FULLNAME]
    assert not [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "PodDisruptionBudget", "Secret")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_config_is_complete_toml(manifests, case):
    docs = manifests[case]
    config = config_of(docs)
    container = mail_container(docs)
    assert container["command"] == ["/usr/local/bin/mailfleet"]
    assert container["args"] == ["--config", "/etc/mailfleet/mailfleet.toml", "serve"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount["mountPath"] == "/etc/mailfleet/mailfleet.toml" and mount["subPath"] == "mailfleet.toml"
    assert config["http"]["listen"] == ["0.0.0.0:8080"]
    assert config["smtp"]["listen"] == [f"0.0.0.0:{CONTAINER_PORTS['smtp']}"]
    assert config["submission"] == {"listen": ["0.0.0.0:5870"], "listen_tls": ["0.0.0.0:4650"],
                                    "max_connections": 1000}
    assert config["imap"]["listen"] == ["0.0.0.0:1430"] and config["imap"]["listen_tls"] == ["0.0.0.0:9930"]
    assert config["pop3"]["listen"] == ["0.0.0.0:1100"] and config["pop3"]["listen_tls"] == ["0.0.0.0:9950"]
    assert config["managesieve"] == {"listen": ["0.0.0.0:4190"], "max_connections": 200}
    values = CASES[case]
    assert config["server"]["hostname"] == values.get("hostname", "localhost")
    assert config["server"]["shutdown_grace_secs"] == 30
    assert isinstance(config["tracing"]["sample_ratio"], float)
    # Every section and key is one Mailfleet knows (services/core/src/config.rs).
    known = {
        "server": {"hostname", "data_dir", "shutdown_grace_secs", "max_connections_per_ip", "proxy_protocol",
                   "proxy_trusted_networks", "proxy_header_timeout_secs"},
        "log": {"format", "level"},
        "storage": {"metadata", "blobs", "coordination", "blob_cache_mib", "s3", "redis", "scylla"},
        "tls": {"cert", "key", "reload_interval_secs"},
        "smtp": {"listen", "listen_tls", "max_message_size", "max_recipients", "max_connections",
                 "max_messages_per_ip_per_minute", "max_inflight_bytes"},
        "submission": {"listen", "listen_tls", "max_connections"},
        "imap": {"listen", "listen_tls", "max_connections"},
        "pop3": {"listen", "listen_tls", "max_connections"},
        "managesieve": {"listen", "max_connections"},
        "delivery": {"enabled", "smarthost"},
        "http": {"listen", "metrics"},
        "tracing": {"otlp_endpoint", "sample_ratio"},
    }
    assert set(config) == set(known)
    for section, keys in config.items():
        assert set(keys) <= known[section], (section, set(keys) - known[section])
    # The container listens on unprivileged ports only, and the mail Service maps the
    # standard ports onto them.
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {**CONTAINER_PORTS, "http": 8080}
    assert all(port >= 1024 for port in ports.values())


def test_cluster_mode(manifests):
    docs = manifests["cluster"]
    assert not [d for d in docs if d["kind"] in ("StatefulSet", "PersistentVolumeClaim")]
    deploy = one(docs, "Deployment", FULLNAME)
    assert "replicas" not in deploy["spec"]  # the autoscaler owns it
    hpa = one(docs, "HorizontalPodAutoscaler", FULLNAME)
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": FULLNAME}
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] == 10
    pdb = one(docs, "PodDisruptionBudget", FULLNAME)
    selector = deploy["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["selector"]["matchLabels"] == selector and pdb["spec"]["maxUnavailable"] == 1
    pod = deploy["spec"]["template"]["spec"]
    spread = pod["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == ["topology.kubernetes.io/zone", "kubernetes.io/hostname"]
    assert all(c["labelSelector"]["matchLabels"] == selector and c["maxSkew"] == 1 for c in spread)
    config = config_of(docs)
    assert config["storage"]["metadata"] == "scylla" and config["storage"]["blobs"] == "s3"
    assert config["storage"]["coordination"] == "redis"
    assert config["storage"]["s3"] == {"endpoint": "https://s3.eu-west-1.amazonaws.com", "region": "eu-west-1",
                                       "bucket": "mail-bodies", "key_prefix": "blobs/", "path_style": False}
    assert config["storage"]["scylla"] == {"nodes": ["scylla-0.scylla:9042", "scylla-1.scylla:9042"],
                                           "keyspace": "mailfleet", "replication_factor": 3, "local_dc": "eu-west-1"}
    assert config["storage"]["redis"] == {"key_prefix": "mailfleet:"}
    assert config["tls"]["cert"] == "/etc/mailfleet/tls/tls.crt" and config["tls"]["key"] == "/etc/mailfleet/tls/tls.key"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "mail-example-com-tls"
    assert "emptyDir" in volumes["data"]
    mounts = {m["name"]: m for m in mail_container(docs)["volumeMounts"]}
    # A directory mount (subPath mounts never see a renewed Secret).
    assert mounts["tls"]["mountPath"] == "/etc/mailfleet/tls" and "subPath" not in mounts["tls"]
    env = env_of(mail_container(docs))
    refs = {name: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
            for name, e in env.items()}
    assert refs == {
        "MAILFLEET_STORAGE__S3__ACCESS_KEY_ID": ("mailfleet-s3", "access-key-id"),
        "MAILFLEET_STORAGE__S3__SECRET_ACCESS_KEY": ("mailfleet-s3", "secret-access-key"),
        "MAILFLEET_STORAGE__REDIS__URL": ("mailfleet-redis", "url"),
        "MAILFLEET_STORAGE__SCYLLA__USERNAME": ("mailfleet-scylla", "username"),
        "MAILFLEET_STORAGE__SCYLLA__PASSWORD": ("mailfleet-scylla", "password"),
    }
    assert not [d for d in docs if d["kind"] == "Secret"], "existing Secrets are referenced, not created"


def test_redis_cluster_seeds_replace_the_url(chart):
    """storage.redis.clusterNodes alone is enough: the seeds reach the config, and no URL
    variable points at a Secret key nobody created."""
    seeds = ["redis://redis-0.redis:6379", "redis://redis-1.redis:6379"]
    values = {**CLUSTER_SECRETS, "storage": {**CLUSTER_SECRETS["storage"], "redis": {"clusterNodes": seeds}}}
    docs = documents(render_raw(chart, values))
    assert config_of(docs)["storage"]["redis"] == {"key_prefix": "mailfleet:", "cluster_nodes": seeds}
    refs = secret_refs(mail_container(docs))
    assert "MAILFLEET_STORAGE__REDIS__URL" not in refs, refs
    assert refs["MAILFLEET_STORAGE__SCYLLA__PASSWORD"] == ("mailfleet-scylla", "password")


def test_inline_credentials_go_to_a_secret_never_to_a_configmap(manifests):
    docs = manifests["cluster-inline-credentials"]
    secret = one(docs, "Secret", f"{FULLNAME}-storage")
    assert secret["stringData"] == {"access-key-id": S3_KEY_ID, "secret-access-key": S3_SECRET, "url": REDIS_URL,
                                    "username": SCYLLA_USER, "password": SCYLLA_PASSWORD}
    env = env_of(mail_container(docs))
    for name in ("MAILFLEET_STORAGE__S3__ACCESS_KEY_ID", "MAILFLEET_STORAGE__S3__SECRET_ACCESS_KEY",
                 "MAILFLEET_STORAGE__REDIS__URL", "MAILFLEET_STORAGE__SCYLLA__USERNAME",
                 "MAILFLEET_STORAGE__SCYLLA__PASSWORD"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == f"{FULLNAME}-storage"
        assert "value" not in env[name]
    deploy = one(docs, "Deployment", FULLNAME)
    assert deploy["spec"]["replicas"] == 2
    assert not [d for d in docs if d["kind"] in ("HorizontalPodAutoscaler", "PodDisruptionBudget")]
    pod = deploy["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == {"example.com/pool": "mail"} and pod["priorityClassName"] == "mail-critical"
    assert mail_container(docs)["image"] == "registry.example.com/mailfleet@sha256:" + "ab" * 32
    config = config_of(docs)
    assert config["delivery"]["smarthost"] == "relay.example.net:587"
    assert config["tracing"] == {"otlp_endpoint": "http://otel-agent.observability:4318/v1/traces", "sample_ratio": 0.25}
    sa = one(docs, "ServiceAccount", FULLNAME)
    assert sa["metadata"]["annotations"]["eks.amazonaws.com/role-arn"].endswith(":role/mailfleet")


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_secret_value_in_any_configmap(manifests, case):
    docs = manifests[case]
    configmaps = "\n".join(json.dumps(strip(d)) for d in docs if d["kind"] == "ConfigMap")
    for secret in (S3_KEY_ID, S3_SECRET, REDIS_URL, "inline-redis-pw", SCYLLA_USER, SCYLLA_PASSWORD):
        assert secret not in configmaps
    config = config_of(docs)
    flat = json.dumps(config)
    for key in ("access_key_id", "secret_access_key", "password", "username", '"url"'):
        assert key not in flat, f"{key} in the ConfigMap of {case}"
    for doc in docs:
        for container in (doc.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])):
            for env in container.get("env", []):
                assert "value" not in env or not re.search(r"SECRET|PASSWORD|URL|KEY", env["name"]), env


def test_mail_service(manifests):
    for case in ("embedded-default", "cluster"):
        svc = one(manifests[case], "Service", FULLNAME)
        assert svc["spec"]["type"] == "LoadBalancer" and svc["spec"]["externalTrafficPolicy"] == "Local"
        assert {p["name"]: (p["port"], p["targetPort"]) for p in svc["spec"]["ports"]} == {
            name: (port, name) for name, port in SERVICE_PORTS.items()}
        assert svc["spec"]["selector"] == workload(manifests[case])["spec"]["selector"]["matchLabels"]
        http = one(manifests[case], "Service", f"{FULLNAME}-http")
        assert http["spec"]["type"] == "ClusterIP" and http["spec"]["ports"][0]["port"] == 8080
    svc = one(manifests["operator-off"], "Service", FULLNAME)
    assert svc["spec"]["type"] == "NodePort" and svc["spec"]["externalTrafficPolicy"] == "Cluster"
    svc = one(manifests["embedded-full"], "Service", FULLNAME)
    assert svc["spec"]["loadBalancerClass"] == "service.k8s.aws/nlb"
    assert svc["spec"]["loadBalancerSourceRanges"] == ["0.0.0.0/0"]
    assert svc["metadata"]["annotations"] == {"service.beta.kubernetes.io/aws-load-balancer-proxy-protocol": "*"}


def test_proxy_protocol(manifests):
    on = config_of(manifests["proxy-protocol"])["server"]
    assert on["proxy_protocol"] is True and on["proxy_trusted_networks"] == ["10.0.0.0/16"]
    assert on["proxy_header_timeout_secs"] == 5
    full = config_of(manifests["embedded-full"])["server"]
    assert full["proxy_trusted_networks"] == ["10.0.0.0/16", "fd00::/8"] and full["proxy_header_timeout_secs"] == 3
    off = config_of(manifests["embedded-default"])["server"]
    assert off["proxy_protocol"] is False and "proxy_trusted_networks" not in off


def test_cert_manager(manifests):
    docs = manifests["cert-manager"]
    cert = one(docs, "Certificate", FULLNAME)
    assert cert["apiVersion"] == "cert-manager.io/v1"
    assert cert["spec"]["secretName"] == f"{FULLNAME}-tls"
    assert cert["spec"]["dnsNames"] == ["mail.example.com", "imap.example.com"]
    assert cert["spec"]["issuerRef"] == {"name": "letsencrypt", "kind": "Issuer", "group": "cert-manager.io"}
    assert cert["spec"]["privateKey"]["algorithm"] == "RSA" and cert["spec"]["privateKey"]["size"] == 2048
    volumes = {v["name"]: v for v in workload(docs)["spec"]["template"]["spec"]["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == cert["spec"]["secretName"]
    config = config_of(docs)
    assert config["tls"] == {"cert": "/etc/mailfleet/tls/tls.crt", "key": "/etc/mailfleet/tls/tls.key",
                             "reload_interval_secs": 60}
    # Default DNS names: the hostname.
    full = one(manifests["embedded-full"], "Certificate", FULLNAME)
    assert full["spec"]["dnsNames"] == ["mail.example.org"] and full["spec"]["privateKey"]["algorithm"] == "ECDSA"
    assert not [d for d in manifests["embedded-default"] if d["kind"] == "Certificate"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_pods_are_hardened(manifests, case):
    pods = [d for d in manifests[case] if d["kind"] in ("StatefulSet", "Deployment")]
    assert pods
    for workload_doc in pods:
        pod = workload_doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
        assert "emptyDir" in tmp
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == 10001
            assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"] == {"drop": ["ALL"]} and sc["seccompProfile"] == {"type": "RuntimeDefault"}
            assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
            sidecar = container["name"] == "operator" and workload_doc["kind"] == "StatefulSet"
            if sidecar:
                # The pod's readiness is the server's: an operator cut off from the API server
                # must not take the mail Service down.
                assert "readinessProbe" not in container
            else:
                assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
        if workload_doc["metadata"]["name"] == FULLNAME:
            config = config_of(manifests[case])
            assert pod["terminationGracePeriodSeconds"] == config["server"]["shutdown_grace_secs"] + 15
            assert pod["automountServiceAccountToken"] is False
            container = pod["containers"][0]
            assert container["livenessProbe"]["httpGet"]["port"] == "http"
            assert {"name": "http", "containerPort": 8080, "protocol": "TCP"} in container["ports"]


def operator_rbac_subjects(docs) -> dict:
    name = f"{FULLNAME}-operator"
    return {kind: one(docs, kind, f"{name}-{NAMESPACE}" if kind.startswith("Cluster") else name)["subjects"]
            for kind in ("ClusterRoleBinding", "RoleBinding")}


def check_operator_container(container, docs, port_name):
    """What the operator container has in both layouts."""
    assert container["name"] == "operator"
    assert container["image"] == mail_container(docs)["image"]
    assert container["command"] == ["/usr/local/bin/mailfleet-operator"] and "args" not in container
    assert container["ports"] == [{"name": port_name, "containerPort": 8081, "protocol": "TCP"}]
    # A container port name is an IANA service name: at most 15 characters.
    assert len(port_name) <= 15
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port_name}
    if "readinessProbe" in container:
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port_name}
    env = env_of(container)
    assert env["MAILFLEET_CONFIG"] == {"name": "MAILFLEET_CONFIG", "value": "/etc/mailfleet/mailfleet.toml"}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # The same configuration file as the mail container, from the same ConfigMap.
    mounts = mounts_of(container)
    assert mounts["config"] == {"name": "config", "mountPath": "/etc/mailfleet/mailfleet.toml",
                                "subPath": "mailfleet.toml", "readOnly": True}
    assert mounts["config"] == mounts_of(mail_container(docs))["config"]
    assert mounts["data"]["mountPath"] == config_of(docs)["server"]["data_dir"]
    assert container["resources"] == yaml.safe_load((CHART / "values.yaml").read_text())["operator"]["resources"]


def test_operator_rbac(manifests):
    docs = manifests["embedded-default"]
    name = f"{FULLNAME}-operator"
    cluster_role = one(docs, "ClusterRole")
    (rule,) = cluster_role["rules"]
    assert rule["apiGroups"] == ["mail.mailfleet.io"]
    assert set(rule["resources"]) == {"domains", "users", "domains/status", "users/status",
                                      "domains/finalizers", "users/finalizers"}
    assert set(rule["verbs"]) == {"get", "list", "watch", "patch", "update"}
    binding = one(docs, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    role = one(docs, "Role", name)
    assert role["metadata"]["namespace"] == NAMESPACE
    assert one(docs, "RoleBinding", name)["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                                         "name": name}
    grants = {(g, r, rn): set(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"]
              for r in rule["resources"] for rn in [tuple(rule.get("resourceNames", []))]}
    assert grants == {
        ("", "secrets", ()): {"get", "list", "watch"},
        ("coordination.k8s.io", "leases", ()): {"create"},
        ("coordination.k8s.io", "leases", ("mailfleet-operator",)): {"get", "update"},
        ("", "events", ()): {"create"},
        ("events.k8s.io", "events", ()): {"create"},
    }
    # Cluster mode binds the operator's own ServiceAccount, embedded mode the mail pods' one
    # (the sidecar runs in their pod).
    for case, account in (("embedded-default", FULLNAME), ("embedded-full", FULLNAME), ("cluster", name),
                          ("cluster-inline-credentials", name)):
        subjects = operator_rbac_subjects(manifests[case])
        expected = [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}]
        assert subjects == {"ClusterRoleBinding": expected, "RoleBinding": expected}, case
        pod_accounts = {d["spec"]["template"]["spec"]["serviceAccountName"]
                        for d in manifests[case] if d["kind"] in ("StatefulSet", "Deployment")
                        and any(c["name"] == "operator" for c in d["spec"]["template"]["spec"]["containers"])}
        assert pod_accounts == {account}, case
        one(manifests[case], "ServiceAccount", account)


@pytest.mark.parametrize("case", ["cluster", "cluster-inline-credentials", "terraform-contract"])
def test_operator_deployment_in_cluster_mode(manifests, case):
    docs = manifests[case]
    name = f"{FULLNAME}-operator"
    deploy = one(docs, "Deployment", name)
    assert deploy["spec"]["replicas"] == 1
    template = deploy["spec"]["template"]
    pod = template["spec"]
    (container,) = pod["containers"]
    check_operator_container(container, docs, "metrics")
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert pod["serviceAccountName"] == name and pod["automountServiceAccountToken"] is True
    one(docs, "ServiceAccount", name)
    # The storage credentials of the mail pods: the same variables from the same Secrets.
    mail = mail_container(docs)
    assert secret_refs(container) == secret_refs(mail) and secret_refs(mail)
    assert {n: e for n, e in env_of(container).items() if n.startswith("MAILFLEET_STORAGE__")} == \
        {n: e for n, e in env_of(mail).items() if n.startswith("MAILFLEET_STORAGE__")}
    # A new configuration rolls the operator pods as it rolls the mail pods.
    mail_annotations = workload(docs)["spec"]["template"]["metadata"]["annotations"]
    assert template["metadata"]["annotations"]["checksum/config"] == mail_annotations["checksum/config"]
    assert re.fullmatch(r"[0-9a-f]{64}", mail_annotations["checksum/config"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"] == {"name": "config", "configMap": {"name": FULLNAME}}
    one(docs, "ConfigMap", volumes["config"]["configMap"]["name"])
    # server.data_dir on an emptyDir, like the cluster mail pods', and /tmp.
    assert "emptyDir" in volumes["data"] and "persistentVolumeClaim" not in volumes["data"]
    assert "emptyDir" in volumes["tmp"]
    assert set(volumes) == {"config", "data", "tmp"}
    mounts = mounts_of(container)
    assert mounts["tmp"] == {"name": "tmp", "mountPath": "/tmp"} and "kube-api-access" not in mounts
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    assert [c["name"] for c in workload(docs)["spec"]["template"]["spec"]["containers"]] == ["mailfleet"]
    service = one(docs, "Service", name)
    assert service["spec"]["selector"] == deploy["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics", "protocol": "TCP"}]


def test_operator_replicas_in_cluster_mode(chart):
    docs = documents(render_raw(chart, {**CLUSTER_SECRETS, "operator": {"enabled": True, "replicaCount": 2}}))
    assert one(docs, "Deployment", f"{FULLNAME}-operator")["spec"]["replicas"] == 2


@pytest.mark.parametrize("case", ["embedded-default", "embedded-full"])
def test_operator_sidecar_in_embedded_mode(manifests, case):
    docs = manifests[case]
    name = f"{FULLNAME}-operator"
    # No pod of its own: only the StatefulSet's pod can mount the ReadWriteOnce claim.
    assert not [d for d in docs if d["kind"] == "Deployment"]
    assert not [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == name]
    sts = one(docs, "StatefulSet", FULLNAME)
    pod = sts["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["mailfleet", "operator"]
    mail, operator = pod["containers"]
    # `kubectl exec` and `kubectl logs` without -c still mean the server.
    assert sts["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] == "mailfleet"
    check_operator_container(operator, docs, "op-metrics")
    assert "readinessProbe" not in operator, "the pod's readiness is the server's"
    # The same data volume (the claim) at server.data_dir as the server.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"]["claimName"] == f"{FULLNAME}-data"
    assert mounts_of(operator)["data"] == mounts_of(mail)["data"]
    assert mounts_of(operator)["data"]["mountPath"] == config_of(docs)["server"]["data_dir"]
    assert "readOnly" not in mounts_of(operator)["data"]
    # Embedded mode has no storage credentials.
    assert secret_refs(operator) == {} == secret_refs(mail)
    # The pod mounts no token by default; only the operator container gets the API
    # credentials, by a projected volume in the layout kube-rs's in-cluster config reads.
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == FULLNAME
    assert one(docs, "ServiceAccount", FULLNAME)["automountServiceAccountToken"] is False
    assert mounts_of(operator)["kube-api-access"] == {"name": "kube-api-access", "mountPath": TOKEN_DIR,
                                                      "readOnly": True}
    assert volumes["kube-api-access"]["projected"]["sources"] == [
        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace",
                                    "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]
    for container in pod["containers"]:
        token = [m for m in container["volumeMounts"]
                 if m["name"] == "kube-api-access" or m["mountPath"].startswith("/var/run/secrets")]
        assert bool(token) == (container["name"] == "operator"), container["name"]
    # Only the mail container's port is 8080; the pod's port names are unique.
    names = [p["name"] for c in pod["containers"] for p in c["ports"]]
    assert len(names) == len(set(names))
    # The operator Service reaches the operator container in the mail pod.
    service = one(docs, "Service", name)
    assert service["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "op-metrics", "protocol": "TCP"}]


def test_operator_sidecar_follows_data_dir_and_ignores_replicas(chart):
    docs = documents(render_raw(chart, {"server": {"dataDir": "/data/mail"},
                                        "operator": {"enabled": True, "replicaCount": 3}}))
    assert not [d for d in docs if d["kind"] == "Deployment"]
    sts = one(docs, "StatefulSet", FULLNAME)
    assert sts["spec"]["replicas"] == 1
    containers = {c["name"]: c for c in sts["spec"]["template"]["spec"]["containers"]}
    assert set(containers) == {"mailfleet", "operator"}
    assert config_of(docs)["server"]["data_dir"] == "/data/mail"
    for container in containers.values():
        assert mounts_of(container)["data"]["mountPath"] == "/data/mail"


def test_operator_off_renders_no_operator(chart, manifests):
    off = manifests["operator-off"]
    assert not [d for d in off if "operator" in d["metadata"]["name"]]
    assert not [d for d in off if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    assert not [d for d in off if d["kind"] == "Deployment"]
    pod = one(off, "StatefulSet", FULLNAME)["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["containers"]] == ["mailfleet"]
    assert "kube-api-access" not in {v["name"] for v in pod["volumes"]}
    assert pod["automountServiceAccountToken"] is False
    policy = one(off, "NetworkPolicy", FULLNAME)
    assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} & {8081} == set()
    # Off in cluster mode too: only the mail Deployment, no operator object.
    docs = documents(render_raw(chart, {**CLUSTER_SECRETS, "operator": {"enabled": False}}))
    assert [d["metadata"]["name"] for d in find(docs, "Deployment")] == [FULLNAME]
    assert not [d for d in docs if "operator" in d["metadata"]["name"]]
    assert not [d for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")]
    assert [c["name"] for c in workload(docs)["spec"]["template"]["spec"]["containers"]] == ["mailfleet"]


def test_network_policies(manifests):
    docs = manifests["embedded-default"]
    policy = one(docs, "NetworkPolicy", FULLNAME)
    assert policy["spec"]["podSelector"]["matchLabels"] == workload(docs)["spec"]["selector"]["matchLabels"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    public, http = policy["spec"]["ingress"]
    assert "from" not in public and sorted(p["port"] for p in public["ports"]) == sorted(CONTAINER_PORTS.values())
    # Embedded mode: the pod's operator container serves 8081 to the same namespaces as 8080.
    assert http["ports"] == [{"port": 8080, "protocol": "TCP"}, {"port": 8081, "protocol": "TCP"}]
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in http["from"]
    assert {"podSelector": {}} in http["from"]
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert {53, 25, 443, 6379, 9042} <= egress_ports
    # ... and reaches the API server.
    assert {"ports": [{"port": 443, "protocol": "TCP"}, {"port": 6443, "protocol": "TCP"}]} in policy["spec"]["egress"]
    assert [d["metadata"]["name"] for d in find(docs, "NetworkPolicy")] == [FULLNAME]
    # Cluster mode: the mail pods' policy has neither; the operator pods have their own.
    cluster = manifests["cluster"]
    mail = one(cluster, "NetworkPolicy", FULLNAME)
    assert mail["spec"]["ingress"][1]["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert 6443 not in {p["port"] for rule in mail["spec"]["egress"] for p in rule["ports"]}
    operator = one(cluster, "NetworkPolicy", f"{FULLNAME}-operator")
    assert operator["spec"]["podSelector"]["matchLabels"] == \
        one(cluster, "Deployment", f"{FULLNAME}-operator")["spec"]["selector"]["matchLabels"]
    assert operator["spec"]["ingress"][0]["ports"] == [{"port": 8081, "protocol": "TCP"}]
    operator_egress = {p["port"] for rule in operator["spec"]["egress"] for p in rule["ports"]}
    # DNS, the API server and the stores it opens like the mail pods (networkPolicy.egressTcpPorts).
    assert {53, 443, 6443} <= operator_egress
    assert set(yaml.safe_load((CHART / "values.yaml").read_text())["networkPolicy"]["egressTcpPorts"]) <= operator_egress
    assert [d["metadata"]["name"] for d in find(manifests["operator-off"], "NetworkPolicy")] == [FULLNAME]


def scraped_container_ports(docs, service: dict, port_name: str) -> set[tuple[str, str, int]]:
    """(workload, container, containerPort) behind the Service port named port_name."""
    (port,) = [p for p in service["spec"]["ports"] if p["name"] == port_name]
    selector = service["spec"]["selector"].items()
    found = set()
    for doc in docs:
        if doc["kind"] in ("StatefulSet", "Deployment") and selector <= doc["spec"]["template"]["metadata"]["labels"].items():
            for container in doc["spec"]["template"]["spec"]["containers"]:
                for cport in container["ports"]:
                    if cport["name"] == port["targetPort"]:
                        found.add((doc["metadata"]["name"], container["name"], cport["containerPort"]))
    return found


@pytest.mark.parametrize("case", ["embedded-full", "cluster"])
def test_service_monitors_reach_their_containers(manifests, case):
    docs = manifests[case]
    monitors = {d["metadata"]["name"]: d for d in find(docs, "ServiceMonitor")}
    assert set(monitors) == {FULLNAME, f"{FULLNAME}-operator"}
    services = {d["metadata"]["name"]: d for d in find(docs, "Service")}
    operator_workload = FULLNAME if case.startswith("embedded") else f"{FULLNAME}-operator"
    for monitor, service, job, target in (
            (FULLNAME, f"{FULLNAME}-http", "mailfleet", {(FULLNAME, "mailfleet", 8080)}),
            (f"{FULLNAME}-operator", f"{FULLNAME}-operator", "mailfleet-operator",
             {(operator_workload, "operator", 8081)})):
        spec = monitors[monitor]["spec"]
        labels = services[service]["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items()
        # Only this Service matches (the mail Service has no http port).
        others = [n for n, s in services.items() if spec["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()]
        assert others == [service]
        port_names = {p["name"] for p in services[service]["spec"]["ports"]}
        (endpoint,) = spec["endpoints"]
        assert endpoint["port"] in port_names and endpoint["path"] == "/metrics"
        assert endpoint["relabelings"] == [{"targetLabel": "job", "replacement": job, "action": "replace"}]
        # The Service port leads to the right container: in embedded mode the operator
        # container of the mail pod, in cluster mode the operator Deployment's.
        assert scraped_container_ports(docs, services[service], endpoint["port"]) == target


def test_monitoring(manifests):
    docs = manifests["embedded-full"]
    monitors = {d["metadata"]["name"]: d for d in find(docs, "ServiceMonitor")}
    assert set(monitors) == {FULLNAME, f"{FULLNAME}-operator"}
    for monitor in monitors.values():
        assert monitor["metadata"]["labels"]["release"] == "prometheus"
    # The alert rules select job="mailfleet".
    rules_text = (CHART / "alerts" / "mailfleet.rules.yml").read_text()
    assert 'job="mailfleet"' in rules_text
    rule = one(docs, "PrometheusRule", FULLNAME)
    assert rule["spec"] == yaml.safe_load(rules_text)
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    dashboards = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]}
    files = sorted((CHART / "dashboards").glob("*.json"))
    assert len(dashboards) == len(files) == 6
    for path in files:
        cm = dashboards[f"{FULLNAME}-dashboard-{path.stem}"]
        assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert cm["metadata"]["annotations"] == {"grafana_folder": "Mailfleet"}
        assert json.loads(cm["data"][path.name]) == json.loads(path.read_text())
    for case in ("embedded-default", "proxy-protocol"):
        assert not [d for d in manifests[case] if d["kind"] in CRD_KINDS - {"Certificate"}]
        assert not [d for d in manifests[case] if "grafana_dashboard" in d["metadata"].get("labels", {})]


def test_terraform_values_contract_is_accepted(manifests):
    docs = manifests["terraform-contract"]
    config = config_of(docs)
    assert config["storage"]["s3"]["bucket"] == "example-mailfleet-bodies"
    assert config["storage"]["s3"]["endpoint"] == "" and config["storage"]["scylla"]["local_dc"] == "eu-west-1"
    env = env_of(mail_container(docs))
    # existingSecret null: S3 through the pod's identity, Scylla without authentication.
    assert set(env) == {"MAILFLEET_STORAGE__REDIS__URL"}
    assert mail_container(docs)["resources"]["requests"] == {"cpu": "500m", "memory": "512Mi"}


def test_names_and_namespaces(manifests):
    for case, docs in manifests.items():
        for doc in docs:
            name = doc["metadata"]["name"]
            assert len(name) <= 63 and re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
            if doc["kind"] not in ("ClusterRole", "ClusterRoleBinding"):
                assert doc["metadata"]["namespace"] == NAMESPACE, (case, doc["kind"], name)
            assert doc["metadata"]["labels"]["app.kubernetes.io/instance"] == RELEASE
        pairs = [(d["kind"], d["metadata"]["name"]) for d in docs]
        assert len(pairs) == len(set(pairs)), f"{case}: duplicate objects"


# ---------------------------------------------------------------------------------------------
# Schemas: Kubernetes OpenAPI for built-in kinds, CRD_SCHEMAS for the custom resources.


def closed(properties: dict, required=()) -> dict:
    return {"type": "object", "additionalProperties": False, "properties": properties, "required": list(required)}


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = closed({"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": STRING_MAP,
                   "annotations": STRING_MAP}, ["name", "namespace"])
ENDPOINT = closed({
    "port": {"type": "string"}, "path": {"type": "string"}, "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
    "relabelings": {"type": "array", "items": closed({"targetLabel": {"type": "string"}, "replacement": {"type": "string"},
                                                      "action": {"enum": ["replace"]}}, ["targetLabel", "replacement"])},
}, ["port"])
RULE = {"oneOf": [
    closed({"alert": {"type": "string"}, "expr": {"type": "string"}, "for": {"type": "string"},
            "labels": STRING_MAP, "annotations": STRING_MAP}, ["alert", "expr"]),
    closed({"record": {"type": "string"}, "expr": {"type": "string"}, "labels": STRING_MAP}, ["record", "expr"]),
]}
CRD_SCHEMAS = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): closed({
        "apiVersion": {}, "kind": {}, "metadata": METADATA,
        "spec": closed({
            "namespaceSelector": closed({"matchNames": {"type": "array", "items": {"type": "string"}}}),
            "selector": closed({"matchLabels": STRING_MAP}, ["matchLabels"]),
            "endpoints": {"type": "array", "minItems": 1, "items": ENDPOINT},
        }, ["selector", "endpoints"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    ("monitoring.coreos.com/v1", "PrometheusRule"): closed({
        "apiVersion": {}, "kind": {}, "metadata": METADATA,
        "spec": closed({"groups": {"type": "array", "minItems": 1, "items": closed({
            "name": {"type": "string"}, "interval": {"type": "string"},
            "rules": {"type": "array", "minItems": 1, "items": RULE}}, ["name", "rules"])}}, ["groups"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
    ("cert-manager.io/v1", "Certificate"): closed({
        "apiVersion": {}, "kind": {}, "metadata": METADATA,
        "spec": closed({
            "secretName": {"type": "string", "minLength": 1}, "commonName": {"type": "string", "maxLength": 64},
            "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "privateKey": closed({"algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                                  "rotationPolicy": {"enum": ["Never", "Always"]}}),
            "usages": {"type": "array", "items": {"enum": ["server auth", "digital signature", "key encipherment"]}},
            "issuerRef": closed({"name": {"type": "string", "minLength": 1}, "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                                 "group": {"type": "string"}}, ["name"]),
        }, ["secretName", "issuerRef"]),
    }, ["apiVersion", "kind", "metadata", "spec"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_manifests_validate_against_kubernetes_openapi(manifests, case):
    checked = 0
    for doc in manifests[case]:
        body = strip(doc)
        if doc["kind"] in CRD_KINDS:
            schema = CRD_SCHEMAS[(doc["apiVersion"], doc["kind"])]
            jsonschema.Draft7Validator(schema).validate(body)
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(body, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{case}: {doc['kind']} {doc['metadata']['name']} ({doc['__template__']}) "
                            f"is not valid for Kubernetes {version}: {error.message} at {list(error.path)}")
        checked += 1
    assert checked >= 8


# ---------------------------------------------------------------------------------------------
# checkov over the rendered manifests (the approach of tests/terraform/test_terraform.py).


def checkov_skips() -> dict[str, str]:
    """skip-check entries of charts/mailfleet/.checkov.yaml with the comment above each."""
    skips, reason, in_list = {}, [], False
    for line in CHECKOV_CONFIG.read_text().splitlines():
        stripped = line.strip()
        if not line.startswith(" ") and stripped:
            in_list = stripped == "skip-check:"
            reason = []
            continue
        if in_list and stripped.startswith("#"):
            reason.append(stripped.lstrip("# "))
        elif in_list and stripped.startswith("- "):
            skips[stripped[2:].strip()] = " ".join(reason)
            reason = []
    return skips


def checkov_binary() -> str:
    """checkov from PATH, else from the virtual environment under ~/.cache/mailfleet that
    tests/terraform builds from the same pinned requirements (built here if missing)."""
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
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True, text=True)
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "-r", str(CHECKOV_REQUIREMENTS)],
            check=True, capture_output=True, text=True, timeout=600,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        shutil.rmtree(venv, ignore_errors=True)
        pytest.skip(f"checkov {version} could not be installed, so the chart was not scanned: "
                    f"{getattr(error, 'stderr', '') or error}")
    print(f"installed checkov {version} in {time.monotonic() - started:.0f} s", file=sys.stderr)
    return str(binary)


def test_checkov_skip_list_gives_a_reason_for_every_entry():
    skips = checkov_skips()
    assert skips, "no skip-check entries parsed"
    for check, reason in skips.items():
        assert re.fullmatch(r"CKV2?_K8S_\d+", check), check
        assert len(reason) > 40, f"{check} has no real reason in {CHECKOV_CONFIG.name}: {reason!r}"


def run_checkov(binary: str, directory: Path, *extra: str) -> list[dict]:
    env = dict(os.environ, BC_SKIP_MAPPING="TRUE", CHECKOV_RUN_SCA_PACKAGE_SCAN_V2="false")
    env.pop("BC_API_KEY", None)
    done = subprocess.run(
        [binary, "-d", str(directory), "--framework", "kubernetes", "--quiet", "--compact", "-o", "json",
         "--skip-download", *extra],
        capture_output=True, text=True, env=env, timeout=600,
    )
    # checkov exits 1 when a check fails; anything else (or no JSON) is an error of its own.
    assert done.returncode in (0, 1), done.stderr
    reports = json.loads(done.stdout)
    return reports if isinstance(reports, list) else [reports]


def failed_checks(reports: list[dict]) -> set[tuple[str, str, str]]:
    failed = set()
    for report in reports:
        for check in report.get("results", {}).get("failed_checks", []):
            failed.add((check["check_id"], check.get("resource", ""), check.get("file_path", "")))
    return failed


def passed_count(reports: list[dict]) -> int:
    return sum(r.get("summary", {}).get("passed", 0) for r in reports)


def test_checkov_finds_nothing_unexplained(rendered, tmp_path):
    binary = checkov_binary()
    manifests_dir = tmp_path / "rendered"
    for case, out in rendered.items():
        target = manifests_dir / case
        target.mkdir(parents=True)
        for path, text in out.items():
            if path.endswith(".yaml") and text.strip():
                (target / Path(path).name).write_text(text)
    # With the chart's .checkov.yaml, as an operator would scan the rendered chart: nothing
    # may fail.
    configured = run_checkov(binary, manifests_dir, "--config-file", str(CHECKOV_CONFIG))
    assert passed_count(configured) > 1000, "checkov scanned (almost) nothing"
    assert all(r.get("summary", {}).get("parsing_errors", 0) == 0 for r in configured), configured
    failing = failed_checks(configured)
    assert not failing, f"checkov failures not explained in {CHECKOV_CONFIG}: {sorted(failing)}"
    # Without it: every failure is one the file explains, and every entry still matters.
    bare = {check for check, _, _ in failed_checks(run_checkov(binary, manifests_dir))}
    skips = checkov_skips()
    assert bare - set(skips) == set(), f"checkov failures not in {CHECKOV_CONFIG}: {bare - set(skips)}"
    stale = sorted(set(skips) - bare)
    assert not stale, f"{CHECKOV_CONFIG} skips checks that no longer fail: {stale}"
