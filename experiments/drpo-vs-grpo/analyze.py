#!/usr/bin/env python3
"""Reads the runs of experiments/drpo-vs-grpo/run.sh and writes the experiment's results.

    python3 experiments/drpo-vs-grpo/analyze.py [--runs runs/drpo-vs-grpo] [--plot]

For every evaluated run (RUNS/eval/<method>-seed<S>/) it checks, independently of the Rust
code, that:
  - each line of samples.jsonl carries the F1 and Jaccard reward components this script
    computes from its response and answer (to 1e-12), and an `overall` equal to the
    weighted sum of its components under the qoq-med preset (to 1e-12);
  - report.json holds the accuracy, F1 and Jaccard that the paper's protocol gives over
    those lines (per dataset a one-vs-rest confusion per ground-truth label; dataset ->
    domain -> overall as unweighted means), to 1e-9.
Then it writes RUNS/../../experiments/drpo-vs-grpo/results.json (a list of rows
{method, seed, domain, accuracy, f1, reward}, `domain` = "overall" for the mean over
domains), prints the table of the README (mean +- std over seeds, with a bootstrap 95%
interval over test samples), replaces the README's table between its markers, and with
--plot draws the per-domain training reward curves and the DRPO temperatures
(reward_curves.png, drpo_telemetry.png; needs matplotlib).

Standard library only, except matplotlib for --plot.
"""
import argparse
import glob
import json
import math
import os
import random
import re
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
METHODS = ["sft", "grpo", "drpo", "drpo-domain-only", "dr-grpo"]
NAMES = {
    "sft": "SFT only",
    "grpo": "GRPO",
    "drpo": "DRPO",
    "drpo-domain-only": "DRPO-DomainOnly",
    "dr-grpo": "Dr.GRPO",
}
QOQ_MED = {"f1": 0.5, "iou": 0.3, "format": 0.1, "length": 0.1, "jaccard": 0.0}
SEPARATORS = [", ", " and ", " & ", ",", "&"]
WRAPPERS = ["\\text{", "\\textbf{", "\\textit{", "\\textrm{", "\\mathrm{", "\\mathbf{"]


# ---- the answer format, written from docs/drpo.md section 3 (not from the Rust code) ----

def last_boxed(text):
    """Content of the last closed \\boxed{...} (the one that closes last), or None."""
    best = None
    stack = []  # (is_box, content_start)
    i = 0
    while i < len(text):
        if text.startswith("\\boxed{", i):
            stack.append((True, i + 7))
            i += 7
            continue
        c = text[i]
        if c == "{":
            stack.append((False, i + 1))
        elif c == "}" and stack:
            is_box, start = stack.pop()
            if is_box:
                best = (start, i)
        i += 1
    return None if best is None else text[best[0]:best[1]]


def normalize(text):
    out, braces, i = [], [], 0
    while i < len(text):
        w = next((w for w in WRAPPERS if text.startswith(w, i)), None)
        if w:
            braces.append(True)
            i += len(w)
            continue
        c = text[i]
        i += 1
        if c == "{":
            braces.append(False)
        elif c == "}" and braces:
            if braces.pop():
                continue
        out.append(c)
    return " ".join("".join(out).lower().split())


def label_set(text):
    text = normalize(text)
    sep = next((s for s in SEPARATORS if s in text), None)
    parts = text.split(sep) if sep else [text]
    return {p.strip() for p in parts if p.strip()}


def answer_labels(answer):
    b = last_boxed(answer)
    return label_set(b if b is not None else answer)


def f1_reward(response, answer):
    b = last_boxed(response)
    if b is None:
        return 0.0
    pred, truth = label_set(b), answer_labels(answer)
    tp = len(pred & truth)
    if tp == 0:
        return 0.0
    p, r = tp / len(pred), tp / len(truth)
    return 2 * p * r / (p + r)


def strip_think(text):
    return re.sub(r"<think>.*?</think>", "", text, flags=re.S)


def jaccard_reward(response, answer):
    b = last_boxed(strip_think(response))
    if b is None:
        return 0.0
    a, t = set(b.lower().split()), set(answer.lower().split())
    if not a and not t:
        return 1.0
    if not a or not t:
        return 0.0
    return len(a & t) / len(a | t)


# ---- the paper's protocol ----

def confusion_metrics(tp, fp, fn, tn):
    ratio = lambda a, b: a / b if b else 0.0
    return {"accuracy": ratio(tp + tn, tp + tn + fp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn)}


