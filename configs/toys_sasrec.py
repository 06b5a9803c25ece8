"""SASRec-style item-ID baseline on Amazon Toys 2014: configs/toys.py with an item-ID transformer
(full-softmax cross-entropy over all items, tied item table) in place of the SID decoder.

Command (from the repository root, with ../shared/data present):
    sidjax train --config configs/toys_sasrec.py --workdir runs/toys-sasrec
    sidjax eval --workdir runs/toys-sasrec
Result (2026-12-01, 2 shared CPU cores; stopped at step 2,998 of 6,000 after 77 min with validation
Recall@10 flat since step 2,000, the best step; test split, 19,412 users): R@5 0.0405  R@10 0.0645
N@5 0.0251  N@10 0.0328 (CE SASRec, phonism/genrec README: 0.0613 / 0.0922 / 0.0348 / 0.0448).
"""

import dataclasses
from pathlib import Path

from sidjax.config import Config, apply_overrides, load_config

SASREC = ("model.kind=sasrec", "model.d_model=64", "model.head_dim=16", "model.mlp_dim=256",
          "model.dropout=0.3", "train.batch_size=256", "train.steps=6000")


def get_config() -> Config:
    base = load_config(str(Path(__file__).with_name("toys.py")))
    return dataclasses.replace(apply_overrides(base, list(SASREC)), name="toys-sasrec")
