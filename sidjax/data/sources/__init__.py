"""Readers for public recommendation datasets; each returns an :class:`InteractionData`.

Formats: MovieLens (ml-100k ``u.data``/``u.item``; ml-1m, ml-10m ``ratings.dat``/``movies.dat``),
Amazon P5 / S3-Rec (``sequential_data.txt`` + ``datamaps.json``), LC-Rec / LETTER JSON
(``<name>.inter.json`` + ``<name>.item.json``) and generic CSV / TSV / Parquet tables. ``kcore``
filters any of them; ``load_dataset`` picks the reader from the files present.

Every reader records in ``provenance``: ``format``, ``source``, ``files`` (path, bytes and sha256 of
each input), ``counts``, ``filters`` (empty until ``kcore``) and ``ordering`` (how users, items and
ties are ordered). Malformed input raises ``ValueError("<file>:<line>: expected ..., got ...")``;
a missing input raises ``FileNotFoundError`` naming the path. Generic tables are decoded strictly
as their ``encoding`` (default UTF-8); the MovieLens and P5 text readers decode UTF-8 and fall
back to Latin-1 for a file that is not UTF-8 (ml-100k, ml-1m), recorded in
``provenance["encoding"]``.

One module per input format: :mod:`~sidjax.data.sources.movielens`, :mod:`~sidjax.data.sources.p5`,
:mod:`~sidjax.data.sources.lcrec` and :mod:`~sidjax.data.sources.table`, with shared helpers in
:mod:`~sidjax.data.sources._common` and ``kcore`` in :mod:`~sidjax.data.sources.filters`. This
module detects the format and dispatches; every name is importable from here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sidjax.data.sources._common import _SPACE as _SPACE
from sidjax.data.sources._common import _TAG as _TAG
from sidjax.data.sources._common import _build as _build
from sidjax.data.sources._common import _dataset_name as _dataset_name
from sidjax.data.sources._common import _encoding as _encoding
from sidjax.data.sources._common import _fields as _fields
from sidjax.data.sources._common import _file_info as _file_info
from sidjax.data.sources._common import _group as _group
from sidjax.data.sources._common import _int as _int
from sidjax.data.sources._common import _lines as _lines
from sidjax.data.sources._common import _load_json as _load_json
from sidjax.data.sources._common import _require as _require
from sidjax.data.sources._common import clean_text, join_text
from sidjax.data.sources.filters import kcore
from sidjax.data.sources.lcrec import LCREC_FIELDS, read_lcrec
from sidjax.data.sources.lcrec import _lcrec_text as _lcrec_text
from sidjax.data.sources.movielens import ML100K_GENRES, read_movielens
from sidjax.data.sources.movielens import _ml100k_items as _ml100k_items
from sidjax.data.sources.movielens import _ml_dat_items as _ml_dat_items
from sidjax.data.sources.p5 import _p5_keywords as _p5_keywords
from sidjax.data.sources.p5 import read_p5
from sidjax.data.sources.table import _TABLE_SUFFIXES as _TABLE_SUFFIXES
from sidjax.data.sources.table import _check_encoding as _check_encoding
from sidjax.data.sources.table import _check_roles as _check_roles
from sidjax.data.sources.table import _count_lines as _count_lines
from sidjax.data.sources.table import _csv_columns as _csv_columns
from sidjax.data.sources.table import _decode_error as _decode_error
from sidjax.data.sources.table import _duplicates as _duplicates
from sidjax.data.sources.table import _ids as _ids
from sidjax.data.sources.table import _is_parquet as _is_parquet
from sidjax.data.sources.table import _next_row as _next_row
from sidjax.data.sources.table import _read_columns as _read_columns
from sidjax.data.sources.table import _sep_name as _sep_name
from sidjax.data.sources.table import _to_time as _to_time
from sidjax.data.sources.table import read_table
from sidjax.data.types import InteractionData

__all__ = [
    "FORMAT_PATTERNS",
    "LCREC_FIELDS",
    "ML100K_GENRES",
    "InteractionData",
    "clean_text",
    "detect_format",
    "join_text",
    "kcore",
    "load_dataset",
    "read_lcrec",
    "read_movielens",
    "read_p5",
    "read_table",
]

FORMAT_PATTERNS = {
    "movielens": ("u.data", "ratings.dat"),
    "p5": ("sequential_data.txt",),
    "lcrec": ("*.inter.json",),
    "table": ("*.csv", "*.tsv", "*.parquet"),
}


def detect_format(path: str | Path) -> str:
    """The reader format for a folder or file: ``movielens``, ``p5``, ``lcrec`` or ``table``.

    Raises ``FileNotFoundError`` if ``path`` does not exist and ``ValueError`` naming the folder and
    the patterns looked for (:data:`FORMAT_PATTERNS`) if nothing matches.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix.lower() in _TABLE_SUFFIXES:
            return "table"
        if path.name.endswith(".inter.json"):
            return "lcrec"
        if path.suffix == ".txt":
            return "p5"
    else:
        for fmt, patterns in FORMAT_PATTERNS.items():
            if fmt != "table" and any(next(path.glob(p), None) for p in patterns):
                return fmt
    looked = "; ".join(f"{fmt}: {', '.join(p)}" for fmt, p in FORMAT_PATTERNS.items())
    raise ValueError(f"{path}: cannot detect the dataset format (looked for {looked})")


def load_dataset(path: str | Path, fmt: str = "auto", **kw: Any) -> InteractionData:
    """Reads ``path`` with the reader for ``fmt`` (``"auto"``: :func:`detect_format`).

    A folder written by ``sidjax prepare`` (``dataset.json`` of format ``sidjax-prepared``) is read
    with :func:`sidjax.data.prepared.load_prepared` when ``fmt`` is ``"auto"`` or ``"prepared"``.

    ``kw`` go to the reader: ``read_movielens``, ``read_p5``, ``read_lcrec`` or ``read_table``
    (which needs ``user_col``, ``item_col`` and ``time_col``, and takes ``encoding``, default
    ``"utf-8"``, decoded strictly). A ``*.inter.json`` path reads its folder with that prefix.
    """
    readers: dict[str, Callable[..., InteractionData]] = {
        "movielens": read_movielens,
        "p5": read_p5,
        "lcrec": read_lcrec,
        "table": read_table,
    }
    from sidjax.data.prepared import is_prepared, load_prepared

    if fmt == "prepared" or (fmt == "auto" and is_prepared(path)):
        return load_prepared(path, **kw)
    if fmt == "auto":
        fmt = detect_format(path)
    if fmt not in readers:
        raise ValueError(f"unknown format {fmt!r}; expected 'auto' or one of {sorted(readers)}")
    path = Path(path)
    if fmt == "lcrec" and path.is_file():
        kw.setdefault("name", path.name.removesuffix(".inter.json"))
        path = path.parent
    return readers[fmt](path, **kw)
