#!/usr/bin/env python3
"""Replays every advantage of a run's rollout dumps from their DRPO telemetry (issue 16).

    python3 tools/replay_advantages.py RUN_DIR [--tol 1e-6] [--json]

Standard library only; an implementation independent of the trainer's. For every
`RUN_DIR/rollouts/step_N.jsonl` (RUN_DIR may also be the rollouts folder itself):

1. the group-relative score of each row from the rewards of its prompt's rows in that step
   (a prompt's G rows are consecutive; G is the shortest such run), with the row's
   `estimator` and `eps`:  s = (r - mean) / (std_unbiased + eps)  (drpo, grpo) or
   s = r - mean  (dr_grpo); compared with the row's `score`;
2. the scaling of docs/drpo.md steps 9-11:  x = s / (T_d * T_c)  (s where that is not
   finite), times `kl_damping`;
3. the batch normalisation (step 10): `batch_norm` must be the step's unbiased std of x plus
   eps for drpo (1 for grpo and dr_grpo); advantage = x / batch_norm.

It also checks the temperatures against their definitions (T_d = max(sqrt(N_d) mu_d, eps);
T_c = max(sqrt(N_c) mu_c, eps), or 1 under DomainOnly), and reports, per domain, how often
the cluster count k (`domain_clusters`) changes between the domain's consecutive steps.

Exit status 0 when every advantage replays within --tol, 1 otherwise, 2 when the dumps carry
no telemetry (written before it existed).
"""

import argparse
import json
import math
import os
import re
import sys

TELEMETRY = (
    "cluster",
    "cluster_size",
    "cluster_mean",
    "domain_questions",
    "domain_mean",
    "domain_temperature",
    "cluster_temperature",
    "domain_clusters",
    "score",
    "kl_damping",
    "batch_norm",
    "estimator",
    "eps",
)


def mean(x):
    return sum(x) / len(x)


def std_unbiased(x):
    if len(x) < 2:
        return 0.0
    m = mean(x)
    return math.sqrt(sum((v - m) ** 2 for v in x) / (len(x) - 1))


def step_files(run):
    folder = run if os.path.basename(os.path.normpath(run)) == "rollouts" else os.path.join(run, "rollouts")
    files = []
    for name in os.listdir(folder):
        m = re.fullmatch(r"step_(\d+)\.jsonl", name)
        if m:
            files.append((int(m.group(1)), os.path.join(folder, name)))
    return sorted(files)


def groups_of(rows):
    """Row indices per group: runs of consecutive rows of one prompt id, cut into G each."""
    runs = []
    for i, r in enumerate(rows):
        if runs and rows[runs[-1][-1]]["prompt_id"] == r["prompt_id"]:
            runs[-1].append(i)
        else:
            runs.append([i])
    g = min(len(run) for run in runs)
    return [run[j : j + g] for run in runs for j in range(0, len(run), g)]


