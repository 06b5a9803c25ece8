"""LC-Rec / LETTER JSON reader (e.g. Amazon 2018 Scientific, Amazon 2014 Toys):
``<name>.inter.json`` (user index -> 0-based item indices) and optional ``<name>.item.json``
(item index -> title, brand, categories, description).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from sidjax.data.sources._common import _build, _dataset_name, _load_json, join_text
from sidjax.data.types import InteractionData

LCREC_FIELDS = ("title", "brand", "categories", "description")


def read_lcrec(path: str | Path, name: str | None = None) -> InteractionData:
    """Reads LC-Rec / LETTER JSON: ``<name>.inter.json`` and (optional) ``<name>.item.json``.

    ``name`` is the file prefix, detected from the single ``*.inter.json`` in the folder if omitted;
    the dataset name is the folder name. Users are ordered by index; item index and item id are the
    file's 0-based index. ``item_fields`` keeps title, brand, categories and description as given;
    ``item_text`` joins them (see :func:`join_text`), with comma-joined category paths spaced out.
    """
    root = Path(path)
    if name is None:
        found = sorted(root.glob("*.inter.json"))
        if len(found) != 1:
            raise ValueError(
                f"{root}: expected exactly one *.inter.json, found {[p.name for p in found]}"
            )
        name = found[0].name.removesuffix(".inter.json")
    inter_path, item_path = root / f"{name}.inter.json", root / f"{name}.item.json"
    inter = _load_json(inter_path)
    if not isinstance(inter, dict):
        raise ValueError(f"{inter_path}: expected an object of user index -> item list")
    users = []
    for key, seq in inter.items():
        if not key.isdigit() or not isinstance(seq, list) or not all(type(i) is int for i in seq):
            raise ValueError(f"{inter_path}: user {key!r}: expected a list of integer item indices")
        if seq and min(seq) < 0:
            raise ValueError(
                f"{inter_path}: user {key!r}: expected 0-based item indices, got {min(seq)}"
            )
        users.append((int(key), np.asarray(seq, dtype=np.int32)))
    users.sort(key=lambda u: u[0])
    num_items = max((int(s.max()) + 1 for _, s in users if len(s)), default=0)
    files, texts, fields = [inter_path], None, None
    if item_path.is_file():
        items = _load_json(item_path)
        if not isinstance(items, dict) or set(items) != {str(i) for i in range(len(items))}:
            raise ValueError(f"{item_path}: expected an object with keys '0'..'{len(items) - 1}'")
        if num_items > len(items):
            raise ValueError(f"{inter_path}: item index {num_items - 1} is not in {item_path}")
        num_items = len(items)
        rows = [items[str(i)] for i in range(num_items)]
        fields = {f: [str(r.get(f) or "") for r in rows] for f in LCREC_FIELDS}
        texts = [_lcrec_text(r) for r in rows]
        files.append(item_path)
    return _build(
        _dataset_name(root, None),
        "lcrec",
        root,
        files,
        [s for _, s in users],
        [str(u) for u, _ in users],
        [str(i) for i in range(num_items)],
        "users by index; items by index; sequences as given (chronological)",
        texts,
        fields,
        prefix=name,
    )


def _lcrec_text(row: dict[str, Any]) -> str:
    categories = re.sub(r",(?=\S)", ", ", str(row.get("categories") or ""))
    return join_text(
        [
            ("", str(row.get("title") or "")),
            ("Brand", str(row.get("brand") or "")),
            ("Categories", categories),
            ("", str(row.get("description") or "")),
        ]
    )

