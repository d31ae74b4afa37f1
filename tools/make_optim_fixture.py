"""AdamW + grad-norm clipping as PyTorch does them, on a tiny two-parameter model, for
crates/qoq-train/tests/optim.rs.

    python tools/make_optim_fixture.py     (python: bash tools/reference-env.sh)

Writes tests/fixtures/trainer/adamw.json: initial parameters, the gradient of each of four
steps, and the parameters after each torch.optim.AdamW step (lr 0.01, betas (0.9, 0.999),
eps 1e-8, weight decay 0.1 on the matrix only, torch.nn.utils.clip_grad_norm_ to 1.0).
"""
import json
import pathlib

import torch

torch.manual_seed(0)
matrix = torch.randn(3, 4, dtype=torch.float32)
vector = torch.randn(4, dtype=torch.float32)
grads = [(torch.randn(3, 4) * s, torch.randn(4) * s) for s in (0.1, 2.0, 0.5, 5.0)]
out = {"source": f"torch {torch.__version__} torch.optim.AdamW + clip_grad_norm_", "lr": 0.01, "betas": [0.9, 0.999],
       "eps": 1e-8, "weight_decay": 0.1, "grad_clip": 1.0,
       "initial": {"matrix": matrix.tolist(), "vector": vector.tolist()}, "steps": []}
m = torch.nn.Parameter(matrix.clone())
v = torch.nn.Parameter(vector.clone())
opt = torch.optim.AdamW([{"params": [m], "weight_decay": 0.1}, {"params": [v], "weight_decay": 0.0}],
                        lr=0.01, betas=(0.9, 0.999), eps=1e-8)
for gm, gv in grads:
    m.grad = gm.clone()
    v.grad = gv.clone()
    norm = torch.nn.utils.clip_grad_norm_([m, v], 1.0)
    opt.step()
    out["steps"].append({"grad": {"matrix": gm.tolist(), "vector": gv.tolist()}, "grad_norm": float(norm),
                         "after": {"matrix": m.detach().tolist(), "vector": v.detach().tolist()}})
path = pathlib.Path(__file__).resolve().parent.parent / "tests/fixtures/trainer/adamw.json"
path.write_text(json.dumps(out, indent=1))
print("wrote", path)
