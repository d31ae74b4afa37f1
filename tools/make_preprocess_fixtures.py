#!/usr/bin/env python3
"""Writes tests/fixtures/preprocess: test images and transformers' Qwen3-VL processor
output for them, so the Rust parity test needs no Python.

Needs the reference environment (see tools/reference-env.sh):
    torch==2.11.0 torchvision==0.26.0 transformers (5.x) pillow numpy

Run from the repository root:
    python tools/make_preprocess_fixtures.py

Each case is (image file, min_pixels, max_pixels); the expected `pixel_values` are stored
as gzip-compressed little-endian f32 (rows x 1536), `image_grid_thw` in cases.json.
"""
import gzip
import json
import os
import sys

import numpy as np
from PIL import Image, ImageDraw

import transformers
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

OUT = os.path.join("tests", "fixtures", "preprocess")
rng = np.random.default_rng(20261128)


def textured(w, h, channels, noise=6.0):
    """Smooth gradients + shapes + noise: compresses well, exercises every filter tap."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = [
        127 + 120 * np.sin(x / max(w, 1) * 7.0 + y / max(h, 1) * 3.0),
        127 + 120 * np.cos(x / max(w, 1) * 2.0 - y / max(h, 1) * 9.0),
        (x * 3 + y * 5) % 256,
        255 * (0.5 + 0.5 * np.sin((x + y) / 13.0)),
    ][:channels]
    arr = np.stack(base, axis=-1) + rng.normal(0, noise, size=(h, w, channels))
    return np.clip(arr, 0, 255).astype(np.uint8)


def make_images():
    imgs = {}
    imgs["rgb_37x53.png"] = Image.fromarray(textured(37, 53, 3), "RGB")
    imgs["grey_5x3.png"] = Image.fromarray(textured(5, 3, 1)[..., 0], "L")
    rgba = textured(301, 199, 4)
    rgba[:40, :60, 3] = 0  # fully transparent corner
    rgba[40:80, :, 3] = 255  # opaque band
    imgs["rgba_301x199.png"] = Image.fromarray(rgba, "RGBA")
    imgs["la_97x61.png"] = Image.fromarray(textured(97, 61, 2), "LA")
    pal = Image.fromarray(textured(64, 48, 3), "RGB").quantize(colors=16)
    pal.info["transparency"] = 3
    imgs["palette_64x48.png"] = pal
    # Little noise: keeps the committed PNG small; the gradients still vary every pixel.
    big = Image.fromarray(textured(2999, 1999, 3, noise=0.0), "RGB")
    d = ImageDraw.Draw(big)
    d.ellipse([400, 300, 1400, 1100], fill=(250, 250, 250))
    d.rectangle([2000, 1200, 2600, 1800], outline=(0, 0, 0), width=9)
    imgs["rgb_2999x1999.png"] = big
    imgs["grey_512x512.png"] = Image.fromarray(textured(512, 512, 1)[..., 0], "L")
    imgs["tall_40x1500.png"] = Image.fromarray(textured(40, 1500, 3), "RGB")
    return imgs


# (file, min_pixels, max_pixels): Qwen3-VL defaults, the QoQ-Med training range, and
# small budgets that force downscaling.
CASES = [
    ("rgb_37x53.png", 65536, 16777216),
    ("grey_5x3.png", 65536, 16777216),
    ("rgba_301x199.png", 65536, 16777216),
    ("rgba_301x199.png", 4096, 16384),
    ("la_97x61.png", 65536, 524288),
    ("palette_64x48.png", 65536, 16777216),
    ("rgb_2999x1999.png", 65536, 524288),
    ("grey_512x512.png", 65536, 524288),
    ("grey_512x512.png", 1024, 40000),
    ("tall_40x1500.png", 65536, 524288),
]


# Videos: (name, frames, width, height); frames are given to the video processor as
# already sampled (do_sample_frames=False), with its default budget (131072 .. 786432 over
# all frames).
VIDEOS = [
    ("clip_4x123x77", 4, 123, 77),
    ("clip_6x300x200", 6, 300, 200),
    ("clip_4x640x480", 4, 640, 480),
]


def make_videos(cases):
    vp = Qwen3VLVideoProcessor()
    for name, n, w, h in VIDEOS:
        folder = os.path.join(OUT, "videos", name)
        os.makedirs(folder, exist_ok=True)
        for i in range(n):
            Image.fromarray(textured(w, h, 3, noise=1.0 + i), "RGB").save(os.path.join(folder, f"{i:05d}.png"))
        frames = [Image.open(os.path.join(folder, f"{i:05d}.png")).convert("RGB") for i in range(n)]
        out = vp(videos=[frames], do_sample_frames=False, cap_pixels_per_frame=False, return_tensors="pt")
        pv = out["pixel_values_videos"].numpy().astype("<f4")
        grid = out["video_grid_thw"].numpy().tolist()[0]
        blob = f"video_{name}.f32.gz"
        with gzip.GzipFile(os.path.join(OUT, blob), "wb", compresslevel=9, mtime=0) as f:
            f.write(pv.tobytes())
        cases.append({"video": name, "frames": n, "grid_thw": grid, "rows": pv.shape[0], "pixel_values": blob})
        print(f"video {name} -> grid {grid}, {pv.shape}", file=sys.stderr)


def main():
    os.makedirs(os.path.join(OUT, "images"), exist_ok=True)
    for name, img in make_images().items():
        kwargs = {"transparency": img.info["transparency"]} if "transparency" in img.info else {}
        img.save(os.path.join(OUT, "images", name), optimize=True, **kwargs)
    cases = []
    for i, (name, min_px, max_px) in enumerate(CASES):
        proc = Qwen2VLImageProcessor(
            patch_size=16, temporal_patch_size=2, merge_size=2,
            image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
            size={"shortest_edge": min_px, "longest_edge": max_px},
        )
        # Re-open from disk: the fixture is what a user's PNG gives.
        img = Image.open(os.path.join(OUT, "images", name))
        out = proc(images=[img], return_tensors="pt")
        pv = out["pixel_values"].numpy().astype("<f4")
        grid = out["image_grid_thw"].numpy().tolist()[0]
        blob = f"case{i:02d}.f32.gz"
        with gzip.GzipFile(os.path.join(OUT, blob), "wb", compresslevel=9, mtime=0) as f:
            f.write(pv.tobytes())
        cases.append({"image": name, "min_pixels": min_px, "max_pixels": max_px,
                      "grid_thw": grid, "rows": pv.shape[0], "pixel_values": blob})
        print(f"{name} [{min_px}, {max_px}] -> grid {grid}, {pv.shape}", file=sys.stderr)
    video_cases = []
    make_videos(video_cases)
    meta = {"transformers": transformers.__version__, "cases": cases, "video_cases": video_cases,
            "made_by": "tools/make_preprocess_fixtures.py"}
    import torch, torchvision, PIL
    meta.update(torch=torch.__version__, torchvision=torchvision.__version__, pillow=PIL.__version__)
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(meta, f, indent=1)


if __name__ == "__main__":
    main()
