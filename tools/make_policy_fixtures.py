#!/usr/bin/env python3
"""Writes tests/fixtures/policy: tiny random Qwen3-VL checkpoints and transformers' outputs on
them (prefill logits, rope positions, greedy KV-cache decoding), so the Rust port of
`Qwen3VLForConditionalGeneration` can be checked for exact fp32 parity without Python.

Needs the reference environment (see tools/reference-env.sh):
    torch==2.11.0 torchvision==0.26.0 transformers (5.x) pillow numpy safetensors

Run from the repository root:
    python tools/make_policy_fixtures.py [--out tests/fixtures/policy]

Deterministic: fixed seeds, one CPU thread; a rerun rewrites identical bytes.
"""
import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image, ImageDraw
from safetensors import safe_open
from safetensors.torch import save_file

import transformers
from transformers import GenerationConfig, Qwen3VLConfig, Qwen3VLForConditionalGeneration
from transformers.cache_utils import DynamicCache
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

IMAGE_ID, VIDEO_ID, VSTART_ID, VEND_ID, EOS_ID, PAD_ID = 1000, 1001, 1002, 1003, 1004, 1005
NEW_TOKENS = 6
MRoPE_SECTION = [3, 3, 2]


# ----------------------------------------------------------------------------- models

def make_config(tied):
    return Qwen3VLConfig(
        text_config=dict(
            vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, hidden_act="silu",
            rms_norm_eps=1e-6, attention_bias=False, max_position_embeddings=4096,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                             "mrope_section": MRoPE_SECTION, "mrope_interleaved": True},
            # Qwen3-VL keeps its special ids in text_config (generation reads them there).
            eos_token_id=EOS_ID, pad_token_id=PAD_ID,
        ),
        vision_config=dict(
            depth=3, hidden_size=32, intermediate_size=64, num_heads=2, hidden_act="gelu_pytorch_tanh",
            patch_size=16, temporal_patch_size=2, spatial_merge_size=2, in_channels=3,
            out_hidden_size=64, num_position_embeddings=64, deepstack_visual_indexes=[0, 1, 2],
        ),
        image_token_id=IMAGE_ID, video_token_id=VIDEO_ID,
        vision_start_token_id=VSTART_ID, vision_end_token_id=VEND_ID,
        tie_word_embeddings=tied,
    )


@torch.no_grad()
def randomise(model, seed, embed_std=0.4):
    """Every parameter gets a random value; scales keep activations O(1), logits std ~3.
    (The policy benchmark passes a smaller `embed_std` for its 151,936-id vocabulary.)"""
    g = torch.Generator().manual_seed(seed)
    tied = model.lm_head.weight is model.model.language_model.embed_tokens.weight
    # named_parameters() lists a tied lm_head once (as embed_tokens).
    for name, p in sorted(model.named_parameters()):
        r = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if name.endswith(".bias"):
            v = 0.1 * r
        elif p.ndim == 1:  # LayerNorm / RMSNorm weights (all 1-D non-bias parameters are norms)
            assert "norm" in name, name
            v = 1.0 + 0.2 * r
        elif name.endswith("embed_tokens.weight") or name == "lm_head.weight":
            v = embed_std * r
        elif name.endswith("pos_embed.weight"):
            v = 0.5 * r
        elif name.endswith("patch_embed.proj.weight"):
            v = r / math.sqrt(p[0].numel())
        else:
            assert p.ndim == 2, name
            v = r / math.sqrt(p.shape[1])
        p.copy_(v)
    assert tied == (model.lm_head.weight is model.model.language_model.embed_tokens.weight)


def to_457_config(cfg):
    """Rewrites a 5.x config.json dict into what transformers 4.57.1 writes for the same model."""
    cfg = json.loads(json.dumps(cfg))
    tc = cfg["text_config"]
    rp = tc.pop("rope_parameters")
    tc["rope_theta"] = rp.pop("rope_theta")
    tc["rope_scaling"] = rp  # {mrope_interleaved, mrope_section, rope_type}
    tc["tie_word_embeddings"] = cfg["tie_word_embeddings"]  # 4.57 ties on text_config's flag
    vc = cfg["vision_config"]
    vc.pop("rope_parameters")  # 4.57 has no vision rope entry (theta 10000 hard-coded)
    vc["model_type"] = "qwen3_vl"  # 4.57's Qwen3VLVisionConfig.model_type
    cfg["transformers_version"] = "4.57.1"
    return cfg


