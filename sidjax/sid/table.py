"""The SID table: one unique code tuple per item, with a collision level, saved as a run artifact."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path

import numpy as np


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


def check_item_ids(item_ids, num_items: int) -> tuple[str, ...]:
    """Item ids as strings; raises when their count differs from ``num_items`` or one repeats."""
    ids = tuple(str(i) for i in item_ids)
    if len(ids) != num_items:
        raise ValueError(f"{len(ids)} item ids for {num_items} vectors; pass one id per vector row")
    if len(set(ids)) != len(ids):
        seen, dups = set(), []
        for i in ids:
            if i in seen:
                dups.append(i)
            seen.add(i)
        raise ValueError(f"duplicate item ids {dups[:5]} ({len(dups)} repeats); item ids must be unique")
    return ids


def sid_to_items(codes: np.ndarray) -> dict[tuple[int, ...], list[int]]:
    """Collision-corrected evaluation hook: every full SID mapped to the item indices that share it."""
    out: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(np.asarray(codes).tolist()):
        out.setdefault(tuple(row), []).append(i)
    return out


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
    if table.codes.ndim != 2 or table.codes.shape[1] != len(table.codes_per_level):
        raise ValueError(f"{path}: codes of shape {table.codes.shape} but {len(table.codes_per_level)} "
                         f"levels in codes_per_level {table.codes_per_level}; rebuild the SID table")
    if len(table.item_ids) != table.num_items:
        raise ValueError(f"{path}: {len(table.item_ids)} item ids for {table.num_items} SIDs; rebuild "
                         "the SID table")
    if np.any(table.codes < 0) or np.any(table.codes >= np.asarray(table.codes_per_level)):
        raise ValueError(f"{path}: codes out of range of codes_per_level {table.codes_per_level}")
    if len(np.unique(table.codes, axis=0)) != table.num_items:
        raise ValueError(f"{path}: SIDs are not unique per item")
    return table
