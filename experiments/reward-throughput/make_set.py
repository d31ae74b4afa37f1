#!/usr/bin/env python3
"""Writes a synthetic reward-scoring set in the `score` tool's input format.

    python make_set.py --out DIR --n N --seed S [--masks]

DIR/responses.jsonl holds N responses shaped like QoQ-Med rollouts: a <think> paragraph of
medical-sounding reasoning, a ```json list of 1-3 {"bbox_2d", "label"} boxes and a final
\\boxed{} answer of 1-3 diagnosis labels, about 700-1500 characters each. About 10% are
malformed (no box list, broken JSON, or reasoning without its <think> tags). Responses come in groups of 8 that
share a ground truth, as the 8 rollouts of one prompt do in GRPO.

Without --masks each group's ground truth is one box (`gt_boxes`) in a 512x512 image; with
--masks it is a 512x512 grayscale PNG under DIR/masks/ (a blob of overlapping ellipses,
non-zero = region), referenced by `mask`. Same seed, same files. Needs only Python and, for
--masks, Pillow.
"""
import argparse
import json
import os
import random

GROUP = 8
SIZE = 512

LABELS = [
    "Pneumonia", "Pleural effusion", "Cardiomegaly", "Atelectasis", "Pneumothorax", "Edema",
    "Consolidation", "Lung nodule", "Lung mass", "Emphysema", "Fibrosis", "Fracture",
    "Tuberculosis", "Hernia", "Infiltration", "Pleural thickening", "Melanoma",
    "Basal cell carcinoma", "Nevus", "Actinic keratosis", "Seborrheic keratosis",
    "Diabetic retinopathy", "Glaucoma", "Cataract", "Macular degeneration", "Glioma",
    "Meningioma", "Pituitary tumor", "Hemorrhage", "Polyp",
]

# Word lists for the <think> paragraph.
MODALITIES = ["frontal chest radiograph", "lateral radiograph", "axial CT slice", "T2-weighted MRI",
              "dermoscopic image", "fundus photograph", "contrast-enhanced CT", "ultrasound image",
              "endoscopic frame", "portable AP film"]
REGIONS = ["right lower lobe", "left upper lobe", "perihilar region", "costophrenic angle",
           "retrocardiac space", "apical segment", "lesion periphery", "optic disc", "macula",
           "frontal lobe", "sellar region", "mucosal surface", "lateral border", "mediastinum"]
FINDINGS = ["a patchy opacity", "an ill-defined density", "a well-circumscribed nodule",
            "blunting", "irregular pigmentation", "an asymmetric border", "hyperintense signal",
            "a hypoattenuating focus", "scattered microaneurysms", "an enhancing mass",
            "reticular markings", "a crescent of fluid", "a sessile projection", "cortical disruption"]
QUALIFIERS = ["subtle", "marked", "mild", "moderate", "focal", "diffuse", "bilateral",
              "unilateral", "chronic-appearing", "new"]
VERBS = ["suggests", "is consistent with", "raises concern for", "argues against",
         "is typical of", "may represent", "favours"]
CONNECTORS = ["However,", "In addition,", "On closer inspection,", "Comparing both sides,",
              "Taken together,", "Notably,", "Given the clinical context,", "Furthermore,"]
OBSERVATIONS = ["the cardiac silhouette is within normal limits",
                "there is no visible pneumothorax", "the bony structures are intact",
                "the margins are irregular", "the surrounding tissue appears preserved",
                "no midline shift is seen", "the vascular markings are prominent",
                "the diaphragm contours are clear", "the colour distribution is heterogeneous",
                "there is no calcification"]


def sentence(rng, labels):
    """One sentence of reasoning."""
    kind = rng.random()
    if kind < 0.4:
        return (f"The {rng.choice(MODALITIES)} shows {rng.choice(FINDINGS)} in the "
                f"{rng.choice(REGIONS)}, {rng.choice(QUALIFIERS)} in extent, which "
                f"{rng.choice(VERBS)} {rng.choice(labels).lower()}.")
    if kind < 0.7:
        return f"{rng.choice(CONNECTORS)} {rng.choice(OBSERVATIONS)}."
    return (f"{rng.choice(CONNECTORS)} the {rng.choice(QUALIFIERS)} appearance of the "
            f"{rng.choice(REGIONS)} {rng.choice(VERBS)} {rng.choice(LABELS).lower()} rather than "
            f"{rng.choice(LABELS).lower()}.")


def reasoning(rng, labels, target, tags=True):
    """A reasoning paragraph of at most about `target` characters (at least one sentence),
    inside <think></think> unless `tags` is false (a malformed rollout)."""
    wrap = ("<think>", "</think>") if tags else ("", "")
    parts = [sentence(rng, labels)]
    n = len(wrap[0]) + len(wrap[1]) + len(parts[0])
    misses = 0
    while misses < 10:  # stop once ten drawn sentences in a row would overshoot
        s = sentence(rng, labels)
        if n + 1 + len(s) > target:
            misses += 1
            continue
        misses = 0
        parts.append(s)
        n += 1 + len(s)
    return wrap[0] + " ".join(parts) + wrap[1]


