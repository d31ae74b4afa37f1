"""The reference side of allreduce_bench: torch.distributed (Gloo) all_reduce, timed the
same way (mean of --iters SUM all-reduces after --warmup, one intra-op thread).

    torchrun --nproc-per-node 2 allreduce_torch.py --sizes-mb 1,4,16,64,256
"""
import argparse
import json
import time

import torch
import torch.distributed as dist

p = argparse.ArgumentParser()
p.add_argument("--sizes-mb", default="1,4,16,64,256")
p.add_argument("--iters", type=int, default=10)
p.add_argument("--warmup", type=int, default=2)
a = p.parse_args()
torch.set_num_threads(1)
dist.init_process_group("gloo")
n = dist.get_world_size()
for mb in [int(s) for s in a.sizes_mb.split(",")]:
    t = torch.ones((mb << 20) // 4, dtype=torch.float32)
    for _ in range(a.warmup):
        dist.all_reduce(t)
    dist.barrier()
    start = time.perf_counter()
    for _ in range(a.iters):
        dist.all_reduce(t)
    secs = (time.perf_counter() - start) / a.iters
    algbw = t.numel() * 4 / secs / 1e9
    if dist.get_rank() == 0:
        print(json.dumps({"impl": "torch.distributed", "ranks": n, "size_mb": mb, "time_ms": round(secs * 1e3, 3),
                          "algbw_gbps": round(algbw, 3), "busbw_gbps": round(algbw * 2 * (n - 1) / n, 3)}))
dist.destroy_process_group()
