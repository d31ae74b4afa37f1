#!/usr/bin/env python3
"""Writes tests/fixtures/ecg_preprocess: raw ECG records and what ECG-JEPA's convention makes
of them (keep leads I, II, V1-V6; scipy.signal.resample to 250 Hz; centre crop to 2,500;
per-lead z-score with the unbiased std, std 0 -> 1), so `preprocess_ecg` is checked against
scipy without Python at test time (crates/qoq-data/tests/preprocess_parity.rs).

Needs the reference environment (tools/reference-env.sh: numpy, scipy). Run from the repo root:
    $(bash tools/reference-env.sh) tools/make_ecg_preprocess_fixtures.py
Deterministic (fixed seed); files are gzip'd little-endian float32, shapes in cases.json.
"""
import gzip
import json
import os

import numpy as np
import scipy
import scipy.signal

OUT = os.path.join("tests", "fixtures", "ecg_preprocess")
KEEP = [0, 1, 6, 7, 8, 9, 10, 11]
rng = np.random.default_rng(20261202)


def record(leads, samples, rate):
    """ECG-like, not periodic over the record: beats at a drifting rate, baseline wander, noise."""
    t = np.arange(samples) / rate
    beat = np.cumsum(np.full(samples, 1.0 / rate) * (1.1 + 0.2 * np.sin(0.3 * t)))
    phase = np.mod(beat, 1.0)
    qrs = np.exp(-((phase - 0.3) / 0.02) ** 2) - 0.2 * np.exp(-((phase - 0.33) / 0.01) ** 2)
    twave = 0.3 * np.exp(-((phase - 0.6) / 0.06) ** 2)
    x = np.empty((leads, samples))
    for lead in range(leads):
        gain = 0.5 + lead * 0.1
        x[lead] = gain * (qrs + twave) + 0.1 * np.sin(0.5 * t + lead) + 0.02 * rng.standard_normal(samples)
    return x.astype(np.float32)


def reference(x, rate):
    x = x.astype(np.float64)
    if x.shape[0] == 12:
        x = x[KEEP]
    if rate != 250:
        num = int(round(x.shape[1] * 250 / rate))
        x = scipy.signal.resample(x, num, axis=1)
    start = max(x.shape[1] - 2500, 0) // 2
    x = x[:, start:start + 2500]
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, ddof=1, keepdims=True)
    std[std == 0] = 1.0
    return ((x - mean) / std).astype(np.float32)


def main():
    os.makedirs(OUT, exist_ok=True)
    cases = []
    for i, (leads, samples, rate, what) in enumerate([
        (12, 5000, 500.0, "10 s of 12 leads at 500 Hz: ECG-JEPA's 5000 -> 2500"),
        (8, 1000, 100.0, "10 s of 8 leads at 100 Hz: upsampled 1000 -> 2500"),
        (12, 7500, 500.0, "15 s at 500 Hz: 7500 -> 3750, centre 2500 kept"),
        (12, 4001, 360.0, "11.1 s at 360 Hz (an odd length): 4001 -> 2778, centre 2500 kept"),
    ]):
        x = record(leads, samples, rate)
        y = reference(x, rate)
        for name, a in [(f"case{i}_input", x), (f"case{i}_expected", y)]:
            with gzip.GzipFile(os.path.join(OUT, f"{name}.f32.gz"), "wb", mtime=0) as f:
                f.write(a.astype("<f4").tobytes())
        cases.append({"input": f"case{i}_input.f32.gz", "expected": f"case{i}_expected.f32.gz",
                      "leads": leads, "samples": samples, "rate_hz": rate, "what": what})
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"scipy": scipy.__version__, "numpy": np.__version__, "cases": cases}, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
