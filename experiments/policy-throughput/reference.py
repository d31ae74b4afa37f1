#!/usr/bin/env python3
"""The reference side of the policy benchmark: transformers' Qwen3VLForConditionalGeneration
(fp32, CPU) on the model and inputs that make_model.py writes. Prints one JSON line per
measurement (load, prefill, generate, decode), in the same shape as the qoq side's bench_policy.

    python reference.py --model DIR/model --inputs DIR/inputs.safetensors --batch B --samples G
                        --new-tokens N [--threads T] [--attn sdpa|eager]

- load: from_pretrained (fp32) wall time; peak RSS right after it.
- prefill: one forward of the first B prompts with their images (vision tower, DeepStack,
  8 text layers, lm_head over all B*L positions, as a scoring pass needs), after one
  untimed forward of a single prompt. prompt tokens/s = B*L / seconds (L counts the
  196 image tokens).
- generate: model.generate(do_sample=True, temperature 1, top_k 0, top_p 1,
  num_return_sequences=G, min_new_tokens = max_new_tokens = N), after an untimed
  generate of 1 prompt x 2 samples x 2 tokens. tokens_per_s = B*G*N / total seconds. The
  line also splits the total at the moments generate hands the logits of each step to
  the logits processors (a timer appended to the list; called once per step, right after
  that step's forward):
    prefill_seconds  start -> logits of token 1: input expansion, the vision tower on the
                     B images (5.x encodes them once and repeats the features), the text
                     prefill of all B*G rows (generate repeats each prompt G times before
                     it, lm_head on the last position only);
    decode_seconds   logits of token 1 -> logits of token N: N-1 one-token steps over B*G
                     rows (sampling, cache update, forward).
- decode: seconds = decode_seconds above, tokens_per_s = B*G*(N-1) / decode_seconds.
  Why not "B*G*(N-1) / (generate seconds - the prefill above)": transformers' prefill
  inside generate is not that prefill (it runs B*G text rows, lm_head on one position;
  the prefill above runs B rows, lm_head on all B*L), so the subtraction moves the
  difference between the two into the decode time (or out of it). The timer measures the decode loop itself. The
  subtraction figure is on the line too (by_subtraction_tokens_per_s), for comparison.
- peak_rss_mib on every line: getrusage(RUSAGE_SELF).ru_maxrss so far (the last line's is
  the run's peak).

Needs the reference environment (bash tools/reference-env.sh prints its python).
"""
import argparse
import json
import resource
import time

import torch
from safetensors.torch import load_file

import transformers
from transformers import LogitsProcessor, LogitsProcessorList, Qwen3VLForConditionalGeneration

transformers.utils.logging.disable_progress_bar()


def peak_rss_mib():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


class StepTimer(LogitsProcessor):
    """Records when each generation step's logits arrive; changes nothing."""

    def __init__(self):
        self.times = []

    def __call__(self, input_ids, scores):
        self.times.append(time.perf_counter())
        return scores


def take(inputs, b):
    """The first b prompts and their images' patch rows."""
    grid = inputs["image_grid_thw"][:b]
    rows = int(grid.prod(-1).sum())
    out = {k: inputs[k][:b] for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
    out.update(pixel_values=inputs["pixel_values"][:rows], image_grid_thw=grid)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--batch", type=int, required=True)
    ap.add_argument("--samples", type=int, required=True)
    ap.add_argument("--new-tokens", type=int, required=True)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--attn", choices=["sdpa", "eager"], default="sdpa")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    B, G, N = args.batch, args.samples, args.new_tokens

    def emit(what, seconds, tokens, **extra):
        line = {"side": "transformers", "what": what, "batch": B, "samples": G, "new_tokens": N,
                "seconds": round(seconds, 4),
                "tokens_per_s": round(tokens / seconds, 2) if tokens else None,
                "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads()}
        line.update(extra)
        print(json.dumps(line), flush=True)

    start = time.perf_counter()
    model = Qwen3VLForConditionalGeneration.from_pretrained(
        args.model, dtype=torch.float32, attn_implementation=args.attn).eval()
    emit("load", time.perf_counter() - start, None, attn=args.attn)

    inputs = load_file(args.inputs)
    assert B <= inputs["input_ids"].shape[0], f"--batch {B}: the inputs hold {inputs['input_ids'].shape[0]} prompts"
    L = inputs["input_ids"].shape[1]
    batch = take(inputs, B)

    with torch.inference_mode():
        # prefill
        model.model.rope_deltas = None
        model(**take(inputs, 1))  # warm-up
        model.model.rope_deltas = None
        start = time.perf_counter()
        logits = model(**batch).logits
        seconds = prefill_b_s = time.perf_counter() - start
        assert logits.shape == (B, L, model.config.text_config.vocab_size), logits.shape
        assert torch.isfinite(logits).all()
        del logits
        emit("prefill", seconds, B * L, prompt_len=L)

        # generate
        common = dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                      eos_token_id=model.config.text_config.eos_token_id,
                      pad_token_id=model.config.text_config.pad_token_id)
        model.model.rope_deltas = None
        torch.manual_seed(args.seed)
        model.generate(**take(inputs, 1), num_return_sequences=2, max_new_tokens=2, min_new_tokens=2, **common)
        model.model.rope_deltas = None
        timer = StepTimer()
        torch.manual_seed(args.seed)
        start = time.perf_counter()
        out = model.generate(**batch, num_return_sequences=G, max_new_tokens=N, min_new_tokens=N,
                             logits_processor=LogitsProcessorList([timer]), **common)
        seconds = time.perf_counter() - start
        assert out.shape == (B * G, L + N), out.shape
        assert len(timer.times) == N, len(timer.times)
        prefill_s = timer.times[0] - start
        decode_s = timer.times[-1] - timer.times[0]
        emit("generate", seconds, B * G * N, prompt_len=L,
             prefill_seconds=round(prefill_s, 4), decode_seconds=round(decode_s, 4))
        if N > 1:
            emit("decode", decode_s, B * G * (N - 1), method="step timer",
                 # The subtraction figure, for comparison with a side that reports only that.
                 by_subtraction_tokens_per_s=round(B * G * (N - 1) / (seconds - prefill_b_s), 2))


if __name__ == "__main__":
    main()
