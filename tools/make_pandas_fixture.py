#!/usr/bin/env python3
"""Writes tests/fixtures/pandas/pandas_written.parquet: a shard as a user would make it
with pandas (object strings, float64 boxes and signals, int64 leads, an unknown column,
optional columns left out), to test that the loader accepts other writers' types.

    python tools/make_pandas_fixture.py      # needs pandas, pyarrow, pillow
"""
import io
import os

import numpy as np
import pandas as pd
from PIL import Image


def png(w, h, value):
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w), value, dtype=np.uint8), "L").save(buf, format="PNG")
    return buf.getvalue()


rows = [
    dict(id="p-0", domain="chest_xray", problem="What is shown?", answer="nodule, pleural effusion",
         images=[png(64, 48, 10)], boxes=[[1.0, 2.0, 30.0, 40.0]], box_labels=["nodule"],
         ecg_leads=None, ecg_values=[], ecg_sampling_rate=None, hospital="A"),
    dict(id="p-1", domain="ecg", problem="Rhythm?", answer="atrial fibrillation",
         images=[], boxes=[], box_labels=[],
         ecg_leads=2, ecg_values=[0.5, -0.25, 1.0, 2.0, 0.0, 0.125], ecg_sampling_rate=250.0, hospital="B"),
]
df = pd.DataFrame(rows)
df["ecg_leads"] = df["ecg_leads"].astype("Int64")
out = os.path.join("tests", "fixtures", "pandas", "pandas_written.parquet")
df.to_parquet(out, index=False)
print(out)
import pyarrow.parquet as pq
print(pq.read_schema(out))
