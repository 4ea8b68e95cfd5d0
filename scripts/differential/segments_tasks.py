"""Replica tasks and segment calls compared with upstream's wheel.

    python segments_tasks.py MASTER OUT.json     # each side, with its own package
    python segments_tasks.py compare UP.json OURS.json

Each side sets up a client in its Python process and makes the same copy / move
task and segment calls, valid and invalid; answers are recorded with task and
segment ids masked. ``compare`` fails on any answer that differs.
"""

import json
import sys


def mask(value):
    if isinstance(value, dict):
        return {k: mask(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(isinstance(x, int) for x in value) and value != (0, 0) and list(value) != [0, 0]:
            return "<task id>"
        return [mask(v) for v in value]
    return value


def side(master, out):
    from mooncake.store import MooncakeDistributedStore

    s = MooncakeDistributedStore()
    if s.setup("127.0.0.1", "P2PHANDSHAKE", 64 << 20, 16 << 20, "tcp", "", master) != 0:
        sys.exit(f"setup against {master} failed")
    s.remove_all()
    s.put("task-key", b"x" * 1000)
    me = s.get_hostname()
    answers = []

    def record(name, f):
        try:
            r = f()
        except Exception as e:  # a raise is an answer too
            r = f"raises {type(e).__name__}"
        if isinstance(r, dict) and "segment_ids" in r:
            r = dict(r, segment_ids=len(r["segment_ids"]))
        answers.append([name, mask(r)])
        return r

    record("copy to own segment", lambda: s.create_copy_task("task-key", [me]))
    record("copy of a missing key", lambda: s.create_copy_task("no-such-key", [me]))
    record("copy to an unknown segment", lambda: s.create_copy_task("task-key", ["nope:1"]))
    record("copy to no segment", lambda: s.create_copy_task("task-key", []))
    record("move to the same segment", lambda: s.create_move_task("task-key", me, me))
    record("move to an unknown segment", lambda: s.create_move_task("task-key", me, "nope:1"))
    record("move of a missing key", lambda: s.create_move_task("no-such-key", me, me))
    r = record("allocate and mount 32 MiB", lambda: s.allocate_and_mount_segment(32 << 20))
    record("allocate and mount 0", lambda: s.allocate_and_mount_segment(0))
    ids = []
    if isinstance(r, dict) and r.get("ret") == 0:
        ids = s.allocate_and_mount_segment(16 << 20)["segment_ids"]
    record("unmount an unknown id", lambda: s.unmount_segment(["00000000-0000-0000-0000-000000000000"]))
    record("unmount no id", lambda: s.unmount_segment([]))
    record("unmount a malformed id", lambda: s.unmount_segment(["not-a-uuid"]))
    record("unmount and free", lambda: s.unmount_and_free_segment(ids))
    record("unmount and free again", lambda: s.unmount_and_free_segment(ids))
    record("mount a missing file", lambda: s.mount_segment("/nonexistent/mooncake-x", 1 << 20))
    json.dump(answers, open(out, "w"), indent=1)
    s.close()


def compare(up_file, ours_file):
    up, ours = json.load(open(up_file)), json.load(open(ours_file))
    differ = [f"{a[0]}: upstream {a[1]!r}, ours {b[1]!r}" for a, b in zip(up, ours) if a != b]
    if len(up) != len(ours):
        differ.append(f"upstream made {len(up)} calls, ours {len(ours)}")
    for d in differ:
        print(f"segments/tasks: {d}")
    print(f"segments/tasks: {len(differ)} differences in {len(up)} calls")
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    side(sys.argv[1], sys.argv[2])
