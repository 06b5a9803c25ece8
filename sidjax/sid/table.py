"""The SID table: one unique code tuple per item, with a collision level, saved as a run artifact."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np

from sidjax.sid.rqkmeans import encode_rqkmeans, fit_rqkmeans


@dataclasses.dataclass(frozen=True)
class SIDTable:
    """Semantic IDs of a catalog.

    Attributes:
      codes: int32 ``[num_items, num_levels]``; row i is item i's SID. Rows are unique.
      codes_per_level: size of each level's code space (the last is the collision level).
      item_ids: external item id per row.
    """

    codes: np.ndarray
    codes_per_level: tuple[int, ...]
    item_ids: tuple[str, ...]

    @property
    def num_levels(self) -> int:
        return self.codes.shape[1]

    @property
    def num_items(self) -> int:
        return self.codes.shape[0]

    def content_hash(self) -> str:
        """sha256 of the codes and level sizes (identifies the table in checkpoints)."""
        h = hashlib.sha256(np.ascontiguousarray(self.codes).tobytes())
        h.update(repr(self.codes_per_level).encode())
        return h.hexdigest()


def add_collision_level(codes: np.ndarray) -> np.ndarray:
    """Appends a level that numbers items sharing a full SID 0, 1, 2, ... (in item order)."""
    codes = np.asarray(codes, np.int32)
    order = np.lexsort(codes.T[::-1])
    sorted_codes = codes[order]
    new_group = np.ones(len(codes), bool)
    new_group[1:] = np.any(sorted_codes[1:] != sorted_codes[:-1], axis=1)
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(codes)), 0))
    extra = np.empty(len(codes), np.int32)
    extra[order] = np.arange(len(codes)) - group_start
    return np.concatenate([codes, extra[:, None]], axis=1)


def collision_rate(codes: np.ndarray) -> float:
    """Share of items whose SID (before the collision level) is shared with another item."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return float(np.mean(counts[inverse.ravel()] > 1))


def build_sid_table(vectors: np.ndarray, item_ids: list[str], *, levels: int, codes: int,
                    iters: int = 25, seed: int = 0) -> tuple[SIDTable, dict]:
    """Residual k-means SIDs plus a collision level. Returns the table and diagnostics."""
    codebooks = fit_rqkmeans(vectors, levels, codes, iters=iters, seed=seed)
    base = encode_rqkmeans(codebooks, vectors)
    full = add_collision_level(base)
    k = codebooks[0].shape[0]
    per_level = (k,) * levels + (int(full[:, -1].max()) + 1,)
    recon = sum(cb[base[:, i]] for i, cb in enumerate(codebooks))
    diagnostics = {
        "collision_rate": collision_rate(base),
        "max_collision_group": per_level[-1],
        "codes_used_per_level": [int(len(np.unique(base[:, i]))) for i in range(levels)],
        "unique_prefixes_per_level": [int(len(np.unique(base[:, : i + 1], axis=0)))
                                      for i in range(levels)],
        "reconstruction_mse": float(np.mean((np.asarray(vectors) - recon) ** 2)),
    }
    return SIDTable(full, per_level, tuple(item_ids)), diagnostics


def save_sid_table(table: SIDTable, path: Path) -> None:
    """Writes the table as ``.npz`` atomically (temporary file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, codes=table.codes, codes_per_level=np.asarray(table.codes_per_level),
             item_ids=np.asarray(table.item_ids))
    os.replace(tmp, path)


def load_sid_table(path: Path) -> SIDTable:
    """Reads a table written by :func:`save_sid_table`, checking that SIDs are unique and in range."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SID table {path} not found; build it with `sidjax train`")
    with np.load(path) as f:
        missing = {"codes", "codes_per_level", "item_ids"} - set(f.files)
        if missing:
            raise ValueError(f"{path}: missing arrays {sorted(missing)}; rebuild the SID table")
        table = SIDTable(f["codes"].astype(np.int32), tuple(int(k) for k in f["codes_per_level"]),
                         tuple(str(i) for i in f["item_ids"]))
    if np.any(table.codes < 0) or np.any(table.codes >= np.asarray(table.codes_per_level)):
        raise ValueError(f"{path}: codes out of range of codes_per_level {table.codes_per_level}")
    if len(np.unique(table.codes, axis=0)) != table.num_items:
        raise ValueError(f"{path}: SIDs are not unique per item")
    return table
