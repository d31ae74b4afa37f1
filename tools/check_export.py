"""Checks that transformers loads an exported folder and computes the logits our policy
computed: `diagnose --model HF_DIR --dump DUMP` writes the model inputs and our prefill
logits; this loads HF_DIR with the class its config.json names
(Qwen3VLForConditionalGeneration or Qwen2_5_VLForConditionalGeneration) and compares.

    cargo run --release --bin export -- --checkpoint runs/demo/checkpoints/step_N --out /tmp/hf
        (the Qwen2.5-VL demo: runs/demo-qwen2_5_vl/checkpoints/step_N)
    cargo run --release --bin diagnose -- --model /tmp/hf --image IMG --prompt "..." --max-new-tokens 1 --dump /tmp/d.safetensors
    $(bash tools/reference-env.sh) tools/check_export.py /tmp/hf /tmp/d.safetensors

Exits 1 when the largest absolute logit difference exceeds --tol (default 1e-4).
"""
import argparse
import sys

import torch
from safetensors.torch import load_file
import json
import os

from transformers import Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

parser = argparse.ArgumentParser()
parser.add_argument("hf_dir")
parser.add_argument("dump")
parser.add_argument("--tol", type=float, default=1e-4)
args = parser.parse_args()
torch.set_num_threads(2)
with open(os.path.join(args.hf_dir, "config.json")) as f:
    model_type = json.load(f)["model_type"]
cls = {"qwen3_vl": Qwen3VLForConditionalGeneration, "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration}[model_type]
model = cls.from_pretrained(args.hf_dir, dtype=torch.float32).eval()
d = load_file(args.dump)
ids = d["input_ids"][None].long()
# What the processor returns beside input_ids: 1 on image pads, 2 on video pads.
mm = (ids == model.config.image_token_id).long() + 2 * (ids == model.config.video_token_id).long()
with torch.no_grad():
    out = model(input_ids=ids, mm_token_type_ids=mm, pixel_values=d["pixel_values"],
                image_grid_thw=d["image_grid_thw"].long())
ours = d["prefill_logits"]
theirs = out.logits[0].float()
diff = (ours - theirs).abs().max().item()
print(f"{args.hf_dir} ({cls.__name__}): logits {tuple(theirs.shape)}, largest |ours - transformers| = {diff:.3e}")
sys.exit(0 if diff <= args.tol else 1)
