#!/usr/bin/env python3
"""transformers 5.x `generate` on the rollout benchmark's prompts: the first B prompts,
num_return_sequences = G, temperature 1, top-p 0.99, top-k off, fp32 on CPU (or bf16 on
CUDA). Prints one JSON line with the same keys as the engine's (bench_rollout).

    python reference.py --model DIR/model --inputs DIR/inputs.safetensors --batch B --samples G \
        --new-tokens N --stop mixed|none [--threads T] [--seed S] [--device cpu|cuda]

--stop mixed: responses end at <|im_end|> / <|endoftext|>; none: no end-of-sequence id,
every response runs N tokens (the model's generation_config.json names <|im_end|> as its
eos, and generate fills an unset eos_token_id from it, so it is cleared there too).
Tokens counted: each response up to and including its stop token (not the padding after
it). Wall time: the generate call alone (no warm-up run before it: both sides' first calls
pay their one-time costs, which are small next to a run of tens of seconds).
"""
import argparse
import json
import resource
import time

import torch
from safetensors.torch import load_file
import transformers
from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

transformers.utils.logging.disable_progress_bar()
STOP = [151645, 151643]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--stop", choices=["mixed", "none"], default="mixed")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    model = Qwen3VLForConditionalGeneration.from_pretrained(args.model, dtype=dtype).to(args.device).eval()
    t = load_file(args.inputs)
    b = args.batch
    per_image = int(t["image_grid_thw"][0].prod())
    inputs = {k: (v[: b * per_image] if k == "pixel_values" else v[:b]).to(args.device) for k, v in t.items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
    stop = STOP if args.stop == "mixed" else None
    if stop is None:
        model.generation_config.eos_token_id = None  # else generate falls back to it
    config = GenerationConfig(
        do_sample=True, temperature=1.0, top_p=0.99, top_k=0, max_new_tokens=args.new_tokens,
        num_return_sequences=args.samples, eos_token_id=stop, pad_token_id=151643,
        bad_words_ids=[[151655], [151656], [151652], [151653]],
    )
    torch.manual_seed(args.seed)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad():
        out = model.generate(**inputs, generation_config=config)
    if args.device == "cuda":
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    new = out[:, inputs["input_ids"].shape[1]:].tolist()
    assert stop or len(new[0]) == args.new_tokens, "--stop none: generate stopped early"
    lengths = []
    for row in new:
        n = len(row)
        if stop:
            n = next((i + 1 for i, x in enumerate(row) if x in STOP), n)
        lengths.append(n)
    tokens = sum(lengths)
    line = {"side": "transformers", "stop": args.stop, "batch": b, "samples": args.samples,
            "new_tokens": args.new_tokens, "responses": len(lengths), "tokens": tokens, "wall_s": wall,
            "tokens_per_s": tokens / wall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "mean_length": tokens / len(lengths), "min_length": min(lengths), "max_length": max(lengths),
            "threads": torch.get_num_threads(), "transformers": transformers.__version__}
    if args.device == "cuda":
        line["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(line))


if __name__ == "__main__":
    main()
