#!/usr/bin/env python3
"""The reference side of the reward benchmark: QoQ-Med's original `medical_compute_score`
called sequentially on every line of a `score`-format file, as the trainer's reward
manager does. Prints one JSON line.

    python reference.py --medical-py PATH/medical.py --input DIR/responses.jsonl [--repeat K]
                        [--threads T] [--check-output OUT.jsonl]

Everything is loaded first (responses, ground-truth boxes as numpy float arrays, masks as
numpy uint8 arrays, one per distinct file, as a trainer holds them); then one untimed
warm-up call; then only the scoring loop is timed, K times over all lines.

--check-output compares the original's f1/iou/format/length/overall with another tool's
output (one JSON object a line, same ids and field names), prints a second JSON line with
the number of lines that differ by more than 1e-6 and the first 10 of them, and exits 1
when any differ. A line where the original raises matches only a line with an `error`.

Needs the reference environment (tools/reference-env.sh): torch, numpy, pillow, mathruler.
`medical.py` imports wandb, which it never uses; a stub module stands in for it.
"""
import argparse
import contextlib
import json
import os
import platform
import random
import sys
import time

import numpy as np
import torch
from PIL import Image

FIELDS = (("f1", "standard_score"), ("iou", "iou_score"), ("format", "format_score"),
          ("length", "length_score"), ("overall", "overall"))
TOLERANCE = 1e-6


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from make_reward_fixtures import load_original  # noqa: E402  (imports medical.py, wandb stubbed)


def load_input(path):
    """[(id, response, answer, mask array or None, gt box array or None)]."""
    base = os.path.dirname(os.path.abspath(path))
    masks = {}
    items = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            d = json.loads(line)
            mask = None
            if d.get("mask"):
                rel = d["mask"]
                if rel not in masks:
                    img = Image.open(os.path.join(base, rel))
                    masks[rel] = np.array(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
                mask = masks[rel]
            gt = np.asarray(d["gt_boxes"][0], dtype=np.float64) if d.get("gt_boxes") else None
            items.append((d["id"], d["response"], d["answer"], mask, gt))
    return items


def score_all(score, items):
    """The timed loop: one call per line, exceptions recorded, nothing else."""
    out = []
    for _, response, answer, mask, gt in items:
        try:
            out.append(score(response, answer, segmentation_mask=mask, bbox=gt))
        except Exception as e:
            out.append(e)
    return out


def as_record(id, result):
    if isinstance(result, Exception):
        return {"id": id, "error": f"{type(result).__name__}: {result}"}
    # Mask IoUs are 0-d float32 tensors in the original; float() reads them.
    return {"id": id, **{ours: float(result[theirs]) for ours, theirs in FIELDS}}


def check(records, other_path):
    """Compares our records with another tool's output; returns the report dict."""
    other = {}
    with open(other_path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                d = json.loads(line)
                other.setdefault(d.get("id"), d)
    differing = []
    for rec in records:
        theirs = other.get(rec["id"])
        diffs = {}
        if theirs is None:
            diffs["line"] = "missing"
        elif "error" in rec:
            if "error" not in theirs:
                diffs["error"] = [rec["error"], None]
        else:
            for field, _ in FIELDS:
                a, b = rec[field], theirs.get(field)
                if not isinstance(b, (int, float)) or isinstance(b, bool) or not abs(a - b) <= TOLERANCE:
                    diffs[field] = [a, b]
        if diffs:
            differing.append({"id": rec["id"], "fields": diffs})
    return {"check": other_path, "lines": len(records), "differing": len(differing),
            "tolerance": TOLERANCE, "first": differing[:10]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--medical-py", required=True, help="path to QoQ_Med's examples/reward_function/medical.py")
    ap.add_argument("--input", required=True, help="responses.jsonl in the score tool's input format")
    ap.add_argument("--repeat", type=int, default=1, help="passes over all lines in the timed loop")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    ap.add_argument("--check-output", metavar="OUT.jsonl", help="another tool's scores for the same ids")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    original = load_original(args.medical_py)
    items = load_input(args.input)
    if not items:
        raise SystemExit(f"{args.input}: no lines")
    random.seed(0)  # the original prints a sample when random.random() < 0.0005

    # The original's occasional sample prints go nowhere, in the warm-up and the loop alike.
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        score_all(original.medical_compute_score, items[:1])  # warm-up: torch's first-call setup
        start = time.perf_counter()
        for _ in range(args.repeat):
            results = score_all(original.medical_compute_score, items)
        seconds = time.perf_counter() - start

    records = [as_record(item[0], r) for item, r in zip(items, results)]
    n = len(items) * args.repeat
    print(json.dumps({
        "responses": n, "seconds": round(seconds, 4), "responses_per_s": round(n / seconds, 1),
        "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
        "torch": torch.__version__, "repeat": args.repeat,
        "errors": sum("error" in r for r in records), "input": args.input,
    }), flush=True)

    if args.check_output:
        report = check(records, args.check_output)
        print(json.dumps(report))
        if report["differing"]:
            sys.exit(1)


if __name__ == "__main__":
    main()