def jitter(rng, box, amount):
    """A predicted box near `box`: each corner moved by up to `amount` pixels, kept ordered."""
    x1, y1, x2, y2 = (v + rng.randint(-amount, amount) for v in box)
    x1, x2 = sorted((max(0, x1), min(SIZE - 1, x2)))
    y1, y2 = sorted((max(0, y1), min(SIZE - 1, y2)))
    return [x1, y1, x2, y2]


def random_box(rng):
    w, h = rng.randint(30, 200), rng.randint(30, 200)
    x1, y1 = rng.randint(0, SIZE - 1 - w), rng.randint(0, SIZE - 1 - h)
    return [x1, y1, x1 + w, y1 + h]


def predicted_labels(rng, gt):
    """What a rollout answers: the ground truth, part of it plus a distractor, or wrong."""
    r = rng.random()
    if r < 0.5:
        labels = list(gt)
    elif r < 0.8:
        labels = rng.sample(gt, rng.randint(1, len(gt)))
        if rng.random() < 0.5:
            labels.append(rng.choice([l for l in LABELS if l not in labels]))
    else:
        labels = rng.sample([l for l in LABELS if l not in gt], rng.randint(1, 3))
    rng.shuffle(labels)
    return labels[:3]


def response(rng, gt_labels, target_box):
    """One rollout; about 10% are malformed."""
    labels = predicted_labels(rng, gt_labels)
    boxes = [{"bbox_2d": jitter(rng, target_box, 25), "label": labels[0]}]
    for label in labels[1:rng.randint(1, len(labels))]:
        near = rng.random() < 0.5
        boxes.append({"bbox_2d": jitter(rng, target_box, 60) if near else random_box(rng), "label": label})
    block = "```json\n[\n" + ",\n".join("  " + json.dumps(b) for b in boxes) + "\n]\n```"
    sep = " and " if rng.random() < 0.1 and len(labels) == 2 else ", "
    answer = "Based on these findings, the diagnosis is \\boxed{" + sep.join(labels) + "}."

    malformed = rng.random() < 0.1
    kind = rng.choice(["no-box", "broken-json", "no-think"]) if malformed else None
    if kind == "no-box":
        block = ""
    elif kind == "broken-json":
        broken = rng.choice(["truncate", "single-quotes", "trailing-comma"])
        if broken == "truncate":
            block = block[: len(block) // 2] + "\n```"
        elif broken == "single-quotes":
            block = block.replace('"', "'")
        else:
            block = block.replace("}\n]", "},\n]")
    total = rng.randint(700, 1500)
    rest = len(block) + len(answer) + 2
    head = reasoning(rng, labels + gt_labels, total - rest, tags=kind != "no-think")
    return "\n".join(p for p in (head, block, answer) if p)


def blob_mask(rng):
    """A 512x512 mask: 1-3 overlapping ellipses; returns (PIL image, bounding box)."""
    from PIL import Image, ImageDraw
    img = Image.new("L", (SIZE, SIZE), 0)
    d = ImageDraw.Draw(img)
    cx, cy = rng.randint(100, SIZE - 100), rng.randint(100, SIZE - 100)
    for _ in range(rng.randint(1, 3)):
        rx, ry = rng.randint(15, 90), rng.randint(15, 90)
        ox, oy = cx + rng.randint(-40, 40), cy + rng.randint(-40, 40)
        d.ellipse([ox - rx, oy - ry, ox + rx, oy + ry], fill=255)
    return img, list(img.getbbox())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, required=True, help="number of responses")
    ap.add_argument("--seed", type=int, required=True)
    ap.add_argument("--masks", action="store_true", help="ground truth as segmentation masks, not boxes")
    args = ap.parse_args()

    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)
    if args.masks:
        os.makedirs(os.path.join(args.out, "masks"), exist_ok=True)
    with open(os.path.join(args.out, "responses.jsonl"), "w", encoding="utf-8", newline="\n") as f:
        for g in range((args.n + GROUP - 1) // GROUP):
            gt_labels = rng.sample(LABELS, rng.choice([1, 1, 2, 2, 3]))
            shared = {"answer": ", ".join(gt_labels)}
            if args.masks:
                img, target = blob_mask(rng)
                rel = f"masks/g{g:05d}.png"
                img.save(os.path.join(args.out, rel))
                shared.update(mask=rel, image_size=[SIZE, SIZE])
            else:
                target = random_box(rng)
                shared.update(gt_boxes=[target], image_size=[SIZE, SIZE])
            for r in range(min(GROUP, args.n - g * GROUP)):
                line = {"id": f"g{g:05d}-r{r}", "response": response(rng, gt_labels, target), **shared}
                f.write(json.dumps(line, ensure_ascii=True) + "\n")


if __name__ == "__main__":
    main()
