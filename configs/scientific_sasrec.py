"""SASRec-style item-ID baseline on Amazon Scientific 2018: configs/scientific.py with an item-ID transformer (full
softmax over all items, tied item table) in place of the SID decoder.

Command (from the repository root, with ../shared/data present):
    sidjax train --config configs/scientific_sasrec.py --workdir runs/scientific-sasrec
    sidjax eval --workdir runs/scientific-sasrec
Result (2026-11-29, 2 shared CPU cores, 5 min training, 1 seed; test split, 8,317 users):
R@5 0.0503  R@10 0.0690  N@5 0.0395  N@10 0.0456 (RESULTS.md).
"""

import dataclasses
from pathlib import Path

from sidjax.config import Config, apply_overrides, load_config

SASREC = ("model.kind=sasrec", "model.d_model=64", "model.head_dim=16", "model.mlp_dim=256",
             "model.dropout=0.3")


def get_config() -> Config:
    base = load_config(str(Path(__file__).with_name("scientific.py")))
    return dataclasses.replace(apply_overrides(base, list(SASREC)), name="scientific-sasrec")
