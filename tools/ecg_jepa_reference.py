#!/usr/bin/env python3
"""Reference PyTorch implementation of QoQ-Med's ECG path: ECG-JEPA's encoder as QoQ-Med
uses it (`MaskTransformer.representation`, Kim 2024, sehunfromdaegu/ECG_JEPA) followed by QoQ-Med's
projection (`TimeSeriesEmbedding.linear`), plus the input preprocessing (lead selection and per-lead
z-score). Written from docs/ecg.md (sections 1.2-1.4, 2, 3) and from reading the original code; the
module and parameter names are chosen so that `state_dict()` of `TimeSeriesEmbedding` carries
QoQ-Med's checkpoint names once prefixed with `time_series_embedding.`, and `state_dict()` of
`EcgJepaEncoder` carries ECG-JEPA's own release-checkpoint names (same keys, same order).

This file is a library for tools/make_ecg_fixtures.py; run on its own it builds the full-size
modules and checks their parameter counts (85,374,720 for the encoder, 2,756,096 for a projection
to 3584) and the sin-cos table's layout:

    PY=$(bash tools/reference-env.sh)
    $PY tools/ecg_jepa_reference.py

What the encoder computes, for x of shape [B, leads, samples] (QoQ: [B, 8, 2500], 250 Hz):
  1. patches: x.reshape(B, leads * samples / patch, patch), so token = lead * P + patch (lead-major,
     P = samples / patch = 50 patches per lead, 400 tokens);
  2. W_P: Linear(patch -> E) with bias;
  3. before EVERY block: x = block(x + pos_embed, mask), pos_embed [400, E] a parameter whose
     initial value is the 2-D sin-cos table of `sincos_2d` (QoQ-Med trains it; a checkpoint's
     value must be loaded, not recomputed);
  4. blocks (pre-LN, LayerNorm eps 1e-5): x += proj(attn(LN1(x))); x += fc2(GELU(fc1(LN2(x))))
     with exact (erf) GELU, qkv Linear(E, 3E) without bias, H heads of E/H, scale (E/H)^-0.5,
     and the cross-pattern mask: (lead a, patch s) sees (lead b, patch t) iff a == b or s == t,
     applied as masked_fill(-inf) on the scores before the softmax;
  5. final LayerNorm `norm`, mean over the 400 tokens -> [B, E].
QoQ-Med then applies `linear`: Linear(E -> hidden) with bias, no activation -> [B, hidden], the
one LLM input embedding that replaces the ECG placeholder token.
"""
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# QoQ-Med / ECG-JEPA sizes.
FULL = dict(embed_dim=768, depth=12, num_heads=16, mlp_dim=3072, leads=8, samples=2500, patch=50)
QWEN25_7B_HIDDEN = 3584
ENCODER_PARAMS_FULL = 85_374_720
PROJECTION_PARAMS_3584 = 2_756_096
# 12-lead order I, II, III, aVR, aVL, aVF, V1..V6; ECG-JEPA / QoQ-Med keep I, II, V1..V6.
KEEP_12_LEAD = [0, 1, 6, 7, 8, 9, 10, 11]
QOQ_PREFIX = "time_series_embedding."
LN_EPS = 1e-5


# ----------------------------------------------------------------------------- positional table

def sincos_1d(dim, positions):
    """[len(positions), dim] float64: first dim/2 columns sin(p * w_k), last dim/2 cos(p * w_k),
    w_k = 10000^(-k / (dim/2)), k = 0 .. dim/2 - 1."""
    assert dim % 2 == 0
    half = dim // 2
    k = np.arange(half, dtype=np.float64)
    w = 1.0 / np.power(10000.0, k / half)
    angle = np.asarray(positions, dtype=np.float64)[:, None] * w[None, :]
    return np.concatenate([np.sin(angle), np.cos(angle)], axis=1)


