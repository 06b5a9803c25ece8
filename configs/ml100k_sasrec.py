"""SASRec-style item-ID baseline on MovieLens-100K: configs/ml100k.py with an item-ID transformer (full
softmax over all items, tied item table) in place of the SID decoder.

Command (from the repository root, with ../shared/data present):
    sidjax train --config configs/ml100k_sasrec.py --workdir runs/ml100k-sasrec
    sidjax eval --workdir runs/ml100k-sasrec
Result (2026-11-29, 2 shared CPU cores, 2.5 min training, 1 seed; test split, 943 users):
R@5 0.0721  R@10 0.1304  N@5 0.0445  N@10 0.0633 (RESULTS.md).
"""

import dataclasses
from pathlib import Path

from sidjax.config import Config, apply_overrides, load_config

SASREC = ("model.kind=sasrec",)


def get_config() -> Config:
    base = load_config(str(Path(__file__).with_name("ml100k.py")))
    return dataclasses.replace(apply_overrides(base, list(SASREC)), name="ml100k-sasrec")
