"""Replica copy / move tasks (``create_copy_task``, ``create_move_task``,
``query_task``): queued by the master for the real client holding the source
replica, which copies the bytes to the target segment with its transfer engine.
Checked by reading the object back after the original replica is gone."""

import os
import asyncio
import threading
import time
import uuid

import pytest

from conftest import MB, RealClient
from mooncake.store import (
    MooncakeDistributedStore,
    MooncakeDistributedStoreAsync,
    QueryTaskResponse,
    ReplicateConfig,
    TaskStatus,
    TaskType,
)

INVALID_PARAMS = -600
OBJECT_NOT_FOUND = -704
TASK_NOT_FOUND = -1400
NOT_SET_UP = -1010


def uniq(prefix="t"):
    return f"{prefix}-{uuid.uuid4().hex}"


def payload(n, seed):
    return bytes((i * 13 + seed) % 251 for i in range(n))


@pytest.fixture(scope="module")
def other(master):
    """A second real client: the target segment, and a reader on another host."""
    rc = RealClient(master, segment="64MB")
    s = MooncakeDistributedStore()
    assert s.setup_dummy(16 * MB, 16 * MB, rc.address) == 0
    s.segment = s.get_hostname()
    yield s
    s.close()
    rc.cleanup()


def put_on(store, key, data, segment):
    cfg = ReplicateConfig()
    cfg.preferred_segments = [segment]
    assert store.put(key, data, cfg) == 0
    segments = [r.segment_name for r in store.get_replica_desc(key)]
    assert segments == [segment]


def wait_done(store, task_id, timeout=15.0):
    deadline = time.monotonic() + timeout
    while True:
        resp, err = store.query_task(task_id)
        assert err == 0 and isinstance(resp, QueryTaskResponse)
        if resp.status in (TaskStatus.SUCCESS, TaskStatus.FAILED):
            return resp
        assert time.monotonic() < deadline, f"task still {resp.status}"
        time.sleep(0.05)


def segments_of(store, key):
    return sorted(r.segment_name for r in store.get_replica_desc(key))


def test_copy_task_adds_a_replica_with_the_same_bytes(store, other):
    key, data = uniq(), payload(300_000, 1)
    mine = store.segment
    put_on(store, key, data, mine)

    task_id, err = store.create_copy_task(key, [other.segment])
    assert err == 0
    assert isinstance(task_id, tuple) and len(task_id) == 2 and task_id != (0, 0)
    resp = wait_done(store, task_id)
    assert resp.status == TaskStatus.SUCCESS, resp.message
    assert resp.type == TaskType.REPLICA_COPY
    assert resp.id == task_id
    assert resp.created_at_ms_epoch <= resp.last_updated_at_ms_epoch
    assert abs(resp.created_at_ms_epoch / 1000 - time.time()) < 60
    assert resp.message == "Task completed successfully"
    assert segments_of(store, key) == sorted([mine, other.segment])

    # The other client reads its local replica (the copy) from its own segment.
    assert other.get(key) == data
    assert store.get(key) == data
    store.remove(key)


def test_move_task_relocates_the_replica(store, other):
    key, data = uniq(), payload(70_000, 2)
    mine = store.segment
    put_on(store, key, data, mine)
    task_id, err = store.create_move_task(key, mine, other.segment)
    assert err == 0
    resp = wait_done(store, task_id)
    assert resp.status == TaskStatus.SUCCESS, resp.message
    assert resp.type == TaskType.REPLICA_MOVE
    assert segments_of(store, key) == [other.segment]
    assert store.get(key) == data
    assert other.get(key) == data
    # And back again, run this time by the other real client.
    task_id, err = other.create_move_task(key, other.segment, mine)
    assert err == 0
    assert wait_done(other, task_id).status == TaskStatus.SUCCESS
    assert segments_of(store, key) == [mine]
    assert store.get(key) == data
    store.remove(key)


def test_task_errors_are_codes_not_exceptions(store, other):
    key = uniq()
    mine = store.segment
    put_on(store, key, b"x" * 4096, mine)
    assert store.create_copy_task(uniq("missing"), [other.segment]) == ((0, 0), OBJECT_NOT_FOUND)
    assert store.create_copy_task(key, []) == ((0, 0), INVALID_PARAMS)
    assert store.create_copy_task(key, ["no-such-segment:1"]) == ((0, 0), INVALID_PARAMS)
    assert store.create_move_task(key, mine, mine) == ((0, 0), INVALID_PARAMS)
    # No replica of the key on the named source.
    assert store.create_move_task(key, other.segment, mine) == ((0, 0), INVALID_PARAMS)
    assert store.create_move_task(key, mine, "no-such-segment:1") == ((0, 0), INVALID_PARAMS)
    assert store.query_task((1, 2)) == (None, TASK_NOT_FOUND)
    assert store.query_task(str(uuid.uuid4())) == (None, TASK_NOT_FOUND)
    assert store.query_task("not a uuid") == (None, INVALID_PARAMS)
    assert store.query_task(3.5) == (None, INVALID_PARAMS)
    # Copying to where a replica already is: nothing to do, and it succeeds.
    task_id, err = store.create_copy_task(key, [mine])
    assert err == 0
    assert wait_done(store, task_id).status == TaskStatus.SUCCESS
    assert segments_of(store, key) == [mine]
    store.remove(key)

    fresh = MooncakeDistributedStore()
    assert fresh.create_copy_task(key, [mine]) == ((0, 0), NOT_SET_UP)
    assert fresh.create_move_task(key, mine, other.segment) == ((0, 0), NOT_SET_UP)
    assert fresh.query_task((1, 2)) == (None, NOT_SET_UP)


