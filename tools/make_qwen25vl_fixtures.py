#!/usr/bin/env python3
"""Writes tests/fixtures/qwen2_5_vl: tiny random Qwen2.5-VL checkpoints and transformers 5.24's
outputs on them (prefill logits, rope positions, vision features, greedy KV-cache decoding),
Qwen2.5-VL image-processor outputs, and Qwen2.5-VL chat-template renderings with the token ids of
a Qwen2.5 tokenizer derived from the project's Qwen3 one, and (diagnose/) a tiny random Qwen2.5-VL over
the whole Qwen2.5 vocabulary with transformers' own processor + chat template + generate outputs
for one image and prompt, as `diagnose` prompts. With these, the Rust port of
`Qwen2_5_VLForConditionalGeneration` (and its processor / chat template) can be checked for exact
fp32 parity without Python. Mirrors tools/make_policy_fixtures.py (Qwen3-VL).

Needs the reference environment (see tools/reference-env.sh):
    torch==2.11.0 torchvision==0.26.0 transformers==5.24.0 pillow numpy safetensors
and the Qwen3 tokenizer files that tools/setup.sh links at .qwen-tokenizer.

Run from the repository root:
    python tools/make_qwen25vl_fixtures.py [--out tests/fixtures/qwen2_5_vl] [--tokenizer-dir .qwen-tokenizer] [--only diagnose]

Deterministic: fixed seeds, one CPU thread, deterministic algorithms; a rerun writes identical bytes.
"""
import argparse
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import sys
import tempfile

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import save_file

import transformers
from transformers import (AutoProcessor, GenerationConfig, PreTrainedTokenizerFast, Qwen2_5_VLConfig,
                          Qwen2_5_VLForConditionalGeneration)
from transformers.cache_utils import DynamicCache
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor, smart_resize
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
from transformers.video_utils import VideoMetadata
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_window_index

IMAGE_ID, VIDEO_ID, VSTART_ID, VEND_ID, EOS_ID, PAD_ID = 1000, 1001, 1002, 1003, 1004, 1005
# bos = pad, as in Qwen2.5 (<|endoftext|> is both); the published flat config also lists a
# `vision_token_id` (<|vision_pad|>, unused by the model): 1006 here.
BOS_ID, VISION_PAD_ID = 1005, 1006
NEW_TOKENS = 6
MROPE_SECTION = [2, 3, 3]
TOKENS_PER_SECOND = 2
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
# preprocessor_config.json of the tiny models: the published Qwen/Qwen2.5-VL-7B-Instruct file
# (same keys, same order) with small pixel bounds (published: 3136 / 12845056).
PREPROCESSOR = {
    "min_pixels": 3136,
    "max_pixels": 50176,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}
PUBLISHED_MIN_PIXELS, PUBLISHED_MAX_PIXELS = 3136, 12845056

# Qwen2.5-VL-Instruct chat template, byte-exact (docs/qwen25vl.md section 5; from the PyPI wheel
# xinference==4.1.0, xinference/model/llm/models/qwen2.5-vl-instruct.json, key chat_template).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
CHAT_TEMPLATE_SHA256 = "a0bc6f6fc7a29a80017a433e8f03a1cc1236e838a944a2d034295a60c4f2fddb"
QWEN25_LAST_ADDED_ID = 151664  # Qwen2.5's added tokens are 151643..151664


def write_json(path, obj, sort_keys=True):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------- models

def make_config(tied):
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, hidden_act="silu",
            rms_norm_eps=1e-6, max_position_embeddings=4096, use_sliding_window=False,
            sliding_window=32768, max_window_layers=3,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": MROPE_SECTION},
            bos_token_id=BOS_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        ),
        vision_config=dict(
            depth=4, hidden_size=32, intermediate_size=48, num_heads=2, hidden_act="silu",
            patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
            window_size=56, fullatt_block_indexes=[1, 3], out_hidden_size=64,
            tokens_per_second=TOKENS_PER_SECOND,
        ),
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
        vision_start_token_id=VSTART_ID, vision_end_token_id=VEND_ID,
        tie_word_embeddings=tied,
    )


@torch.no_grad()
def randomise(model, seed, embed_std=0.4):
    """Every parameter gets a random value (same rules as make_policy_fixtures.py)."""
    g = torch.Generator().manual_seed(seed)
    tied = model.lm_head.weight is model.model.language_model.embed_tokens.weight
    for name, p in sorted(model.named_parameters()):  # a tied lm_head is listed once (as embed_tokens)
        r = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if name.endswith(".bias"):
            v = 0.1 * r
        elif p.ndim == 1:  # RMSNorm weights (norm1/norm2/ln_q/input_layernorm/...)
            assert "norm" in name or "ln_q" in name, name
            v = 1.0 + 0.2 * r
        elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            v = embed_std * r
        elif name.endswith("patch_embed.proj.weight"):
            v = r / math.sqrt(p[0].numel())  # fan_in 3*2*14*14 = 1176
        else:
            assert p.ndim == 2, name
            v = r / math.sqrt(p.shape[1])
        p.copy_(v)
    assert tied == (model.lm_head.weight is model.model.language_model.embed_tokens.weight)


def to_flat_legacy_config(cfg, vision_token_id=VISION_PAD_ID):
    """Rewrites a 5.24 config.json dict into the flat layout of the published
    Qwen/Qwen2.5-VL-7B-Instruct config.json (same keys, same key order; values of the tiny model)."""
    tc, vc = cfg["text_config"], cfg["vision_config"]
    rp = tc["rope_parameters"]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "attention_dropout": tc["attention_dropout"],
        "bos_token_id": tc["bos_token_id"],
        "eos_token_id": tc["eos_token_id"],
        "vision_start_token_id": cfg["vision_start_token_id"],
        "vision_end_token_id": cfg["vision_end_token_id"],
        "vision_token_id": vision_token_id,
        "image_token_id": cfg["image_token_id"],
        "video_token_id": cfg["video_token_id"],
        "hidden_act": tc["hidden_act"],
        "hidden_size": tc["hidden_size"],
        "initializer_range": tc["initializer_range"],
        "intermediate_size": tc["intermediate_size"],
        "max_position_embeddings": tc["max_position_embeddings"],
        "max_window_layers": tc["max_window_layers"],
        "model_type": "qwen2_5_vl",
        "num_attention_heads": tc["num_attention_heads"],
        "num_hidden_layers": tc["num_hidden_layers"],
        "num_key_value_heads": tc["num_key_value_heads"],
        "rms_norm_eps": tc["rms_norm_eps"],
        "rope_theta": rp["rope_theta"],
        "sliding_window": 32768,
        "tie_word_embeddings": cfg["tie_word_embeddings"],
        "torch_dtype": "float32",
        "transformers_version": "4.41.2",
        "use_cache": tc["use_cache"],
        "use_sliding_window": tc["use_sliding_window"],
        "vision_config": {
            "depth": vc["depth"],
            "hidden_act": vc["hidden_act"],
            "hidden_size": vc["hidden_size"],
            "intermediate_size": vc["intermediate_size"],
            "num_heads": vc["num_heads"],
            "in_chans": vc["in_channels"],
            "out_hidden_size": vc["out_hidden_size"],
            "patch_size": vc["patch_size"],
            "spatial_merge_size": vc["spatial_merge_size"],
            "spatial_patch_size": vc["patch_size"],
            "window_size": vc["window_size"],
            "fullatt_block_indexes": vc["fullatt_block_indexes"],
            "tokens_per_second": vc["tokens_per_second"],
            "temporal_patch_size": vc["temporal_patch_size"],
        },
        "rope_scaling": {"type": "mrope", "mrope_section": rp["mrope_section"]},
        "vocab_size": tc["vocab_size"],
    }


