"""The master's admin HTTP answers compared with upstream's.

    python admin_http.py MASTER HTTP OUT.json   # each side, with its own package
    python admin_http.py compare UP.json OURS.json

Each side sets up a client in its Python process, stores the same objects, asks
its master's admin port the same questions and writes the answers, with what
differs by nature (addresses, ports, ids, generated segment names, allocator
rounding) replaced by placeholders. ``compare`` then requires the same status and
kind of body for every question and, for JSON, every field upstream gives with the
same value (this master may add fields of its own).
"""

import json
import sys
import urllib.error
import urllib.request

# Fields whose values are addresses, ids, ports or allocator rounding.
VOLATILE = {
    "buffer_address_", "base_address", "segment_id", "client_id", "te_endpoint",
    "transport_endpoint_", "allocator_used_bytes", "allocator_usage_percent",
}
# Deliberate: this master has a view version without HA (upstream: null).
KNOWN = {"view_version"}


def questions(segment):
    return [
        "/health", "/role", "/query_key?key=alpha", "/query_key?key=missing", "/query_key",
        "/query_key?key=", "/batch_query_keys?keys=alpha,beta,missing", "/batch_query_keys",
        "/batch_query_keys?keys=", "/get_all_keys", "/get_all_segments",
        f"/query_segment?segment={segment}", "/query_segment?segment=nope", "/query_segment",
        "/get_segments_detail", f"/api/v1/segments/status?segment={segment}",
        "/api/v1/segments/status?segment=nope", "/api/v1/segments/status",
        "/api/v1/drain_jobs/query?job_id=00000000-0000-0000-0000-000000000000",
        "/api/v1/drain_jobs/query?job_id=junk", "/no/such/page",
    ]


def normalize(value, segment):
    if isinstance(value, dict):
        return {k: ("<v>" if k in VOLATILE else normalize(v, segment)) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(v, segment) for v in value]
    if isinstance(value, str):
        return value.replace(segment, "<segment>")
    return value


def ask(http, path, segment):
    try:
        r = urllib.request.urlopen(f"http://{http}{path}", timeout=10)
        status, body, ctype = r.status, r.read().decode(), r.headers.get("content-type", "")
    except urllib.error.HTTPError as e:
        status, body, ctype = e.code, e.read().decode(), e.headers.get("content-type", "")
    if "json" in ctype:
        return {"status": status, "json": normalize(json.loads(body), segment)}
    text = body.replace(segment, "<segment>")
    if path == "/get_all_keys":
        text = "".join(sorted(text.splitlines(keepends=True)))
    # Used bytes depend on allocation granularity.
    lines = ["Used(bytes): <n>" if ln.startswith("Used(bytes): ") else ln for ln in text.split("\n")]
    return {"status": status, "text": "\n".join(lines)}


def side(master, http, out):
    from mooncake.store import MooncakeDistributedStore

    s = MooncakeDistributedStore()
    rc = s.setup("127.0.0.1", "P2PHANDSHAKE", 64 << 20, 16 << 20, "tcp", "", master)
    if rc != 0:
        sys.exit(f"setup against {master} returned {rc}")
    s.remove_all()
    s.put("alpha", b"a" * 100)
    s.put("beta", b"b" * 5000)
    segment = s.get_hostname()
    answers = {q.replace(segment, "<segment>"): ask(http, q, segment) for q in questions(segment)}
    json.dump(answers, open(out, "w"), indent=1)
    s.close()


def covers(up, ours, where):
    """Differences: every field of ``up`` must be in ``ours`` with the same value."""
    if isinstance(up, dict) and isinstance(ours, dict):
        out = []
        for k, v in up.items():
            if k in KNOWN:
                continue
            if k not in ours:
                out.append(f"{where}.{k}: missing (upstream {v!r})")
            else:
                out += covers(v, ours[k], f"{where}.{k}")
        return out
    if isinstance(up, list) and isinstance(ours, list) and len(up) == len(ours):
        return [d for i, (a, b) in enumerate(zip(up, ours)) for d in covers(a, b, f"{where}[{i}]")]
    return [] if up == ours else [f"{where}: upstream {up!r}, ours {ours!r}"]


def compare(up_file, ours_file):
    up, ours = json.load(open(up_file)), json.load(open(ours_file))
    differences = []
    for q, a in up.items():
        b = ours.get(q)
        if b is None:
            differences.append(f"{q}: not asked of ours")
        elif a["status"] != b["status"]:
            differences.append(f"{q}: status upstream {a['status']}, ours {b['status']}")
        elif ("json" in a) != ("json" in b):
            differences.append(f"{q}: upstream answers {'JSON' if 'json' in a else 'text'}, ours does not")
        elif "json" in a:
            differences += covers(a["json"], b["json"], q)
        elif a["text"] != b["text"]:
            differences.append(f"{q}: upstream {a['text'][:200]!r}, ours {b['text'][:200]!r}")
    for d in differences:
        print(f"admin http: {d}")
    print(f"admin http: {len(differences)} differences in {len(up)} answers")
    return 1 if differences else 0


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    side(sys.argv[1], sys.argv[2], sys.argv[3])