def write_json(path, obj):
    with open(path, "w") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_models(out):
    for name, tied, seed in [("tiny-untied", False, 1), ("tiny-tied", True, 2)]:
        folder = os.path.join(out, name)
        shutil.rmtree(folder, ignore_errors=True)
        torch.manual_seed(0)
        model = Qwen3VLForConditionalGeneration(make_config(tied)).eval()
        randomise(model, seed)
        model.save_pretrained(folder)
        os.remove(os.path.join(folder, "generation_config.json"))  # derived from config.json
        if tied:
            path = os.path.join(folder, "config.json")
            with open(path) as f:
                cfg = json.load(f)
            write_json(path, to_457_config(cfg))
        else:
            folder = os.path.join(out, "tiny-untied-sharded")
            shutil.rmtree(folder, ignore_errors=True)
            model.save_pretrained(folder, max_shard_size="1MB")
            os.remove(os.path.join(folder, "generation_config.json"))


def load(out, name):
    return Qwen3VLForConditionalGeneration.from_pretrained(
        os.path.join(out, name), attn_implementation="eager", dtype=torch.float32).eval()


# ----------------------------------------------------------------------------- inputs

rng = np.random.default_rng(20261128)


def drawn(h, w, seed, shapes=3):
    """Smooth gradients + a few shapes, uint8 RGB, h x w (also used by the policy benchmark)."""
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


IMAGE_PROC = Qwen2VLImageProcessor(
    patch_size=16, temporal_patch_size=2, merge_size=2,
    image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
    size={"shortest_edge": 32 * 32, "longest_edge": 256 * 256},
)
VIDEO_PROC = Qwen3VLVideoProcessor(size={"shortest_edge": 4 * 32 * 32, "longest_edge": 4 * 256 * 256})


def process_images(images):
    out = IMAGE_PROC(images=images, return_tensors="pt")
    return out["pixel_values"].to(torch.float32), out["image_grid_thw"].to(torch.int64)


def process_video(frames):
    out = VIDEO_PROC(videos=[frames], do_sample_frames=False, cap_pixels_per_frame=False, return_tensors="pt")
    return out["pixel_values_videos"].to(torch.float32), out["video_grid_thw"].to(torch.int64)


def text(n):
    return rng.integers(0, 1000, n).tolist()


def image_block(grid):
    return [VSTART_ID] + [IMAGE_ID] * (int(np.prod(grid)) // 4) + [VEND_ID]


def video_blocks(grid):
    """As Qwen3VLProcessor: per temporal patch `<x.x seconds>` text, vision_start, h*w/4 pads, vision_end.
    The timestamp text is stood in for by 3 random text ids."""
    t, h, w = grid
    ids = []
    for _ in range(t):
        ids += text(3) + [VSTART_ID] + [VIDEO_ID] * (h * w // 4) + [VEND_ID]
    return ids


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
    img_a = drawn(64, 96, 11)  # H x W = 64 x 96 -> grid [1, 4, 6], 6 tokens
    img_b = drawn(96, 64, 12)  # 96 x 64 -> grid [1, 6, 4], 6 tokens
    img_c = drawn(32, 32, 13)  # 32 x 32 -> grid [1, 2, 2], 1 token
    frames = [drawn(64, 64, 20 + i) for i in range(4)]  # 4 frames -> grid [2, 4, 4], 2 x 4 tokens
    cases = []

    ids = text(12)
    cases.append(dict(name="text_only", model="tiny-untied", desc="batch 1, 12 text tokens",
                      rows=[ids], images=[], video=None))

    pv, grid = process_images([img_a])
    one = text(5) + image_block(grid[0].tolist()) + text(6)
    cases.append(dict(name="one_image", model="tiny-untied", desc="batch 1, one 64x96 image",
                      rows=[one], images=[img_a], video=None))

    pv, grid = process_images([img_b, img_c])
    ids = text(4) + image_block(grid[0].tolist()) + text(3) + image_block(grid[1].tolist()) + text(5)
    cases.append(dict(name="two_images", model="tiny-untied",
                      desc="batch 1, a 96x64 image then a 32x32 image in one prompt",
                      rows=[ids], images=[img_b, img_c], video=None))

    pvv, vgrid = process_video(frames)
    ids = text(4) + video_blocks(vgrid[0].tolist()) + text(5)
    cases.append(dict(name="video", model="tiny-untied",
                      desc="batch 1, one 4-frame 64x64 video (t = 2 temporal patches, timestamps as text)",
                      rows=[ids], images=[], video=frames))

    _, ga = process_images([img_a])
    _, gb = process_images([img_b])
    r0 = text(4) + image_block(ga[0].tolist()) + text(4)
    r1 = text(9)
    r2 = text(3) + image_block(gb[0].tolist()) + text(8)
    cases.append(dict(name="batch_left_padded", model="tiny-untied",
                      desc="batch 3, left padded with 1005: row 0 a 64x96 image, row 1 text only, "
                           "row 2 a 96x64 image",
                      rows=[r0, r1, r2], images=[img_a, img_b], video=None))

    cases.append(dict(name="tied_one_image", model="tiny-tied",
                      desc="one_image's inputs on tiny-tied (4.57-style config, no lm_head in the file)",
                      rows=[one], images=[img_a], video=None))
    return cases


# ----------------------------------------------------------------------------- running

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
        meta["images"] = [{"size_hw": [im.height, im.width], "grid_thw": g}
                          for im, g in zip(case["images"], grid.tolist())]
    if case["video"] is not None:
        pvv, vgrid = process_video(case["video"])
        inputs.update(pixel_values_videos=pvv, video_grid_thw=vgrid)
        tensors.update(pixel_values_videos=pvv, video_grid_thw=vgrid)
        meta["video"] = {"frames": len(case["video"]), "size_hw": [case["video"][0].height, case["video"][0].width],
                         "grid_thw": vgrid[0].tolist()}

    # Multimodal rope positions exactly as the 5.x forward computes them for the prefill.
    position_ids, rope_deltas = model.model.get_rope_index(
        input_ids, mm_token_type_ids=mm, image_grid_thw=inputs.get("image_grid_thw"),
        video_grid_thw=inputs.get("video_grid_thw"), attention_mask=attention_mask)
    tensors.update(position_ids=position_ids.to(torch.int64), rope_deltas=rope_deltas.to(torch.int64))

    # (a) prefill
    model.model.rope_deltas = None
    logits = model(**inputs).logits.to(torch.float32)
    tensors["logits"] = logits

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
    # position + 1 + s. Equals (L + s) + rope_delta_padded, rope_delta_padded = rope_deltas - pads.
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
    # (steps >= 1; step 0 of generate differs from a full-row prefill by lm_head rounding: generate
    # runs lm_head on the last row only.)
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
                "cache_vs_nocache_full_forward": d_nocache},
    )
    return tensors, meta


