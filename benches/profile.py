#!/usr/bin/env python3
"""Summarizes `perf script` output (call graphs) of the gateway: CPU share per thread, and the
inclusive share of the gateway's own functions and of the libraries it spends time in.

    python3 benches/profile.py stacks.txt [FUNCTION]

With FUNCTION, prints what that function's time goes to (its direct callees)."""

import collections
import re
import sys


def stacks(path):
    """Yields (thread name, frames leaf first) per sample."""
    thread, frames = None, []
    for line in open(path, errors="replace"):
        if not line.strip():
            if frames:
                yield thread, frames
            frames = []
            continue
        if not line[0].isspace():
            thread = line.split()[0]
            continue
        parts = line.strip().split(" ", 1)
        if len(parts) > 1:
            frames.append(re.sub(r"\+0x[0-9a-f]+$", "", parts[1].rsplit(" (", 1)[0]))
    if frames:
        yield thread, frames


# Frames worth naming: the gateway's own code and the libraries where its time goes.
INTERESTING = re.compile(
    r"^(inquiry_gateway::|inquiry_connectors::|fjall::|lsm_tree::|value_log::|rd_kafka_|serde_json::de::from_|"
    r"hyper::proto::h1::role::|ring::aead|wasmtime::)"
)


def main():
    samples = list(stacks(sys.argv[1]))
    total = len(samples) or 1
    if len(sys.argv) > 2:
        target, callees, hits = sys.argv[2], collections.Counter(), 0
        for _, frames in samples:
            for i, frame in enumerate(frames):
                if target in frame:
                    hits += 1
                    callees[frames[i - 1] if i else "<self>"] += 1
                    break
        print(f"{target}: {100 * hits / total:.1f}% of {total} samples; its callees:")
        for name, n in callees.most_common(25):
            print(f"  {100 * n / total:5.1f}%  {name[:150]}")
        return
    threads = collections.Counter(re.sub(r"[-:]?\d+$", "", t or "?") for t, _ in samples)
    print(f"{total} samples. Per thread:")
    for name, n in threads.most_common(12):
        print(f"  {100 * n / total:5.1f}%  {name}")
    inclusive = collections.Counter()
    for _, frames in samples:
        for frame in set(f for f in frames if INTERESTING.match(f)):
            inclusive[frame] += 1
    print("Inclusive, the gateway's functions and the libraries it calls (top 40):")
    for name, n in inclusive.most_common(40):
        print(f"  {100 * n / total:5.1f}%  {name[:150]}")


main()
