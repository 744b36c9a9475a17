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
# The kernels of a layer as decode_layers() launches them: a quantization after the attention where it
# cannot write Wo's 8-bit input itself (head_dim % 32 != 0), and of h where the down projection is quantized.
LAYER = ["norm", "qkv", "attn", "quant_att", "wo", "norm2", "gate_up", "quant_h", "down"]
KIND_OF = {"norm": "norm", "qkv": "matvec", "attn": "attn", "quant_att": "quantize", "wo": "matvec",
           "norm2": "norm", "gate_up": "matvec", "quant_h": "quantize", "down": "matvec"}

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
    # Name the launches: the layers' kernels in LAYER's order (the quantizations where they are), then the
    # output norm and the head before the argmax.
    names, li = [], 0
    for r in step:
        kind = "matvec" if r["kind"].startswith("matvec") else r["kind"]
        if kind in ("get_rows", "argmax"):
            names.append(kind)
            continue
        while KIND_OF[LAYER[li % len(LAYER)]] != kind:
            if LAYER[li % len(LAYER)] not in ("quant_att", "quant_h"):
                raise SystemExit("launch %d is a %s where a %s was due" % (len(names), kind, LAYER[li % len(LAYER)]))
            li += 1
        names.append(LAYER[li % len(LAYER)])
        li += 1
    # The output norm and the head came out as a layer's first two.
    if len(names) >= 3 and names[-3:] == ["norm", "qkv", "argmax"]:
        names[-3:-1] = ["out_norm", "head"]
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
