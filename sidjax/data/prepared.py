"""Reading a prepared folder (written by :mod:`sidjax.data.prepare`, ``sidjax prepare``): its
``dataset.json`` marker, metadata, training sequences and the whole :class:`InteractionData`.

The read side has its own module so that the readers of :mod:`sidjax.data.sources` can open a
prepared folder without importing the writer (which imports them).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from sidjax.data.types import InteractionData

FORMAT = "sidjax-prepared"
VERSION = 1
FILES = ("users.json", "items.jsonl", "train.array_record", "heldout.npy", "item_vectors.npy")


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def is_prepared(path: str | Path) -> bool:
    """Whether ``path`` is a folder written by :func:`sidjax.data.prepare.prepare_dataset`."""
    meta = Path(path) / "dataset.json"
    if not meta.is_file():
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("format") == FORMAT
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False


def read_metadata(path: str | Path) -> dict[str, Any]:
    """``dataset.json`` of a prepared folder, checked for format and version."""
    meta_path = Path(path) / "dataset.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path}: not found; is {path} a folder from `sidjax prepare`?")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{meta_path}: not valid UTF-8 JSON ({e}); re-run sidjax prepare") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ValueError(
            f"{meta_path}: expected format {FORMAT!r} version {VERSION}, got "
            f"{meta.get('format')!r} version {meta.get('version')!r}; re-run sidjax prepare"
        )
    return meta


def train_source(path: str | Path) -> Any:
    """Random-access grain source of the training sequences: ``source[u]`` is int32 ``[n_u]``."""
    import grain

    from sidjax.data.pipeline import decode_int32

    records = grain.sources.ArrayRecordDataSource([str(Path(path) / "train.array_record")])
    return grain.MapDataset.source(records).map(decode_int32)


def read_train_sequences(path: str | Path) -> list[np.ndarray]:
    """All training sequences of a prepared folder, read in one pass (user-index order)."""
    from array_record.python.array_record_module import ArrayRecordReader

    from sidjax.data.pipeline import decode_int32

    reader = ArrayRecordReader(str(Path(path) / "train.array_record"))
    try:
        return [decode_int32(r) for r in reader.read_all()]
    finally:
        reader.close()


def load_prepared(path: str | Path, *, verify: bool = True) -> InteractionData:
    """The :class:`InteractionData` of a prepared folder (full sequences, ``item_vectors`` filled).

    ``leave_one_out(data.sequences)`` reproduces the stored split. With ``verify`` every file is
    checked against the sha256 in ``dataset.json`` (a clear error names a changed file).
    """
    root = Path(path)
    meta = read_metadata(root)
    for name in FILES:
        if not (root / name).is_file():
            raise FileNotFoundError(f"{root / name}: missing from the prepared folder; re-run prepare")
        if verify and _sha256(root / name) != meta["sha256"][name]:
            raise ValueError(f"{root / name}: sha256 differs from dataset.json; re-run prepare")
    users = json.loads((root / "users.json").read_text(encoding="utf-8"))
    items = [json.loads(line) for line in (root / "items.jsonl").read_text("utf-8").splitlines()]
    heldout = np.load(root / "heldout.npy", allow_pickle=False)
    train = read_train_sequences(root)
    if len(train) != len(users) or heldout.shape != (len(users), 2):
        raise ValueError(f"{root}: users.json, train.array_record and heldout.npy disagree in size")
    sequences = [np.concatenate([train[u], heldout[u]]).astype(np.int32) for u in range(len(users))]
    texts = [it["text"] for it in items]
    provenance = {**meta["provenance"], "prepared": str(root), "prepared_counts": meta["counts"]}
    return InteractionData(
        name=meta["name"],
        sequences=sequences,
        user_ids=users,
        item_ids=[it["id"] for it in items],
        item_text=texts if any(texts) else None,
        item_vectors=np.load(root / "item_vectors.npy", allow_pickle=False),
        provenance=provenance,
    )
