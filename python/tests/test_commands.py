"""The commands of upstream's deployment guides, run verbatim from the installed
package (console scripts and ``python -m`` modules), each checked by using it."""

import json
import os
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest
from conftest import MB, Proc, command, free_port, port_busy

from mooncake.store import MooncakeDistributedStore


def http(method, url, body=None, timeout=10):
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return http("GET", url, timeout=2)
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.1)
    raise AssertionError(f"{url} never answered")


def need_ports(*ports):
    busy = [p for p in ports if port_busy(p)]
    if busy:
        pytest.skip(f"default ports {busy} are in use on this machine; the verbatim command cannot bind them")


def test_master_default_command():
    need_ports(50051, 9003)
    m = Proc([command("mooncake_master"), "--eviction_high_watermark_ratio=0.95"])
    try:
        m.wait_for(r"Master service started on port 50051")
        m.wait_for(r"HTTP metrics server started on port 9003")
        status, body = wait_http("http://127.0.0.1:9003/metrics")
        assert status == 200 and b"master" in body
        s = MooncakeDistributedStore()
        assert s.setup("localhost", "P2PHANDSHAKE", 16 * MB, 16 * MB, "tcp", "", "127.0.0.1:50051") == 0
        assert s.put("via-default-master", b"ok") == 0 and s.get("via-default-master") == b"ok"
        status, body = http("GET", "http://127.0.0.1:9003/get_all_segments")
        assert status == 200 and body.strip()  # SGLang's check_server waits for this
        s.close()
    finally:
        assert m.stop() == 0


def test_master_with_metadata_server_command():
    need_ports(50051, 9003, 8080)
    m = Proc([command("mooncake_master"), "--enable_http_metadata_server=true",
              "--http_metadata_server_port=8080", "--eviction_high_watermark_ratio=0.95"])
    try:
        m.wait_for(r"HTTP metadata server started on port 8080")
        assert http("PUT", "http://127.0.0.1:8080/metadata?key=mooncake/ram/x", b"desc")[0] == 200
        assert http("GET", "http://127.0.0.1:8080/metadata?key=mooncake/ram/x") == (200, b"desc")
        s = MooncakeDistributedStore()
        assert s.setup("localhost", "http://127.0.0.1:8080/metadata", 16 * MB, 16 * MB, "tcp", "",
                       "127.0.0.1:50051") == 0
        assert s.put("k", b"v") == 0
        s.close()
    finally:
        m.stop()


def test_master_kubernetes_command_and_verbose_logging():
    need_ports(50051, 9003, 8080)
    pod_ip = "127.0.0.1"
    m = Proc(["sh", "-c", f"{command('mooncake_master')} --rpc_address {pod_ip} --rpc_port 50051 "
              f"--http_metadata_server_host {pod_ip} --http_metadata_server_port 8080 "
              f"--metrics_port 9003 -v=1"])
    try:
        m.wait_for(r"Master service started on port 50051 \(127\.0\.0\.1:50051\)")
        m.wait_for(r"HTTP metrics server started on port 9003")
        s = MooncakeDistributedStore()
        assert s.setup("localhost", "P2PHANDSHAKE", 16 * MB, 16 * MB, "tcp", "", f"{pod_ip}:50051") == 0
        assert s.put("counted", b"1") == 0
        # the periodic summary line, every 10 s, shows the key
        m.wait_for(r"Master Metrics: Storage: [^|]+/[^|]+\| Keys: 1", timeout=25)
        assert "DEBUG" in m.output()  # -v=1 is verbose
        s.close()
    finally:
        m.stop()


@pytest.mark.parametrize("how", ["module", "script"])
def test_standalone_metadata_server(how):
    need_ports(8080)
    argv = ([sys.executable, "-m", "mooncake.http_metadata_server"] if how == "module"
            else [command("mooncake_http_metadata_server")])
    p = Proc(argv)
    try:
        p.wait_for(r"HTTP metadata server started on port 8080")
        assert wait_http("http://127.0.0.1:8080/health")[0] == 200
        assert http("PUT", "http://127.0.0.1:8080/metadata?key=a", b"1")[0] == 200
        assert http("GET", "http://127.0.0.1:8080/metadata?key=a") == (200, b"1")
        assert http("DELETE", "http://127.0.0.1:8080/metadata?key=a")[0] == 200
        assert http("GET", "http://127.0.0.1:8080/metadata?key=a")[0] == 404
    finally:
        assert p.stop() == 0


