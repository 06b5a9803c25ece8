"""Shared helpers of the dataset readers: checked file access and sha256 records, UTF-8 / Latin-1
detection, lazy line reading, field and integer parsing with ``<file>:<line>`` errors, strict JSON
loading, text cleanup (:func:`clean_text`, :func:`join_text`), per-user grouping by time and the
:class:`InteractionData` builder that fills ``provenance``.
"""

from __future__ import annotations

import codecs
import hashlib
import html
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sidjax.data.types import InteractionData

_TAG = re.compile(r"<[^>]*>")
_SPACE = re.compile(r"\s+")


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: file not found")
    return path


def _file_info(path: Path) -> dict[str, Any]:
    with _require(path).open("rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": digest}


def _encoding(path: Path) -> str:
    """``utf-8`` if the file decodes as UTF-8, else ``latin-1`` (ml-100k ``u.item``, ml-1m)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    with _require(path).open("rb") as f:
        try:
            while chunk := f.read(1 << 20):
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            return "latin-1"
    return "utf-8"


def _lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """Non-blank lines without line ends, with 1-based line numbers, read lazily."""
    with path.open(encoding=encoding) as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                yield lineno, line.rstrip("\r\n")


def _int(value: str, where: str, what: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{where}: expected an integer {what}, got {value!r}") from None


def _fields(line: str, sep: str, n: int, where: str, sep_name: str) -> list[str]:
    parts = line.split(sep)
    if len(parts) != n:
        raise ValueError(f"{where}: expected {n} {sep_name}-separated fields, got {len(parts)}")
    return parts


def _load_json(path: Path) -> Any:
    raw = _require(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise ValueError(
            f"{path}:{line}: expected UTF-8 JSON, got byte 0x{raw[e.start]:02x} at offset "
            f"{e.start}; re-save the file as UTF-8"
        ) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: expected valid JSON ({e.msg})") from None


def clean_text(text: str) -> str:
    """HTML-unescapes, strips tags and collapses whitespace: the minimal, deterministic cleanup."""
    return _SPACE.sub(" ", _TAG.sub(" ", html.unescape(text))).strip()


def join_text(parts: Sequence[tuple[str, str]]) -> str:
    """Joins ``(label, value)`` pairs into one sentence-like text, skipping empty values.

    Values are cleaned with :func:`clean_text` and lose trailing periods; an empty label means the
    value stands alone: ``[("", "Toy Story"), ("Genres", "Comedy")]`` gives
    ``"Toy Story. Genres: Comedy."``.
    """
    out = []
    for label, value in parts:
        value = clean_text(value).rstrip(" .")
        if value:
            out.append(f"{label}: {value}" if label else value)
    return ". ".join(out) + "." if out else ""


def _group(
    users: np.ndarray, items: np.ndarray, times: np.ndarray, n_users: int
) -> list[np.ndarray]:
    """Per-user sequences sorted by time; ``np.lexsort`` is stable, so ties keep input order."""
    order = np.lexsort((times, users))
    counts = np.bincount(users, minlength=n_users)
    return [s.astype(np.int32) for s in np.split(items[order], np.cumsum(counts)[:-1])]


def _build(
    name: str,
    fmt: str,
    source: Path,
    files: Sequence[Path],
    sequences: list[np.ndarray],
    user_ids: list[str],
    item_ids: list[str],
    ordering: str,
    item_text: list[str] | None = None,
    item_fields: dict[str, list[str]] | None = None,
    **extra: Any,
) -> InteractionData:
    data = InteractionData(name, sequences, user_ids, item_ids, item_text, item_fields)
    data.provenance.update(
        format=fmt,
        source=str(source),
        files={p.name: _file_info(p) for p in files},
        counts=data.counts(),
        filters=[],
        ordering=ordering,
        **extra,
    )
    return data


def _dataset_name(root: Path, name: str | None) -> str:
    return name or root.resolve().name
