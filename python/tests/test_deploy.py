"""The Kubernetes manifests in deploy/k8s are valid objects (checked offline against
the Kubernetes API schemas by ``kubernetes-validate``), and the Grafana dashboard is
well-formed JSON. The RoleBasedGroup (a CRD) is checked role by role: each role's
template must be a valid pod spec."""

import json
import pathlib

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is not installed")

DEPLOY = pathlib.Path(__file__).resolve().parents[2] / "deploy"
VERSION = "1.30.0"


def documents():
    for path in sorted((DEPLOY / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield path.name, doc


def objects():
    """Every object to validate: the documents, RoleBasedGroup roles as pods."""
    for name, doc in documents():
        if doc["kind"] == "RoleBasedGroup":
            assert doc["apiVersion"] == "workloads.x-k8s.io/v1alpha1"
            roles = doc["spec"]["roles"]
            assert {r["name"] for r in roles} >= {"mooncake-master", "mooncake-store", "sglang-backend"}
            for role in roles:
                assert role["replicas"] >= 1
                pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": role["name"]},
                       "spec": role["template"]["spec"]}
                yield f"{name}:{role['name']}", pod
        else:
            yield name, doc


def test_manifests_are_valid_kubernetes_objects():
    seen = []
    for name, obj in objects():
        kv.validate(obj, VERSION, strict=True)
        seen.append((name, obj["kind"]))
    kinds = {k for _, k in seen}
    assert {"Deployment", "Service", "DaemonSet", "Pod"} <= kinds, seen


def test_validation_catches_a_broken_manifest():
    _, doc = next(d for d in documents() if d[1]["kind"] == "DaemonSet")
    doc["spec"]["template"]["spec"]["containers"][0]["ports"] = "not a list"
    with pytest.raises(kv.ValidationError):
        kv.validate(doc, VERSION, strict=True)


def test_real_clients_share_the_socket_the_engine_mounts():
    docs = dict((d["metadata"]["name"], d) for _, d in documents() if d["kind"] != "RoleBasedGroup")
    client = docs["mooncake-client"]["spec"]["template"]["spec"]
    args = client["containers"][0]["args"]
    socket = next(a.split("=", 1)[1] for a in args if a.startswith("--ipc_socket_path="))
    engine = docs["sglang-mooncake"]["spec"]
    env = {e["name"]: e.get("value") for e in engine["containers"][0]["env"]}
    assert env["MOONCAKE_IPC_SOCKET_PATH"] == socket
    host_dirs = lambda spec: {v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}  # noqa: E731
    assert host_dirs(client) & host_dirs(engine)


def test_grafana_dashboard_is_json_with_queries():
    dash = json.loads((DEPLOY / "grafana" / "mooncake.json").read_text())
    assert all(t["expr"] for p in dash["panels"] for t in p["targets"])
