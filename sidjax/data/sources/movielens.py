"""MovieLens reader: ml-100k (``u.data``, ``u.item``, optional ``u.genre``; TAB / ``|``-separated)
and ml-1m / ml-10m (``ratings.dat``, ``movies.dat``; ``::``-separated), decoded as UTF-8 with a
Latin-1 fallback.
"""

from __future__ import annotations

import array
from pathlib import Path

import numpy as np

from sidjax.data.sources._common import (
    _build,
    _dataset_name,
    _encoding,
    _fields,
    _group,
    _int,
    _lines,
    join_text,
)
from sidjax.data.types import InteractionData

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip


def read_movielens(path: str | Path, *, name: str | None = None) -> InteractionData:
    """Reads MovieLens ml-100k (``u.data``, ``u.item``, ``u.genre``) or ml-1m / ml-10m (``*.dat``).

    Users and items are ordered by numeric id (for ml-100k item index ``i`` is movie ``i + 1``);
    only rated movies are kept. Each user's ratings are sorted by timestamp, ties in file order.
    Item text is the title plus ``Genres: ...``; ``item_fields`` has ``title`` and ``genres``
    (``|``-joined) and, for ml-100k, ``release_date`` and ``url``. Text files are decoded as UTF-8,
    falling back to Latin-1. ``name`` defaults to the folder name.
    """
    root = Path(path)
    if (root / "u.data").is_file():
        ratings, sep, sep_name = root / "u.data", "\t", "TAB"
    elif (root / "ratings.dat").is_file():
        ratings, sep, sep_name = root / "ratings.dat", "::", "'::'"
    else:
        raise FileNotFoundError(
            f"{root}: no MovieLens ratings found (looked for u.data, ratings.dat)"
        )
    columns = array.array("q"), array.array("q"), array.array("q")
    for lineno, line in _lines(ratings, _encoding(ratings)):
        where = f"{ratings}:{lineno}"
        user, item, _, ts = _fields(line.strip(), sep, 4, where, sep_name)
        columns[0].append(_int(user, where, "user id"))
        columns[1].append(_int(item, where, "item id"))
        columns[2].append(_int(ts, where, "timestamp"))
    users, items, times = (np.frombuffer(c, dtype=np.int64) for c in columns)
    if ratings.name == "u.data":
        meta, files, encoding = _ml100k_items(root)
        fmt = "movielens-100k"
    else:
        meta, files, encoding = _ml_dat_items(root)
        fmt = "movielens-dat"
    uniq_users, user_codes = np.unique(users, return_inverse=True)
    uniq_items, item_codes = np.unique(items, return_inverse=True)
    missing = [int(i) for i in uniq_items if int(i) not in meta]
    if missing:
        raise ValueError(f"{files[-1]}: no entry for rated item(s) {missing[:5]}")
    rows_meta = [meta[int(i)] for i in uniq_items]
    fields = {key: [m[key] for m in rows_meta] for key in rows_meta[0]} if rows_meta else {}
    texts = [
        join_text([("", m["title"]), ("Genres", m["genres"].replace("|", ", "))]) for m in rows_meta
    ]
    return _build(
        _dataset_name(root, name),
        fmt,
        root,
        [ratings, *files],
        _group(user_codes, item_codes, times, len(uniq_users)),
        [str(u) for u in uniq_users],
        [str(i) for i in uniq_items],
        "users and items by numeric id; per user by timestamp, ties in file order",
        texts,
        fields,
        encoding=encoding,
        catalog_items=len(meta),
    )


def _ml100k_items(root: Path) -> tuple[dict[int, dict[str, str]], list[Path], dict[str, str]]:
    files, encoding = [], {}
    genres = ML100K_GENRES
    if (root / "u.genre").is_file():
        encoding["u.genre"] = _encoding(root / "u.genre")
        pairs = [
            _fields(line.strip(), "|", 2, f"{root / 'u.genre'}:{n}", "'|'")
            for n, line in _lines(root / "u.genre", encoding["u.genre"])
        ]
        genres = tuple(g for g, _ in sorted(pairs, key=lambda p: int(p[1])))
        files.append(root / "u.genre")
    path = root / "u.item"
    encoding["u.item"] = _encoding(path)
    meta = {}
    for lineno, line in _lines(path, encoding["u.item"]):
        where = f"{path}:{lineno}"
        parts = _fields(line, "|", 5 + len(genres), where, "'|'")
        if any(flag not in ("0", "1") for flag in parts[5:]):
            raise ValueError(f"{where}: expected {len(genres)} genre flags of 0/1, got {parts[5:]}")
        meta[_int(parts[0], where, "item id")] = {
            "title": parts[1],
            "release_date": parts[2],
            "url": parts[4],
            "genres": "|".join(g for g, flag in zip(genres, parts[5:]) if flag == "1"),
        }
    return meta, [*files, path], encoding


def _ml_dat_items(root: Path) -> tuple[dict[int, dict[str, str]], list[Path], dict[str, str]]:
    path = root / "movies.dat"
    encoding = _encoding(path)
    meta = {}
    for lineno, line in _lines(path, encoding):
        where = f"{path}:{lineno}"
        item, title, genres = _fields(line, "::", 3, where, "'::'")
        genres = "" if genres == "(no genres listed)" else genres
        meta[_int(item, where, "item id")] = {"title": title, "genres": genres}
    return meta, [path], {"movies.dat": encoding}