def header_listing(path):
    with safe_open(path, "pt") as f:
        return {k: list(f.get_slice(k).get_shape()) for k in f.keys()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "policy"))
    args = ap.parse_args()
    out = args.out
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(out, exist_ok=True)

    save_models(out)
    models = {n: load(out, n) for n in ["tiny-untied", "tiny-tied", "tiny-untied-sharded"]}

    # The sharded copy holds the same tensors; the tied file has no lm_head.
    a = header_listing(os.path.join(out, "tiny-untied", "model.safetensors"))
    t = header_listing(os.path.join(out, "tiny-tied", "model.safetensors"))
    assert "lm_head.weight" in a and "lm_head.weight" not in t and set(a) - set(t) == {"lm_head.weight"}
    sd_a, sd_s = models["tiny-untied"].state_dict(), models["tiny-untied-sharded"].state_dict()
    assert all(torch.equal(sd_a[k], sd_s[k]) for k in sd_a)
    # Keep only the sharded copy's config and index (the real 5.x layout, 9 KB): the Rust
    # test rebuilds the shards from tiny-untied per the index's weight_map, which saves 1.7 MB.
    sharded = os.path.join(out, "tiny-untied-sharded")
    for name in os.listdir(sharded):
        if name.endswith(".safetensors"):
            os.remove(os.path.join(sharded, name))
    tm = models["tiny-tied"]
    assert tm.lm_head.weight is tm.model.language_model.embed_tokens.weight

    cases_dir = os.path.join(out, "cases")
    shutil.rmtree(cases_dir, ignore_errors=True)
    os.makedirs(cases_dir)
    for case in make_cases():
        tensors, meta = run_case(models[case["model"]], case)
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        save_file(tensors, os.path.join(cases_dir, case["name"] + ".safetensors"))
        meta["tensors"] = {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in sorted(tensors.items())}
        meta.update(transformers=transformers.__version__, torch=torch.__version__,
                    made_by="tools/make_policy_fixtures.py")
        write_json(os.path.join(cases_dir, case["name"] + ".json"), meta)
        c = meta["checks"]
        print(f"{case['name']:18s} B={meta['batch']} L={meta['seq_len']:3d} std={meta['logits_std']:.3f} "
              f"max|logit|={meta['max_abs_logit']:.3f} step0={c['generate_step0_vs_prefill_last']:.2e} "
              f"manual={c['manual_cache_loop_vs_generate_steps_1_to_5']:.2e} nocache={c['cache_vs_nocache_full_forward']:.2e} "
              f"gen={meta['gen_tokens']}", file=sys.stderr)
        assert max(c.values()) < 1e-4, c


if __name__ == "__main__":
    main()
