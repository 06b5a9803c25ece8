"""SASRec-style item-ID baseline on Amazon Sports 2014: configs/sports.py with an item-ID transformer (full
softmax over all items, tied item table) in place of the SID decoder.

Command (from the repository root, with ../shared/data present):
    sidjax train --config configs/sports_sasrec.py --workdir runs/sports-sasrec
    sidjax eval --workdir runs/sports-sasrec
Result (2026-11-29, 2 CPU cores shared with another job, 55 min training; best validation step 2,500;
test split, 35,598 users): R@5 0.0199  R@10 0.0341  N@5 0.0123  N@10 0.0168 (RESULTS.md).
"""

import dataclasses
from pathlib import Path

from sidjax.config import Config, apply_overrides, load_config

SASREC = ("model.kind=sasrec", "model.d_model=64", "model.head_dim=16", "model.mlp_dim=256",
         "model.dropout=0.3", "train.batch_size=256", "train.steps=3000")


def get_config() -> Config:
    base = load_config(str(Path(__file__).with_name("sports.py")))
    return dataclasses.replace(apply_overrides(base, list(SASREC)), name="sports-sasrec")
