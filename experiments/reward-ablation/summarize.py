#!/usr/bin/env python3
"""Mean +- std over seeds of each reward variant's held-out figures (run.sh's eval reports).

    python3 experiments/reward-ablation/summarize.py [--runs runs/reward-ablation]

Reads RUNS/eval/<variant>-seed<S>/report.json and prints the README's table: overall
accuracy, F1 and reward (the variant's own weights), mean +- sample std over seeds.
Standard library only.
"""
import argparse
import glob
import json
import os
import re
import statistics

ORDER = ["sft", "qoq-med", "paper", "qoq-med3", "f1-only", "no-iou"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/reward-ablation")
    args = ap.parse_args()
    figures = {}
    for path in glob.glob(os.path.join(args.runs, "eval", "*-seed*", "report.json")):
        variant, seed = re.match(r"(.+)-seed(\d+)$", os.path.basename(os.path.dirname(path))).groups()
        o = json.load(open(path))["overall"]
        figures.setdefault(variant, []).append((int(seed), o["accuracy"], o["f1"], o["reward"]["overall"]))
    print("| variant | seeds | val accuracy | val F1 | val reward (own weights) |")
    print("|---|---|---|---|---|")
    for v in sorted(figures, key=lambda v: ORDER.index(v) if v in ORDER else 99):
        rows = sorted(figures[v])
        cell = lambda i: (f"{statistics.fmean(r[i] for r in rows):.3f} ± "
                          f"{statistics.stdev(r[i] for r in rows) if len(rows) > 1 else 0.0:.3f}")
        print(f"| `{v}` | {len(rows)} | {cell(1)} | {cell(2)} | {cell(3)} |")


if __name__ == "__main__":
    main()
