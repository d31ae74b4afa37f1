#!/usr/bin/env python3
"""Writes tests/fixtures/ecg: reference outputs of QoQ-Med's ECG path (ECG-JEPA encoder
`representation()` + QoQ-Med's projection, tools/ecg_jepa_reference.py) on a tiny random encoder,
the same encoder spliced into the tiny Qwen2.5-VL and Qwen3-VL checkpoints of
tests/fixtures/{qwen2_5_vl,policy}, and (diagnose/) a tiny Qwen2.5-VL over the whole Qwen2.5
vocabulary with an ECG encoder, a synthetic 12-lead ECG, the chat-templated prompt with the
`<|time_series_pad|>` placeholder, prefill logits and a greedy trace. With these, the Rust port of
the ECG path (preprocessing, encoder, projection, placeholder splice, checkpoint loading from QoQ
safetensors and from an ECG-JEPA `.pth`) can be checked at fp32 without Python.

Needs the reference environment (see tools/reference-env.sh):
    torch==2.11.0 transformers==5.24.0 numpy safetensors
the committed fixtures tests/fixtures/qwen2_5_vl/{tiny-untied,diagnose/nested} and
tests/fixtures/policy/tiny-untied, and the Qwen2.5 tokenizer that tools/setup.sh derives into
.qwen2.5-tokenizer.

Run from the repository root:
    PY=$(bash tools/reference-env.sh)
    $PY tools/make_ecg_fixtures.py [--out tests/fixtures/ecg] [--tokenizer-dir .qwen2.5-tokenizer]
                                   [--original DIR]

--original DIR: also runs ECG-JEPA's own `ecg_jepa.py` / `pos_encoding.py` from DIR (a checkout of
sehunfromdaegu/ECG_JEPA; `timm` is replaced by a two-line stub, it is only used for DropPath and
init) on the tiny encoder and the release checkpoint, and asserts identical outputs; nothing is
written differently.

Deterministic: fixed seeds, one CPU thread, deterministic algorithms; a rerun writes identical bytes.
"""
import argparse
import importlib
import json
import math
import os
import shutil
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

import transformers
from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration, Qwen3VLForConditionalGeneration

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ecg_jepa_reference as ref  # noqa: E402

TINY = dict(embed_dim=64, depth=2, num_heads=16, mlp_dim=256, leads=8, samples=2500, patch=50)
ENCODER_HIDDEN = 32  # encoder/: projection 64 -> 32
RATE_HZ = 250
POS_NOISE = 0.05  # pos_embed = sin-cos + POS_NOISE * N(0, 1): a loader that recomputes the table is caught
TOPK = 8

# Tiny families: the existing tiny checkpoints (vocab 1024, hidden 64; special ids 1000..1005 and,
# in the Qwen2.5 flat config, vision_pad 1006). The prompt's chat tokens: im_start 1007 (unused by
# both), im_end = eos 1004 (as in Qwen, where <|im_end|> is the eos), newline 10 (a text id).
TINY_IM_START, TINY_IM_END, TINY_NL = 1007, 1004, 10
FAMILIES = [
    # name, source folder, class, time_series_token_id, projection seed
    ("tiny-qwen2_5_vl", os.path.join("tests", "fixtures", "qwen2_5_vl", "tiny-untied"),
     Qwen2_5_VLForConditionalGeneration, 1010, 21),
    ("tiny-qwen3_vl", os.path.join("tests", "fixtures", "policy", "tiny-untied"),
     Qwen3VLForConditionalGeneration, 1020, 22),
]
TINY_SPECIAL_IDS = [1000, 1001, 1002, 1003, 1004, 1005, 1006, TINY_IM_START]

# diagnose/
DIAG_SOURCE = os.path.join("tests", "fixtures", "qwen2_5_vl", "diagnose", "nested")
DIAG_COPY = ["preprocessor_config.json", "chat_template.json", "tokenizer_config.json"]
DIAG_TS_TOKEN = "<|time_series_pad|>"
DIAG_TS_ID = 151665
DIAG_BANNED = [151655, 151656, 151652, 151653, DIAG_TS_ID]  # image, video, vision start, vision end, ECG
DIAG_STOP = [151645, 151643]  # <|im_end|>, <|endoftext|>
DIAG_NEW_TOKENS = 5
DIAG_PROMPT = "Is this ECG normal? Answer in \\boxed{}."
DIAG_SIGNAL = "signal.npy"
DIAG_CONST_LEAD, DIAG_CONST_VALUE = 8, 0.25  # V3 flat at 0.25 mV: exactly representable, so its std is exactly 0
DIAG_ENCODER_SEED, DIAG_PROJ_SEED = 31, 36  # 36: top-1/top-2 gaps >= 0.07 on the generated steps
DIAG_RENDERED = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                 "<|time_series_pad|>" + DIAG_PROMPT + "<|im_end|>\n<|im_start|>assistant\n")
LEADS_12 = ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]


def write_json(path, obj, sort_keys=True):
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(obj, indent=2, sort_keys=sort_keys, ensure_ascii=False) + "\n")