def protocol(rows):
    """{"datasets": {(domain, dataset): level}, "domains": {domain: level}, "overall": level}"""
    per = {}
    for r in rows:
        per.setdefault((r["domain"], r["dataset"]), []).append(r)
    datasets = {}
    for key, items in per.items():
        preds = []
        for r in items:
            b = last_boxed(r["response"])
            preds.append(label_set(b) if b is not None else set())
        truths = [answer_labels(r["answer"]) for r in items]
        labels = set().union(*truths)
        per_label = []
        for label in labels:
            tp = sum(label in p and label in t for p, t in zip(preds, truths))
            fp = sum(label in p and label not in t for p, t in zip(preds, truths))
            fn = sum(label not in p and label in t for p, t in zip(preds, truths))
            tn = len(items) - tp - fp - fn
            per_label.append(confusion_metrics(tp, fp, fn, tn))
        level = {m: statistics.fmean(x[m] for x in per_label) if per_label else 0.0 for m in ("accuracy", "f1")}
        level["jaccard"] = statistics.fmean(jaccard_reward(r["response"], r["answer"]) for r in items)
        level["reward"] = statistics.fmean(r["overall"] for r in items)
        level["has_labels"] = bool(per_label)
        datasets[key] = level
    domains = {}
    for domain in sorted({d for d, _ in datasets}):
        levels = [l for (d, _), l in datasets.items() if d == domain and l["has_labels"]]
        domains[domain] = {m: statistics.fmean(l[m] for l in levels) for m in ("accuracy", "f1", "jaccard", "reward")}
    overall = {m: statistics.fmean(d[m] for d in domains.values()) for m in ("accuracy", "f1", "jaccard", "reward")}
    return {"datasets": datasets, "domains": domains, "overall": overall}


def check_run(path):
    rows = [json.loads(l) for l in open(os.path.join(path, "samples.jsonl")) if l.strip()]
    problems = []
    for r in rows:
        f1, jac = f1_reward(r["response"], r["answer"]), jaccard_reward(r["response"], r["answer"])
        if abs(f1 - r["f1"]) > 1e-12 or abs(jac - r["jaccard"]) > 1e-12:
            problems.append(f"{r['id']}: f1 {r['f1']} vs {f1}, jaccard {r['jaccard']} vs {jac}")
        overall = sum(w * r[k] for k, w in QOQ_MED.items())
        if abs(overall - r["overall"]) > 1e-12:
            problems.append(f"{r['id']}: overall {r['overall']} vs {overall}")
    mine = protocol(rows)
    report = json.load(open(os.path.join(path, "report.json")))
    for m in ("accuracy", "f1", "jaccard"):
        if abs(mine["overall"][m] - report["overall"][m]) > 1e-9:
            problems.append(f"overall {m}: report {report['overall'][m]} vs {mine['overall'][m]}")
        for d, level in mine["domains"].items():
            if abs(level[m] - report["domains"][d][m]) > 1e-9:
                problems.append(f"{d} {m}: report {report['domains'][d][m]} vs {level[m]}")
    return rows, mine, problems


def bootstrap_f1(rows, draws=200, seed=0):
    """95% interval of the overall F1, resampling samples within each dataset."""
    rng = random.Random(seed)
    per = {}
    for r in rows:
        per.setdefault((r["domain"], r["dataset"]), []).append(r)
    values = []
    for _ in range(draws):
        sample = [r for items in per.values() for r in rng.choices(items, k=len(items))]
        values.append(protocol(sample)["overall"]["f1"])
    values.sort()
    return values[int(0.025 * draws)], values[int(0.975 * draws) - 1]


def mean_std(xs):
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else 0.0)


