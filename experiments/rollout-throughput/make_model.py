#!/usr/bin/env python3
"""Writes the rollout benchmark's model and prompts: a random-initialised Qwen3-VL with the
real vocabulary (151,936 ids, untied head as in Qwen3-VL-8B) and a small body (hidden 512,
8 layers; 193 M parameters, 155 M of them embedding and head), and 64 prompts of 136
tokens with one image each (128x128, resized to the processor's 256x256 minimum: 64
merged tokens).

    python make_model.py --out DIR [--seed S] [--stop-rate Q] [--large] [--check-prompts P] [--check-tokens N]

Two things make its rollouts look like a trained model's:
- A realistic nucleus. lm_head is rescaled so the logits' standard deviation is 5.5,
  which leaves a few hundred tokens in a top-p 0.99 nucleus (a flat random model keeps
  nearly all 151,936 there).
- Mixed lengths. Channel 0 of the residual stream is a constant: every token embedding
  has 0.5 there, and no o_proj / down_proj / merger writes to it. Only `<|im_end|>`'s
  lm_head row reads it. That adds a bias b / rms(x) to the end-of-sequence logit. b is
  chosen so that a sampled response stops with probability about Q per token (default
  1/24): lengths spread roughly geometrically from 1 to max_new_tokens.

The script prints (stderr) the nucleus sizes and the EOS probability at the prompts' last
positions (where b is fitted), then, after the files are written, a sampling check with
transformers' `generate` as reference.py runs it (the first P = 8 prompts x 5 samples, N = 64
new tokens, temperature 1, top-p 0.99, top-k off, stop at <|im_end|> / <|endoftext|>): the
nucleus size and EOS probability at every decode step of the responses still running, and
the histogram of the response lengths. About 40 s on 2 cores; --check-prompts 0 skips it
(the default with --large). Needs the reference environment (bash tools/reference-env.sh).
Seeded: a rerun writes the same bytes (the check runs after the files are written).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(here, "..", "policy-throughput"))
sys.path.insert(0, os.path.join(here, "..", "..", "tools"))
from make_model import IMAGE_PROC, drawn, make_config  # noqa: E402  (policy-throughput's)
from make_policy_fixtures import randomise  # noqa: E402

import transformers  # noqa: E402
from transformers import GenerationConfig, LogitsProcessor, Qwen3VLForConditionalGeneration  # noqa: E402

transformers.utils.logging.disable_progress_bar()
IMAGE_ID, VIDEO_ID, VSTART_ID, VEND_ID, EOS_ID, PAD_ID = 151655, 151656, 151652, 151653, 151645, 151643
PROMPTS, TEXT_BEFORE, TEXT_AFTER, SIDE = 64, 40, 30, 128
TEXT_ID_LIMIT = 151000
LOGIT_STD = 5.5


def config(large):
    c = make_config()
    c.tie_word_embeddings = False
    c.text_config.tie_word_embeddings = False
    if large:  # the GPU check's: Qwen3-VL-2B's text and vision shapes (2.1 B with an untied head)
        for k, v in dict(hidden_size=2048, intermediate_size=6144, num_hidden_layers=28, num_attention_heads=16,
                         num_key_value_heads=8, head_dim=128).items():
            setattr(c.text_config, k, v)
        c.text_config.rope_parameters["mrope_section"] = [24, 20, 20]
        for k, v in dict(depth=24, hidden_size=1024, intermediate_size=4096, num_heads=16, out_hidden_size=2048,
                         deepstack_visual_indexes=[5, 11, 17]).items():
            setattr(c.vision_config, k, v)
    return c


@torch.no_grad()
def shape_model(model, inputs, stop_rate):
    """Realistic nucleus and the end-of-sequence bias."""
    lm = model.model.language_model
    lm.embed_tokens.weight[:, 0] = 0.5
    for layer in lm.layers:
        layer.self_attn.o_proj.weight[0] = 0
        layer.mlp.down_proj.weight[0] = 0
    for merger in [model.model.visual.merger, *model.model.visual.deepstack_merger_list]:
        merger.linear_fc2.weight[0] = 0
        merger.linear_fc2.bias[0] = 0
    head = model.lm_head.weight
    head[:, 0] = 0
    # Final hidden states of the prompts' last positions and of a few sampled tokens.
    per_image = int(inputs["image_grid_thw"][0].prod())
    first = {k: v[: 8 * per_image] if k == "pixel_values" else v[:8] for k, v in inputs.items()}
    out = model(**first, output_hidden_states=True)
    hidden = out.hidden_states[-1][:, -24:].reshape(-1, head.shape[1])  # after the final norm
    logits = hidden @ head.T
    head[:, 1:] *= LOGIT_STD / logits.std().item()
    head[EOS_ID] = 0
    logits = hidden @ head.T
    lse = torch.logsumexp(logits, -1)
    # EOS logit = bias_weight * h0; choose it so that exp(eos - lse) ~ stop_rate on average.
    h0 = hidden[:, 0]
    target = (lse + np.log(stop_rate)) / h0
    head[EOS_ID, 0] = target.median()
    logits = hidden @ head.T
    probs = torch.softmax(logits.double(), -1)
    sorted_p = probs.sort(-1, descending=True).values.cumsum(-1)
    nucleus = (sorted_p < 0.99).sum(-1) + 1
    return {
        "nucleus_p10_p50_p90": [int(x) for x in np.percentile(nucleus.numpy(), [10, 50, 90])],
        "eos_probability_mean": float(probs[:, EOS_ID].mean()),
        "eos_probability_p10_p90": [float(x) for x in np.percentile(probs[:, EOS_ID].numpy(), [10, 90])],
    }


class Probe(LogitsProcessor):
    """Records, per decode step, the top-p 0.99 nucleus size and the EOS probability of the rows
    still running. transformers puts custom processors after bad_words and before the
    temperature / top-p warpers, so `scores` are the raw logits with the media ids banned."""

    def __init__(self, prompt_len):
        self.prompt_len, self.nucleus, self.eos = prompt_len, [], []

    def __call__(self, input_ids, scores):
        new = input_ids[:, self.prompt_len:]
        live = ~((new == EOS_ID) | (new == PAD_ID)).any(-1)
        p = torch.softmax(scores[live].double(), -1)
        self.nucleus += ((p.sort(-1, descending=True).values.cumsum(-1) < 0.99).sum(-1) + 1).tolist()
        self.eos += p[:, EOS_ID].tolist()
        return scores


@torch.no_grad()
def sampling_check(model, inputs, prompts, new_tokens, seed):
    """reference.py's --stop mixed generate on the first `prompts` prompts; prints the lengths."""
    per_image = int(inputs["image_grid_thw"][0].prod())
    first = {k: v[: prompts * per_image] if k == "pixel_values" else v[:prompts] for k, v in inputs.items()}
    probe = Probe(first["input_ids"].shape[1])
    config = GenerationConfig(do_sample=True, temperature=1.0, top_p=0.99, top_k=0, max_new_tokens=new_tokens,
                              num_return_sequences=5, eos_token_id=[EOS_ID, PAD_ID], pad_token_id=PAD_ID,
                              bad_words_ids=[[IMAGE_ID], [VIDEO_ID], [VSTART_ID], [VEND_ID]])
    torch.manual_seed(seed)
    out = model.generate(**first, generation_config=config, logits_processor=[probe])
    lengths = [next((i + 1 for i, x in enumerate(row) if x in (EOS_ID, PAD_ID)), len(row))
               for row in out[:, probe.prompt_len:].tolist()]
    hit_max = sum(n == new_tokens for n in lengths) / len(lengths)
    width = max(1, (new_tokens - 1) // 8)  # bins of lengths 1..N-1, then N (never stopped)
    bins = [(lo, min(lo + width, new_tokens) - 1) for lo in range(1, new_tokens, width)] + [(new_tokens, new_tokens)]
    hist = {(f"{lo}-{hi}" if hi > lo else f"{lo}"): sum(lo <= n <= hi for n in lengths) for lo, hi in bins}
    print(f"sampling check: {len(lengths)} responses ({prompts} prompts x 5), at most {new_tokens} tokens: mean "
          f"{np.mean(lengths):.1f}, median {np.median(lengths):.0f}, {hit_max:.0%} reach {new_tokens}", file=sys.stderr)
    for label, n in hist.items():
        print(f"  {label:>7} {n:4d} {'#' * n}", file=sys.stderr)
    return {
        "check_responses": len(lengths), "check_new_tokens": new_tokens, "check_mean_length": float(np.mean(lengths)),
        "check_hit_max": hit_max, "check_length_histogram": hist,
        "decode_positions": len(probe.nucleus),
        "decode_nucleus_p10_p50_p90": [int(x) for x in np.percentile(probe.nucleus, [10, 50, 90])],
        "decode_eos_probability_mean": float(np.mean(probe.eos)),
        "decode_eos_probability_p10_p90": [float(x) for x in np.percentile(probe.eos, [10, 90])],
    }


def make_inputs(seed):
    rng = np.random.default_rng(seed)
    images = [drawn(SIDE, SIDE, seed * 100 + i) for i in range(PROMPTS)]
    out = IMAGE_PROC(images=images, return_tensors="pt")
    grid = out["image_grid_thw"].to(torch.int64)
    pads = int(grid[0].prod()) // 4
    rows = [rng.integers(0, TEXT_ID_LIMIT, TEXT_BEFORE).tolist() + [VSTART_ID] + [IMAGE_ID] * pads + [VEND_ID]
            + rng.integers(0, TEXT_ID_LIMIT, TEXT_AFTER).tolist() for _ in range(PROMPTS)]
    ids = torch.tensor(rows, dtype=torch.int64)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "pixel_values": out["pixel_values"].to(torch.float32).contiguous(), "image_grid_thw": grid,
            "mm_token_type_ids": (ids == IMAGE_ID).to(torch.int64)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stop-rate", type=float, default=1 / 24)
    ap.add_argument("--large", action="store_true", help="Qwen3-VL-2B's shapes (the GPU check)")
    ap.add_argument("--check-prompts", type=int, default=None, help="sampling check's prompts (8; 0 with --large)")
    ap.add_argument("--check-tokens", type=int, default=64, help="sampling check's max_new_tokens")
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    model = Qwen3VLForConditionalGeneration(config(args.large)).eval()
    assert model.lm_head.weight is not model.model.language_model.embed_tokens.weight
    randomise(model, args.seed + 1, embed_std=0.05)
    inputs = make_inputs(args.seed + 2)
    stats = shape_model(model, inputs, args.stop_rate)
    model.save_pretrained(os.path.join(args.out, "model"))
    save_file(inputs, os.path.join(args.out, "inputs.safetensors"))
    print(json.dumps({"made": args.out, "parameters": sum(p.numel() for p in model.parameters()),
                      "prompt_tokens": inputs["input_ids"].shape[1], **stats}), file=sys.stderr)
    check_prompts = (0 if args.large else 8) if args.check_prompts is None else args.check_prompts
    if check_prompts > 0:
        check = sampling_check(model, inputs, check_prompts, args.check_tokens, args.seed + 3)
        print(json.dumps(check), file=sys.stderr)


if __name__ == "__main__":
    main()