def fresh_folder(folder):
    """Empties `folder` (creating it), keeping a hand-written README.md."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if name == "README.md":
            continue
        path = os.path.join(folder, name)
        shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)


def read_safetensors(path):
    with safe_open(path, "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


def tensor_listing(tensors):
    return {k: [str(v.dtype).replace("torch.", ""), list(v.shape)] for k, v in sorted(tensors.items())}


def maxabs(t):
    return float(t.abs().max().item())


def r6(x):
    return float(f"{x:.6g}")


# ----------------------------------------------------------------------------- tiny encoder

@torch.no_grad()
def randomise_embedding(emb, seed):
    """Every parameter of a TimeSeriesEmbedding gets a random value, drawn in sorted-name order:
    LayerNorm weights 1 + 0.1 N, biases 0.1 N, qkv 1.5 N / sqrt(fan_in) (peaked attention, so the
    cross-pattern mask matters), other matrices N / sqrt(fan_in), pos_embed = sin-cos + POS_NOISE N."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(emb.named_parameters()):
        r = torch.randn(p.shape, generator=g, dtype=torch.float32)
        if name.endswith("pos_embed"):
            v = ref.sincos_2d_tensor(p.shape[1], emb.encoder.leads, emb.encoder.patches) + POS_NOISE * r
        elif name.endswith(".bias"):
            v = 0.1 * r
        elif p.ndim == 1:
            assert "norm" in name, name
            v = 1.0 + 0.1 * r
        elif name.endswith("attn.qkv.weight"):
            v = 1.5 * r / math.sqrt(p.shape[1])
        else:
            assert p.ndim == 2, name
            v = r / math.sqrt(p.shape[1])
        p.copy_(v)
    return emb


@torch.no_grad()
def randomise_linear(lin, seed):
    g = torch.Generator().manual_seed(seed)
    lin.weight.copy_(torch.randn(lin.weight.shape, generator=g) / math.sqrt(lin.weight.shape[1]))
    lin.bias.copy_(0.1 * torch.randn(lin.bias.shape, generator=g))
    return lin


def tiny_embedding(hidden, encoder_seed, proj_seed):
    torch.manual_seed(0)
    emb = ref.TimeSeriesEmbedding(hidden, **TINY).eval()
    randomise_embedding(emb, encoder_seed)
    randomise_linear(emb.linear, proj_seed)
    return emb


def smooth_signals(n, seed):
    """n z-scored random smooth 8-lead signals [n, 8, 2500]: Gaussian-smoothed noise plus a few
    random sinusoids per lead, then ref.preprocess."""
    r = np.random.default_rng(seed)
    t = np.arange(TINY["samples"]) / RATE_HZ
    k = np.exp(-0.5 * (np.arange(-20, 21) / 6.0) ** 2)
    k /= k.sum()
    out = np.zeros((n, 8, TINY["samples"]), dtype=np.float64)
    for b in range(n):
        for lead in range(8):
            x = np.convolve(r.standard_normal(TINY["samples"] + 40), k, mode="valid")[:TINY["samples"]] * 3.0
            for _ in range(3):
                x += r.uniform(0.2, 1.5) * np.sin(2 * np.pi * r.uniform(0.3, 12.0) * t + r.uniform(0, 2 * np.pi))
            out[b, lead] = x + r.uniform(-2, 2)
    return ref.preprocess(torch.from_numpy(out.astype(np.float32)))


def synthetic_12_lead(seed):
    """A synthetic 10 s 12-lead ECG at 250 Hz in mV: Gaussian P, Q, R, S, T waves per beat (~71 bpm
    with a little RR jitter), limb leads from Einthoven / Goldberger relations, baseline wander,
    noise; V3 (index 8) flat at 0.25 mV (lead off) to exercise the std == 0 rule. float32 [12, 2500]."""
    r = np.random.default_rng(seed)
    T = TINY["samples"]
    t = np.arange(T) / RATE_HZ
    waves = [(-0.20, 0.025), (-0.035, 0.008), (0.0, 0.010), (0.035, 0.010), (0.26, 0.040)]  # (offset s, width s)
    amp = {  # P, Q, R, S, T in mV
        "I": [0.10, -0.05, 0.80, -0.15, 0.25], "II": [0.15, -0.08, 1.20, -0.20, 0.35],
        "V1": [0.08, 0.00, 0.30, -1.00, -0.10], "V2": [0.08, 0.00, 0.60, -1.30, 0.40],
        "V4": [0.05, -0.05, 1.10, -0.60, 0.50], "V5": [0.05, -0.08, 1.30, -0.30, 0.40],
        "V6": [0.05, -0.06, 1.00, -0.15, 0.30],
    }
    beats, b = [], 0.35
    while b < t[-1] + 0.5:
        beats.append(b)
        b += 0.845 + r.uniform(-0.03, 0.03)
    sig = {}
    for lead, a in amp.items():
        x = np.zeros(T)
        for bt in beats:
            for (off, w), h in zip(waves, a):
                x += h * np.exp(-0.5 * ((t - bt - off) / w) ** 2)
        sig[lead] = x
    sig["III"] = sig["II"] - sig["I"]
    sig["aVR"] = -(sig["I"] + sig["II"]) / 2
    sig["aVL"] = sig["I"] - sig["II"] / 2
    sig["aVF"] = sig["II"] - sig["I"] / 2
    out = np.zeros((12, T))
    for i, lead in enumerate(LEADS_12):
        if i == DIAG_CONST_LEAD:
            continue
        wander = 0.08 * np.sin(2 * np.pi * r.uniform(0.15, 0.4) * t + r.uniform(0, 2 * np.pi))
        out[i] = sig[lead] + wander + 0.01 * r.standard_normal(T) + r.uniform(-0.1, 0.1)
    x = out.astype(np.float32)
    x[DIAG_CONST_LEAD] = DIAG_CONST_VALUE
    return x


