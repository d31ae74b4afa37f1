#!/usr/bin/env python3
"""Folds the per-process JSON records of experiments/ecg-encoder/run.sh (RAW_DIR/*.json, one
per process, as bench_ecg --json and bench.py bench --json write them) into one results file
and prints the table: per (mode, threads, batch) the median over repetitions of each side's
ms per forward, ms per ECG, peak RSS during the forwards and growth over the RSS after
building the model, and the ratio PyTorch / Rust of each.

    python3 summarize.py RAW_DIR OUT.json [--meta KEY=VALUE ...]
"""
import glob
import json
import os
import statistics
import sys


def main():
    raw, out = sys.argv[1], sys.argv[2]
    meta = dict(kv.split("=", 1) for kv in sys.argv[3:] if "=" in kv)
    runs = []
    for path in sorted(glob.glob(os.path.join(raw, "*.json"))):
        with open(path) as f:
            run = json.load(f)
        run["file"] = os.path.basename(path)
        runs.append(run)
    groups = {}
    for run in runs:
        mode = run["file"].split("_")[0]  # nograd | grad | mmap | mmapgrad (file names from run.sh)
        for r in run["results"]:
            key = (mode, "bf16" if r["bf16"] else "f32", r["threads"], r["batch"])
            groups.setdefault(key, {}).setdefault(r["side"], []).append(dict(r, load_peak_rss_mib=run["load_peak_rss_mib"]))
    rows = []
    order = ["nograd", "grad", "mmap", "mmapgrad"]
    for key in sorted(groups, key=lambda k: (order.index(k[0]) if k[0] in order else 9, k[1:])):
        mode, dtype, threads, batch = key
        row = {"mode": mode, "dtype": dtype, "threads": threads, "batch": batch}
        for side, recs in groups[key].items():
            med = lambda f: statistics.median(r[f] for r in recs)  # noqa: E731
            diffs = [r["max_abs_diff"] for r in recs if r.get("max_abs_diff") is not None]
            row[side] = {
                "reps": len(recs),
                "ms": med("ms"),
                "ms_per_ecg": med("ms_per_ecg"),
                "ms_reps": [r["ms"] for r in recs],
                "peak_rss_mib": med("peak_rss_mib"),
                "growth_mib": med("growth_mib"),
                "growth_reps": [r["growth_mib"] for r in recs],
                "rss_model_mib": med("rss_model_mib"),
                "load_peak_rss_mib": med("load_peak_rss_mib"),
                "max_abs_diff": max(diffs) if diffs else None,
            }
        if "rust" in row and "torch" in row:
            rs, ts = row["rust"], row["torch"]
            row["ratio_torch_over_rust"] = {
                "time": ts["ms"] / rs["ms"],
                "peak_rss": ts["peak_rss_mib"] / rs["peak_rss_mib"],
                "growth": ts["growth_mib"] / rs["growth_mib"] if rs["growth_mib"] > 0 else None,
            }
        rows.append(row)
    with open(out, "w") as f:
        json.dump({"meta": meta, "rows": rows, "runs": runs}, f, indent=2)
        f.write("\n")

    def fmt(v, p=0):
        return "-" if v is None else f"{v:.{p}f}"

    head = (f"{'mode':8} {'dtype':5} {'thr':>3} {'B':>2} | {'rust ms':>8} {'torch ms':>8} {'ms/ECG r':>8} "
            f"{'ms/ECG t':>8} {'t/r':>5} | {'peak r':>6} {'peak t':>6} {'t/r':>5} | {'grow r':>6} "
            f"{'grow t':>6} {'t/r':>5} | {'max|diff| r':>11}")
    print(head)
    print("-" * len(head))
    for row in rows:
        r, t, q = row.get("rust", {}), row.get("torch", {}), row.get("ratio_torch_over_rust", {})
        print(f"{row['mode']:8} {row['dtype']:5} {row['threads']:>3} {row['batch']:>2} | "
              f"{fmt(r.get('ms')):>8} {fmt(t.get('ms')):>8} {fmt(r.get('ms_per_ecg')):>8} "
              f"{fmt(t.get('ms_per_ecg')):>8} {fmt(q.get('time'), 2):>5} | {fmt(r.get('peak_rss_mib')):>6} "
              f"{fmt(t.get('peak_rss_mib')):>6} {fmt(q.get('peak_rss'), 2):>5} | {fmt(r.get('growth_mib')):>6} "
              f"{fmt(t.get('growth_mib')):>6} {fmt(q.get('growth'), 2):>5} | "
              f"{'-' if r.get('max_abs_diff') is None else format(r['max_abs_diff'], '.1e'):>11}")
    print("(medians over repetitions; ms per forward; MiB; t/r = PyTorch / Rust; max|diff| = Rust's embeddings "
          "vs PyTorch's, same weights and input)")


if __name__ == "__main__":
    main()