def save_models(out):
    built = {}
    for name, tied, seed in [("tiny-untied", False, 1), ("tiny-tied", True, 2)]:
        folder = os.path.join(out, name)
        shutil.rmtree(folder, ignore_errors=True)
        torch.manual_seed(0)
        model = Qwen2_5_VLForConditionalGeneration(make_config(tied)).eval()
        randomise(model, seed)
        model.save_pretrained(folder)
        os.remove(os.path.join(folder, "generation_config.json"))  # derived from config.json
        if tied:
            path = os.path.join(folder, "config.json")
            with open(path) as f:
                cfg = json.load(f)
            write_json(path, to_flat_legacy_config(cfg), sort_keys=False)
        write_json(os.path.join(folder, "preprocessor_config.json"), PREPROCESSOR, sort_keys=False)
        built[name] = model
    return built


def load(out, name):
    return Qwen2_5_VLForConditionalGeneration.from_pretrained(
        os.path.join(out, name), attn_implementation="eager", dtype=torch.float32).eval()


def config_summary(cfg):
    """The config values the model actually uses (to compare the flat form's parse with the nested one)."""
    t, v = cfg.text_config, cfg.vision_config
    keys_t = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
              "num_key_value_heads", "hidden_act", "rms_norm_eps", "max_position_embeddings", "layer_types",
              "attention_dropout", "eos_token_id", "bos_token_id", "sliding_window", "use_sliding_window"]
    keys_v = ["depth", "hidden_size", "intermediate_size", "num_heads", "hidden_act", "in_channels", "patch_size",
              "temporal_patch_size", "spatial_merge_size", "window_size", "fullatt_block_indexes", "out_hidden_size",
              "tokens_per_second", "rope_parameters"]
    return {
        # (5.24 keeps a legacy `"type": "mrope"` next to `rope_type: "default"` when it parses the flat
        # form's rope_scaling; it is not used, so it is left out of the comparison.)
        "text": {k: getattr(t, k) for k in keys_t}
        | {"rope_parameters": {k: v for k, v in t.rope_parameters.items() if k != "type"}},
        "vision": {k: (list(getattr(v, k)) if k == "fullatt_block_indexes" else getattr(v, k)) for k in keys_v},
        "root": {k: getattr(cfg, k) for k in ["image_token_id", "video_token_id", "vision_start_token_id",
                                              "vision_end_token_id", "tie_word_embeddings"]},
    }


# ----------------------------------------------------------------------------- inputs

rng = np.random.default_rng(20251128)