def test_real_client_default_command_with_a_dummy():
    need_ports(50051, 9003, 50052, 9300)
    m = Proc([command("mooncake_master")])
    c = None
    try:
        m.wait_for(r"Master service started on port 50051")
        c = Proc([command("mooncake_client"), "--global_segment_size=4GB"])
        c.wait_for(r"mooncake_client ready", timeout=60)
        assert "segment" in c.output() and "4294967296" in c.output()
        s = MooncakeDistributedStore()
        assert s.setup_dummy(0, 16 * MB, "127.0.0.1:50052") == 0
        assert s.put("through-the-daemon", b"x" * 100000) == 0
        assert s.get("through-the-daemon") == b"x" * 100000
        assert s.health_check() == 0
        s.close()
        assert wait_http("http://127.0.0.1:9300/health")[0] == 200
        assert c.stop() == 0
    finally:
        if c:
            c.kill()
        segment = "/dev/shm/mooncake_client_50052.segment"
        for p in (segment, segment + ".inventory", segment + ".inventory.journal"):
            if os.path.exists(p):
                os.unlink(p)
        m.stop()


def test_real_client_rejects_rdma_clearly(master):
    c = Proc([command("mooncake_client"), f"--port={free_port()}", "--protocol=rdma",
              "--global_segment_size=16MB", f"--master_server_address={master.address}",
              "--disable_http"])
    c.popen.wait(timeout=30)
    assert c.popen.returncode != 0 and "rdma" in c.output().lower()
    c.kill()


def store_service_checks(port):
    base = f"http://127.0.0.1:{port}"
    key = f"svc-{uuid.uuid4().hex}"
    assert http("PUT", f"{base}/api/put", {"key": key, "value": "hello"}) == (200, b'{"status": "success"}')
    assert http("GET", f"{base}/api/get/{key}") == (200, b"hello")
    assert json.loads(http("GET", f"{base}/api/exist/{key}")[1]) == {"exists": True}
    assert http("DELETE", f"{base}/api/remove/{key}")[0] == 200
    assert http("GET", f"{base}/api/get/{key}")[0] == 404
    assert json.loads(http("GET", f"{base}/api/exist/{key}")[1]) == {"exists": False}
    assert http("PUT", f"{base}/api/put", {"key": key + "2", "value": "v"})[0] == 200
    status, body = http("DELETE", f"{base}/api/remove_all")
    assert status == 200 and b"removed" in body
    assert http("PUT", f"{base}/api/put", {"key": key})[0] == 400


def segment_count(master):
    status, body = http("GET", f"http://127.0.0.1:{master.metrics_port}/get_all_segments")
    assert status == 200
    return len([line for line in body.decode().splitlines() if line.strip()])


def test_store_service_from_json_config(tmp_path, master):
    config = tmp_path / "store.json"
    config.write_text(json.dumps({
        "local_hostname": "localhost",
        "metadata_server": "P2PHANDSHAKE",
        "master_server_address": master.address,
        "protocol": "tcp",
        "device_name": "",
        "global_segment_size": "64mb",
        "local_buffer_size": "16mb",  # it serves puts and gets itself
    }))
    before = segment_count(master)
    port = free_port()
    p = Proc([sys.executable, "-m", "mooncake.mooncake_store_service", f"--config={config}", f"--port={port}"])
    try:
        p.wait_for(r"Mooncake Store Service is running")
        assert segment_count(master) == before + 1  # it contributes its segment
        store_service_checks(port)
        # a put from elsewhere can land in the service's segment and be read back
        s = MooncakeDistributedStore()
        assert s.setup("localhost", "P2PHANDSHAKE", 0, 16 * MB, "tcp", "", master.address) == 0
        assert s.put("to-service", b"z" * 70000) == 0
        assert http("GET", f"http://127.0.0.1:{port}/api/get/to-service") == (200, b"z" * 70000)
        s.close()
    finally:
        assert p.stop() == 0


def test_store_service_from_environment(master):
    port = free_port()
    env = {
        "MOONCAKE_LOCAL_HOSTNAME": "localhost",
        "MOONCAKE_TE_META_DATA_SERVER": "P2PHANDSHAKE",
        "MOONCAKE_MASTER": master.address,
        "MOONCAKE_PROTOCOL": "tcp",
        "MOONCAKE_DEVICE": "",
        "MOONCAKE_GLOBAL_SEGMENT_SIZE": "33554432",
        "MOONCAKE_LOCAL_BUFFER_SIZE": "16777216",  # it serves puts and gets itself
    }
    p = Proc([sys.executable, "-m", "mooncake.mooncake_store_service", f"--port={port}"], env=env)
    try:
        p.wait_for(r"Mooncake Store Service is running")
        store_service_checks(port)
    finally:
        assert p.stop() == 0


def test_store_service_rdma_is_a_clear_failure(tmp_path, master):
    config = tmp_path / "store.json"
    config.write_text(json.dumps({"master_server_address": master.address, "protocol": "rdma",
                                  "global_segment_size": "16mb"}))
    p = Proc([sys.executable, "-m", "mooncake.mooncake_store_service", f"--config={config}",
              f"--port={free_port()}", "--max-wait-time=0"])
    p.popen.wait(timeout=30)
    assert p.popen.returncode == 1 and "RDMA" in p.output()
    p.kill()