# ----------------------------------------------------------------------------- second implementation

def functional_representation(sd, x, cfg, *, mask=True, pos_every_block=True, gelu="none", pos=None,
                              patch_major=False, ln_eps=ref.LN_EPS, mean_then_norm=False):
    """An independent functional form of the encoder over a state dict with ECG-JEPA's names, with
    switches for the mistakes a port can make (the table in tests/fixtures/ecg/README.md)."""
    E, H, Lc, S, P = cfg["embed_dim"], cfg["num_heads"], cfg["leads"], cfg["samples"], cfg["patch"]
    n_p = S // P
    B = x.shape[0]
    if patch_major:
        h = x.reshape(B, Lc, n_p, P).transpose(1, 2).reshape(B, Lc * n_p, P)
    else:
        h = x.reshape(B, Lc * n_p, P)
    h = F.linear(h, sd["W_P.weight"], sd["W_P.bias"])
    pe = sd["pos_embed"] if pos is None else pos
    idx = torch.arange(Lc * n_p)
    allowed = ((idx[:, None] // n_p) == (idx[None, :] // n_p)) | ((idx[:, None] % n_p) == (idx[None, :] % n_p))
    d = 0
    while f"encoder_blocks.blocks.{d}.norm1.weight" in sd:
        p = f"encoder_blocks.blocks.{d}."
        if pos_every_block or d == 0:
            h = h + pe
        a = F.layer_norm(h, (E,), sd[p + "norm1.weight"], sd[p + "norm1.bias"], ln_eps)
        qkv = F.linear(a, sd[p + "attn.qkv.weight"]).view(B, -1, 3, H, E // H)
        q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
        s = (q @ k.transpose(-1, -2)) * (E // H) ** -0.5
        if mask:
            s = s.masked_fill(~allowed, float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, -1, E)
        h = h + F.linear(o, sd[p + "attn.proj.weight"], sd[p + "attn.proj.bias"])
        m = F.layer_norm(h, (E,), sd[p + "norm2.weight"], sd[p + "norm2.bias"], ln_eps)
        m = F.gelu(F.linear(m, sd[p + "mlp.fc1.weight"], sd[p + "mlp.fc1.bias"]), approximate=gelu)
        h = h + F.linear(m, sd[p + "mlp.fc2.weight"], sd[p + "mlp.fc2.bias"])
        d += 1
    if mean_then_norm:
        return F.layer_norm(h.mean(1), (E,), sd["norm.weight"], sd["norm.bias"], ln_eps)
    return F.layer_norm(h, (E,), sd["norm.weight"], sd["norm.bias"], ln_eps).mean(1)


@torch.no_grad()
def mistakes(emb, x):
    """Max |diff| of the projected embeddings for common porting mistakes."""
    sd = emb.encoder.state_dict()
    cfg = TINY
    lin = emb.linear
    base = lin(emb.encoder.representation(x))
    E, n_p = cfg["embed_dim"], cfg["samples"] // cfg["patch"]
    table = ref.sincos_2d_tensor(E, cfg["leads"], n_p)
    swapped = torch.cat([table[:, E // 2:], table[:, :E // 2]], dim=1)  # lead half first
    # the table built patch-major (token = patch * leads + lead) instead of lead-major
    pm = ref.sincos_2d(E, cfg["leads"], n_p).reshape(cfg["leads"], n_p, E).transpose(1, 0, 2).reshape(-1, E)
    cases = {
        "no cross-pattern mask": dict(mask=False),
        "pos_embed added once (before block 0 only)": dict(pos_every_block=False),
        "tanh GELU": dict(gelu="tanh"),
        "pos_embed recomputed (sin-cos) instead of loaded": dict(pos=table),
        "sin-cos halves swapped (lead index first)": dict(pos=swapped + (sd["pos_embed"] - table)),
        "sin-cos rows patch-major": dict(pos=torch.from_numpy(pm).float() + (sd["pos_embed"] - table)),
        "patches taken patch-major (token = patch * 8 + lead)": dict(patch_major=True),
        "LayerNorm eps 1e-6": dict(ln_eps=1e-6),
        "mean over tokens before the final norm": dict(mean_then_norm=True),
    }
    out = {}
    for name, kw in cases.items():
        out[name] = r6(maxabs(lin(functional_representation(sd, x, cfg, **kw)) - base))
    return out


# ----------------------------------------------------------------------------- encoder/

@torch.no_grad()
def make_encoder(out):
    folder = os.path.join(out, "encoder")
    fresh_folder(folder)
    emb = tiny_embedding(ENCODER_HIDDEN, encoder_seed=11, proj_seed=12)
    weights = {k: v.contiguous() for k, v in ref.qoq_state_dict(emb).items()}
    save_file(weights, os.path.join(folder, "weights.safetensors"), metadata={"format": "pt"})

    sig = smooth_signals(2, seed=13)
    signals = torch.cat([sig, torch.zeros(1, 8, TINY["samples"])], dim=0)
    # The module loaded back from the written file computes the outputs.
    loaded = ref.load_qoq_tensors(ref.TimeSeriesEmbedding(ENCODER_HIDDEN, **TINY).eval(),
                                  read_safetensors(os.path.join(folder, "weights.safetensors")))
    rep = loaded.encoder.representation(signals)
    embs = loaded.linear(rep)
    cases = {
        "signals": signals.contiguous(),
        "representation": rep.contiguous(),
        "embeddings": embs.contiguous(),
        "sincos_64": ref.sincos_2d_tensor(64),
        "sincos_768": ref.sincos_2d_tensor(768),
    }
    save_file(cases, os.path.join(folder, "cases.safetensors"), metadata={"format": "pt"})

    # ECG-JEPA's release format: torch.save({'encoder': MaskTransformer.state_dict(), 'epoch': e}).
    sd = emb.encoder.state_dict()  # ECG-JEPA's keys, order and _metadata (checked with --original)
    assert next(iter(sd)) == "pos_embed" and len(sd) == 1 + 11 * TINY["depth"] + 4, list(sd)
    torch.save({"encoder": sd, "epoch": 99}, os.path.join(folder, "jepa_release.pth"))
    back = torch.load(os.path.join(folder, "jepa_release.pth"), weights_only=True)
    assert back["epoch"] == 99 and list(back["encoder"]) == list(sd)
    assert all(torch.equal(back["encoder"][k], weights["time_series_embedding.encoder." + k]) for k in sd)

    # Checks: the functional form, fp64, zero input, the sincos table vs the parameters.
    sdl = loaded.encoder.state_dict()
    d_functional = maxabs(functional_representation(sdl, signals, TINY) - rep)
    e64 = ref.TimeSeriesEmbedding(ENCODER_HIDDEN, **TINY).double().eval()
    e64.load_state_dict(loaded.state_dict())
    rep64 = e64.encoder.representation(signals.double())
    emb64 = e64.linear(rep64)
    d64_rep, d64_emb = maxabs(rep64 - rep.double()), maxabs(emb64 - embs.double())
    assert d_functional < 1e-5 and d64_emb < 1e-4, (d_functional, d64_emb)
    pos_minus_table = maxabs(weights["time_series_embedding.encoder.pos_embed"] - cases["sincos_64"])
    meta = {
        "description": "tiny ECG-JEPA encoder (E=64, depth 2, 16 heads of 4, mlp 256) + projection 64 -> 32; "
                       "signals = two z-scored random smooth 8-lead signals and one all-zero row",
        "encoder": TINY, "hidden": ENCODER_HIDDEN, "pos_noise": POS_NOISE,
        "encoder_parameters": ref.num_params(emb.encoder), "projection_parameters": ref.num_params(emb.linear),
        "full_size_encoder_parameters": ref.ENCODER_PARAMS_FULL,
        "full_size_projection_parameters_3584": ref.PROJECTION_PARAMS_3584,
        "max_abs": {"signals": r6(maxabs(signals)), "representation": r6(maxabs(rep)), "embeddings": r6(maxabs(embs)),
                    "pos_embed_minus_sincos": r6(pos_minus_table),
                    "zero_signal_embedding": r6(maxabs(embs[2]))},
        "checks": {"functional_form_vs_module_representation": d_functional,
                   "fp64_vs_fp32_representation": r6(d64_rep), "fp64_vs_fp32_embeddings": r6(d64_emb)},
        "mistakes_max_abs_embedding_diff": mistakes(loaded, signals),
        "jepa_release": {"epoch": 99, "keys": len(sd), "first_keys": list(sd)[:3]},
        "weights": tensor_listing(weights),
        "tensors": tensor_listing(cases),
        "transformers": transformers.__version__, "torch": torch.__version__, "made_by": "tools/make_ecg_fixtures.py",
    }
    write_json(os.path.join(folder, "cases.json"), meta, sort_keys=False)
    print(f"encoder: |rep|={meta['max_abs']['representation']} |emb|={meta['max_abs']['embeddings']} "
          f"fp64 {d64_emb:.2e} mistakes={meta['mistakes_max_abs_embedding_diff']}", file=sys.stderr)
    return emb, signals


# ----------------------------------------------------------------------------- tiny-*/

def splice_inputs_embeds(model, ids, ts_id, ecg):
    """embed_tokens(ids) with the placeholder rows replaced (in order) by the ECG embeddings."""
    emb = model.get_input_embeddings()(ids)
    m = ids == ts_id
    assert int(m.sum()) == ecg.shape[0], (int(m.sum()), ecg.shape)
    return emb.masked_scatter(m[..., None].expand_as(emb), ecg.to(emb.dtype))


def text_positions(L):
    """Text-only mrope positions: arange(L) on all three axes, [3, 1, L]."""
    return torch.arange(L).view(1, 1, L).expand(3, 1, L).contiguous()


@torch.no_grad()
def forward_with_ecg(model, ids, ts_id, ecg):
    L = ids.shape[1]
    if hasattr(model.model, "rope_deltas"):
        model.model.rope_deltas = None
    embeds = splice_inputs_embeds(model, ids, ts_id, ecg)
    return model(inputs_embeds=embeds, position_ids=text_positions(L)).logits.to(torch.float32)


@torch.no_grad()
def position_checks(model, ids):
    """With the placeholder's own embedding: inputs_embeds + explicit arange positions == the
    input_ids forward == inputs_embeds without positions (what a text token gets)."""
    L = ids.shape[1]
    model.model.rope_deltas = None
    a = model(input_ids=ids).logits
    model.model.rope_deltas = None
    e = model.get_input_embeddings()(ids)
    b = model(inputs_embeds=e, position_ids=text_positions(L)).logits
    model.model.rope_deltas = None
    c = model(inputs_embeds=e).logits
    model.model.rope_deltas = None
    return maxabs(a - b), maxabs(a - c), a


@torch.no_grad()
def make_family(out, enc_emb, signals, name, src, cls, ts_id, proj_seed):
    folder = os.path.join(out, name)
    fresh_folder(folder)
    with open(os.path.join(src, "config.json")) as f:
        cfg = json.load(f)
    hidden, vocab = cfg["text_config"]["hidden_size"], cfg["text_config"]["vocab_size"]
    assert ts_id < vocab and ts_id not in TINY_SPECIAL_IDS and ts_id not in [
        cfg.get(k) for k in ["image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"]]
    assert "time_series_token_id" not in cfg
    cfg["time_series_token_id"] = ts_id
    write_json(os.path.join(folder, "config.json"), cfg)

    emb = ref.TimeSeriesEmbedding(hidden, **TINY).eval()
    emb.encoder.load_state_dict(enc_emb.encoder.state_dict())
    randomise_linear(emb.linear, proj_seed)
    base = read_safetensors(os.path.join(src, "model.safetensors"))
    ecg_tensors = ref.qoq_state_dict(emb)
    assert not set(base) & set(ecg_tensors)
    tensors = {k: v.contiguous() for k, v in {**base, **ecg_tensors}.items()}
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})

    model = cls.from_pretrained(folder, attn_implementation="eager", dtype=torch.float32).eval()
    assert model.config.time_series_token_id == ts_id
    sd = model.state_dict()
    orig = cls.from_pretrained(src, attn_implementation="eager", dtype=torch.float32).eval().state_dict()
    assert sd.keys() == orig.keys() and all(torch.equal(sd[k], orig[k]) for k in sd), "LLM weights changed"
    loaded = ref.load_qoq_tensors(ref.TimeSeriesEmbedding(hidden, **TINY).eval(),
                                  read_safetensors(os.path.join(folder, "model.safetensors")))

    rng = np.random.default_rng(100 + proj_seed)
    t = lambda n: rng.integers(11, 1000, n).tolist()  # noqa: E731  (text ids; 10 is the newline)
    ids = ([TINY_IM_START] + t(3) + [TINY_NL] + t(5) + [TINY_IM_END, TINY_NL]
           + [TINY_IM_START] + t(1) + [TINY_NL] + [ts_id] + t(8) + [TINY_IM_END, TINY_NL]
           + [TINY_IM_START] + t(1) + [TINY_NL])
    ids = torch.tensor([ids], dtype=torch.int64)
    L = ids.shape[1]
    sig = signals[:1]
    ecg = loaded(sig)
    logits = forward_with_ecg(model, ids, ts_id, ecg)
    d_pos_explicit, d_pos_none, text_logits = position_checks(model, ids)
    assert d_pos_explicit == 0.0 and d_pos_none == 0.0, (d_pos_explicit, d_pos_none)
    ph = int((ids[0] == ts_id).nonzero()[0])
    # fp64 run of the same pipeline (tolerance scale)
    m64 = cls.from_pretrained(folder, attn_implementation="eager", dtype=torch.float64).eval()
    e64 = ref.TimeSeriesEmbedding(hidden, **TINY).double().eval()
    e64.load_state_dict(loaded.state_dict())
    ecg64 = e64(sig.double())
    logits64 = forward_with_ecg(m64, ids, ts_id, ecg64)
    tensors_out = {
        "input_ids": ids,
        "signals": sig.contiguous(),
        "ecg_embeddings": ecg.contiguous(),
        "logits": logits.contiguous(),
    }
    save_file(tensors_out, os.path.join(folder, "cases.safetensors"), metadata={"format": "pt"})
    meta = {
        "description": f"{cls.__name__} (transformers {transformers.__version__}) on inputs_embeds = "
                       "embed_tokens(input_ids) with the placeholder row replaced by the ECG embedding, "
                       "position_ids = arange(L) on all three mrope axes (what a text token gets)",
        "source": src.replace(os.sep, "/"), "time_series_token_id": ts_id,
        "prompt_ids": {"im_start": TINY_IM_START, "im_end_eos": TINY_IM_END, "newline": TINY_NL},
        "seq_len": L, "placeholder_position": ph, "vocab_size": vocab, "hidden_size": hidden,
        "max_abs": {"logits": r6(maxabs(logits)), "ecg_embeddings": r6(maxabs(ecg)),
                    "text_embeddings_row_std": r6(model.get_input_embeddings().weight.std().item())},
        "logits_std": r6(logits.std().item()),
        "ecg_row_effect_max_logit_change": r6(maxabs(logits - text_logits)),
        "ecg_row_effect_before_placeholder": r6(maxabs(logits[:, :ph] - text_logits[:, :ph])),
        "checks": {"input_ids_forward_vs_inputs_embeds_with_arange_positions": d_pos_explicit,
                   "input_ids_forward_vs_inputs_embeds_without_positions": d_pos_none,
                   "fp64_vs_fp32_ecg_embeddings": r6(maxabs(ecg64 - ecg.double())),
                   "fp64_vs_fp32_logits": r6(maxabs(logits64 - logits.double()))},
        "tensors": tensor_listing(tensors_out),
        "ecg_weights": tensor_listing(ecg_tensors),
        "transformers": transformers.__version__, "torch": torch.__version__, "made_by": "tools/make_ecg_fixtures.py",
    }
    assert meta["ecg_row_effect_before_placeholder"] == 0.0
    assert meta["checks"]["fp64_vs_fp32_logits"] < 1e-4
    write_json(os.path.join(folder, "cases.json"), meta, sort_keys=False)
    print(f"{name}: L={L} ts_id={ts_id} |logit|={meta['max_abs']['logits']} ecg effect "
          f"{meta['ecg_row_effect_max_logit_change']} fp64 {meta['checks']['fp64_vs_fp32_logits']:.2e}", file=sys.stderr)


# ----------------------------------------------------------------------------- diagnose/

def add_ts_token(tokenizer):
    """As QoQ-Med's processor does at runtime: add <|time_series_pad|> as an additional special token."""
    assert DIAG_TS_TOKEN not in tokenizer.get_vocab(), "the Qwen2.5 tokenizer already has the ECG token"
    assert len(tokenizer) == DIAG_TS_ID, len(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": [DIAG_TS_TOKEN]})
    tid = tokenizer.convert_tokens_to_ids(DIAG_TS_TOKEN)
    assert tid == DIAG_TS_ID, tid
    return tid


@torch.no_grad()
def make_diagnose(out, tokenizer_dir):
    folder = os.path.join(out, "diagnose")
    fresh_folder(folder)
    model_dir = os.path.join(folder, "model")
    os.makedirs(model_dir)
    for name in DIAG_COPY:
        shutil.copyfile(os.path.join(DIAG_SOURCE, name), os.path.join(model_dir, name))
    with open(os.path.join(DIAG_SOURCE, "config.json")) as f:
        cfg = json.load(f)
    hidden, vocab = cfg["text_config"]["hidden_size"], cfg["text_config"]["vocab_size"]
    assert "time_series_token_id" not in cfg and vocab == 152064 and hidden == 8
    cfg["time_series_token_id"] = DIAG_TS_ID
    write_json(os.path.join(model_dir, "config.json"), cfg)
    emb = tiny_embedding(hidden, DIAG_ENCODER_SEED, DIAG_PROJ_SEED)
    base = read_safetensors(os.path.join(DIAG_SOURCE, "model.safetensors"))
    ecg_tensors = ref.qoq_state_dict(emb)
    tensors = {k: v.contiguous() for k, v in {**base, **ecg_tensors}.items()}
    save_file(tensors, os.path.join(model_dir, "model.safetensors"), metadata={"format": "pt"})
    raw = synthetic_12_lead(seed=41)
    np.save(os.path.join(folder, DIAG_SIGNAL), raw)

    with tempfile.TemporaryDirectory() as tmp:
        d = os.path.join(tmp, "model")
        shutil.copytree(model_dir, d)
        shutil.copyfile(os.path.join(tokenizer_dir, "tokenizer.json"), os.path.join(d, "tokenizer.json"))
        proc = AutoProcessor.from_pretrained(d)
        tok = proc.tokenizer
        ts_id = add_ts_token(tok)
        messages = [{"role": "user", "content": [{"type": "text", "text": DIAG_TS_TOKEN},
                                                 {"type": "text", "text": DIAG_PROMPT}]}]
        rendered = proc.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert rendered == DIAG_RENDERED, repr(rendered)
        ids_list = tok(rendered, add_special_tokens=False)["input_ids"]
        assert ids_list.count(ts_id) == 1
        ph = ids_list.index(ts_id)
        assert ids_list[ph - 3:ph] == tok("<|im_start|>user\n", add_special_tokens=False)["input_ids"], ids_list
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, attn_implementation="eager",
                                                                   dtype=torch.float32).eval()
        assert model.config.time_series_token_id == DIAG_TS_ID and model.config.tie_word_embeddings
        loaded = ref.load_qoq_tensors(ref.TimeSeriesEmbedding(hidden, **TINY).eval(),
                                      read_safetensors(os.path.join(d, "model.safetensors")))

        x = ref.preprocess(torch.from_numpy(np.load(os.path.join(folder, DIAG_SIGNAL))))[None]  # [1, 8, 2500]
        assert torch.all(x[0, KEEP_CONST_INDEX] == 0)
        rep = loaded.encoder.representation(x)
        ecg = loaded.linear(rep)
        ids = torch.tensor([ids_list], dtype=torch.int64)
        L = ids.shape[1]
        logits = forward_with_ecg(model, ids, ts_id, ecg)[0]  # [L, V]
        d_pos_explicit, d_pos_none, text_logits = position_checks(model, ids)
        assert d_pos_explicit == 0.0 and d_pos_none == 0.0

        # Greedy decoding, no cache: every step recomputes the whole sequence.
        seq, gen, step_gaps, gen_top = list(ids_list), [], [], []
        for _ in range(DIAG_NEW_TOKENS):
            s = torch.tensor([seq], dtype=torch.int64)
            row = forward_with_ecg(model, s, ts_id, ecg)[0, -1].clone()
            row[DIAG_BANNED] = float("-inf")
            top = row.topk(TOPK)
            gen_top.append(top)
            step_gaps.append((top.values[0] - top.values[1]).item())
            nxt = int(top.indices[0])
            gen.append(nxt)
            seq.append(nxt)
            if nxt in DIAG_STOP:
                break
        # fp64 run (tolerance scale)
        m64 = Qwen2_5_VLForConditionalGeneration.from_pretrained(d, attn_implementation="eager",
                                                                 dtype=torch.float64).eval()
        e64 = ref.TimeSeriesEmbedding(hidden, **TINY).double().eval()
        e64.load_state_dict(loaded.state_dict())
        ecg64 = e64(x.double())
        logits64 = forward_with_ecg(m64, ids, ts_id, ecg64)[0]
        gen_text = tok.decode(gen, skip_special_tokens=False)
        # the biased-std mistake in the preprocessing
        xb = torch.from_numpy(raw)[ref.KEEP_12_LEAD]
        sb = xb.std(-1, keepdim=True, unbiased=False)
        xb = ((xb - xb.mean(-1, keepdim=True)) / torch.where(sb == 0, torch.ones_like(sb), sb))[None]
        biased_effect = maxabs(loaded(xb) - ecg)
        biased_effect_signals = maxabs(xb - x)

    positions = [0, ph, ph + 1, L - 1]
    top = logits.topk(TOPK, dim=-1)
    gaps_at = [(top.values[p, 0] - top.values[p, 1]).item() for p in positions]
    tensors_out = {
        "signals": x.contiguous(),
        "ecg_representation": rep.contiguous(),
        "ecg_embeddings": ecg.contiguous(),
        "input_ids": ids[0].contiguous(),
        "logit_positions": torch.tensor(positions, dtype=torch.int64),
        "logits_at": logits[positions].contiguous(),
        "top_ids": top.indices.to(torch.int64).contiguous(),
        "top_logits": top.values.contiguous(),
        "gen_tokens": torch.tensor(gen, dtype=torch.int64),
        "gen_top_ids": torch.stack([t.indices for t in gen_top]).to(torch.int64),
        "gen_top_logits": torch.stack([t.values for t in gen_top]),
    }
    save_file(tensors_out, os.path.join(folder, "reference.safetensors"), metadata={"format": "pt"})
    meta = {
        "description": "tiny Qwen2.5-VL (tests/fixtures/qwen2_5_vl/diagnose/nested) + a tiny ECG-JEPA encoder "
                       "(E=64, depth 2, 16 heads, mlp 256) + projection 64 -> 8. Pipeline: signal.npy [12, 2500] "
                       "-> keep leads [0,1,6,7,8,9,10,11] -> per-lead z-score (unbiased std, 0 -> 1) -> encoder "
                       "-> projection; AutoProcessor chat template on one user turn [text <|time_series_pad|>, "
                       "text PROMPT] with add_generation_prompt; the Qwen2.5 tokenizer with <|time_series_pad|> "
                       "added as a special token (id 151665); forward on inputs_embeds with the placeholder row "
                       "replaced, position_ids arange(L); greedy without cache, banned ids set to -inf",
        "prompt": DIAG_PROMPT, "signal": DIAG_SIGNAL, "rate_hz": RATE_HZ, "signal_shape": list(raw.shape),
        "signal_leads": LEADS_12, "kept_leads": ref.KEEP_12_LEAD, "constant_lead": {
            "index": DIAG_CONST_LEAD, "name": LEADS_12[DIAG_CONST_LEAD], "value_mV": DIAG_CONST_VALUE},
        "time_series_token": DIAG_TS_TOKEN, "time_series_token_id": ts_id,
        "rendered": rendered, "seq_len": L, "placeholder_position": ph,
        "banned_ids": DIAG_BANNED, "stop_tokens": DIAG_STOP, "new_tokens": DIAG_NEW_TOKENS,
        "gen_tokens": gen, "gen_text": gen_text, "logit_positions": positions, "top_k": TOPK,
        "top2_gap_min_at_logit_positions": r6(min(gaps_at)),
        "top2_gap_min_at_last_and_generated": r6(min(step_gaps)),
        "top2_gap_at_logit_positions": [r6(g) for g in gaps_at],
        "top8_min_adjacent_gap_any_position": r6((top.values[:, :-1] - top.values[:, 1:]).min().item()),
        "top8_min_adjacent_gap_generated_steps": r6(min((t.values[:-1] - t.values[1:]).min().item() for t in gen_top)),
        "max_abs": {"signal_raw": r6(float(np.abs(raw).max())), "signals": r6(maxabs(x)),
                    "ecg_representation": r6(maxabs(rep)), "ecg_embeddings": r6(maxabs(ecg)),
                    "logits": r6(maxabs(logits))},
        "logits_std": r6(logits.std().item()),
        "ecg_row_effect_max_logit_change": r6(maxabs(logits - text_logits[0])),
        "biased_std_preprocessing_effect_on_signals": r6(biased_effect_signals),
        "biased_std_preprocessing_effect_on_ecg_embeddings": r6(biased_effect),
        "checks": {"input_ids_forward_vs_inputs_embeds_with_arange_positions": d_pos_explicit,
                   "input_ids_forward_vs_inputs_embeds_without_positions": d_pos_none,
                   "fp64_vs_fp32_ecg_embeddings": r6(maxabs(ecg64 - ecg.double())),
                   "fp64_vs_fp32_logits": r6(maxabs(logits64 - logits.double()))},
        "weight_bytes": os.path.getsize(os.path.join(model_dir, "model.safetensors")),
        "ecg_weights": tensor_listing(ecg_tensors),
        "tensors": tensor_listing(tensors_out),
        "transformers": transformers.__version__, "torch": torch.__version__, "made_by": "tools/make_ecg_fixtures.py",
    }
    assert min(gaps_at + step_gaps) > 1e-3, (gaps_at, step_gaps)
    assert not any(g in DIAG_BANNED for g in gen)
    write_json(os.path.join(folder, "reference.json"), meta, sort_keys=False)
    print(f"diagnose: L={L} ph={ph} gen={gen} {gen_text!r} gaps={min(gaps_at):.4f}/{min(step_gaps):.4f} "
          f"ecg effect {meta['ecg_row_effect_max_logit_change']} fp64 {meta['checks']['fp64_vs_fp32_logits']:.2e}",
          file=sys.stderr)


KEEP_CONST_INDEX = ref.KEEP_12_LEAD.index(DIAG_CONST_LEAD)


# ----------------------------------------------------------------------------- --original

@torch.no_grad()
def check_original(orig_dir, out):
    """Runs ECG-JEPA's own code from orig_dir on the fixtures: same sin-cos tables, same state-dict
    keys / order / _metadata, strict load of jepa_release.pth, identical representation()."""
    with tempfile.TemporaryDirectory() as tmp:
        os.makedirs(os.path.join(tmp, "timm", "models"))
        for p in ["timm/__init__.py", "timm/models/__init__.py"]:
            open(os.path.join(tmp, p), "w").close()
        with open(os.path.join(tmp, "timm", "models", "layers.py"), "w") as f:
            f.write("import torch.nn as nn\nDropPath = nn.Identity\n"
                    "def trunc_normal_(t, std=1.0, **kw):\n    return nn.init.trunc_normal_(t, std=std)\n")
        sys.path[:0] = [tmp, orig_dir]
        try:
            oj = importlib.import_module("ecg_jepa")
            op = importlib.import_module("pos_encoding")
            for E in (64, 768):
                assert np.array_equal(op.get_2d_sincos_pos_embed(E, 8, 50), ref.sincos_2d(E)), E
            full = oj.ecg_jepa(encoder_embed_dim=768, encoder_depth=12, encoder_num_heads=16, predictor_embed_dim=384,
                               predictor_depth=6, predictor_num_heads=12, c=8, pos_type="sincos", mask_scale=(0, 0),
                               leads=list(range(8))).encoder
            assert sum(p.numel() for p in full.parameters()) == ref.ENCODER_PARAMS_FULL
            mine = ref.EcgJepaEncoder(**ref.FULL)
            so, sm = full.state_dict(), mine.state_dict()
            assert list(so) == list(sm) and all(so[k].shape == sm[k].shape for k in so)
            assert dict(so._metadata) == dict(sm._metadata)
            tiny = oj.MaskTransformer(embed_dim=64, depth=2, num_heads=16, c=8, mask_scale=(0, 0)).eval()
            ck = torch.load(os.path.join(out, "encoder", "jepa_release.pth"), weights_only=True)
            tiny.load_state_dict(ck["encoder"], strict=True)
            cases = read_safetensors(os.path.join(out, "encoder", "cases.safetensors"))
            d = maxabs(tiny.representation(cases["signals"]) - cases["representation"])
            assert d == 0.0, d
            assert torch.equal(tiny._cross_attention_mask().bool(), ref.cross_pattern_mask())
        finally:
            del sys.path[:2]
    print("original ECG-JEPA code: sin-cos tables, state-dict layout, strict load and representation() "
          "identical", file=sys.stderr)


# ----------------------------------------------------------------------------- main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "ecg"))
    ap.add_argument("--tokenizer-dir", default=".qwen2.5-tokenizer")
    ap.add_argument("--original", help="a checkout of sehunfromdaegu/ECG_JEPA to cross-check against")
    args = ap.parse_args()
    assert transformers.__version__ == "5.24.0", transformers.__version__
    transformers.logging.set_verbosity_error()  # the load reports list the (expected) unexpected ECG keys
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(0)
    out = args.out
    os.makedirs(out, exist_ok=True)

    # Full-size parameter counts (QoQ-Med's TimeSeriesEmbedding on Qwen2.5-VL-7B).
    full = ref.TimeSeriesEmbedding(ref.QWEN25_7B_HIDDEN, **ref.FULL)
    n_enc, n_lin = ref.num_params(full.encoder), ref.num_params(full.linear)
    assert (n_enc, n_lin) == (ref.ENCODER_PARAMS_FULL, ref.PROJECTION_PARAMS_3584), (n_enc, n_lin)
    print(f"full size: encoder {n_enc:,} parameters, projection 768 -> 3584 {n_lin:,}", file=sys.stderr)
    del full

    enc, signals = make_encoder(out)
    for name, src, cls, ts_id, seed in FAMILIES:
        make_family(out, enc, signals, name, src, cls, ts_id, seed)
    make_diagnose(out, args.tokenizer_dir)
    if args.original:
        check_original(args.original, out)


if __name__ == "__main__":
    main()
