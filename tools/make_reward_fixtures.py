#!/usr/bin/env python3
"""Writes tests/fixtures/rewards: reward cases and the original QoQ-Med reward's scores for
them, so the Rust parity test needs no Python.

The original is `examples/reward_function/medical.py` of DDVD233/QoQ_Med. Its code is not
in this repository: pass the path of a checkout's copy.

    python tools/make_reward_fixtures.py --medical-py /path/to/medical.py [--out DIR]

Needs the reference environment (tools/reference-env.sh): torch, numpy, pillow, mathruler
(`medical.py` also imports wandb, which it never uses; a stub module stands in for it).

Writes (DIR defaults to tests/fixtures/rewards under the repository root):
  masks/*.png     small 8-bit grayscale segmentation masks, non-zero = region
  cases.jsonl     one case a line, in the `score` tool's input format:
                  id, response, answer, [gt_boxes], [mask], [image_size]
  original.jsonl  one line per case, same order: id and f1, iou, format, length, overall
                  as the original computes them, or `error` when the original raises

Deterministic: the masks come from fixed shapes and a seeded generator, the cases from
fixed text, and Python's `random` (which the original uses to decide whether to print a
sample) is seeded. Running it again rewrites identical files.
"""
import argparse
import contextlib
import importlib.util
import io
import json
import math
import os
import random
import sys
import types

import numpy as np
from PIL import Image, ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = 20261201


# ---------------------------------------------------------------------------------------
# Loading the original
# ---------------------------------------------------------------------------------------