def replay_step(rows):
    """Returns (max |advantage error|, max relative batch_norm error, max |score error|,
    temperature mismatches)."""
    worst = norm_err = score_err = 0.0
    temp_bad = 0
    scaled = [0.0] * len(rows)
    for group in groups_of(rows):
        rewards = [rows[i]["reward"] for i in group]
        m, sd = mean(rewards), std_unbiased(rewards)
        for i in group:
            r = rows[i]
            eps = r["eps"]
            if r["estimator"] == "dr_grpo":
                s = r["reward"] - m
            elif r["estimator"] in ("grpo", "drpo"):
                s = (r["reward"] - m) / (sd + eps)
            else:
                raise SystemExit(f"unknown estimator {r['estimator']!r}")
            score_err = max(score_err, abs(s - r["score"]))
            t_d, t_c = r["domain_temperature"], r["cluster_temperature"]
            try:
                x = s / (t_d * t_c)
            except ZeroDivisionError:
                x = math.inf
            if not math.isfinite(x):
                x = s
            scaled[i] = x * r["kl_damping"]
            if r["estimator"] == "drpo":
                want_d = max(math.sqrt(r["domain_questions"]) * r["domain_mean"], eps)
                want_c = max(math.sqrt(r["cluster_size"]) * r["cluster_mean"], eps)
                if abs(t_d - want_d) > 1e-9 * max(1.0, want_d) or (
                    t_c != 1.0 and abs(t_c - want_c) > 1e-9 * max(1.0, want_c)
                ):
                    temp_bad += 1
            elif (t_d, t_c) != (1.0, 1.0):
                temp_bad += 1
    if rows[0]["estimator"] == "drpo":
        norm = std_unbiased(scaled) + rows[0]["eps"]
    else:
        norm = 1.0
    for r, x in zip(rows, scaled):
        norm_err = max(norm_err, abs(r["batch_norm"] - norm) / norm)
        worst = max(worst, abs(x / r["batch_norm"] - r["advantage"]))
    return worst, norm_err, score_err, temp_bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", help="the run's output_dir (or its rollouts folder)")
    ap.add_argument("--tol", type=float, default=1e-6, help="largest accepted |advantage error|")
    ap.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    args = ap.parse_args()

    files = step_files(args.run)
    if not files:
        raise SystemExit(f"no rollouts/step_*.jsonl under {args.run}")
    worst = norm_err = score_err = 0.0
    temp_bad = rows_total = 0
    ks = {}  # domain -> [(step, k)]
    worst_step = None
    for step, path in files:
        with open(path) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        if not rows:
            continue
        missing = [k for k in TELEMETRY if k not in rows[0]]
        if missing:
            print(f"{path}: no telemetry ({', '.join(missing)} missing): written before it existed?", file=sys.stderr)
            sys.exit(2)
        w, n, s, t = replay_step(rows)
        if w > worst or worst_step is None:
            worst, worst_step = w, step
        norm_err, score_err, temp_bad = max(norm_err, n), max(score_err, s), temp_bad + t
        rows_total += len(rows)
        for r in rows:
            seq = ks.setdefault(r["domain"], [])
            if not seq or seq[-1][0] != step:
                seq.append((step, r["domain_clusters"]))

    domains = {}
    for d, seq in sorted(ks.items()):
        changes = sum(1 for a, b in zip(seq, seq[1:]) if a[1] != b[1])
        transitions = max(len(seq) - 1, 0)
        domains[d] = {
            "steps": len(seq),
            "k_changes": changes,
            "k_change_fraction": changes / transitions if transitions else 0.0,
            "k_min": min(k for _, k in seq),
            "k_max": max(k for _, k in seq),
            "k_mean": mean([k for _, k in seq]),
        }
    summary = {
        "steps": len(files),
        "rows": rows_total,
        "max_abs_advantage_error": worst,
        "worst_step": worst_step,
        "max_rel_batch_norm_error": norm_err,
        "max_abs_score_error": score_err,
        "temperature_mismatches": temp_bad,
        "domains": domains,
    }
    ok = worst <= args.tol and norm_err <= 1e-9 and score_err <= 1e-9 and temp_bad == 0
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{len(files)} steps, {rows_total} rows")
        print(f"max |advantage - replay| = {worst:.3e} (step {worst_step}); tolerance {args.tol:g}")
        print(f"max relative batch_norm error = {norm_err:.3e}; max |score - replay| = {score_err:.3e}")
        print(f"temperature mismatches: {temp_bad}")
        print("\n| domain | steps | k changes | fraction | k min..max | k mean |")
        print("|---|---|---|---|---|---|")
        for d, v in domains.items():
            print(
                f"| {d} | {v['steps']} | {v['k_changes']} | {v['k_change_fraction']:.3f} | "
                f"{v['k_min']}..{v['k_max']} | {v['k_mean']:.2f} |"
            )
        print("OK" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
