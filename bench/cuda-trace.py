#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Reads the timeline that a timing build of bench-cuda writes (--trace FILE; nvcc -DQUANTD_CUDA_TRACE) and
prints, for each launch of one decode step, when its blocks started, passed griddepcontrol.wait and ended,
and how much later than the launch before it ended (what the launch adds to the step). Then the same
summed over the layers, per kernel of a layer.

    bench/cuda-trace.py TRACE [--step N] [--launches]
"""
import argparse
import collections

KINDS = {0: "other", 1: "norm", 2: "get_rows", 3: "attn", 4: "quantize", 5: "matvec", 6: "matvec2", 7: "argmax"}
START, WAITED, END = 0x100, 0x200, 0x400
# The kernels of a layer as decode_layers() launches them for a quantized model whose attention writes the
# 8-bit input of Wo (head_dim % 32 == 0).
LAYER = ["norm", "qkv", "attn", "wo", "norm2", "gate_up", "quant_h", "down"]


def launches(path):
    per = collections.defaultdict(lambda: {"start": [], "waited": [], "end": [], "kind": None})
    for line in open(path):
        g, t, _block, tag = (int(v) for v in line.split())
        rec = per[g]
        if tag & START:
            rec["start"].append(t)
            rec["kind"] = KINDS.get(tag & 0xff, "?")
        if tag & WAITED and t:
            rec["waited"].append(t)
        if tag & END:
            rec["end"].append(t)
    out = [dict(grid=g, **r) for g, r in per.items() if r["start"] and r["end"]]
    out.sort(key=lambda r: min(r["start"]))
    return out


def steps(ls):
    """Splits the launches into decode steps, each from get_rows to argmax."""
    cur, res = [], []
    for r in ls:
        if r["kind"] == "get_rows" and cur:
            res.append(cur)
            cur = []
        cur.append(r)
    if cur:
        res.append(cur)
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("--step", type=int, default=-1, help="which decode step (default: the last)")
    ap.add_argument("--launches", action="store_true", help="print every launch")
    args = ap.parse_args()
    st = steps(launches(args.trace))
    step = st[args.step]
    t0 = min(step[0]["start"])
    prev_end = t0
    sums = collections.defaultdict(lambda: [0.0, 0.0, 0.0, 0])
    # Name the launches: the layers' kernels in LAYER's order, then the output norm and the head.
    body = [r for r in step if r["kind"] not in ("get_rows", "argmax")]
    n_layer = (len(body) - 2) // len(LAYER)
    if n_layer * len(LAYER) + 2 != len(body):
        raise SystemExit("%d launches between get_rows and argmax: not %d layers of %s" %
                         (len(body), n_layer, " ".join(LAYER)))
    tail = iter(["out_norm", "head"])
    names, li = [], 0
    for r in step:
        if r["kind"] in ("get_rows", "argmax"):
            names.append(r["kind"])
        elif li < n_layer * len(LAYER):
            names.append(LAYER[li % len(LAYER)])
            li += 1
        else:
            names.append(next(tail))
    if args.launches:
        print("%-9s %6s %9s %9s %9s %9s %9s %8s" % ("launch", "blocks", "start0", "start1", "waited1",
                                                  "end0", "end1", "adds"))
    for name, r in zip(names, step):
        s0, s1 = min(r["start"]) - t0, max(r["start"]) - t0
        w1 = (max(r["waited"]) - t0) if r["waited"] else float("nan")
        e0, e1 = min(r["end"]) - t0, max(r["end"]) - t0
        adds = max(r["end"]) - prev_end
        prev_end = max(r["end"])
        span = max(r["end"]) - (max(r["waited"]) if r["waited"] else min(r["start"]))
        acc = sums[name]
        acc[0] += adds
        acc[1] += span
        acc[2] += max(r["end"]) - min(r["start"])
        acc[3] += 1
        if args.launches:
            print("%-9s %6d %9.2f %9.2f %9.2f %9.2f %9.2f %8.2f" % (name, len(r["start"]), s0 / 1e3, s1 / 1e3,
                                                                 w1 / 1e3, e0 / 1e3, e1 / 1e3, adds / 1e3))
    total = prev_end - t0
    print("step %d of %d: %.1f us, %d launches" % (args.step % len(st), len(st), total / 1e3, len(step)))
    print("%-9s %5s %10s %7s %12s %12s" % ("kernel", "n", "adds (us)", "share", "waited->end", "start->end"))
    for name in ["get_rows"] + LAYER + ["out_norm", "head", "argmax"]:
        if name in sums:
            a = sums[name]
            print("%-9s %5d %10.1f %6.1f%% %12.2f %12.2f" % (name, a[3], a[0] / 1e3, 100 * a[0] / total,
                                                          a[1] / a[3] / 1e3, a[2] / a[3] / 1e3))


if __name__ == "__main__":
    main()