def load_original(path):
    """Imports medical.py from `path` as a module (wandb stubbed: it is imported, unused)."""
    sys.modules.setdefault("wandb", types.ModuleType("wandb"))
    spec = importlib.util.spec_from_file_location("qoq_med_original_medical", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------

def make_masks(rng):
    """name -> HxW uint8 array. Shapes are chosen so that exact boxes are easy to state."""
    masks = {}

    # Ellipse centred at (30, 22), radii 18 x 12, in a non-square 64x48 image (catches
    # swapped width/height).
    img = Image.new("L", (64, 48), 0)
    ImageDraw.Draw(img).ellipse([12, 10, 48, 34], fill=255)
    masks["blob_64x48.png"] = np.array(img)

    # Square: columns 10..29, rows 12..31 (box [10, 12, 29, 31] covers it exactly, since
    # the original rasterises boxes with inclusive corners).
    sq = np.zeros((40, 40), np.uint8)
    sq[12:32, 10:30] = 255
    masks["square_40x40.png"] = sq

    # All zero: the original then falls back to the ground-truth box (or scores 0).
    masks["empty_32x32.png"] = np.zeros((32, 32), np.uint8)

    # Two blobs with different non-zero values (1 and 200): any non-zero pixel is region.
    img = Image.new("L", (80, 60), 0)
    d = ImageDraw.Draw(img)
    d.ellipse([6, 5, 30, 25], fill=1)
    d.rectangle([50, 35, 74, 54], fill=200)
    masks["two_blobs_80x60.png"] = np.array(img)

    # One pixel at x=5, y=7.
    px = np.zeros((16, 16), np.uint8)
    px[7, 5] = 128
    masks["pixel_16x16.png"] = px

    # Everything is region.
    masks["full_24x16.png"] = np.full((16, 24), 255, np.uint8)

    # Seeded random speckle (about 30% of pixels), values 1..255.
    sp = rng.integers(1, 256, size=(30, 50), dtype=np.uint8)
    sp[rng.random((30, 50)) > 0.3] = 0
    masks["speckle_50x30.png"] = sp
    return masks


def write_masks(out_dir, masks):
    folder = os.path.join(out_dir, "masks")
    os.makedirs(folder, exist_ok=True)
    # Idempotent: drop masks a previous version of this script wrote but this one does not.
    for name in os.listdir(folder):
        if name.endswith(".png") and name not in masks:
            os.remove(os.path.join(folder, name))
    for name, arr in masks.items():
        Image.fromarray(arr, "L").save(os.path.join(folder, name), optimize=True)


def read_mask(out_dir, rel):
    """The mask as the score tool sees it: decoded from the committed PNG."""
    arr = np.array(Image.open(os.path.join(out_dir, rel)))
    assert arr.dtype == np.uint8 and arr.ndim == 2, (rel, arr.dtype, arr.shape)
    return arr


# ---------------------------------------------------------------------------------------
# Response building blocks
# ---------------------------------------------------------------------------------------

THINK = ("<think>The frontal chest radiograph shows a patchy opacity in the right lower zone "
         "with air bronchograms, consistent with consolidation. The left lung is clear, the "
         "costophrenic angles are sharp and the cardiac silhouette is within normal limits."
         "</think>")


def fenced(items, tag="json"):
    """A fenced JSON list, one object per line, the way the model writes it."""
    body = ",\n".join("  " + json.dumps(it) for it in items)
    return f"```{tag}\n[\n{body}\n]\n```"


def box_items(*boxes, label="Pneumonia"):
    return [{"bbox_2d": list(b), "label": label} for b in boxes]


def response(boxed, boxes=((100, 120, 220, 260),), think=THINK, label="Pneumonia", json_block=None):
    """<think>, a ```json block of `boxes` (or the given raw `json_block`), \\boxed{`boxed`}.
    `boxed=None` leaves the box out; `json_block=""` leaves the JSON out."""
    parts = [think] if think else []
    if json_block is None:
        json_block = fenced(box_items(*boxes, label=label))
    if json_block:
        parts.append(json_block)
    if boxed is not None:
        parts.append("The final answer is \\boxed{" + boxed + "}.")
    return "\n".join(parts)


def with_json(raw, boxed="Pneumonia", think=THINK):
    """A response whose JSON part is the raw text `raw` (fences included or not)."""
    return response(boxed, think=think, json_block=raw)


def of_length(n, fill="a", boxed="Pneumonia"):
    """A well-formed response padded (inside <think>) to exactly n code points."""
    base = response(boxed, think="<think></think>")
    pad = n - len(base)
    assert pad >= 0, (n, len(base))
    reps = fill * (pad // len(fill) + 1)
    # Pad with whole `fill` units and, if needed, ASCII to land exactly on n.
    whole = reps[: (pad // len(fill)) * len(fill)]
    text = "<think>" + whole + "x" * (pad - len(whole)) + "</think>" + base[len("<think></think>"):]
    assert len(text) == n, (n, len(text))
    return text


# ---------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------

def build_cases(masks):
    cases = []
    size = {name: [int(a.shape[1]), int(a.shape[0])] for name, a in masks.items()}

    def add(id, resp, answer, gt_box=None, mask=None, image_size=None):
        c = {"id": id, "response": resp, "answer": answer}
        if gt_box is not None:
            c["gt_boxes"] = [list(gt_box)]
        if mask is not None:
            c["mask"] = "masks/" + mask
            c["image_size"] = size[mask]
        elif image_size is not None:
            c["image_size"] = list(image_size)
        assert all(c["id"] != o["id"] for o in cases), id
        cases.append(c)

    GT = (100, 120, 220, 260)  # the default predicted box is exactly this one

    # -- Ordinary well-formed responses ---------------------------------------------------
    add("basic-exact", response("Pneumonia"), "Pneumonia", GT, image_size=(512, 512))
    add("basic-exact-two-labels", response("Pneumonia, Pleural effusion"),
        "Pneumonia, Pleural effusion", GT)
    add("basic-order-swapped", response("Pleural effusion, Pneumonia"),
        "Pneumonia, Pleural effusion", GT)
    add("basic-partial-recall", response("Pneumonia"), "Pneumonia, Pleural effusion", GT)
    add("basic-partial-precision", response("Pneumonia, Cardiomegaly"), "Pneumonia", GT)
    add("basic-one-of-three", response("Pneumonia, Atelectasis, Cardiomegaly"),
        "Pneumonia, Pleural effusion, Edema", GT)
    add("basic-wrong", response("Cardiomegaly"), "Pneumonia", GT)
    add("basic-no-gt-box", response("Pneumonia"), "Pneumonia")
    add("basic-duplicate-labels", response("Pneumonia, Pneumonia"), "Pneumonia", GT)
    add("basic-gt-duplicate-labels", response("Pneumonia"), "Pneumonia, Pneumonia", GT)
    add("basic-no-think", response("Pneumonia", think=None), "Pneumonia", GT)
    add("basic-empty-response", "", "Pneumonia", GT)
    add("basic-only-boxed", "\\boxed{Pneumonia}", "Pneumonia", GT)
    add("basic-no-boxed", response(None), "Pneumonia", GT)
    add("basic-skin-lesion",
        "<think>Dermoscopy shows an asymmetric pigmented lesion with irregular borders, "
        "atypical network and blue-white veil.</think>\n"
        + fenced([{"bbox_2d": [40, 52, 300, 290], "label": "Melanoma"}])
        + "\n\\boxed{Melanoma}", "Melanoma", (48, 60, 290, 280), image_size=(384, 384))

    # -- Separators: every (response separator, ground-truth separator) pair --------------
    seps = [("comma-space", ", "), ("and", " and "), ("amp-spaced", " & "), ("comma", ","), ("amp", "&")]
    for rname, rsep in seps:
        for gname, gsep in seps:
            add(f"sep-{rname}-vs-{gname}", response(rsep.join(["Pneumonia", "Pleural effusion"])),
                gsep.join(["Pleural effusion", "Pneumonia"]), GT)
    # Mixed separators: only the first separator (in the list's order) present is used.
    add("sep-mixed-comma-space-and", response("Pneumonia, Edema and Atelectasis"),
        "Pneumonia, Edema, Atelectasis", GT)
    add("sep-mixed-and-amp", response("Pneumonia and Edema & Atelectasis"),
        "Pneumonia, Edema, Atelectasis", GT)
    add("sep-mixed-comma-without-space", response("Pneumonia,Edema, Atelectasis"),
        "Pneumonia, Edema, Atelectasis", GT)
    add("sep-mixed-amp-and-comma", response("Pneumonia & Edema,Atelectasis"),
        "Pneumonia & Edema,Atelectasis", GT)
    add("sep-trailing-comma", response("Pneumonia, "), "Pneumonia", GT)
    add("sep-trailing-comma-no-space", response("Pneumonia,"), "Pneumonia", GT)
    add("sep-leading-comma", response(", Pneumonia"), "Pneumonia", GT)
    add("sep-double-comma", response("Pneumonia, , Edema"), "Pneumonia, Edema", GT)
    add("sep-only-comma", response(","), "Pneumonia", GT)
    add("sep-empty-parts-both", response("Pneumonia,"), "Pneumonia,", GT)
    add("sep-and-without-spaces", response("PneumoniaandEdema"), "Pneumonia, Edema", GT)
    add("sep-and-inside-label", response("Hand and foot disease"), "Hand and foot disease", GT)
    add("sep-and-inside-label-vs-comma", response("Hand and foot disease"), "Hand, foot disease", GT)
    add("sep-and-leading", response("and Edema"), "Edema", GT)
    add("sep-semicolon-not-a-separator", response("Pneumonia; Edema"), "Pneumonia, Edema", GT)
    add("sep-slash-not-a-separator", response("Pneumonia/Edema"), "Pneumonia/Edema", GT)
    add("sep-newline-not-a-separator", response("Pneumonia\nEdema"), "Pneumonia, Edema", GT)
    add("sep-gt-with-boxed", response("Pneumonia"), "\\boxed{Pneumonia}", GT)
    add("sep-gt-trailing-brace", response("Pneumonia"), "Pneumonia}", GT)

    # -- Case and whitespace -------------------------------------------------------------
    add("case-lower-vs-title", response("pneumonia"), "Pneumonia", GT)
    add("case-upper-vs-title", response("PNEUMONIA"), "Pneumonia", GT)
    add("case-mixed-two", response("pleural effusion, Pneumonia"), "Pleural effusion, Pneumonia", GT)
    add("ws-padded-in-box", response("   Pneumonia   "), "Pneumonia", GT)
    add("ws-padded-parts", response(" Pneumonia ,  Edema "), "Pneumonia,Edema", GT)
    add("ws-tabs-newlines", response("\tPneumonia,\n Edema\t"), "Pneumonia, Edema", GT)
    add("ws-gt-padded", response("Pneumonia"), "  Pneumonia  ", GT)
    add("ws-inner-double-space", response("Pleural  effusion"), "Pleural effusion", GT)
    add("ws-nbsp-around", response("\u00a0Pneumonia\u00a0"), "Pneumonia", GT)
    add("ws-nbsp-inside", response("Pleural\u00a0effusion"), "Pleural effusion", GT)
    add("ws-ideographic-space", response("\u3000Pneumonia\u3000"), "Pneumonia", GT)
    add("ws-em-space", response("\u2003Pneumonia, Edema\u2003"), "Pneumonia, Edema", GT)
    add("ws-next-line-u0085", response("\u0085Pneumonia\u0085"), "Pneumonia", GT)
    add("ws-unit-separator-u001f", response("\u001fPneumonia\u001f"), "Pneumonia", GT)
    add("ws-file-separator-u001c", response("Pneumonia\u001c, Edema"), "Pneumonia, Edema", GT)
    add("ws-zero-width-space", response("\u200bPneumonia"), "Pneumonia", GT)
    add("ws-line-separator-u2028", response("\u2028Pneumonia"), "Pneumonia", GT)
    add("ws-vertical-tab-formfeed", response("\u000bPneumonia\u000c"), "Pneumonia", GT)

    # -- \boxed{} extraction -------------------------------------------------------------
    add("boxed-several-last-counts", response("Pneumonia", think="<think>Maybe \\boxed{Edema}? "
        "Or \\boxed{Cardiomegaly}.</think>"), "Pneumonia", GT)
    add("boxed-several-last-wrong", "\\boxed{Pneumonia} no wait \\boxed{Edema}", "Pneumonia", GT)
    add("boxed-in-think-after-answer", "\\boxed{Pneumonia} <think>or \\boxed{Edema}</think>",
        "Pneumonia", GT)
    add("boxed-nested-text", response("\\text{Pneumonia}"), "Pneumonia", GT)
    add("boxed-nested-text-gt-same", response("\\text{Pneumonia}"), "\\text{Pneumonia}", GT)
    add("boxed-inner-braces", response("Pneumonia {right}"), "Pneumonia {right", GT)
    add("boxed-nested-boxed", response("\\boxed{Pneumonia}"), "Pneumonia", GT)
    add("boxed-box-inside-box-last-opening", "\\boxed{Edema \\boxed{Pneumonia}}", "Pneumonia", GT)
    add("boxed-escaped-brace", "\\boxed{Pneumonia \\} Edema}", "Pneumonia \\", GT)
    add("boxed-extra-closing", "\\boxed{Pneumonia}}}", "Pneumonia", GT)
    add("boxed-unterminated-last", "\\boxed{Pneumonia} and finally \\boxed{Edema", "Pneumonia", GT)
    add("boxed-unterminated-only", response(None) + "\n\\boxed{Pneumonia", "Pneumonia", GT)
    add("boxed-unbalanced-inner", "\\boxed{Pneumonia {left}", "Pneumonia", GT)
    add("boxed-empty", response(""), "Pneumonia", GT)
    add("boxed-empty-gt-empty", response(""), "", GT)
    add("boxed-spaces-gt-empty", response("   "), "", GT)
    add("boxed-literal-None", response("None"), "None", GT)
    add("boxed-literal-None-padded", response(" None "), "None", GT)
    add("boxed-space-before-brace", "\\boxed {Pneumonia}", "Pneumonia", GT)
    add("boxed-double-backslash", "\\\\boxed{Pneumonia}", "Pneumonia", GT)
    add("boxed-fbox-not-boxed", "\\fbox{Pneumonia}", "Pneumonia", GT)
    add("boxed-repeated-2000-same", response("Pneumonia") + " \\boxed{Pneumonia}" * 2000, "Pneumonia", GT)
    add("boxed-repeated-2000-empty", "\\boxed{}" * 2000, "Pneumonia")
    add("boxed-repeated-2000-empty-then-answer", "\\boxed{}" * 2000 + "\\boxed{Pneumonia}", "Pneumonia")
    add("boxed-repeated-2000-unclosed", "\\boxed{Pneumonia}" + "\\boxed{" * 2000, "Pneumonia")
    add("boxed-repeated-2000-nested", "\\boxed{" * 2000 + "Pneumonia" + "}" * 2000, "Pneumonia")
    # Labels that are substrings of other labels.
    add("substr-pred-shorter", response("effusion"), "Pleural effusion", GT)
    add("substr-pred-longer", response("Pleural effusion"), "effusion", GT)
    add("substr-both-present", response("Effusion, Pleural effusion"), "Pleural effusion", GT)
    add("substr-gt-both", response("Pleural effusion"), "Effusion, Pleural effusion", GT)
    add("substr-carcinoma", response("Carcinoma"), "Basal cell carcinoma", GT)

    # -- Length: the original counts code points (Python str length) -------------------
    for n in (599, 600, 601):
        add(f"len-ascii-{n}", of_length(n), "Pneumonia", GT)
    for n in (599, 600, 601):
        add(f"len-latin1-e-acute-{n}", of_length(n, fill="\u00e9"), "Pneumonia", GT)
    for n in (599, 600, 601):
        add(f"len-cjk-{n}", of_length(n, fill="\u80ba"), "Pneumonia", GT)
    for n in (599, 600, 601):
        add(f"len-emoji-astral-{n}", of_length(n, fill="\U0001fac1"), "Pneumonia", GT)
    add("len-combining-600", of_length(600, fill="e\u0301"), "Pneumonia", GT)
    add("len-one-char", "x", "Pneumonia")
    add("len-300", of_length(300), "Pneumonia", GT)

    # -- Fences and JSON parsing ---------------------------------------------------------
    items = box_items(GT)
    js = json.dumps(items)
    add("fence-none-inline-json", with_json("Boxes: " + js), "Pneumonia", GT)
    add("fence-none-pure-json", js, "Pneumonia", GT)
    add("fence-plain-no-tag", with_json(fenced(items, tag="")), "Pneumonia", GT)
    add("fence-python-tag", with_json(fenced(items, tag="python")), "Pneumonia", GT)
    add("fence-uppercase-JSON", with_json(fenced(items, tag="JSON")), "Pneumonia", GT)
    add("fence-json-trailing-space", with_json(f"```json \n{js}\n```"), "Pneumonia", GT)
    add("fence-indented", with_json(f"  ```json\n  {js}\n  ```"), "Pneumonia", GT)
    add("fence-inline-one-line", with_json(f"```json {js} ```"), "Pneumonia", GT)
    add("fence-prose-before-on-line", with_json(f"Here: ```json\n{js}\n```"), "Pneumonia", GT)
    add("fence-unclosed-at-end", THINK + "\n\\boxed{Pneumonia}\n```json\n" + js, "Pneumonia", GT)
    add("fence-unclosed-then-text", with_json(f"```json\n{js}"), "Pneumonia", GT)
    add("fence-empty", with_json("```json\n```"), "Pneumonia", GT)
    add("fence-whitespace-only", with_json("```json\n   \n\n```"), "Pneumonia", GT)
    add("fence-crlf", with_json(f"```json\n{js}\n```").replace("\n", "\r\n"), "Pneumonia", GT)
    add("fence-cr-only", with_json(f"```json\r{js}\r```"), "Pneumonia", GT)
    add("fence-u2028-line-separator", with_json(f"```json\u2028{js}\u2028```"), "Pneumonia", GT)
    add("fence-two-first-invalid", with_json("```json\n[{\"bbox_2d\": [1, 2, 3, 4], \"label\":}]\n```\n"
        + fenced(items)), "Pneumonia", GT)
    add("fence-two-first-valid-other-box", with_json(fenced(box_items((0, 0, 50, 50))) + "\n"
        + fenced(items)), "Pneumonia", GT)
    add("fence-two-first-plain-prose", with_json("```\nsee below\n```\n" + fenced(items)), "Pneumonia", GT)
    add("fence-three-markers", with_json("```\n" + fenced(items)), "Pneumonia", GT)
    add("fence-four-backticks", with_json(f"````json\n{js}\n````"), "Pneumonia", GT)
    add("fence-json-then-single-quoted", with_json("```json\n[{'bbox_2d': [0, 0, 50, 50], 'label': 'x'},]\n```\n"
        + fenced(items)), "Pneumonia", GT)
    add("json-invalid", with_json("```json\n[{\"bbox_2d\": [100, 120, 220, 260], \"label\": \"Pneumonia\"\n```"),
        "Pneumonia", GT)
    add("json-invalid-garbage", with_json("```json\nnot json at all\n```"), "Pneumonia", GT)
    add("json-single-quoted", with_json("```json\n[{'bbox_2d': [100, 120, 220, 260], 'label': 'Pneumonia'}]\n```"),
        "Pneumonia", GT)
    add("json-single-quoted-apostrophe", with_json(
        "```json\n[{'bbox_2d': [100, 120, 220, 260], 'label': 'Crohn's disease'}]\n```", boxed="Crohn's disease"),
        "Crohn's disease", GT)
    add("json-double-quoted-apostrophe", with_json(fenced(box_items(GT, label="Crohn's disease")), boxed="Crohn's disease"),
        "Crohn's disease", GT)
    add("json-trailing-comma", with_json(
        "```json\n[\n  {\"bbox_2d\": [100, 120, 220, 260], \"label\": \"Pneumonia\"},\n]\n```"), "Pneumonia", GT)
    add("json-trailing-comma-in-box", with_json(
        "```json\n[{\"bbox_2d\": [100, 120, 220, 260,], \"label\": \"Pneumonia\"}]\n```"), "Pneumonia", GT)
    add("json-trailing-comma-with-null", with_json(
        "```json\n[{\"bbox_2d\": [100, 120, 220, 260], \"label\": null},]\n```"), "Pneumonia", GT)
    add("json-python-literals", with_json(
        "```json\n[{'bbox_2d': [100, 120, 220, 260], 'label': 'Pneumonia', 'ok': True, 'x': None}]\n```"),
        "Pneumonia", GT)
    add("json-python-tuple-box", with_json(
        "```json\n[{'bbox_2d': (100, 120, 220, 260), 'label': 'Pneumonia'}]\n```"), "Pneumonia", GT)
    add("json-python-underscore-numbers", with_json(
        "```json\n[{'bbox_2d': [1_00, 120, 220, 260], 'label': 'Pneumonia'}]\n```"), "Pneumonia", GT)
    add("json-comment", with_json(
        "```json\n[{\"bbox_2d\": [100, 120, 220, 260], \"label\": \"Pneumonia\"}] // right lung\n```"),
        "Pneumonia", GT)
    add("json-duplicate-keys", with_json(
        "```json\n[{\"bbox_2d\": [0, 0, 10, 10], \"bbox_2d\": [100, 120, 220, 260], \"label\": \"Pneumonia\"}]\n```"),
        "Pneumonia", GT)
    add("json-unicode-escapes", with_json(
        "```json\n[{\"bbox_2d\": [100, 120, 220, 260], \"label\": \"Pneumonie \\u00e0 droite\"}]\n```"),
        "Pneumonia", GT)
    add("json-nested-depth-50", with_json("```json\n" + "[" * 50 + "]" * 50 + "\n```"), "Pneumonia", GT)
    add("json-nested-depth-2000", with_json("```json\n" + "[" * 2000 + "]" * 2000 + "\n```"), "Pneumonia", GT)
    add("json-bigint-5000-digits", with_json(
        "```json\n[{\"bbox_2d\": [" + "1" * 5000 + ", 120, 220, 260], \"label\": \"Pneumonia\"}]\n```"),
        "Pneumonia", GT)
    add("json-bigint-30-digits-box", with_json(fenced(box_items((100, 120, 10 ** 30, 260)))),
        "Pneumonia", GT)
    add("json-top-level-zero", with_json("```json\n0\n```"), "Pneumonia", GT)
    add("json-top-level-string", with_json("```json\n\"Pneumonia\"\n```"), "Pneumonia", GT)
    add("json-top-level-null", with_json("```json\nnull\n```"), "Pneumonia", GT)
    add("json-top-level-numbers", with_json("```json\n[100, 120, 220, 260]\n```"), "Pneumonia", GT)
    add("json-empty-list", with_json("```json\n[]\n```"), "Pneumonia", GT)
    add("json-empty-object", with_json("```json\n{}\n```"), "Pneumonia", GT)
    add("json-list-non-dict-items", with_json(
        "```json\n[\"Pneumonia\", 3, null, {\"bbox_2d\": [100, 120, 220, 260], \"label\": \"Pneumonia\"}]\n```"),
        "Pneumonia", GT)
    add("json-list-only-non-dict", with_json("```json\n[\"Pneumonia\", [1, 2, 3, 4]]\n```"), "Pneumonia", GT)
    add("json-missing-label", with_json("```json\n[{\"bbox_2d\": [100, 120, 220, 260]}]\n```"), "Pneumonia", GT)
    add("json-missing-bbox", with_json("```json\n[{\"label\": \"Pneumonia\"}]\n```"), "Pneumonia", GT)
    add("json-bbox-key-misnamed", with_json("```json\n[{\"bbox\": [100, 120, 220, 260], \"label\": \"Pneumonia\"}]\n```"),
        "Pneumonia", GT)
    add("json-half-valid-items", with_json(fenced([
        {"bbox_2d": [100, 120, 220, 260], "label": "Pneumonia"},
        {"bbox_2d": [1, 2, 3], "label": "Edema"}])), "Pneumonia", GT)
    add("json-single-object", with_json("```json\n{\"bbox_2d\": [100, 120, 220, 260], \"label\": \"Pneumonia\"}\n```"),
        "Pneumonia", GT)
    add("json-objects-of-interest", with_json(
        "```json\n{\"objects_of_interest\": [{\"bbox_2d\": [100, 120, 220, 260], \"label\": \"Pneumonia\"}]}\n```"),
        "Pneumonia", GT)
    add("json-objects-of-interest-not-list", with_json(
        "```json\n{\"objects_of_interest\": {\"bbox_2d\": [100, 120, 220, 260], \"label\": \"Pneumonia\"}}\n```"),
        "Pneumonia", GT)
    add("json-objects-of-interest-number", with_json("```json\n{\"objects_of_interest\": 5}\n```"), "Pneumonia", GT)
    add("json-object-both-keys", with_json(
        "```json\n{\"bbox_2d\": [0, 0, 10, 10], \"objects_of_interest\": [{\"bbox_2d\": [100, 120, 220, 260]}]}\n```"),
        "Pneumonia", GT)

    # -- Coordinates, box against box (no image needed; image_size given on some) -------
    def box_case(id, *pred, gt=GT, answer="Pneumonia", raw=None, image_size=None):
        block = raw if raw is not None else fenced(box_items(*pred))
        add(id, with_json(block), answer, gt, image_size=image_size)

    box_case("box-exact", GT)
    box_case("box-partial-overlap", (150, 170, 270, 310))
    box_case("box-contained-pred-inside-gt", (120, 140, 200, 240))
    box_case("box-contained-gt-inside-pred", (50, 60, 300, 400))
    box_case("box-disjoint", (300, 300, 400, 400))
    box_case("box-touching-edge", (220, 120, 300, 260))
    box_case("box-fractional", (100.5, 120.25, 219.75, 259.5))
    box_case("box-fractional-gt", (100, 120, 220, 260), gt=(99.5, 119.5, 220.5, 260.5))
    box_case("box-reversed-corners", (220, 260, 100, 120))
    box_case("box-reversed-x-only", (220, 120, 100, 260))
    box_case("box-negative", (-50, -40, 150, 200))
    box_case("box-outside-image", (600, 600, 700, 700), gt=(450, 450, 520, 520), image_size=(512, 512))
    box_case("box-partly-outside-image", (400, 400, 700, 700), gt=(450, 450, 500, 500), image_size=(512, 512))
    box_case("box-zero-area-pred", (150, 150, 150, 200))
    box_case("box-zero-area-gt", GT, gt=(150, 150, 150, 200))
    box_case("box-zero-area-both-same", (150, 150, 150, 150), gt=(150, 150, 150, 150))
    box_case("box-huge-1e30", (0, 0, 1e30, 1e30))
    box_case("box-huge-1e300", (-1e300, -1e300, 1e300, 1e300))
    box_case("box-huge-gt-1e30", GT, gt=(0.0, 0.0, 1e30, 1e30))
    box_case("box-nan", raw="```json\n[{\"bbox_2d\": [NaN, 120, 220, 260], \"label\": \"Pneumonia\"}]\n```")
    box_case("box-nan-x2", raw="```json\n[{\"bbox_2d\": [100, 120, NaN, 260], \"label\": \"Pneumonia\"}]\n```")
    box_case("box-infinity", raw="```json\n[{\"bbox_2d\": [100, 120, Infinity, 260], \"label\": \"Pneumonia\"}]\n```")
    box_case("box-minus-infinity", raw="```json\n[{\"bbox_2d\": [-Infinity, -Infinity, Infinity, Infinity], \"label\": \"Pneumonia\"}]\n```")
    box_case("box-three-numbers", (100, 120, 220))
    box_case("box-five-numbers", (100, 120, 220, 260, 7))
    box_case("box-strings", raw="```json\n[{\"bbox_2d\": [\"100\", \"120\", \"220\", \"260\"], \"label\": \"Pneumonia\"}]\n```")
    box_case("box-one-string", raw="```json\n[{\"bbox_2d\": \"100, 120, 220, 260\", \"label\": \"Pneumonia\"}]\n```")
    box_case("box-null", raw="```json\n[{\"bbox_2d\": null, \"label\": \"Pneumonia\"}]\n```")
    box_case("box-nested-list", raw="```json\n[{\"bbox_2d\": [[100, 120, 220, 260]], \"label\": \"Pneumonia\"}]\n```")
    box_case("box-dict", raw="```json\n[{\"bbox_2d\": {\"x1\": 100, \"y1\": 120, \"x2\": 220, \"y2\": 260}, \"label\": \"Pneumonia\"}]\n```")
    box_case("box-booleans", raw="```json\n[{\"bbox_2d\": [true, false, 220, 260], \"label\": \"Pneumonia\"}]\n```")
    box_case("box-empty-list", raw="```json\n[{\"bbox_2d\": [], \"label\": \"Pneumonia\"}]\n```")
    box_case("box-single-object", raw="```json\n{\"bbox_2d\": [150, 170, 270, 310], \"label\": \"Pneumonia\"}\n```")
    box_case("box-objects-of-interest", raw="```json\n{\"objects_of_interest\": [{\"bbox_2d\": [150, 170, 270, 310], \"label\": \"Pneumonia\"}]}\n```")
    # Several predicted boxes against one ground-truth box.
    box_case("box-two-preds", GT, (150, 170, 270, 310))
    box_case("box-two-preds-same", GT, GT)
    box_case("box-three-preds", GT, (0, 0, 10, 10), (150, 170, 270, 310))
    box_case("box-short-then-valid", (100, 120, 220), GT)
    box_case("box-short-then-two-valid", (1, 2), GT, GT)
    box_case("box-valid-then-null", raw=fenced([{"bbox_2d": list(GT), "label": "Pneumonia"},
                                                {"bbox_2d": None, "label": "Edema"}]))
    box_case("box-objects-of-interest-two", raw="```json\n{\"objects_of_interest\": [{\"bbox_2d\": [100, 120, 220, 260]}, "
             "{\"bbox_2d\": [150, 170, 270, 310]}]}\n```")

    # -- Segmentation masks --------------------------------------------------------------
    def mask_case(id, mask, *pred, gt=None, answer="Pneumonia", raw=None):
        block = raw if raw is not None else fenced(box_items(*pred))
        add(id, with_json(block), answer, gt, mask=mask)

    # blob_64x48: ellipse spanning x 12..48, y 10..34.
    m = "blob_64x48.png"
    mask_case("mask-blob-bounding-box", m, (12, 10, 48, 34))
    mask_case("mask-blob-partial", m, (30, 22, 60, 45))
    mask_case("mask-blob-reversed", m, (48, 34, 12, 10))
    mask_case("mask-blob-fractional", m, (12.9, 10.9, 47.1, 33.99))
    mask_case("mask-blob-negative-fraction", m, (-0.9, -0.5, 30, 20))
    mask_case("mask-blob-outside-image", m, (70, 50, 100, 90))
    mask_case("mask-blob-clamped-huge", m, (-1000, -1000, 1e30, 1e30))
    mask_case("mask-blob-disjoint", m, (0, 0, 8, 6))
    mask_case("mask-blob-zero-area", m, (20, 20, 20, 30))
    mask_case("mask-blob-one-pixel-wide", m, (20, 15, 21, 30))
    mask_case("mask-blob-two-preds", m, (12, 10, 48, 34), (0, 0, 5, 5))
    mask_case("mask-blob-three-numbers-and-valid", m, (12, 10, 48), (12, 10, 48, 34))
    mask_case("mask-blob-five-numbers", m, (12, 10, 48, 34, 99))
    mask_case("mask-blob-nan", m, raw="```json\n[{\"bbox_2d\": [NaN, 10, 48, 34], \"label\": \"Pneumonia\"}]\n```")
    mask_case("mask-blob-nan-and-valid", m, raw="```json\n[{\"bbox_2d\": [12, 10, 48, 34], \"label\": \"a\"}, "
              "{\"bbox_2d\": [12, 10, Infinity, 34], \"label\": \"b\"}]\n```")
    mask_case("mask-blob-infinity", m, raw="```json\n[{\"bbox_2d\": [0, 0, Infinity, Infinity], \"label\": \"Pneumonia\"}]\n```")
    mask_case("mask-blob-strings", m, raw="```json\n[{\"bbox_2d\": [\"12\", \"10\", \"48\", \"34\"], \"label\": \"Pneumonia\"}]\n```")
    mask_case("mask-blob-string-floats", m, raw="```json\n[{\"bbox_2d\": [\"12.5\", \"10\", \"48\", \"34\"], \"label\": \"Pneumonia\"}]\n```")
    mask_case("mask-blob-string-digits-second", m, raw="```json\n[{\"bbox_2d\": [12, 10, 48, 34], \"label\": \"a\"}, "
              "{\"bbox_2d\": \"1234\", \"label\": \"b\"}]\n```")
    mask_case("mask-blob-booleans", m, raw="```json\n[{\"bbox_2d\": [true, true, 48, 34], \"label\": \"Pneumonia\"}]\n```")
    mask_case("mask-blob-valid-then-null", m, raw=fenced([{"bbox_2d": [12, 10, 48, 34], "label": "a"},
                                                           {"bbox_2d": None, "label": "b"}]))
    mask_case("mask-blob-single-object", m, raw="```json\n{\"bbox_2d\": [12, 10, 48, 34], \"label\": \"Pneumonia\"}\n```")
    mask_case("mask-blob-objects-of-interest", m, raw="```json\n{\"objects_of_interest\": [{\"bbox_2d\": [12, 10, 48, 34]}, "
              "{\"bbox_2d\": [30, 22, 60, 45]}]}\n```")
    mask_case("mask-blob-with-gt-box", m, (12, 10, 48, 34), gt=(0, 0, 5, 5))
    mask_case("mask-blob-no-boxes", m, raw="```json\n[]\n```")
    # square_40x40: columns 10..29, rows 12..31.
    m = "square_40x40.png"
    mask_case("mask-square-exact", m, (10, 12, 29, 31))
    mask_case("mask-square-exclusive-corners", m, (10, 12, 30, 32))
    mask_case("mask-square-inside", m, (15, 15, 20, 20))
    mask_case("mask-square-whole-image", m, (0, 0, 39, 39))
    mask_case("mask-square-beyond-image", m, (0, 0, 400, 400))
    mask_case("mask-square-two-exact", m, (10, 12, 29, 31), (10, 12, 29, 31))
    mask_case("mask-square-fractional-gt-box-ignored", m, (10, 12, 29, 31), gt=(10.5, 12.5, 29.5, 31.5))
    # two_blobs_80x60: values 1 and 200.
    m = "two_blobs_80x60.png"
    mask_case("mask-two-blobs-first", m, (6, 5, 30, 25))
    mask_case("mask-two-blobs-second", m, (50, 35, 74, 54))
    mask_case("mask-two-blobs-both-boxes", m, (6, 5, 30, 25), (50, 35, 74, 54))
    mask_case("mask-two-blobs-spanning-box", m, (6, 5, 74, 54))
    mask_case("mask-two-blobs-bottom-edge", m, (50, 35, 79, 59))
    # pixel_16x16: the pixel x=5, y=7.
    m = "pixel_16x16.png"
    mask_case("mask-pixel-point-box", m, (5, 7, 5, 7))
    mask_case("mask-pixel-2x2", m, (5, 7, 6, 8))
    mask_case("mask-pixel-2x2-before", m, (4, 6, 5, 7))
    mask_case("mask-pixel-whole", m, (0, 0, 15, 15))
    mask_case("mask-pixel-miss", m, (6, 8, 10, 10))
    # full_24x16: every pixel.
    m = "full_24x16.png"
    mask_case("mask-full-whole", m, (0, 0, 23, 15))
    mask_case("mask-full-clamped", m, (-5, -5, 100, 100))
    mask_case("mask-full-half", m, (0, 0, 11, 15))
    mask_case("mask-full-last-pixel-row", m, (0, 15, 23, 15))
    # speckle_50x30: seeded noise.
    m = "speckle_50x30.png"
    mask_case("mask-speckle-whole", m, (0, 0, 49, 29))
    mask_case("mask-speckle-corner", m, (3, 4, 20, 17))
    mask_case("mask-speckle-two", m, (3, 4, 20, 17), (25, 10, 45, 28))
    # empty_32x32: falls back to the ground-truth box, or scores 0 without one.
    m = "empty_32x32.png"
    mask_case("mask-empty-no-gt", m, (4, 4, 20, 20))
    mask_case("mask-empty-gt-exact", m, (4, 4, 20, 20), gt=(4, 4, 20, 20))
    mask_case("mask-empty-gt-partial", m, (4, 4, 20, 20), gt=(10, 10, 28, 28))
    mask_case("mask-empty-gt-two-preds", m, (4, 4, 20, 20), (10, 10, 28, 28), gt=(10, 10, 28, 28))
    mask_case("mask-empty-gt-reversed", m, (20, 20, 4, 4), gt=(4, 4, 20, 20))
    mask_case("mask-empty-gt-outside", m, (40, 40, 60, 60), gt=(40, 40, 60, 60))
    return cases


# ---------------------------------------------------------------------------------------
# Scoring with the original
# ---------------------------------------------------------------------------------------

FIELDS = (("f1", "standard_score"), ("iou", "iou_score"), ("format", "format_score"),
          ("length", "length_score"), ("overall", "overall"))


def score_case(original, case, mask_arrays):
    """The original's result for one case, as an original.jsonl record."""
    mask = mask_arrays[case["mask"]] if "mask" in case else None
    gt = np.asarray(case["gt_boxes"][0], dtype=np.float64) if case.get("gt_boxes") else None
    try:
        # The original occasionally prints a sample (random.random() < 0.0005): keep it
        # off our stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            s = original.medical_compute_score(case["response"], case["answer"],
                                               segmentation_mask=mask, bbox=gt)
    except Exception as e:  # what the original raises is part of the fixture
        msg = str(e)
        return {"id": case["id"], "error": f"{type(e).__name__}: {msg[:200]}"}
    rec = {"id": case["id"]}
    for ours, theirs in FIELDS:
        # Mask IoUs come back as 0-d float32 tensors; everything else is int or float.
        v = float(s[theirs])
        if not math.isfinite(v):
            raise SystemExit(f"{case['id']}: non-finite {theirs} = {v}; decide how to store it")
        rec[ours] = v
    return rec


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for r in records:
            # ASCII-only lines: \u2028, \x85 and friends stay escaped, so no reader splits a
            # line inside a response.
            f.write(json.dumps(r, ensure_ascii=True) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--medical-py", required=True, help="path to QoQ_Med's examples/reward_function/medical.py")
    ap.add_argument("--out", default=os.path.join(REPO, "tests", "fixtures", "rewards"))
    args = ap.parse_args()

    original = load_original(args.medical_py)
    rng = np.random.default_rng(SEED)
    random.seed(SEED)

    os.makedirs(args.out, exist_ok=True)
    masks = make_masks(rng)
    write_masks(args.out, masks)
    mask_arrays = {"masks/" + name: read_mask(args.out, "masks/" + name) for name in masks}

    cases = build_cases(masks)
    results = [score_case(original, c, mask_arrays) for c in cases]
    write_jsonl(os.path.join(args.out, "cases.jsonl"), cases)
    write_jsonl(os.path.join(args.out, "original.jsonl"), results)

    errors = [r for r in results if "error" in r]
    print(f"{len(cases)} cases, {len(errors)} raised in the original, {len(masks)} masks -> {args.out}",
          file=sys.stderr)
    for r in errors:
        print(f"  {r['id']}: {r['error'][:100]}", file=sys.stderr)


if __name__ == "__main__":
    main()
