#!/usr/bin/env python3
"""Writes the policy benchmark's model and inputs: a random-initialised Qwen3-VL with the real
vocabulary (151,936 ids, tied embeddings) but a small body, and 8 same-length prompts with
one 448x448 image each.

    python make_model.py --out DIR [--seed S]

DIR/model: config.json, generation_config.json, model.safetensors (f32, written by
transformers' save_pretrained; no lm_head.weight, as the embeddings are tied).
DIR/inputs.safetensors: input_ids i64 [8, L], attention_mask i64 [8, L] (all ones),
pixel_values f32 [8*784, 1536], image_grid_thw i64 [8, 3] (all [1, 28, 28]),
mm_token_type_ids i64 [8, L] (1 on image pads, for transformers 5.x).
Each prompt: 40 random text ids, vision_start, 196 image pads, vision_end, 20 random text ids
(L = 258). Images are synthetic (gradients and shapes), run through transformers' Qwen3-VL
image processor with the real settings (patch 16, temporal 2, merge 2, mean/std 0.5).

Same approach as tools/make_policy_fixtures.py (Qwen3VLConfig, every parameter redrawn from a
seeded generator with scales that keep activations O(1)); only speed and memory matter here.
Needs the reference environment (bash tools/reference-env.sh prints its python). About 10 s;
seeded: a rerun writes the same bytes.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch

from safetensors.torch import save_file

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from make_policy_fixtures import drawn as _fixture_drawn  # noqa: E402  (one synthetic-image recipe)
from make_policy_fixtures import randomise as _fixture_randomise  # noqa: E402

import transformers
from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

transformers.utils.logging.disable_progress_bar()

# The real Qwen3-VL special ids.
IMAGE_ID, VIDEO_ID, VSTART_ID, VEND_ID, EOS_ID, PAD_ID = 151655, 151656, 151652, 151653, 151645, 151643
PROMPTS, TEXT_BEFORE, TEXT_AFTER, IMAGE_SIDE = 8, 40, 20, 448
TEXT_ID_LIMIT = 151000  # random text ids stay below every special id


def make_config():
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=151936, hidden_size=512, intermediate_size=1536, num_hidden_layers=8,
            num_attention_heads=8, num_key_value_heads=4, head_dim=64, hidden_act="silu",
            rms_norm_eps=1e-6, attention_bias=False, max_position_embeddings=262144,
            rope_parameters={"rope_type": "default", "rope_theta": 5000000.0,
                             "mrope_section": [12, 10, 10], "mrope_interleaved": True},
            eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        ),
        vision_config=dict(
            depth=6, hidden_size=256, intermediate_size=1024, num_heads=4, hidden_act="gelu_pytorch_tanh",
            patch_size=16, temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
            out_hidden_size=512, num_position_embeddings=2304, deepstack_visual_indexes=[1, 3, 5],
        ),
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
        vision_start_token_id=VSTART_ID, vision_end_token_id=VEND_ID,
        tie_word_embeddings=True,
    )


@torch.no_grad()
def randomise(model, seed):
    """As tools/make_policy_fixtures.py, except the (tied) embedding's scale: 0.05 instead of
    0.4, so that logits over 151,936 ids (std about 0.05 * sqrt(512) ~ 1) give a spread-out
    sampling distribution rather than a near-argmax one."""
    _fixture_randomise(model, seed, embed_std=0.05)


def drawn(h, w, seed):
    """The fixture generator's synthetic image (gradients + 5 shapes)."""
    return _fixture_drawn(h, w, seed, shapes=5)


# Qwen3-VL's preprocessor_config.json settings (65,536 to 16,777,216 pixels; 448x448 is kept).
IMAGE_PROC = Qwen2VLImageProcessor(
    patch_size=16, temporal_patch_size=2, merge_size=2,
    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    size={"shortest_edge": 65536, "longest_edge": 16777216},
)


def make_inputs(seed):
    rng = np.random.default_rng(seed)
    images = [drawn(IMAGE_SIDE, IMAGE_SIDE, seed * 100 + i) for i in range(PROMPTS)]
    out = IMAGE_PROC(images=images, return_tensors="pt")
    pixel_values = out["pixel_values"].to(torch.float32).contiguous()
    grid = out["image_grid_thw"].to(torch.int64)
    assert grid.tolist() == [[1, 28, 28]] * PROMPTS, grid
    pads = int(grid[0].prod()) // 4  # 196
    rows = []
    for _ in range(PROMPTS):
        rows.append(rng.integers(0, TEXT_ID_LIMIT, TEXT_BEFORE).tolist() + [VSTART_ID] + [IMAGE_ID] * pads
                    + [VEND_ID] + rng.integers(0, TEXT_ID_LIMIT, TEXT_AFTER).tolist())
    input_ids = torch.tensor(rows, dtype=torch.int64)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "pixel_values": pixel_values,
        "image_grid_thw": grid,
        "mm_token_type_ids": (input_ids == IMAGE_ID).to(torch.int64),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    start = time.perf_counter()
    folder = os.path.join(args.out, "model")
    os.makedirs(folder, exist_ok=True)

    torch.manual_seed(args.seed)
    model = Qwen3VLForConditionalGeneration(make_config()).eval()
    assert model.lm_head.weight is model.model.language_model.embed_tokens.weight
    randomise(model, args.seed + 1)
    model.save_pretrained(folder)

    inputs = make_inputs(args.seed + 2)
    save_file(inputs, os.path.join(args.out, "inputs.safetensors"))

    params = sum(p.numel() for p in model.parameters())
    files = {n: os.path.getsize(os.path.join(folder, n)) for n in sorted(os.listdir(folder))}
    print(json.dumps({
        "made": args.out, "parameters": params,
        "text_parameters": sum(p.numel() for p in model.model.language_model.parameters()),
        "vision_parameters": sum(p.numel() for p in model.model.visual.parameters()),
        "files": files, "checkpoint_mib": round(sum(files.values()) / 2**20, 1),
        "inputs": {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in inputs.items()},
        "prompt_len": inputs["input_ids"].shape[1], "seconds": round(time.perf_counter() - start, 1),
    }), file=sys.stderr)


if __name__ == "__main__":
    main()
