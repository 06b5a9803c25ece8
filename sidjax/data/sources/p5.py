"""Amazon P5 / S3-Rec reader (e.g. Amazon 2014 Sports): ``sequential_data.txt`` (or
``<Category>.txt``) lines ``<uid> <iid> ...``, optional ``datamaps.json`` mapping ids to reviewer
ids / ASINs, and optional ``item_keywords.txt`` (``<ASIN> <keywords>`` lines) as item text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sidjax.data.sources._common import _build, _dataset_name, _encoding, _int, _lines, _load_json
from sidjax.data.types import InteractionData


def read_p5(path: str | Path, *, name: str | None = None) -> InteractionData:
    """Reads Amazon P5 / S3-Rec data: ``sequential_data.txt`` and optional ``datamaps.json``.

    ``path`` is the folder or the sequence file itself (S3-Rec names it ``<Category>.txt``). Lines
    are ``<uid> <iid> <iid> ...``, 1-based ints in chronological order; item index is ``iid - 1``.
    With ``datamaps.json`` next to it, ids map to reviewer ids / ASINs through ``id2user`` /
    ``id2item`` and the catalog is ``id2item``; without it, ids stay the integer strings. With
    ``item_keywords.txt`` as well (lines ``<ASIN> <keywords>``, e.g. IDGenRec's LLM-generated
    keywords), those keywords are the item text (field ``keywords``), joined by ASIN; every item
    must have a line. Otherwise no text.
    """
    seq_path = Path(path)
    if seq_path.is_dir():
        seq_path = seq_path / "sequential_data.txt"
    maps_path = seq_path.parent / "datamaps.json"
    uids, sequences, seen = [], [], set()
    for lineno, line in _lines(seq_path, _encoding(seq_path)):
        where = f"{seq_path}:{lineno}"
        parts = line.split()
        if len(parts) < 2:
            raise ValueError(
                f"{where}: expected '<user> <item> [<item> ...]', got {len(parts)} field(s)"
            )
        uid, *iids = (_int(p, where, "id") for p in parts)
        if uid in seen:
            raise ValueError(f"{where}: expected each user once, got user {uid} again")
        if min(iids) < 1:
            raise ValueError(f"{where}: expected item ids from 1, got {min(iids)}")
        seen.add(uid)
        uids.append((uid, lineno))
        sequences.append(np.asarray(iids, dtype=np.int32) - 1)
    max_item = max((int(s.max()) + 1 for s in sequences), default=0)
    files = [seq_path]
    if maps_path.is_file():
        maps = _load_json(maps_path)
        id2user, id2item = maps["id2user"], maps["id2item"]
        if set(id2item) != {str(i) for i in range(1, len(id2item) + 1)}:
            raise ValueError(f"{maps_path}: expected id2item keys '1'..'{len(id2item)}'")
        item_ids = [id2item[str(i)] for i in range(1, len(id2item) + 1)]
        for (uid, lineno), seq in zip(uids, sequences):
            if str(uid) not in id2user or int(seq.max()) >= len(item_ids):
                raise ValueError(f"{seq_path}:{lineno}: user or item id missing from {maps_path}")
        user_ids = [id2user[str(uid)] for uid, _ in uids]
        files.append(maps_path)
    else:
        item_ids = [str(i) for i in range(1, max_item + 1)]
        user_ids = [str(uid) for uid, _ in uids]
    keywords = _p5_keywords(seq_path.parent / "item_keywords.txt", item_ids) \
        if maps_path.is_file() else None
    if keywords is not None:
        files.append(seq_path.parent / "item_keywords.txt")
    return _build(
        _dataset_name(seq_path.parent, name),
        "p5",
        seq_path.parent,
        files,
        sequences,
        user_ids,
        item_ids,
        "users in file order; items by integer id; sequences as given (chronological)",
        item_text=keywords,
        item_fields=None if keywords is None else {"keywords": keywords},
    )


def _p5_keywords(path: Path, asins: list[str]) -> list[str] | None:
    """Keywords per item (in ``asins`` order) from ``<ASIN> <keywords>`` lines, or None without
    the file; a missing, repeated or empty ASIN line is an error naming the file and line."""
    if not path.is_file():
        return None
    by_asin: dict[str, str] = {}
    for lineno, line in _lines(path, _encoding(path)):
        asin, words = (line.strip().split(None, 1) + [""])[:2]
        if not words.strip():
            raise ValueError(f"{path}:{lineno}: expected '<ASIN> <keywords>', got {line.strip()!r}")
        if asin in by_asin:
            raise ValueError(f"{path}:{lineno}: ASIN {asin} appears twice")
        by_asin[asin] = words.strip()
    missing = [a for a in asins if a not in by_asin]
    if missing:
        raise ValueError(f"{path}: no keywords for {len(missing)} item(s), e.g. ASIN "
                         f"{missing[0]}; give every item of datamaps.json a line or remove the file")
    return [by_asin[a] for a in asins]