def test_tasks_from_several_threads(store, other):
    mine = store.segment
    keys = [uniq(f"thr{i}") for i in range(16)]
    for i, k in enumerate(keys):
        put_on(store, k, payload(8192 + i, i), mine)
    ids, errors = {}, []

    def create(chunk):
        for k in chunk:
            task_id, err = store.create_copy_task(k, [other.segment])
            if err:
                errors.append((k, err))
            ids[k] = task_id

    threads = [threading.Thread(target=create, args=(keys[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(set(ids.values())) == len(keys)
    for i, k in enumerate(keys):
        assert wait_done(store, ids[k]).status == TaskStatus.SUCCESS
        assert segments_of(store, k) == sorted([mine, other.segment])
        assert other.get(k) == payload(8192 + i, i)
    assert store.batch_remove(keys, True) == [0] * len(keys)


def test_async_task_calls(real_client, other):
    a = MooncakeDistributedStoreAsync()
    assert a.setup_dummy(16 * MB, 16 * MB, real_client.address) == 0
    key = uniq()
    mine = a.get_hostname()
    put_on(a, key, b"y" * 1000, mine)

    async def run():
        task_id, err = await a.async_create_move_task(key, mine, other.segment)
        assert err == 0
        while True:
            resp, err = await a.async_query_task(task_id)
            assert err == 0
            if resp.status == TaskStatus.SUCCESS:
                return
            assert resp.status != TaskStatus.FAILED, resp.message
            await asyncio.sleep(0.05)

    asyncio.run(asyncio.wait_for(run(), 15))
    assert segments_of(a, key) == [other.segment]
    assert a.get(key) == b"y" * 1000
    a.remove(key)
    a.close()


def http(master, method, path, body=None):
    import json
    import urllib.error
    import urllib.request

    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    req = urllib.request.Request(f"http://127.0.0.1:{master.metrics_port}{path}", data=data, method=method)
    # Admin writes need the credential: without a cluster token, the host secret.
    secret = os.environ.get("MOONCAKE_HOST_SECRET_FILE") or os.path.expanduser("~/.mooncake/host_secret")
    with open(secret) as f:
        req.add_header("Authorization", "Bearer " + f.read().strip())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_drain_job_moves_a_segment_empty_over_http(master, other):
    rc = RealClient(master, segment="64MB")
    leaving = MooncakeDistributedStore()
    assert leaving.setup_dummy(16 * MB, 16 * MB, rc.address) == 0
    try:
        name = leaving.get_hostname()
        keys = [uniq("drain") for _ in range(12)]
        for i, k in enumerate(keys):
            put_on(leaving, k, payload(20_000 + i, i), name)

        assert http(master, "POST", "/api/v1/drain_jobs", b"{not json")[0] == 400
        code, body = http(master, "POST", "/api/v1/drain_jobs", {"segments": ["no-such:1"]})
        assert (code, body["success"], body["error_code"]) == (404, False, -101)
        code, body = http(master, "POST", "/api/v1/drain_jobs",
                          {"segments": [name], "target_segments": [other.segment], "max_concurrency": 3})
        assert code == 200 and body["success"] and body["status"] == "CREATED", body
        job = body["job_id"]

        deadline = time.monotonic() + 30
        while True:
            code, q = http(master, "GET", f"/api/v1/drain_jobs/query?job_id={job}")
            assert code == 200 and q["success"] and q["job_id"] == job
            if q["status_name"] not in ("CREATED", "PLANNING", "RUNNING"):
                break
            assert q["active_units"] <= 3
            assert time.monotonic() < deadline, q
            time.sleep(0.1)
        assert q["status_name"] == "SUCCEEDED" and q["status"] == 3, q
        assert q["type_name"] == "DRAIN" and q["segments"] == [name]
        assert q["succeeded_units"] == len(keys) and q["failed_units"] == 0
        assert q["migrated_bytes"] == sum(20_000 + i for i in range(len(keys)))

        for i, k in enumerate(keys):
            assert segments_of(leaving, k) == [other.segment]
            assert leaving.get(k) == payload(20_000 + i, i)
        # The drained segment takes no new objects.
        cfg = ReplicateConfig()
        cfg.preferred_segments = [name]
        k = uniq("after")
        assert leaving.put(k, b"z" * 100, cfg) == 0
        assert segments_of(leaving, k) != [name]

        code, body = http(master, "POST", f"/api/v1/drain_jobs/cancel?job_id={job}")
        assert code == 400 and not body["success"]
        code, body = http(master, "GET", f"/api/v1/drain_jobs/query?job_id={uuid.uuid4()}")
        assert (code, body["error_code"]) == (404, -1402)
        assert http(master, "GET", "/api/v1/drain_jobs/query?job_id=nope")[0] == 400
        assert http(master, "POST", "/api/v1/drain_jobs/cancel")[0] == 400
    finally:
        leaving.close()
        rc.cleanup()