def table(results, domains):
    out = ["| method | " + " | ".join(domains) + " | Overall |", "|---" * (len(domains) + 2) + "|"]
    for metric in ("accuracy", "f1"):
        for method in METHODS:
            cells = []
            for d in domains + ["overall"]:
                xs = [r[metric] for r in results if r["method"] == method and r["domain"] == d]
                if not xs:
                    cells.append("-")
                    continue
                m, s = mean_std(xs)
                cells.append(f"{m:.3f} ± {s:.3f}")
            out.append(f"| {NAMES[method]} {'Acc' if metric == 'accuracy' else 'F1'} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def plot(runs, domains):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(domains), figsize=(4 * len(domains), 3.2), sharey=True)
    tel_fig, tel_axes = plt.subplots(1, len(domains), figsize=(4 * len(domains), 3.2), sharey=True)
    for method in METHODS[1:]:
        curves = {d: {} for d in domains}
        temps = {d: {} for d in domains}
        for run in sorted(glob.glob(os.path.join(runs, f"{method}-seed*"))):
            for f in glob.glob(os.path.join(run, "rollouts", "step_*.jsonl")):
                step = int(re.search(r"step_(\d+)", f).group(1))
                for line in open(f):
                    r = json.loads(line)
                    if r["domain"] in curves:
                        curves[r["domain"]].setdefault(step, []).append(r["reward"])
                        temps[r["domain"]].setdefault(step, []).append(r.get("domain_temperature", 1.0))
        for ax, tax, d in zip(axes, tel_axes, domains):
            steps = sorted(curves[d])
            if not steps:
                continue
            ys = [statistics.fmean(curves[d][s]) for s in steps]
            k = 5  # moving average over 5 steps
            smooth = [statistics.fmean(ys[max(0, i - k + 1): i + 1]) for i in range(len(ys))]
            ax.plot(steps, smooth, label=NAMES[method])
            tax.plot(steps, [statistics.fmean(temps[d][s]) for s in steps], label=NAMES[method])
    for ax, tax, d in zip(axes, tel_axes, domains):
        ax.set_title(d)
        ax.set_xlabel("RL step")
        tax.set_title(d)
        tax.set_xlabel("RL step")
    axes[0].set_ylabel("training reward (5-step mean, all seeds)")
    tel_axes[0].set_ylabel("domain temperature T_d")
    axes[-1].legend(fontsize=7)
    tel_axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.join(HERE, "reward_curves.png"), dpi=110)
    tel_fig.tight_layout()
    tel_fig.savefig(os.path.join(HERE, "drpo_telemetry.png"), dpi=110)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default=os.path.join(REPO, "runs", "drpo-vs-grpo"))
    ap.add_argument("--plot", action="store_true")
    args = ap.parse_args()
    results, problems, intervals = [], [], {}
    domains = None
    for path in sorted(glob.glob(os.path.join(args.runs, "eval", "*-seed*"))):
        method, seed = re.match(r"(.+)-seed(\d+)$", os.path.basename(path)).groups()
        if not os.path.exists(os.path.join(path, "report.json")):
            print(f"skipping {path}: no report.json", file=sys.stderr)
            continue
        rows, mine, found = check_run(path)
        problems += [f"{path}: {p}" for p in found]
        domains = domains or sorted(mine["domains"], key=lambda d: -sum(r["domain"] == d for r in rows))
        for d, level in list(mine["domains"].items()) + [("overall", mine["overall"])]:
            results.append({"method": method, "seed": int(seed), "domain": d, "accuracy": level["accuracy"],
                            "f1": level["f1"], "reward": level["reward"]})
        intervals.setdefault(method, []).append(bootstrap_f1(rows))
        print(f"checked {path}: {len(rows)} samples, overall F1 {mine['overall']['f1']:.4f}", file=sys.stderr)
    if problems:
        print("\n".join(problems[:20]), file=sys.stderr)
        sys.exit(f"{len(problems)} disagreements between samples.jsonl / report.json and this script")
    if not results:
        sys.exit(f"no evaluated runs under {args.runs}/eval")
    results.sort(key=lambda r: (METHODS.index(r["method"]), r["seed"], r["domain"]))
    with open(os.path.join(HERE, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    text = table(results, domains)
    ci = "\n".join(
        f"- {NAMES[m]}: overall F1 95% interval per seed " + ", ".join(f"[{a:.3f}, {b:.3f}]" for a, b in iv)
        for m, iv in sorted(intervals.items(), key=lambda kv: METHODS.index(kv[0]))
    )
    block = f"{text}\n\nBootstrap over test samples (200 resamples within each dataset):\n{ci}\n"
    print(block)
    readme = os.path.join(HERE, "README.md")
    if os.path.exists(readme):
        body = open(readme).read()
        start, end = "<!-- results:start -->", "<!-- results:end -->"
        if start in body and end in body:
            body = body[: body.index(start) + len(start)] + "\n" + block + body[body.index(end):]
            open(readme, "w").write(body)
    if args.plot:
        plot(args.runs, domains)


if __name__ == "__main__":
    main()
