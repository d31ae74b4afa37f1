#!/usr/bin/env python3
"""The reference side of the preprocessing benchmark: the same shards read with pyarrow,
images decoded with PIL and preprocessed with transformers' Qwen3-VL image processor
(what a Python data worker does per sample). Prints one JSON line.

    python reference.py DIR [--limit N] [--threads T]
"""
import argparse, glob, io, json, resource, time

import pyarrow.parquet as pq
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

ap = argparse.ArgumentParser()
ap.add_argument("dir")
ap.add_argument("--limit", type=int, default=None)
ap.add_argument("--threads", type=int, default=None)
ap.add_argument("--max-pixels", type=int, default=16777216)
args = ap.parse_args()
if args.threads:
    torch.set_num_threads(args.threads)
proc = Qwen2VLImageProcessor(patch_size=16, temporal_patch_size=2, merge_size=2,
                             image_mean=[0.5] * 3, image_std=[0.5] * 3,
                             size={"shortest_edge": 65536, "longest_edge": args.max_pixels})
start = time.perf_counter()
images = values = 0
done = False
for path in sorted(glob.glob(f"{args.dir}/*.parquet")):
    f = pq.ParquetFile(path)
    for rg in range(f.num_row_groups):
        table = f.read_row_group(rg, columns=["images"])
        for row in table.column("images").to_pylist():
            for data in row:
                img = Image.open(io.BytesIO(data))
                out = proc(images=[img], return_tensors="pt")
                images += 1
                values += out["pixel_values"].numel()
            if args.limit and images >= args.limit:
                done = True
                break
        if done:
            break
    if done:
        break
secs = time.perf_counter() - start
print(json.dumps({"impl": "transformers", "threads": torch.get_num_threads(), "max_pixels": args.max_pixels, "images": images,
                  "seconds": round(secs, 3), "images_per_s": round(images / secs, 1), "pixel_values": values,
                  "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
