#!/usr/bin/env python3
"""The PyTorch side of experiments/ecg-encoder (see README.md there), two commands:

  make  --out DIR [--hidden 4096] [--seed 0]
        writes DIR/weights-H.safetensors (all 139 tensors of `time_series_embedding.{encoder,
        linear}` under QoQ-Med's names: 137 encoder tensors, 11 per block, 85,374,720
        parameters, and the projection's 2; f32, drawn from a seeded generator) and DIR/inputs-H.safetensors (`signals` [8, 8, 2500] f32, seeded
        N(0, 1) as per-lead z-scored ECGs are; `embeddings` [8, H], PyTorch's fp32 no-grad
        output of tools/ecg_jepa_reference.py's TimeSeriesEmbedding for them). Same seed,
        same bytes.
  bench --weights W --inputs IN [--batch 1,8] [--threads T] [--iters 3] [--warmup 1]
        [--bf16] [--grad] [--json OUT]
        what crates/qoq-policy/examples/bench_ecg.rs measures, the same way, on
        tools/ecg_jepa_reference.py's TimeSeriesEmbedding: per batch size (ascending) the
        median ms of the forwards (no_grad; with --grad forward + sum().backward() with every
        parameter trainable, gradients zeroed in place between iterations, outside the
        timing), VmRSS after building and loading the model, and per batch size the peak RSS
        (VmHWM, reset through /proc/self/clear_refs before each batch size; ru_maxrss, which
        reads the same high-water mark and so follows the reset, is reported beside it), growth = peak - RSS after building, and the
        max |difference| from the `embeddings` in IN.
"""
import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import ecg_jepa_reference as ref  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402


def status_mib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def maxrss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def paths(out, hidden):
    return os.path.join(out, f"weights-{hidden}.safetensors"), os.path.join(out, f"inputs-{hidden}.safetensors")


def make(args):
    os.makedirs(args.out, exist_ok=True)
    w_path, in_path = paths(args.out, args.hidden)
    torch.manual_seed(args.seed)
    emb = ref.TimeSeriesEmbedding(args.hidden, **ref.FULL)
    g = torch.Generator().manual_seed(args.seed)
    tensors = {}
    # Every tensor redrawn from one seeded generator, at ECG-JEPA-like scales: matrices
    # N(0, 0.02), biases 0.02 N, norm weights 1 + 0.1 N, norm biases 0.02 N, pos_embed the
    # sin-cos table + 0.02 N (so nothing is exactly 0 or 1 and a misplaced tensor shows).
    for name, t in ref.qoq_state_dict(emb).items():
        n = torch.randn(t.shape, generator=g, dtype=torch.float32)
        if name.endswith("pos_embed"):
            v = t + 0.02 * n
        elif ".norm" in name and name.endswith(".weight"):
            v = 1.0 + 0.1 * n
        else:
            v = 0.02 * n
        tensors[name] = v.contiguous()
    save_file(tensors, w_path)
    ref.load_qoq_tensors(emb, tensors)
    signals = torch.randn(8, 8, 2500, generator=g, dtype=torch.float32)
    with torch.no_grad():
        embeddings = emb(signals)
    save_file({"signals": signals, "embeddings": embeddings.contiguous()}, in_path)
    n = sum(t.numel() for t in tensors.values())
    print(f"{w_path}: {len(tensors)} tensors, {n:,} parameters; {in_path}: signals {list(signals.shape)}, "
          f"embeddings {list(embeddings.shape)} (|max| {embeddings.abs().max().item():.3g})")


def bench(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    batches = sorted(set(args.batch))
    rss_start = status_mib("VmRSS")
    t0 = time.perf_counter()
    weights = load_file(args.weights)
    hidden = weights[ref.QOQ_PREFIX + "linear.weight"].shape[0]
    torch.manual_seed(0)
    emb = ref.TimeSeriesEmbedding(hidden, **ref.FULL)
    ref.load_qoq_tensors(emb, weights)
    del weights
    kind = torch.bfloat16 if args.bf16 else torch.float32
    emb = emb.to(kind)
    if not args.grad:
        emb.requires_grad_(False)
    build_s = time.perf_counter() - t0
    inputs = load_file(args.inputs)
    signals, reference = inputs["signals"], inputs.get("embeddings")
    assert signals.shape[0] >= batches[-1], (signals.shape, batches)
    rss_model = status_mib("VmRSS")
    load_peak = status_mib("VmHWM")
    rows = []
    for b in batches:
        x = signals[:b].to(kind).contiguous()
        rss_before = status_mib("VmRSS")
        reset = reset_peak()
        times = []
        out = None
        for i in range(args.warmup + args.iters):
            s = time.perf_counter()
            if args.grad:
                y = emb(x)
                y.sum().backward()
                out = y.detach()
            else:
                with torch.no_grad():
                    out = emb(x)
            dt = (time.perf_counter() - s) * 1e3
            if args.grad:
                emb.zero_grad(set_to_none=False)
            if i >= args.warmup:
                times.append(dt)
        peak = status_mib("VmHWM")
        diff = None if reference is None else (out.float() - reference[:b].float()).abs().max().item()
        ms = statistics.median(times)
        row = {"side": "torch", "batch": b, "threads": threads, "hidden": hidden, "bf16": args.bf16,
               "grad": args.grad, "ms": ms, "ms_per_ecg": ms / b, "ms_all": times,
               "rss_model_mib": rss_model, "rss_before_mib": rss_before, "peak_rss_mib": peak,
               "growth_mib": peak - rss_model, "peak_reset": reset, "ru_maxrss_mib": maxrss_mib(),
               "max_abs_diff": diff, "out_abs_max": out.abs().max().float().item()}
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        meta = {"side": "torch", "torch": torch.__version__, "threads": threads, "hidden": hidden,
                "bf16": args.bf16, "grad": args.grad, "iters": args.iters, "warmup": args.warmup,
                "tensors": len(emb.state_dict()), "parameters": sum(p.numel() for p in emb.parameters()),
                "build_s": build_s, "rss_start_mib": rss_start, "rss_model_mib": rss_model,
                "load_peak_rss_mib": load_peak, "weights": args.weights, "results": rows}
        with open(args.json, "w") as f:
            json.dump(meta, f, indent=2)
            f.write("\n")


def batch_list(values):
    out = []
    for v in values:
        out.extend(int(x) for x in v.split(",") if x)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--hidden", type=int, default=4096)
    m.add_argument("--seed", type=int, default=0)
    b = sub.add_parser("bench")
    b.add_argument("--weights", required=True)
    b.add_argument("--inputs", required=True)
    b.add_argument("--batch", action="append", default=None)
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--iters", type=int, default=3)
    b.add_argument("--warmup", type=int, default=1)
    b.add_argument("--bf16", action="store_true")
    b.add_argument("--grad", action="store_true")
    b.add_argument("--json", default=None)
    args = p.parse_args()
    if args.cmd == "make":
        make(args)
    else:
        args.batch = batch_list(args.batch or ["1,8"])
        bench(args)


if __name__ == "__main__":
    main()