def sincos_2d(embed_dim, leads=8, patches=50):
    """The ECG-JEPA encoder's initial pos_embed, [leads * patches, embed_dim] float64.

    Row r = lead * patches + patch (the token order of the patching). Columns [0, E/2) are the
    1-D table of the PATCH (time) index, columns [E/2, E) the 1-D table of the LEAD index; each
    half is [sin(pos * w_k) for k < E/4, cos(pos * w_k) for k < E/4], w_k = 10000^(-k / (E/4)).
    (ECG-JEPA calls `get_2d_sincos_pos_embed(E, c=8, p=50)`: grid height = leads, width = patches,
    `meshgrid(w, h)` puts the width (patch) coordinate first; see tests/fixtures/ecg/README.md.)
    """
    assert embed_dim % 4 == 0
    lead = np.repeat(np.arange(leads), patches)  # row r -> r // patches
    patch = np.tile(np.arange(patches), leads)  # row r -> r % patches
    return np.concatenate([sincos_1d(embed_dim // 2, patch), sincos_1d(embed_dim // 2, lead)], axis=1)


def sincos_2d_tensor(embed_dim, leads=8, patches=50):
    """`sincos_2d` rounded to float32 once (as ECG-JEPA copies its float64 table into the parameter)."""
    return torch.from_numpy(sincos_2d(embed_dim, leads, patches)).to(torch.float32)


def cross_pattern_mask(leads=8, patches=50):
    """[N, N] bool, N = leads * patches: True where query (lead a, patch s) may attend to key
    (lead b, patch t), i.e. a == b or s == t."""
    idx = torch.arange(leads * patches)
    lead, patch = idx // patches, idx % patches
    return (lead[:, None] == lead[None, :]) | (patch[:, None] == patch[None, :])


# ----------------------------------------------------------------------------- modules
# Attribute names and registration order follow ECG-JEPA's modules, so that state_dict() lists
# the same keys in the same order (and the same `_metadata` module paths) as its checkpoints.
# The parameter-free members (dropouts with p = 0, DropPath = identity) are kept as no-ops only
# for that reason.

class Attention(nn.Module):
    def __init__(self, dim, num_heads):
        super().__init__()
        assert dim % num_heads == 0
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_drop = nn.Dropout(0.0)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(0.0)

    def forward(self, x, allowed):
        B, N, C = x.shape
        H = self.num_heads
        # qkv output columns: [q | k | v], each split into H heads of C / H.
        q, k, v = self.qkv(x).view(B, N, 3, H, C // H).permute(2, 0, 3, 1, 4).unbind(0)  # [B, H, N, hd]
        scores = (q @ k.transpose(-2, -1)) * self.scale
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        probs = self.attn_drop(scores.softmax(dim=-1))
        out = (probs @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj_drop(self.proj(out))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()  # exact (erf) GELU
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(0.0)

    def forward(self, x):
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim, num_heads, mlp_dim):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.drop_path = nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, mlp_dim)
        self.attn = Attention(dim, num_heads)

    def forward(self, x, allowed):
        x = x + self.drop_path(self.attn(self.norm1(x), allowed))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class BlockStack(nn.Module):
    """ECG-JEPA's `Encoder_Block`: the positional table is re-added before every block."""

    def __init__(self, dim, depth, num_heads, mlp_dim):
        super().__init__()
        self.blocks = nn.ModuleList([Block(dim, num_heads, mlp_dim) for _ in range(depth)])

    def forward(self, x, pos, allowed):
        for block in self.blocks:
            x = block(x + pos, allowed)
        return x


class EcgJepaEncoder(nn.Module):
    """ECG-JEPA's context encoder (`MaskTransformer`) restricted to what `representation()` uses."""

    def __init__(self, embed_dim=768, depth=12, num_heads=16, mlp_dim=3072, leads=8, samples=2500, patch=50):
        super().__init__()
        assert samples % patch == 0
        self.leads, self.samples, self.patch = leads, samples, patch
        self.patches = samples // patch
        self.embed_dim = embed_dim
        self.encoder_blocks = BlockStack(embed_dim, depth, num_heads, mlp_dim)
        self.norm = nn.LayerNorm(embed_dim, eps=LN_EPS)
        self.W_P = nn.Linear(patch, embed_dim)
        self.pos_embed = nn.Parameter(sincos_2d_tensor(embed_dim, leads, self.patches))
        self.register_buffer("allowed", cross_pattern_mask(leads, self.patches), persistent=False)

    def tokens(self, x):
        """[B, leads, samples] -> the normed token states [B, leads * patches, E]."""
        assert x.dim() == 3 and x.shape[1:] == (self.leads, self.samples), x.shape
        B = x.shape[0]
        h = self.W_P(x.reshape(B, self.leads * self.patches, self.patch))
        h = self.encoder_blocks(h, self.pos_embed, self.allowed)
        return self.norm(h)

    def representation(self, x):
        """[B, leads, samples] -> [B, E]: the mean of the normed token states."""
        return self.tokens(x).mean(dim=1)

    forward = representation


class TimeSeriesEmbedding(nn.Module):
    """QoQ-Med's `time_series_embedding`: encoder.representation, then `linear` (no activation)."""

    def __init__(self, hidden, **encoder_kwargs):
        super().__init__()
        self.encoder = EcgJepaEncoder(**encoder_kwargs)
        self.linear = nn.Linear(self.encoder.embed_dim, hidden)

    def forward(self, x):
        return self.linear(self.encoder.representation(x))


def qoq_state_dict(module):
    """`TimeSeriesEmbedding.state_dict()` under QoQ-Med's checkpoint names."""
    return {QOQ_PREFIX + k: v for k, v in module.state_dict().items()}


def load_qoq_tensors(module, tensors):
    """Fills a `TimeSeriesEmbedding` from a {name: tensor} map with QoQ-Med's names (other names
    ignored); every parameter must be present with its shape."""
    own = {k[len(QOQ_PREFIX):]: v for k, v in tensors.items() if k.startswith(QOQ_PREFIX)}
    module.load_state_dict(own, strict=True)
    return module


def num_params(module):
    return sum(p.numel() for p in module.parameters())


# ----------------------------------------------------------------------------- preprocessing

def preprocess(x):
    """[12 or 8, T] or [B, 12 or 8, T] (250 Hz) -> float32 [.., 8, T]: keeps 12-lead indices
    I, II, V1..V6 (an 8-lead input is taken as already in that order), then z-scores each lead
    over time with the unbiased std (torch.std), a zero std replaced by 1."""
    x = torch.as_tensor(x).to(torch.float32)
    squeeze = x.dim() == 2
    if squeeze:
        x = x[None]
    assert x.dim() == 3, x.shape
    if x.shape[1] == 12:
        x = x[:, KEEP_12_LEAD]
    assert x.shape[1] == 8, f"expected 12 or 8 leads, got {x.shape[1]}"
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True)
    std = torch.where(std == 0, torch.ones_like(std), std)
    y = (x - mean) / std
    return y[0] if squeeze else y


# ----------------------------------------------------------------------------- self-check

def _check_sincos_layout(E=768, leads=8, patches=50):
    t = sincos_2d(E, leads, patches)
    assert t.shape == (leads * patches, E)
    q = E // 4
    for r in [0, 1, 49, 50, 123, 399]:
        lead, patch = divmod(r, patches)
        w = 1.0 / 10000.0 ** (np.arange(q) / q)
        expect = np.concatenate([np.sin(patch * w), np.cos(patch * w), np.sin(lead * w), np.cos(lead * w)])
        assert np.array_equal(t[r], expect), r
    return t


@torch.no_grad()
def main():
    torch.manual_seed(0)
    emb = TimeSeriesEmbedding(QWEN25_7B_HIDDEN, **FULL)
    n_enc, n_lin = num_params(emb.encoder), num_params(emb.linear)
    print(f"encoder parameters    {n_enc:,} (pos_embed {emb.encoder.pos_embed.numel():,})")
    print(f"projection parameters {n_lin:,} (768 -> {QWEN25_7B_HIDDEN})")
    assert n_enc == ENCODER_PARAMS_FULL, n_enc
    assert n_lin == PROJECTION_PARAMS_3584, n_lin
    names = list(qoq_state_dict(emb))
    # A module's own parameters come before its children's: pos_embed first (as in ECG-JEPA).
    assert names[:2] == ["time_series_embedding.encoder.pos_embed",
                         "time_series_embedding.encoder.encoder_blocks.blocks.0.norm1.weight"], names[:2]
    print(f"{len(names)} tensors, e.g. {names[0]}, ..., {names[-1]}")
    _check_sincos_layout()
    m = cross_pattern_mask()
    assert m.sum().item() == 400 * (50 + 8 - 1)
    print("sin-cos layout and cross-pattern mask: ok")


if __name__ == "__main__":
    main()