def drawn(h, w, seed, shapes=3):
    """Smooth gradients + a few shapes, uint8 RGB, h x w (as make_policy_fixtures.py)."""
    r = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    a, b, c = r.uniform(1.0, 8.0, 3)
    arr = np.stack([
        127 + 120 * np.sin(x / w * a + y / h * b),
        127 + 120 * np.cos(x / w * c - y / h * a),
        (x * 3 + y * 5 + 40 * b) % 256,
    ], axis=-1)
    img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")
    d = ImageDraw.Draw(img)
    for _ in range(shapes):
        x0, y0 = int(r.integers(0, w - 8)), int(r.integers(0, h - 8))
        x1, y1 = x0 + int(r.integers(6, w // 2)), y0 + int(r.integers(6, h // 2))
        col = tuple(int(v) for v in r.integers(0, 256, 3))
        (d.ellipse if r.random() < 0.5 else d.rectangle)([x0, y0, x1, y1], fill=col)
    return img


def proc_kwargs(min_pixels, max_pixels):
    return dict(patch_size=14, temporal_patch_size=2, merge_size=2, image_mean=CLIP_MEAN, image_std=CLIP_STD,
                size={"shortest_edge": min_pixels, "longest_edge": max_pixels})


IMAGE_PROC = Qwen2VLImageProcessor(**proc_kwargs(PREPROCESSOR["min_pixels"], PREPROCESSOR["max_pixels"]))
VIDEO_PROC = Qwen2VLVideoProcessor(**proc_kwargs(PREPROCESSOR["min_pixels"], PREPROCESSOR["max_pixels"]))


def process_images(images, proc=IMAGE_PROC):
    out = proc(images=images, return_tensors="pt")
    return out["pixel_values"].to(torch.float32), out["image_grid_thw"].to(torch.int64)


def process_video(frames):
    out = VIDEO_PROC(videos=[frames], do_sample_frames=False, cap_pixels_per_frame=False, return_tensors="pt")
    return out["pixel_values_videos"].to(torch.float32), out["video_grid_thw"].to(torch.int64)


def text(n):
    return rng.integers(0, 1000, n).tolist()


def vision_block(grid, token):
    """vision_start, t*h*w/4 pads, vision_end: one contiguous block, also for a video (Qwen2.5-VL
    has no per-frame timestamps)."""
    return [VSTART_ID] + [token] * (int(np.prod(grid)) // 4) + [VEND_ID]


def mm_types(ids):
    """ProcessorMixin.create_mm_token_type_ids: 1 on image pads, 2 on video pads, else 0."""
    return [1 if i == IMAGE_ID else 2 if i == VIDEO_ID else 0 for i in ids]


def batch(rows):
    """Left-pads rows of ids with PAD_ID (attention_mask 0, mm type 0)."""
    L = max(len(r) for r in rows)
    ids = [[PAD_ID] * (L - len(r)) + r for r in rows]
    mask = [[0] * (L - len(r)) + [1] * len(r) for r in rows]
    return (torch.tensor(ids, dtype=torch.int64), torch.tensor(mask, dtype=torch.int64),
            torch.tensor([mm_types(r) for r in ids], dtype=torch.int64))


def make_cases():
    # H x W in pixels; all multiples of 28 inside [3136, 50176] px, so the processor does not rescale.
    img_a = drawn(84, 140, 11)   # grid [1, 6, 10] -> merged 3 x 5 (not a multiple of the 2 x 2 window)
    img_b = drawn(56, 112, 12)   # grid [1, 4, 8]  -> merged 2 x 4 (exact multiple -> empty padding windows)
    img_c = drawn(84, 56, 13)    # grid [1, 6, 4]  -> merged 3 x 2
    img_d = drawn(56, 56, 14)    # grid [1, 4, 4]  -> merged 2 x 2 (one full window + empty ones)
    img_e = drawn(56, 84, 15)    # grid [1, 4, 6]  -> merged 2 x 3
    frames = [drawn(56, 84, 20 + i) for i in range(4)]   # grid [2, 4, 6]: 2 temporal patches of 2 x 3
    frames6 = [drawn(56, 56, 30 + i) for i in range(6)]  # grid [3, 4, 4]: 3 temporal patches of 2 x 2
    g = lambda img: process_images([img])[1][0].tolist()
    cases = []

    cases.append(dict(name="text_only", model="tiny-untied", desc="batch 1, 12 text tokens",
                      rows=[text(12)], images=[], video=None))

    one = text(5) + vision_block(g(img_a), IMAGE_ID) + text(6)
    cases.append(dict(name="one_image", model="tiny-untied",
                      desc="batch 1, one 84x140 image (grid [1,6,10], merged 3x5: partial windows)",
                      rows=[one], images=[img_a], video=None))

    ids = text(4) + vision_block(g(img_b), IMAGE_ID) + text(5)
    cases.append(dict(name="image_window_multiple", model="tiny-untied",
                      desc="batch 1, one 56x112 image (grid [1,4,8], merged 2x4 = exactly 1x2 windows; "
                           "get_window_index pads by a whole window, giving empty windows)",
                      rows=[ids], images=[img_b], video=None))

    ids = text(4) + vision_block(g(img_c), IMAGE_ID) + text(3) + vision_block(g(img_d), IMAGE_ID) + text(5)
    cases.append(dict(name="two_images", model="tiny-untied",
                      desc="batch 1, an 84x56 image (grid [1,6,4]) then a 56x56 image (grid [1,4,4]) in one prompt",
                      rows=[ids], images=[img_c, img_d], video=None))

    ids = text(4) + vision_block(process_video(frames)[1][0].tolist(), VIDEO_ID) + text(5)
    cases.append(dict(name="video", model="tiny-untied",
                      desc="batch 1, one 4-frame 56x84 video (grid [2,4,6]), second_per_grid_ts 1.5 "
                           "(temporal step tokens_per_second * 1.5 = 3), text after it",
                      rows=[ids], images=[], video=frames, second_per_grid_ts=[1.5]))

    ids = (text(3) + vision_block(g(img_d), IMAGE_ID) + text(3)
           + vision_block(process_video(frames6)[1][0].tolist(), VIDEO_ID) + text(4))
    cases.append(dict(name="image_then_video_fractional", model="tiny-untied",
                      desc="batch 1, a 56x56 image (grid [1,4,4]) then a 6-frame 56x56 video (grid [3,4,4]) "
                           "with second_per_grid_ts 0.75 (step 1.5 -> temporal offsets floor(0, 1.5, 3.0) = 0, 1, 3)",
                      rows=[ids], images=[img_d], video=frames6, second_per_grid_ts=[0.75]))

    r0 = text(4) + vision_block(g(img_e), IMAGE_ID) + text(4)
    r1 = text(2) + vision_block(g(img_d), IMAGE_ID) + text(12)
    cases.append(dict(name="batch_left_padded", model="tiny-untied",
                      desc="batch 2, left padded with 1005: row 0 a 56x84 image (grid [1,4,6]), "
                           "row 1 a 56x56 image (grid [1,4,4]) and more text",
                      rows=[r0, r1], images=[img_e, img_d], video=None))

    ids = text(3) + vision_block(g(img_e), IMAGE_ID) + text(4)
    cases.append(dict(name="tied_one_image", model="tiny-tied",
                      desc="batch 1, one 56x84 image (grid [1,4,6]) on tiny-tied (flat legacy config, tied, "
                           "no lm_head in the file)",
                      rows=[ids], images=[img_e], video=None))
    return cases


# ----------------------------------------------------------------------------- running

def vision_debug(model, prefix, pv, grid, tensors):
    """Vision tower outputs and its index tensors (for bisecting a mismatch)."""
    vis = model.model.visual
    feats = model.model.get_image_features(pv, grid) if prefix == "image" else \
        model.model.get_video_features(pv, grid)
    tensors[f"{prefix}_embeds"] = torch.cat(feats.pooler_output, dim=0).to(torch.float32)
    tensors[f"{prefix}_last_hidden_state"] = feats.last_hidden_state.to(torch.float32)
    wi, cuw = get_vision_window_index(grid, spatial_merge_size=vis.spatial_merge_size,
                                      window_size=vis.window_size, patch_size=vis.patch_size)
    tensors[f"{prefix}_window_index"] = wi.to(torch.int64)
    tensors[f"{prefix}_cu_window_seqlens"] = cuw.to(torch.int64)
    tensors[f"{prefix}_cu_seqlens"] = get_vision_cu_seqlens(grid).to(torch.int64)


@torch.no_grad()
def run_case(model, case):
    input_ids, attention_mask, mm = batch(case["rows"])
    B, L = input_ids.shape
    inputs = dict(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm)
    tensors = dict(input_ids=input_ids, attention_mask=attention_mask, mm_token_type_ids=mm)
    meta = {}
    if case["images"]:
        pv, grid = process_images(case["images"])
        inputs.update(pixel_values=pv, image_grid_thw=grid)
        tensors.update(pixel_values=pv, image_grid_thw=grid)
        meta["images"] = [{"size_hw": [im.height, im.width], "grid_thw": gr}
                          for im, gr in zip(case["images"], grid.tolist())]
        vision_debug(model, "image", pv, grid, tensors)
    if case["video"] is not None:
        pvv, vgrid = process_video(case["video"])
        spg = torch.tensor(case["second_per_grid_ts"], dtype=torch.float32)
        inputs.update(pixel_values_videos=pvv, video_grid_thw=vgrid, second_per_grid_ts=spg)
        tensors.update(pixel_values_videos=pvv, video_grid_thw=vgrid, second_per_grid_ts=spg)
        meta["video"] = {"frames": len(case["video"]), "size_hw": [case["video"][0].height, case["video"][0].width],
                         "grid_thw": vgrid[0].tolist()}
        meta["second_per_grid_ts"] = case["second_per_grid_ts"]
        vision_debug(model, "video", pvv, vgrid, tensors)

    # Multimodal rope positions exactly as the 5.24 forward computes them for the prefill.
    position_ids, rope_deltas = model.model.get_rope_index(
        input_ids, mm_token_type_ids=mm, image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"), second_per_grid_ts=inputs.get("second_per_grid_ts"),
        attention_mask=attention_mask)
    tensors.update(position_ids=position_ids.to(torch.int64), rope_deltas=rope_deltas.to(torch.int64))

    # (a) prefill
    model.model.rope_deltas = None
    logits = model(**inputs).logits.to(torch.float32)
    tensors["logits"] = logits
    # The prefill used exactly these positions (forward with them passed explicitly is identical).
    model.model.rope_deltas = None
    d_explicit_pos = (model(**inputs, position_ids=position_ids).logits - logits).abs().max().item()
    # Gotcha 1: without mm_token_type_ids 5.24 silently falls back to 1-D positions.
    model.model.rope_deltas = None
    no_mm = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    d_no_mm = (model(**no_mm).logits - logits)[attention_mask.bool()].abs().max().item()

    # (b) greedy decoding with the KV cache, through transformers' own generate().
    model.model.rope_deltas = None
    gc = GenerationConfig(do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=0,
                          eos_token_id=None, pad_token_id=PAD_ID, bos_token_id=None, use_cache=True,
                          output_logits=True, return_dict_in_generate=True)
    out = model.generate(**inputs, generation_config=gc)
    gen = out.sequences[:, L:]
    step_logits = torch.stack(out.logits, dim=1).to(torch.float32)
    assert gen.shape == (B, NEW_TOKENS), gen.shape
    assert torch.equal(gen, step_logits.argmax(-1)), "generate's choice differs from argmax of raw logits"
    tensors.update(gen_tokens=gen.to(torch.int64), step_logits=step_logits)

    # Position (same on all three axes) at which gen_tokens[:, s] is fed back: last prefill
    # position + 1 + s = (L + s) + rope_deltas - pads.
    last = position_ids.amax(dim=(0, 2))  # [B]
    decode_pos = last[:, None] + 1 + torch.arange(NEW_TOKENS)[None, :]
    pads = (attention_mask == 0).sum(-1)
    assert torch.equal(decode_pos, L + torch.arange(NEW_TOKENS)[None, :] + (rope_deltas - pads[:, None]))
    tensors["decode_position_ids"] = decode_pos.to(torch.int64)

    # Checks. 1: step 0 of generate = last prefill row.
    d_step0 = (step_logits[:, 0] - logits[:, -1]).abs().max().item()
    # 2: a manual cache loop feeding decode_position_ids (3 rope axes + text row) reproduces generate.
    model.model.rope_deltas = None
    cache = DynamicCache(config=model.config)
    text_pos = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
    pos4 = torch.cat([text_pos[None], position_ids], dim=0)
    o = model(**inputs, position_ids=pos4, cache=cache, use_cache=True)
    manual = [o.logits[:, -1]]
    mask = attention_mask
    for s in range(NEW_TOKENS - 1):
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype)], dim=-1)
        p4 = torch.stack([text_pos[:, -1:] + 1 + s] + [decode_pos[:, s:s + 1]] * 3, dim=0)
        o = model(input_ids=gen[:, s:s + 1], attention_mask=mask, position_ids=p4, cache=cache, use_cache=True)
        manual.append(o.logits[:, -1])
    d_manual = (torch.stack(manual, 1) - step_logits)[:, 1:].abs().max().item()
    # 3: one full no-cache forward over prompt + generated tokens.
    ext = dict(inputs)
    ext["input_ids"] = torch.cat([input_ids, gen[:, :-1]], dim=-1)
    ext["attention_mask"] = torch.cat([attention_mask, torch.ones(B, NEW_TOKENS - 1, dtype=torch.int64)], -1)
    ext["mm_token_type_ids"] = torch.cat([mm, torch.zeros(B, NEW_TOKENS - 1, dtype=torch.int64)], -1)
    model.model.rope_deltas = None
    full = model(**ext).logits[:, L - 1:]
    d_nocache = (full - step_logits).abs().max().item()
    model.model.rope_deltas = None

    valid = attention_mask.bool()
    lv = logits[valid]
    meta.update(
        name=case["name"], model=case["model"], description=case["desc"], batch=B, seq_len=L,
        pads_per_row=pads.tolist(), new_tokens=NEW_TOKENS,
        max_abs_logit=round(lv.abs().max().item(), 4), logits_std=round(lv.std().item(), 4),
        step_logits_std=round(step_logits.std().item(), 4), gen_tokens=gen.tolist(),
        rope_deltas=rope_deltas.flatten().tolist(), decode_position_ids=decode_pos.tolist(),
        checks={"generate_step0_vs_prefill_last": d_step0, "manual_cache_loop_vs_generate_steps_1_to_5": d_manual,
                "cache_vs_nocache_full_forward": d_nocache, "prefill_with_explicit_position_ids": d_explicit_pos},
        gotcha_no_mm_token_type_ids_max_logit_change=d_no_mm,
    )
    return tensors, meta


