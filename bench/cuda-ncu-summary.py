#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""Sums Nsight Compute's gpu__time_duration per kernel name from `ncu --csv` output.

  cuda-ncu-summary.py NCU.csv STEPS

Kernels launched STEPS times per decode step or fewer (set-up kernels, e.g. fill_random) are reported apart.
"""
import csv
import re
import sys
from collections import defaultdict


def main():
    path, steps = sys.argv[1], int(sys.argv[2])
    rows = []
    with open(path, newline="") as f:
        lines = [l for l in f if l.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        name = r["Kernel Name"]
        short = re.sub(r"\(.*", "", name)
        m = re.match(r"void (\w+)<(.*)>", short)
        if m:
            short = m.group(1) + "<" + m.group(2) + ">"
        unit = r["Metric Unit"]
        v = float(r["Metric Value"].replace(",", ""))
        v = v / 1000.0 if unit in ("nsecond", "ns") else v * 1000.0 if unit in ("msecond", "ms") else v
        rows.append((short, v))
    tot = defaultdict(float)
    cnt = defaultdict(int)
    for n, v in rows:
        if n.startswith("fill_"):
            continue
        tot[n] += v
        cnt[n] += 1
    total = sum(tot.values())
    print(f"per decode step (of {steps} profiled): {total / steps:.1f} us of kernel time")
    for n in sorted(tot, key=lambda k: -tot[k]):
        print(f"  {tot[n] / steps:9.1f} us  {cnt[n] / steps:6.1f} launches  {n}")


if __name__ == "__main__":
    main()
