#!/usr/bin/env python3
"""Reads a run directory with TensorBoard's own event reader, to check that the event files
`qoq-train` writes (crates/qoq-train/src/tensorboard.rs) are what TensorBoard expects.

    python tools/check_tensorboard.py RUN_DIR [--expect TAG ...]

Needs the `tensorboard` package (the reference environment has it: tools/reference-env.sh);
Pillow, when present, fully decodes each image as well.

Prints each scalar tag with its number of points and last step and value, and each image tag
with its number of images and the size of the last one. Exits non-zero when no events were
found, when an `--expect` tag is missing, or when an image's PNG does not match the width and
height its event states.
"""
import argparse
import io
import struct
import sys

from tensorboard.backend.event_processing import event_accumulator as ea

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data):
    """(width, height) from a PNG's IHDR chunk, or None when `data` is not a PNG."""
    if len(data) < 24 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def decoded_size(data):
    """(width, height) after fully decoding with Pillow, or None when Pillow is absent."""
    try:
        from PIL import Image
    except ImportError:
        return None
    with Image.open(io.BytesIO(data)) as image:
        image.load()  # decompresses every row: a corrupt stream raises here
        return image.size


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="directory holding events.out.tfevents.* files")
    parser.add_argument("--expect", nargs="*", default=[], metavar="TAG",
                        help="scalar or image tags that must be present")
    args = parser.parse_args()

    # 0 = keep every event, not a reservoir sample.
    accumulator = ea.EventAccumulator(
        args.run_dir, size_guidance={ea.SCALARS: 0, ea.IMAGES: 0})
    accumulator.Reload()
    tags = accumulator.Tags()
    failures = []

    for tag in sorted(tags[ea.SCALARS]):
        points = accumulator.Scalars(tag)
        last = points[-1]
        print(f"scalar {tag}: {len(points)} points, last step {last.step} value {last.value:.6g}")

    for tag in sorted(tags[ea.IMAGES]):
        images = accumulator.Images(tag)
        for image in images:
            stated = (image.width, image.height)
            header = png_size(image.encoded_image_string)
            if header != stated:
                failures.append(f"image {tag} step {image.step}: event says {stated}, PNG header {header}")
                continue
            try:
                decoded = decoded_size(image.encoded_image_string)
            except Exception as error:  # Pillow raises several kinds on corrupt data
                failures.append(f"image {tag} step {image.step}: PNG does not decode: {error}")
                continue
            if decoded is not None and decoded != stated:
                failures.append(f"image {tag} step {image.step}: event says {stated}, decoded {decoded}")
        last = images[-1]
        print(f"image {tag}: {len(images)} images, last step {last.step} size {last.width}x{last.height}")

    found = set(tags[ea.SCALARS]) | set(tags[ea.IMAGES])
    if not found:
        failures.append(f"no scalar or image events found under {args.run_dir}")
    failures += [f"expected tag missing: {tag}" for tag in args.expect if tag not in found]
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    if not failures:
        print(f"ok: {len(tags[ea.SCALARS])} scalar tags, {len(tags[ea.IMAGES])} image tags")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
