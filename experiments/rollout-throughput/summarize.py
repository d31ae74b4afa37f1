#!/usr/bin/env python3
"""Table of the rollout benchmark's JSON lines (engine and transformers), the ratios, and
the one summary line run.sh ends with:
    rollout speedup over transformers: A.AAx (mixed lengths), B.BBx (equal lengths); peak memory M8 GiB at batch 8, M64 GiB at batch 64
A and B are engine / transformers tokens/s at batch 64; M8 and M64 the engine's peak RSS
(the larger of its two stop modes) in GiB.

    python summarize.py results.jsonl

Keys read from every line: side ("engine", "transformers"; others, e.g. bench_rollout's
"generate", are only tabled), stop ("mixed" / "none"), batch, responses, tokens, wall_s,
tokens_per_s, peak_rss_mib; optional: occupancy (engine). A later line for the same
(side, stop, batch) replaces an earlier one. A missing pair prints n/a.
"""
import json
import sys

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip().startswith("{")]
by = {(r["side"], r["stop"], r["batch"]): r for r in rows}
LENGTHS = {"mixed": "mixed", "none": "equal"}

print("Rollout: G = 5 samples per prompt, engine and transformers on the same model and prompts.")
print("tokens = generated tokens up to and including each response's stop token; tokens/s = tokens / wall.\n")
print("| side | lengths | prompts | responses | tokens | wall s | tokens/s | peak RSS GiB |")
print("|---|---|---|---|---|---|---|---|")
for (side, stop, batch), r in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
    print(f"| {side} | {LENGTHS.get(stop, stop)} | {batch} | {r['responses']} | {r['tokens']} | {r['wall_s']:.1f} "
          f"| {r['tokens_per_s']:.1f} | {r['peak_rss_mib'] / 1024:.2f} |")

ratio = {}
for (side, stop, batch), r in sorted(by.items()):
    if side == "engine" and ("transformers", stop, batch) in by:
        ratio[(stop, batch)] = r["tokens_per_s"] / by[("transformers", stop, batch)]["tokens_per_s"]
print("\nEngine / transformers tokens/s per (lengths, prompts); the summary line takes the 64-prompt ratios:\n")
print("| lengths | prompts | speedup | engine slot occupancy |")
print("|---|---|---|---|")
for (stop, batch), x in sorted(ratio.items()):
    occupancy = by[("engine", stop, batch)].get("occupancy")
    print(f"| {LENGTHS.get(stop, stop)} | {batch} | {x:.2f}x | {'' if occupancy is None else f'{occupancy:.2f}'} |")
print()


def speedup(stop):
    return f"{ratio[(stop, 64)]:.2f}x" if (stop, 64) in ratio else "n/a"


def memory(batch):
    peaks = [r["peak_rss_mib"] for (side, _, b), r in by.items() if side == "engine" and b == batch]
    return f"{max(peaks) / 1024:.2f}" if peaks else "n/a"


print(f"rollout speedup over transformers: {speedup('mixed')} (mixed lengths), {speedup('none')} (equal lengths); "
      f"peak memory {memory(8)} GiB at batch 8, {memory(64)} GiB at batch 64")