def header_listing(path):
    with safe_open(path, "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


# ----------------------------------------------------------------------------- processor fixtures

PREPROCESS_IMAGES = os.path.join("tests", "fixtures", "preprocess", "images")
# (file in tests/fixtures/preprocess/images, min_pixels, max_pixels)
PROCESSOR_CASES = [
    ("rgb_37x53.png", PUBLISHED_MIN_PIXELS, PUBLISHED_MAX_PIXELS),   # upscaled to reach min_pixels
    ("la_97x61.png", PUBLISHED_MIN_PIXELS, PUBLISHED_MAX_PIXELS),    # LA -> RGB, rounded
    ("palette_64x48.png", 3136, 50176),                                 # palette + transparency
    ("rgba_301x199.png", 3136, 20000),                                  # RGBA, downscaled
    ("grey_512x512.png", 3136, 12544),                                  # h / beta / 28 is exactly 4.0 (floor)
    ("tall_40x1500.png", 3136, 20000),                                  # downscaled; width clamps to 28
]


def make_processor_fixtures(out):
    folder = os.path.join(out, "processor")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    cases = []
    for i, (name, min_px, max_px) in enumerate(PROCESSOR_CASES):
        proc = Qwen2VLImageProcessor(**proc_kwargs(min_px, max_px))
        img = Image.open(os.path.join(PREPROCESS_IMAGES, name))
        o = proc(images=[img], return_tensors="pt")
        pv = o["pixel_values"].numpy().astype("<f4")
        grid = o["image_grid_thw"].numpy().tolist()[0]
        rh, rw = smart_resize(img.height, img.width, factor=28, min_pixels=min_px, max_pixels=max_px)
        assert [rh, rw] == [grid[1] * 14, grid[2] * 14], (rh, rw, grid)
        assert pv.shape == (grid[1] * grid[2], 1176), pv.shape
        blob = f"case{i:02d}.f32.gz"
        with gzip.GzipFile(os.path.join(folder, blob), "wb", compresslevel=9, mtime=0) as f:
            f.write(pv.tobytes())
        cases.append({"image": name, "mode": img.mode, "size_hw": [img.height, img.width],
                      "min_pixels": min_px, "max_pixels": max_px, "resized_hw": [rh, rw],
                      "grid_thw": grid, "tokens": grid[1] * grid[2] // 4, "rows": pv.shape[0], "cols": pv.shape[1],
                      "pixel_values": blob})
        print(f"processor {name} [{min_px}, {max_px}] {img.height}x{img.width} -> {rh}x{rw} grid {grid}",
              file=sys.stderr)
    import PIL
    import torchvision
    meta = {
        "made_by": "tools/make_qwen25vl_fixtures.py",
        "images_dir": PREPROCESS_IMAGES,
        "processor": "transformers Qwen2VLImageProcessor (torchvision backend), configured as Qwen2.5-VL",
        "processor_config": {k: v for k, v in proc_kwargs(0, 0).items() if k != "size"} | {"resample": 3},
        "pixel_values_format": "gzip of little-endian f32, rows x 1176 (1176 = 3 * 2 * 14 * 14, order c, t, py, px)",
        "cases": cases,
        "transformers": transformers.__version__, "torch": torch.__version__,
        "torchvision": torchvision.__version__, "pillow": PIL.__version__,
    }
    write_json(os.path.join(folder, "cases.json"), meta, sort_keys=False)


# ----------------------------------------------------------------------------- tokenizer + chat

def derive_qwen25_tokenizer(qwen3_dir, dst_dir):
    """Qwen2.5's tokenizer from the Qwen3 one: the same BPE (vocab 151643 entries, 151387 merges,
    NFC, the same split regex, byte-level) whose added tokens stop at id 151664. Qwen3 adds 151665
    <tool_response>, 151666 </tool_response>, 151667 <think>, 151668 </think>.

    tokenizer.json: parse, drop `added_tokens` entries with id >= 151665, write back with
    json.dumps(ensure_ascii=False, indent=2), no trailing newline (that serialisation reproduces the
    Qwen3 file byte for byte, so only the 4 entries differ).
    tokenizer_config.json: the same ids dropped from `added_tokens_decoder`; `chat_template` replaced by
    the Qwen2.5-VL one. Returns facts about the derivation."""
    src = os.path.join(qwen3_dir, "tokenizer.json")
    with open(src, "rb") as f:
        raw = f.read()
    tj = json.loads(raw)
    assert json.dumps(tj, ensure_ascii=False, indent=2).encode() == raw, "re-serialisation is not byte-exact"
    dropped = [a for a in tj["added_tokens"] if a["id"] > QWEN25_LAST_ADDED_ID]
    assert [(a["id"], a["content"]) for a in dropped] == [
        (151665, "<tool_response>"), (151666, "</tool_response>"), (151667, "<think>"), (151668, "</think>")], dropped
    tj["added_tokens"] = [a for a in tj["added_tokens"] if a["id"] <= QWEN25_LAST_ADDED_ID]
    kept = tj["added_tokens"]
    assert [a["id"] for a in kept] == list(range(151643, 151665))
    model = tj["model"]
    assert model["type"] == "BPE" and len(model["vocab"]) == 151643 and max(model["vocab"].values()) == 151642
    assert len(model["merges"]) == 151387
    assert tj["normalizer"] == {"type": "NFC"} and tj["truncation"] is None and tj["padding"] is None
    # Same split regex as transformers' own Qwen2Tokenizer (which Qwen2.5 / Qwen2.5-VL name as their class).
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX
    split, bytelevel = tj["pre_tokenizer"]["pretokenizers"]
    assert split["pattern"]["Regex"] == PRETOKENIZE_REGEX and bytelevel["type"] == "ByteLevel"
    assert tj["decoder"]["type"] == "ByteLevel"
    # The only thing Qwen3 changed: no vocab entry or merge refers to the dropped tokens.
    assert not any(a["content"] in model["vocab"] for a in dropped)
    os.makedirs(dst_dir, exist_ok=True)
    out = json.dumps(tj, ensure_ascii=False, indent=2).encode()
    with open(os.path.join(dst_dir, "tokenizer.json"), "wb") as f:
        f.write(out)
    with open(os.path.join(qwen3_dir, "tokenizer_config.json"), encoding="utf-8") as f:
        tc = json.load(f)
    tc["added_tokens_decoder"] = {k: v for k, v in tc["added_tokens_decoder"].items()
                                  if int(k) <= QWEN25_LAST_ADDED_ID}
    tc["chat_template"] = CHAT_TEMPLATE
    with open(os.path.join(dst_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(tc, f, ensure_ascii=False, indent=2)
    special_flags = {a["content"]: a["special"] for a in kept}
    return {
        "source_tokenizer_json_sha256": hashlib.sha256(raw).hexdigest(),
        "source_tokenizer_json_bytes": len(raw),
        "derived_tokenizer_json_sha256": hashlib.sha256(out).hexdigest(),
        "derived_tokenizer_json_bytes": len(out),
        "dropped_added_tokens": [{"id": a["id"], "content": a["content"]} for a in dropped],
        "kept_added_tokens": len(kept),
        "special_true": [c for c, s in special_flags.items() if s],
        "special_false": [c for c, s in special_flags.items() if not s],
        "tokenizer_config_kept": {k: v for k, v in tc.items() if k not in ("added_tokens_decoder", "chat_template")},
    }


def drawn_image(w, h, seed):
    img = Image.new("RGB", (w, h), (20 + seed * 30 % 200, 40, 60))
    d = ImageDraw.Draw(img)
    d.ellipse([w // 5, h // 5, w * 3 // 5, h * 4 // 5], fill=(230, 230, 230))
    d.rectangle([w // 2, h // 3, w * 9 // 10, h * 9 // 10], outline=(0, 0, 0), width=max(1, w // 64))
    return img


def drawn_video(frames, w, h):
    arr = np.zeros((frames, h, w, 3), dtype=np.uint8)
    for i in range(frames):
        arr[i, :, :, 0] = (i * 37) % 256
        x = (i * w) // max(frames, 1)
        arr[i, h // 4: h // 2, x: x + max(1, w // 8), 1] = 255
    return arr


IMG = {"type": "image"}
VID = {"type": "video"}


def T(s):
    return {"type": "text", "text": s}


THINK_ANSWER = "<think>\nThe right lower lobe shows a rounded opacity.\n</think>\n\\boxed{nodule}"

# Same message JSON shape as tests/fixtures/chat/cases.json. images: [(w, h)]; videos:
# [dict(frames, width, height, fps)] given as already sampled (do_sample_frames=False), so
# second_per_grid_ts = temporal_patch_size / fps.
CHAT_CASES = [
    dict(name="no_system_default_prompt", add_generation_prompt=True,
         messages=[{"role": "user", "content": "What does a blunted costophrenic angle suggest?"}]),
    dict(name="explicit_system", add_generation_prompt=True,
         messages=[{"role": "system", "content": "You are a medical imaging assistant."},
                   {"role": "user", "content": "Is there a pneumothorax?"}]),
    dict(name="text_only_no_generation_prompt", add_generation_prompt=False,
         messages=[{"role": "user", "content": [T("Line one\n"), T("line two")]},
                   {"role": "assistant", "content": "Two lines."}]),
    dict(name="one_image", add_generation_prompt=True, images=[(224, 168)],
         messages=[{"role": "user", "content": [IMG, T("Describe this X-ray.")]}]),
    dict(name="two_images_vision_id", add_generation_prompt=True, add_vision_id=True, images=[(112, 112), (300, 200)],
         messages=[{"role": "system", "content": "Compare images."},
                   {"role": "user", "content": [T("Compare "), IMG, T(" with "), IMG, T(".")]}]),
    dict(name="video", add_generation_prompt=True, videos=[dict(frames=8, width=84, height=56, fps=4.0)],
         messages=[{"role": "user", "content": [VID, T("Describe the motion of the bright bar.")]}]),
    dict(name="image_and_video_vision_id", add_generation_prompt=True, add_vision_id=True, images=[(56, 56)],
         videos=[dict(frames=4, width=56, height=56, fps=2.0)],
         messages=[{"role": "user", "content": [IMG, VID, T("Which frame matches the picture?")]}]),
    dict(name="multi_turn_with_assistant_replies", add_generation_prompt=False, images=[(140, 84)],
         messages=[{"role": "system", "content": "Answer in \\boxed{}."},
                   {"role": "user", "content": [IMG, T("Findings?")]},
                   {"role": "assistant", "content": THINK_ANSWER},
                   {"role": "user", "content": "Which finding is more urgent?"},
                   {"role": "assistant", "content": [T("The nodule. "), T("\\boxed{nodule}")]}]),
    dict(name="think_text_is_not_special", add_generation_prompt=True,
         messages=[{"role": "user", "content": "Reply as <think>reasoning</think> then <tool_response>x</tool_response>."}]),
]

TOKENIZE = [
    "<think>\nStep 1: look.\n</think>\n\nAnswer: \\boxed{A}",
    "<tool_response>\n{}\n</tool_response>",
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n",
    "a<tool_call>b</tool_call><|fim_prefix|><|file_sep|>c",
    "肺炎和胸腔积液。 Café e\u0301 🫁",
]


def make_chat_fixtures(out, tokenizer_dir):
    folder = os.path.join(out, "chat")
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(folder)
    assert hashlib.sha256(CHAT_TEMPLATE.encode()).hexdigest() == CHAT_TEMPLATE_SHA256
    with open(os.path.join(folder, "chat_template.jinja"), "w", encoding="utf-8") as f:
        f.write(CHAT_TEMPLATE)
    with tempfile.TemporaryDirectory() as tmp:
        facts = derive_qwen25_tokenizer(tokenizer_dir, tmp)
        tok = PreTrainedTokenizerFast.from_pretrained(tmp)
        from tokenizers import Tokenizer
        raw_tok = Tokenizer.from_file(os.path.join(tmp, "tokenizer.json"))
    tok3 = PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)
    assert len(tok) == 151665 and len(tok3) == 151669, (len(tok), len(tok3))
    assert tok.convert_tokens_to_ids("<|file_sep|>") == 151664
    assert len(tok("<think>")["input_ids"]) > 1 and tok3("<think>")["input_ids"] == [151667]
    facts["vocab_size_with_added"] = len(tok)

    ip = Qwen2VLImageProcessor(**proc_kwargs(PUBLISHED_MIN_PIXELS, PUBLISHED_MAX_PIXELS))
    vp = Qwen2VLVideoProcessor(**proc_kwargs(PUBLISHED_MIN_PIXELS, PUBLISHED_MAX_PIXELS))
    proc = Qwen2_5_VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=CHAT_TEMPLATE)

    cases = []
    for case in CHAT_CASES:
        kwargs = {"add_vision_id": True} if case.get("add_vision_id") else {}
        rendered = proc.apply_chat_template(case["messages"], tokenize=False,
                                            add_generation_prompt=case["add_generation_prompt"], **kwargs)
        # The tokenizer alone (no media expansion) on the rendered text.
        rendered_ids = tok(rendered, add_special_tokens=True)["input_ids"]
        assert rendered_ids == raw_tok.encode(rendered, add_special_tokens=True).ids
        # What the processor makes of it with media of the given sizes (placeholders expanded).
        images = [drawn_image(w, h, i) for i, (w, h) in enumerate(case.get("images", []))]
        videos, metas = [], []
        for v in case.get("videos", []):
            videos.append(drawn_video(v["frames"], v["width"], v["height"]))
            md = VideoMetadata(total_num_frames=v["frames"], fps=v["fps"], width=v["width"], height=v["height"],
                               duration=v["frames"] / v["fps"])
            md.frames_indices = np.arange(v["frames"])
            metas.append(md)
        call = dict(text=[rendered], return_tensors=None, return_text_replacement_offsets=True)
        if images:
            call["images"] = images
        if videos:
            call.update(videos=videos, video_metadata=metas, do_sample_frames=False, cap_pixels_per_frame=False)
        o = proc(**call)
        ids = [int(i) for i in o["input_ids"][0]]
        expanded, last = [], 0
        for r in o["text_replacement_offsets"][0]:
            start, end = r["span"]
            expanded += [rendered[last:start], r["replacement"]]
            last = end
        expanded = "".join(expanded + [rendered[last:]])
        assert ids == tok(expanded)["input_ids"]
        media = {"images": [], "videos": []}
        if images:
            for (w, h), gr in zip(case["images"], o["image_grid_thw"].tolist()):
                media["images"].append({"width": w, "height": h, "grid_thw": gr, "tokens": int(np.prod(gr)) // 4})
        if videos:
            spg = [float(x) for x in o["second_per_grid_ts"]]
            for v, gr, s in zip(case["videos"], o["video_grid_thw"].tolist(), spg):
                media["videos"].append({"frames": v["frames"], "width": v["width"], "height": v["height"],
                                        "fps": v["fps"], "grid_thw": gr, "tokens": int(np.prod(gr)) // 4,
                                        "second_per_grid_ts": s})
        cases.append({
            "name": case["name"],
            "add_generation_prompt": case["add_generation_prompt"],
            "add_vision_id": bool(case.get("add_vision_id")),
            "messages_json": json.dumps(case["messages"], ensure_ascii=False),
            "messages": case["messages"],
            "rendered": rendered,
            "rendered_ids": rendered_ids,
            "rendered_ids_qwen3_tokenizer": tok3(rendered)["input_ids"],
            "media": media,
            "expanded_text": expanded,
            "input_ids": ids,
            "mm_token_type_ids": [int(i) for i in o["mm_token_type_ids"][0]],
            "decoded": tok.decode(ids, skip_special_tokens=False),
        })
        print(f"chat {case['name']}: {len(rendered)} chars -> {len(rendered_ids)} ids, expanded {len(ids)}",
              file=sys.stderr)

    tokenize = []
    for s in TOKENIZE:
        ids = tok(s)["input_ids"]
        tokenize.append({"text": s, "ids": ids, "ids_qwen3_tokenizer": tok3(s)["input_ids"],
                         "pieces": tok.convert_ids_to_tokens(ids),
                         "decoded": tok.decode(ids, skip_special_tokens=False),
                         "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    special = {t: tok.convert_tokens_to_ids(t) for t in
               ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|file_sep|>"]}
    meta = {
        "made_by": "tools/make_qwen25vl_fixtures.py",
        "transformers": transformers.__version__,
        "template_file": "chat_template.jinja",
        "template_sha256": CHAT_TEMPLATE_SHA256,
        "tokenizer": facts,
        "processor": {"class": "Qwen2_5_VLProcessor", "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
                      "min_pixels": PUBLISHED_MIN_PIXELS, "max_pixels": PUBLISHED_MAX_PIXELS,
                      "video": "frames given as already sampled (do_sample_frames=False); "
                               "second_per_grid_ts = temporal_patch_size / fps"},
        "special_ids": special,
        "cases": cases,
        "tokenize": tokenize,
    }
    body = json.dumps(meta, indent=1, ensure_ascii=False)
    body = re.sub(r"\[\n[-0-9.e,\s]+\n\s*\]", lambda m: "[" + " ".join(m.group(0)[1:-1].split()) + "]", body)
    with open(os.path.join(folder, "cases.json"), "w", encoding="utf-8") as f:
        f.write(body + "\n")
    return facts


# ----------------------------------------------------------------------------- diagnose

# A tiny random Qwen2.5-VL whose (tied) embedding covers the real Qwen2.5 vocabulary: the
# published Qwen2.5-VL-7B vocab_size 152064 (the tokenizer's 151665 ids, padded), hidden 8 so
# the weight file stays under 5 MB. Real special ids; the published preprocessor config.
DIAG_VOCAB = 152064
DIAG_IDS = dict(image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653)
DIAG_VISION_PAD_ID = 151654
DIAG_STOP = [151645, 151643]  # <|im_end|>, <|endoftext|> (generation_config.json of the 7B)
DIAG_PAD = 151643
DIAG_NEW_TOKENS = 5
DIAG_PROMPT = "What is the diagnosis? Answer with boxes as JSON, then \\boxed{}."
DIAG_IMAGE = "xray.png"  # written by this script: 180 x 124 (W x H) -> resized 168 x 112, grid [1, 8, 12]
DIAG_TOPK = 8
# The published Qwen/Qwen2.5-VL-7B-Instruct preprocessor_config.json (keys and values).
DIAG_PREPROCESSOR = {
    "min_pixels": PUBLISHED_MIN_PIXELS,
    "max_pixels": PUBLISHED_MAX_PIXELS,
    "patch_size": 14,
    "temporal_patch_size": 2,
    "merge_size": 2,
    "image_mean": CLIP_MEAN,
    "image_std": CLIP_STD,
    "image_processor_type": "Qwen2VLImageProcessor",
    "processor_class": "Qwen2_5_VLProcessor",
}


def make_diagnose_config():
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=DIAG_VOCAB, hidden_size=8, intermediate_size=16, num_hidden_layers=2,
            num_attention_heads=1, num_key_value_heads=1, hidden_act="silu", rms_norm_eps=1e-6,
            max_position_embeddings=128000, use_sliding_window=False, sliding_window=32768, max_window_layers=28,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 1, 1]},
            bos_token_id=151643, eos_token_id=151645,
        ),
        vision_config=dict(
            depth=4, hidden_size=16, intermediate_size=24, num_heads=2, hidden_act="silu",
            patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
            window_size=112, fullatt_block_indexes=[1, 3], out_hidden_size=8, tokens_per_second=2,
        ),
        tie_word_embeddings=True, **DIAG_IDS,
    )


def make_diagnose_fixture(out, tokenizer_dir):
    """diagnose/: nested/ (5.24 save_pretrained, nested config.json; tokenizer_config.json,
    chat_template.json, preprocessor_config.json as the published checkpoint has them; no
    tokenizer.json: tools/setup.sh derives it into .qwen2.5-tokenizer), flat-config.json (the
    same model in the published flat config form), xray.png and reference.{safetensors,json}:
    transformers' Qwen2_5_VLProcessor + chat template + forward + greedy generate for one user
    turn [image, DIAG_PROMPT] with the generation prompt, exactly what `diagnose` builds."""
    folder = os.path.join(out, "diagnose")
    shutil.rmtree(folder, ignore_errors=True)
    nested = os.path.join(folder, "nested")
    os.makedirs(nested)
    torch.manual_seed(0)
    built = Qwen2_5_VLForConditionalGeneration(make_diagnose_config()).eval()
    randomise(built, 3)
    built.save_pretrained(nested)
    os.remove(os.path.join(nested, "generation_config.json"))
    write_json(os.path.join(nested, "preprocessor_config.json"), DIAG_PREPROCESSOR, sort_keys=False)
    with open(os.path.join(nested, "chat_template.json"), "w", encoding="utf-8") as f:
        f.write(json.dumps({"chat_template": CHAT_TEMPLATE}, indent=2) + "\n")
    with open(os.path.join(nested, "config.json")) as f:
        nested_cfg = json.load(f)
    write_json(os.path.join(folder, "flat-config.json"), to_flat_legacy_config(nested_cfg, DIAG_VISION_PAD_ID),
               sort_keys=False)
    names = header_listing(os.path.join(nested, "model.safetensors"))
    assert "lm_head.weight" not in names and all(k.startswith(("visual.", "model.layers.", "model.embed_tokens.",
                                                               "model.norm.")) for k in names), sorted(names)
    weight_bytes = os.path.getsize(os.path.join(nested, "model.safetensors"))
    assert weight_bytes <= 6_000_000, weight_bytes
    drawn(124, 180, 40).save(os.path.join(folder, DIAG_IMAGE))

    with tempfile.TemporaryDirectory() as tmp:
        # The checkpoint as a user has it: the weights, configs and the Qwen2.5 tokenizer.json.
        derived = os.path.join(tmp, "tokenizer")
        facts = derive_qwen25_tokenizer(tokenizer_dir, derived)
        with open(os.path.join(derived, "tokenizer_config.json"), encoding="utf-8") as f:
            tc = f.read()
        with open(os.path.join(nested, "tokenizer_config.json"), "w", encoding="utf-8") as f:
            f.write(tc)
        runs = {}
        for form in ["nested", "flat"]:
            d = os.path.join(tmp, form)
            shutil.copytree(nested, d)
            shutil.copy(os.path.join(derived, "tokenizer.json"), d)
            if form == "flat":
                shutil.copy(os.path.join(folder, "flat-config.json"), os.path.join(d, "config.json"))
            runs[form] = diagnose_reference(d, os.path.join(folder, DIAG_IMAGE))
        a, b = runs["nested"], runs["flat"]
        assert a[0].keys() == b[0].keys()
        for k in a[0]:
            assert torch.equal(a[0][k], b[0][k]), f"flat vs nested config: {k} differs"
        tensors, meta = a
    meta.update(
        weight_bytes=weight_bytes, tokenizer_json_sha256=facts["derived_tokenizer_json_sha256"],
        checks=meta["checks"] | {"flat_config_equals_nested": True},
        transformers=transformers.__version__, torch=torch.__version__, made_by="tools/make_qwen25vl_fixtures.py",
    )
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    save_file(tensors, os.path.join(folder, "reference.safetensors"))
    meta["tensors"] = {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in sorted(tensors.items())}
    write_json(os.path.join(folder, "reference.json"), meta, sort_keys=False)
    print(f"diagnose: L={meta['seq_len']} grid={meta['image_grid_thw']} gen={meta['gen_tokens']} "
          f"positions={meta['logit_positions']} weights={weight_bytes} bytes checks={meta['checks']}", file=sys.stderr)


@torch.no_grad()
def diagnose_reference(model_dir, image_path):
    """transformers' pipeline on a checkpoint folder: AutoProcessor (Qwen2_5_VLProcessor), its chat
    template on [image, prompt] with the generation prompt, the prefill forward, greedy generate."""
    proc = AutoProcessor.from_pretrained(model_dir)
    assert type(proc).__name__ == "Qwen2_5_VLProcessor", type(proc)
    assert proc.chat_template == CHAT_TEMPLATE
    ip = proc.image_processor
    assert (ip.patch_size, ip.merge_size, dict(ip.size)) == (
        14, 2, {"shortest_edge": PUBLISHED_MIN_PIXELS, "longest_edge": PUBLISHED_MAX_PIXELS}), (ip.patch_size, ip.size)
    image = Image.open(image_path)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": DIAG_PROMPT}]}]
    rendered = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = proc(text=[rendered], images=[image], return_tensors="pt")
    # The one-call form (the image inside the message) gives the same inputs.
    one_call = proc.apply_chat_template(
        [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": DIAG_PROMPT}]}],
        tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt")
    for k in ["input_ids", "pixel_values", "image_grid_thw"]:
        assert torch.equal(inputs[k], one_call[k]), k
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_dir, attn_implementation="eager",
                                                               dtype=torch.float32).eval()
    assert model.config.text_config.vocab_size == DIAG_VOCAB and model.config.tie_word_embeddings
    ids = inputs["input_ids"]
    L = ids.shape[1]
    model.model.rope_deltas = None
    logits = model(**inputs).logits[0].to(torch.float32)  # [L, V]
    model.model.rope_deltas = None
    gc = GenerationConfig(do_sample=False, max_new_tokens=DIAG_NEW_TOKENS, eos_token_id=DIAG_STOP,
                          pad_token_id=DIAG_PAD, bos_token_id=151643, use_cache=True,
                          output_logits=True, return_dict_in_generate=True)
    out = model.generate(**inputs, generation_config=gc)
    gen = out.sequences[0, L:]
    step_logits = torch.stack(out.logits, dim=1)[0].to(torch.float32)
    assert torch.equal(gen, step_logits.argmax(-1)[:len(gen)])
    # diagnose never samples the media tokens; a plain greedy trace that picked one would differ.
    banned = [DIAG_IDS[k] for k in ["image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"]]
    assert not any(t in banned for t in gen.tolist()), gen
    id_list = ids[0].tolist()
    pads = [i for i, t in enumerate(id_list) if t == DIAG_IDS["image_token_id"]]
    vend = id_list.index(DIAG_IDS["vision_end_token_id"])
    # Full logit rows at: the first token, the first image pad, the first text token after the
    # image, the last position; the top-DIAG_TOPK ids and values at every position.
    positions = [0, pads[0], vend + 1, L - 1]
    top = logits.topk(DIAG_TOPK, dim=-1)
    tensors = {
        "input_ids": ids[0].to(torch.int64),
        "mm_token_type_ids": inputs["mm_token_type_ids"][0].to(torch.int64),
        "pixel_values": inputs["pixel_values"].to(torch.float32),
        "image_grid_thw": inputs["image_grid_thw"].to(torch.int64),
        "logit_positions": torch.tensor(positions, dtype=torch.int64),
        "logits_at": logits[positions],
        "top_ids": top.indices.to(torch.int64),
        "top_logits": top.values,
        "gen_tokens": gen.to(torch.int64),
    }
    d_step0 = (step_logits[0] - logits[-1]).abs().max().item()
    meta = {
        "description": "transformers 5.24 Qwen2_5_VLProcessor (AutoProcessor on the checkpoint folder) + the "
                       "Qwen2-VL chat template (default system prompt) on one user turn [image, prompt] with "
                       "add_generation_prompt; prefill forward; model.generate greedy (do_sample=False)",
        "image": DIAG_IMAGE, "image_size_hw": [image.height, image.width], "prompt": DIAG_PROMPT,
        "rendered": rendered, "seq_len": L, "image_grid_thw": inputs["image_grid_thw"][0].tolist(),
        "image_tokens": len(pads), "new_tokens": DIAG_NEW_TOKENS, "stop_tokens": DIAG_STOP,
        "gen_tokens": gen.tolist(), "gen_text": proc.tokenizer.decode(gen.tolist(), skip_special_tokens=False),
        "logit_positions": positions, "top_k": DIAG_TOPK,
        "max_abs_logit": round(logits.abs().max().item(), 4), "logits_std": round(logits.std().item(), 4),
        "top2_gap_min_at_last_and_generated": round(min(
            (r[0] - r[1]).item() for r in [logits[-1].topk(2).values] + [s.topk(2).values for s in step_logits]), 6),
        "checks": {"generate_step0_vs_prefill_last": d_step0},
    }
    assert d_step0 < 1e-4, d_step0
    return tensors, meta


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "qwen2_5_vl"))
    ap.add_argument("--tokenizer-dir", default=".qwen-tokenizer")
    ap.add_argument("--only", choices=["diagnose"], help="write only this part (diagnose/)")
    args = ap.parse_args()
    out = args.out
    assert transformers.__version__ == "5.24.0", transformers.__version__
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(out, exist_ok=True)
    if args.only == "diagnose":
        make_diagnose_fixture(out, args.tokenizer_dir)
        return

    built = save_models(out)
    models = {n: load(out, n) for n in ["tiny-untied", "tiny-tied"]}

    # On-disk names: legacy (visual.*, model.layers.*, ...); the tied file has no lm_head.
    a = header_listing(os.path.join(out, "tiny-untied", "model.safetensors"))
    t = header_listing(os.path.join(out, "tiny-tied", "model.safetensors"))
    assert "lm_head.weight" in a and "lm_head.weight" not in t and set(a) - set(t) == {"lm_head.weight"}
    assert all(k == "lm_head.weight" or k.startswith(("visual.", "model.layers.", "model.embed_tokens.", "model.norm."))
               for k in a), sorted(a)
    tm = models["tiny-tied"]
    assert tm.lm_head.weight is tm.model.language_model.embed_tokens.weight
    # Loading is lossless and the flat legacy config parses to the same model config.
    for name in models:
        sd0, sd1 = built[name].state_dict(), models[name].state_dict()
        assert sd0.keys() == sd1.keys() and all(torch.equal(sd0[k], sd1[k]) for k in sd0), name
    s_built, s_loaded = config_summary(built["tiny-tied"].config), config_summary(tm.config)
    assert s_built == s_loaded, (s_built, s_loaded)
    assert config_summary(built["tiny-untied"].config) == config_summary(models["tiny-untied"].config)
    # The preprocessor_config.json parses to the processor the cases use.
    ip = Qwen2VLImageProcessor.from_pretrained(os.path.join(out, "tiny-untied"))
    assert dict(ip.size) == dict(IMAGE_PROC.size) and ip.patch_size == 14 and list(ip.image_mean) == CLIP_MEAN

    cases_dir = os.path.join(out, "cases")
    shutil.rmtree(cases_dir, ignore_errors=True)
    os.makedirs(cases_dir)
    for case in make_cases():
        tensors, meta = run_case(models[case["model"]], case)
        if case["model"] == "tiny-tied":
            # The same inputs on the in-memory model (before the flat-config round trip) give the same logits.
            bm = built["tiny-tied"].eval()
            bm.config._attn_implementation = "eager"
            with torch.no_grad():
                inp = {k: tensors[k] for k in ["input_ids", "attention_mask", "mm_token_type_ids", "pixel_values",
                                               "image_grid_thw"]}
                bm.model.rope_deltas = None
                d = (bm(**inp).logits - tensors["logits"]).abs().max().item()
            meta["checks"]["flat_config_reload_vs_in_memory_model"] = d
            assert d == 0.0, d
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        save_file(tensors, os.path.join(cases_dir, case["name"] + ".safetensors"))
        meta["tensors"] = {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in sorted(tensors.items())}
        meta.update(transformers=transformers.__version__, torch=torch.__version__,
                    made_by="tools/make_qwen25vl_fixtures.py")
        write_json(os.path.join(cases_dir, case["name"] + ".json"), meta)
        c = meta["checks"]
        print(f"{case['name']:28s} B={meta['batch']} L={meta['seq_len']:3d} std={meta['logits_std']:.3f} "
              f"max|logit|={meta['max_abs_logit']:.3f} step0={c['generate_step0_vs_prefill_last']:.2e} "
              f"manual={c['manual_cache_loop_vs_generate_steps_1_to_5']:.2e} "
              f"nocache={c['cache_vs_nocache_full_forward']:.2e} "
              f"no_mm={meta['gotcha_no_mm_token_type_ids_max_logit_change']:.2e} gen={meta['gen_tokens']} "
              f"deltas={meta['rope_deltas']}", file=sys.stderr)
        assert max(c.values()) < 1e-4, c

    make_processor_fixtures(out)
    facts = make_chat_fixtures(out, args.tokenizer_dir)
    make_diagnose_fixture(out, args.tokenizer_dir)
    print(f"derived Qwen2.5 tokenizer.json sha256 {facts['derived_tokenizer_json_sha256']} "
          f"({facts['derived_tokenizer_json_bytes']} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
