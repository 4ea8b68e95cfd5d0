"""Prints scripts/bench/compare.sh's side-by-side table from the JSON files that
scripts/bench/python_bench.py wrote for each side, and the floors measured in
the same run.

    compare_table.py DIR

DIR holds ``upstream-in_process.json``, ``ours-in_process.json``,
``upstream-dummy.json``, ``ours-dummy.json`` and ``floor.txt`` (the output of
``raw_tcp_bench echo`` and ``raw_tcp_bench run`` on loopback).
"""

import json
import os
import re
import sys

KIB, MIB = 1 << 10, 1 << 20


def load(directory, side, mode):
    path = os.path.join(directory, f"{side}-{mode}.json")
    with open(path) as f:
        return json.load(f)


def label(n):
    return f"{n // MIB} MiB" if n >= MIB else f"{n // KIB} KiB"


def main():
    directory = sys.argv[1]
    runs = {
        (side, mode): load(directory, side, mode)
        for side in ("upstream", "ours")
        for mode in ("in_process", "dummy")
    }
    rows = []  # (operation, unit, {(side, mode): value}, higher_is_better)

    def per_size(size, op):
        return {k: r["sizes"][str(size)][op] for k, r in runs.items()}

    for size in (4 * KIB, 64 * KIB, MIB):
        for op, name in (("put_from", "put_from"), ("get_into", "get_into"),
                         ("put", "put (bytes)"), ("get", "get (bytes)")):
            rows.append((f"{label(size)} {name} p50", "µs",
                         {k: v * 1e6 for k, v in per_size(size, op).items()}, False))
    for size in (16 * MIB,):
        for op, name in (("put_from", "put_from"), ("get_into", "get_into"),
                         ("put", "put (bytes)"), ("get", "get (bytes)")):
            rows.append((f"{label(size)} {name}", "GB/s",
                         {k: size / v / 1e9 for k, v in per_size(size, op).items()}, True))
    for op in ("batch_put_from", "batch_get_into"):
        rows.append((f"64 × 1 MiB {op}", "GB/s",
                     {k: MIB / v / 1e9 for k, v in per_size(MIB, op).items()}, True))
    for op in ("batch_put_from", "batch_get_into"):
        rows.append((f"8 × 16 MiB {op}", "GB/s",
                     {k: 16 * MIB / v / 1e9 for k, v in per_size(16 * MIB, op).items()}, True))
    rows.append(("is_exist", "k ops/s", {k: r["is_exist"] / 1e3 for k, r in runs.items()}, True))
    rows.append(("batch_is_exist(128)", "M keys/s",
                 {k: r["batch_is_exist"] / 1e6 for k, r in runs.items()}, True))
    rows.append(("memcpy 16 MiB in the benchmark process", "GB/s",
                 {k: 16 * MIB / r["sizes"][str(16 * MIB)]["memcpy"] / 1e9 for k, r in runs.items()},
                 None))

    def fmt(v):
        return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"

    print("| operation | unit | in-process: upstream | ours | speed-up | dummy: upstream | ours | speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for name, unit, values, higher in rows:
        cells = []
        for mode in ("in_process", "dummy"):
            up, ours = values[("upstream", mode)], values[("ours", mode)]
            if higher is None:
                speed = "—"
            else:
                s = ours / up if higher else up / ours
                speed = f"**{s:.2f}×**" if s >= 2 else f"{s:.2f}×"
            cells += [fmt(up), fmt(ours), speed]
        print(f"| {name} | {unit} | " + " | ".join(cells) + " |")

    floor = open(os.path.join(directory, "floor.txt")).read()
    echo = re.search(r"p50 ([0-9.]+) us", floor)
    writes = [float(m) for m in re.findall(r"write +\d stream\(s\): +\d+ us +([0-9.]+) GB/s", floor)]
    reads = [float(m) for m in re.findall(r"read +\d stream\(s\): +\d+ us +([0-9.]+) GB/s", floor)]
    print()
    print("Speed-up: how many times faster ours is (upstream's time / ours for latencies, "
          "ours / upstream's for rates); issue 20's goal is ≥ 2× in the in-process mode.")
    if echo:
        print(f"Floors in the same run: raw TCP echo round trip p50 {echo.group(1)} µs "
              "(two processes, loopback)", end="")
    if writes and reads:
        print(f"; raw TCP 16 MiB over loopback, best of 1/2/4 streams: write {max(writes):.2f} / "
              f"read {max(reads):.2f} GB/s", end="")
    print(".")


if __name__ == "__main__":
    main()
