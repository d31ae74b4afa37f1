#!/usr/bin/env python3
"""Writes tests/fixtures/torch_file: small files saved with `torch.save`, whose values the
Rust tests (crates/qoq-data/tests/torch_file.rs) recompute from the formulas below, so
they need no Python.

Needs the reference environment (see tools/reference-env.sh): torch==2.11.0.

Run from the repository root:
    $(bash tools/reference-env.sh) tools/make_torch_file_fixtures.py

Every formula here is mirrored in the Rust test; change both together.
"""
import os
from collections import OrderedDict

import torch

OUT = os.path.join("tests", "fixtures", "torch_file")


def save(obj, name, **kw):
    torch.save(obj, os.path.join(OUT, name), **kw)


def arange(n, dtype=torch.float32):
    return torch.arange(n, dtype=torch.float64).to(dtype)


def main():
    os.makedirs(OUT, exist_ok=True)
    # An ECG as QoQ-Med's JSONL points at it: float32 (8, 2500), value i * 0.5.
    save(arange(20000).reshape(8, 2500) * 0.5, "ecg_f32.pt")
    # bfloat16 (8, 2500): ((i % 256) - 128) * 0.25, exact in bfloat16.
    save((((arange(20000) % 256) - 128) * 0.25).to(torch.bfloat16).reshape(8, 2500), "ecg_bf16.pt")
    # A (samples, leads)-looking float32 tensor (100, 2): the converter's transposition hint.
    save(arange(200).reshape(100, 2), "samples_by_leads.pt")
    # float64 (3, 4): (i - 5.5) / 3, not exact in float32.
    save(((arange(12, torch.float64) - 5.5) / 3).reshape(3, 4), "f64.pt")
    # int64 (2, 6): (i - 5) * 1_000_000_007, beyond int32.
    save(((torch.arange(12, dtype=torch.int64) - 5) * 1_000_000_007).reshape(2, 6), "i64.pt")
    # Non-contiguous views of x = arange(24).reshape(4, 6) (float32): the transpose (stride
    # (1, 6)), and x[1:, 1::2] (storage offset 7, stride (6, 2)).
    x = arange(24).reshape(4, 6)
    save(x.t(), "transposed.pt")
    save(x[1:, 1::2], "sliced.pt")
    # Two tensors sharing one storage: 'a' = x, 'b' = x[2] (offset 12).
    save({"a": x, "b": x[2]}, "shared.pt")
    # An ECG-JEPA release checkpoint: {'encoder': state_dict, 'epoch': e}.
    encoder = OrderedDict(
        [
            ("W_P.weight", (arange(6) * 0.25).reshape(3, 2)),
            ("W_P.bias", arange(3) - 1),
            ("blocks.0.norm1.weight", torch.ones(3)),
        ]
    )
    save({"encoder": encoder, "epoch": 100}, "jepa_epoch100.pth")
    # state_dict of Linear(3, 2) + BatchNorm1d(2): weight = i * 0.125 - 0.25, bias = [0.5, -0.5],
    # BatchNorm defaults (weight 1, bias 0, running_mean 0, running_var 1,
    # num_batches_tracked = int64 scalar 0).
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_((arange(6) * 0.125 - 0.25).reshape(2, 3))
        model[0].bias.copy_(torch.tensor([0.5, -0.5]))
    save(model.state_dict(), "module_state.pt")
    # The module's Parameters themselves (pickled through torch._utils._rebuild_parameter).
    save(dict(model.named_parameters()), "parameters.pt")
    # One small tensor of every other supported dtype; 0-d and empty tensors; nested
    # containers with non-tensor values, which the reader skips.
    dtypes = {
        "f16": torch.tensor([0.5, -2.0, 65504.0, 1.0 / 1024], dtype=torch.float16),
        "i32": torch.tensor([-2147483648, 2147483647, 7], dtype=torch.int32),
        "i16": torch.tensor([-32768, 32767, -3], dtype=torch.int16),
        "i8": torch.tensor([-128, 127, -1], dtype=torch.int8),
        "u8": torch.tensor([0, 255, 9], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 3),
    }
    save(dtypes, "dtypes.pt")
    nested = {
        "list": [arange(2), {"inner": arange(3) + 10}],
        "tuple": (arange(1) - 1, 7),
        "none": None,
        "text": "hello",
        "float": 1.5,
        "flag": True,
        "big": 2**70,
    }
    save(nested, "nested.pt")
    # The legacy (pre-1.6) format, for the error path.
    save(arange(4), "legacy.pt", _use_new_zipfile_serialization=False)
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {OUT} ({total} bytes) with torch {torch.__version__}")


if __name__ == "__main__":
    main()
