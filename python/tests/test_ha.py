"""HA as an engine sees it: ``setup()`` given ``etcd://…`` (SGLang's and LMCache's
``master_server_address``) against two ``mooncake_master --enable_ha`` processes
and a real etcd; the leader is killed and the same store keeps its objects.
Skips, saying why, where Debian's etcd is not installed."""

import os
import shutil
import signal
import tempfile
import time
import urllib.request

import pytest

from conftest import Proc, command, free_port
from mooncake.store import MooncakeDistributedStore

ETCD = shutil.which("etcd") or "/usr/bin/etcd"
pytestmark = pytest.mark.skipif(not os.path.exists(ETCD),
                                reason="etcd is not installed (Debian package etcd-server)")


def http(addr, path):
    try:
        with urllib.request.urlopen(f"http://{addr}{path}", timeout=2) as r:
            return r.read().decode()
    except Exception:
        return ""


@pytest.fixture
def etcd():
    data = tempfile.mkdtemp(prefix="mc-etcd-")
    client, peer = free_port(), free_port()
    proc = Proc([ETCD, "--name=t", f"--data-dir={data}",
                 f"--listen-client-urls=http://127.0.0.1:{client}",
                 f"--advertise-client-urls=http://127.0.0.1:{client}",
                 f"--listen-peer-urls=http://127.0.0.1:{peer}",
                 f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                 f"--initial-cluster=t=http://127.0.0.1:{peer}"])
    proc.wait_for("ready to serve client requests")
    yield f"127.0.0.1:{client}"
    proc.kill()
    shutil.rmtree(data, ignore_errors=True)


def start_master(etcd):
    rpc, admin = free_port(), free_port()
    proc = Proc([command("mooncake_master"), "--enable_ha=true", "--ha_backend_type=etcd",
                 f"--ha_backend_connstring={etcd}", "--rpc_address=127.0.0.1",
                 f"--rpc_port={rpc}", "--metrics_host=127.0.0.1", f"--metrics_port={admin}"])
    proc.wait_for("HTTP metrics server started")
    return proc, admin


def serving(admins):
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        for i, admin in enumerate(admins):
            if http(f"127.0.0.1:{admin}", "/ha_status").strip() == "serving":
                return i
        time.sleep(0.1)
    raise AssertionError("no master became the serving leader")


def test_setup_with_an_etcd_address_follows_the_leader_through_a_kill(etcd):
    masters = [start_master(etcd) for _ in range(2)]
    try:
        leader = serving([a for _, a in masters])
        store = MooncakeDistributedStore()
        assert store.setup("localhost", "P2PHANDSHAKE", 64 << 20, 16 << 20, "tcp", "",
                           f"etcd://{etcd}") == 0
        values = {f"ha-{i}": os.urandom(4096 + i) for i in range(50)}
        for k, v in values.items():
            assert store.put(k, v) == 0
        # The standby says so, and names the leader.
        standby_admin = masters[1 - leader][1]
        assert http(f"127.0.0.1:{standby_admin}", "/role").strip() == "standby"
        assert '"present":true' in http(f"127.0.0.1:{standby_admin}", "/leader").replace(" ", "")

        masters[leader][0].kill(signal.SIGKILL)
        # Calls made while no leader serves wait for the next one; nothing is lost.
        assert store.put("after-failover", b"x" * 1000) == 0
        for k, v in values.items():
            assert store.get(k) == v, k
        assert store.get("after-failover") == b"x" * 1000
        assert serving([a for _, a in masters]) == 1 - leader
        store.close()
    finally:
        for proc, _ in masters:
            proc.kill()


def manifest_master_args():
    """The HA masters' arguments in deploy/k8s/master-ha.yaml."""
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed")
    path = os.path.join(os.path.dirname(__file__), "..", "..", "deploy", "k8s", "master-ha.yaml")
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    deploy = next(d for d in docs if d["kind"] == "Deployment")
    container = deploy["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in container["env"]}
    assert env["POD_IP"] == "status.podIP"
    etcd = next(d for d in docs if d["kind"] == "StatefulSet")
    assert deploy["spec"]["replicas"] >= 2 and etcd["spec"]["replicas"] >= 3
    return container["args"]


def test_the_kubernetes_ha_masters_command_line_elects_one_leader(etcd):
    """The command line of deploy/k8s/master-ha.yaml, with the pod IP, the etcd
    endpoints and the ports of this host put in: two such masters elect one leader,
    and a client given ``etcd://`` and the manifest's endpoint list form stores."""
    args = manifest_master_args()
    endpoints = next(a.split("=", 1)[1] for a in args if a.startswith("--ha_backend_connstring="))
    assert len(endpoints.split(";")) == 3
    masters = []
    try:
        for _ in range(2):
            rpc, admin = free_port(), free_port()
            here = {"--ha_backend_connstring": f"{etcd};{etcd}", "--rpc_port": str(rpc),
                    "--metrics_port": str(admin), "--metrics_host": "127.0.0.1"}
            argv = []
            for a in args:
                name = a.split("=", 1)[0]
                a = f"{name}={here[name]}" if name in here else a
                argv.append(a.replace("$(POD_IP)", "127.0.0.1"))
            proc = Proc([command("mooncake_master"), *argv])
            proc.wait_for("HTTP metrics server started")
            masters.append((proc, admin))
        leader = serving([a for _, a in masters])
        roles = [http(f"127.0.0.1:{a}", "/role").strip() for _, a in masters]
        assert sorted(roles) == ["leader", "standby"] and roles[leader] == "leader"
        assert '"status":"ok"' in http(f"127.0.0.1:{masters[1 - leader][1]}", "/health").replace(" ", "")
        store = MooncakeDistributedStore()
        assert store.setup("localhost", "P2PHANDSHAKE", 16 << 20, 16 << 20, "tcp", "",
                           f"etcd://{etcd};{etcd}") == 0
        assert store.put("k8s-ha", b"v" * 5000) == 0
        assert store.get("k8s-ha") == b"v" * 5000
        store.close()
    finally:
        for proc, _ in masters:
            proc.kill()
