"""Generic table reader: a CSV / TSV (header row; separator from the suffix, given, or sniffed) or
Parquet (needs ``pyarrow``) interactions table, plus an optional item table supplying text columns.
Text files are decoded strictly as the given ``encoding``; errors name the file, line and byte.
"""

from __future__ import annotations

import codecs
import csv
import datetime
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sidjax.data.sources._common import _build, _group, _require, join_text
from sidjax.data.types import InteractionData

_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".parquet": None, ".pq": None}


def _sep_name(sep: str) -> str:
    return "TAB" if sep == "\t" else repr(sep)


def _count_lines(text: str, after_cr: bool) -> int:
    """Line ends in ``text`` as ``open(newline="")`` counts them: LF, CR LF or a lone CR."""
    n = text.count("\n") + text.count("\r") - text.count("\r\n")
    return n - 1 if after_cr and text.startswith("\n") else n


def _decode_error(path: Path, encoding: str) -> ValueError:
    """The one-line error for the first byte of ``path`` that is not valid ``encoding``.

    Re-reads the file in chunks with an incremental decoder to find the byte offset and the line
    (counted as ``csv`` counts them) of the first bad byte; only called after a decode failed.
    """
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = lines = 0
    after_cr = False
    with path.open("rb") as f:
        while True:
            chunk = f.read(1 << 20)
            state = decoder.getstate()
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as err:
                pending = state[0]
                decoder.setstate(state)
                lines += _count_lines(decoder.decode(chunk[: max(0, err.start - len(pending))]),
                                      after_cr)
                bad = (pending + chunk)[err.start]
                at = offset - len(pending) + err.start
                hint = (
                    "pass --encoding latin-1 (encoding='latin-1') if the file is Latin-1"
                    if codecs.lookup(encoding).name == "utf-8"
                    else "pass --encoding with the file's encoding, e.g. --encoding latin-1 if the "
                    "file is Latin-1"
                )
                return ValueError(
                    f"{path}:{lines + 1}: expected {encoding} text, got byte 0x{bad:02x} at byte "
                    f"offset {at} ({err.reason}); {hint}"
                )
            lines += _count_lines(text, after_cr)
            if text:
                after_cr = text.endswith("\r")
            if not chunk:
                break
            offset += len(chunk)
    return ValueError(f"{path}: expected {encoding} text")  # the decode failure did not repeat


def _check_encoding(encoding: str) -> str:
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise ValueError(f"unknown encoding {encoding!r} (--encoding / encoding=)") from None
    return encoding


def _check_roles(roles: Sequence[tuple[str, str | None]], path: Path) -> None:
    """Refuses one column named for two roles, e.g. ``--user-col uid --item-col uid``."""
    seen: dict[str, str] = {}
    for option, column in roles:
        if not column:
            continue
        if column in seen:
            raise ValueError(
                f"{path}: {seen[column]} and {option} both name column {column!r}; "
                "each role needs its own column"
            )
        seen[column] = option


def _duplicates(names: Sequence[str], columns: Sequence[str], where: str) -> None:
    """Refuses a requested column whose name appears more than once in the header."""
    for c in dict.fromkeys(columns):
        positions = [k + 1 for k, name in enumerate(names) if name == c]
        if len(positions) > 1:
            raise ValueError(
                f"{where}: expected unique column names, got {c!r} in columns "
                f"{', '.join(map(str, positions))} (of {len(names)}); rename all but one"
            )


def _is_parquet(path: Path, sep: str | None) -> bool:
    return sep is None and path.suffix.lower() in (".parquet", ".pq")


def _read_columns(
    path: Path, columns: Sequence[str], sep: str | None, encoding: str = "utf-8"
) -> tuple[dict[str, list[Any]], Callable[[int], str]]:
    """Columns of a CSV / TSV (with header row) or Parquet file, and a row -> location function.

    Text files are decoded strictly as ``encoding`` (a bad byte raises :func:`_decode_error`'s
    message); Parquet strings are UTF-8 by the format, so ``encoding`` does not apply to them.
    """
    suffix = path.suffix.lower()
    _require(path)
    if _is_parquet(path, sep):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from None
        try:
            names = pq.read_schema(path).names
            missing = [c for c in columns if c not in names]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing} (has: {', '.join(names)})")
            _duplicates(names, columns, str(path))
            table = pq.read_table(path, columns=list(dict.fromkeys(columns)))
        except pa.ArrowException as err:
            raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
        return {c: table.column(c).to_pylist() for c in columns}, lambda i: f"{path}: row {i + 1}"
    try:
        with path.open(encoding=encoding, errors="strict", newline="") as f:
            if sep is None:
                sep = _TABLE_SUFFIXES.get(suffix)
            if sep is None:
                try:
                    sep = csv.Sniffer().sniff(f.read(4096), delimiters=",\t;|").delimiter
                except csv.Error:
                    sep = ","
                f.seek(0)
            return _csv_columns(path, csv.reader(f, delimiter=sep, strict=True), columns, sep)
    except UnicodeDecodeError:
        raise _decode_error(path, encoding) from None


def _next_row(path: Path, reader: Any, sep: str) -> tuple[int, list[str] | None]:
    """The next row and the line it starts on; a ``csv.Error`` is reported at that line."""
    start = reader.line_num + 1
    try:
        return start, next(reader, None)
    except csv.Error as err:
        if str(err) == "unexpected end of data":
            got = f"a quoted field that is never closed (the file ends at line {reader.line_num})"
        else:
            got = f"{err} at line {reader.line_num}"
        raise ValueError(
            f"{path}:{start}: expected a {_sep_name(sep)}-separated row, got {got}; "
            "check this row for an unbalanced '\"'"
        ) from None


def _csv_columns(
    path: Path, reader: Any, columns: Sequence[str], sep: str
) -> tuple[dict[str, list[Any]], Callable[[int], str]]:
    header = _next_row(path, reader, sep)[1] or []
    missing = [c for c in columns if c not in header]
    if missing:
        raise ValueError(f"{path}:1: missing column(s) {missing} (header has: {', '.join(header)})")
    _duplicates(header, columns, f"{path}:1")
    index = [header.index(c) for c in columns]
    values: dict[str, list[Any]] = {c: [] for c in columns}
    lines = []
    while True:
        start, row = _next_row(path, reader, sep)
        if row is None:
            break
        if not row:
            continue
        if len(row) != len(header):
            runs_on = ""
            if reader.line_num > start:
                runs_on = (f" (the row runs on to line {reader.line_num}; "
                           "check it for an unbalanced '\"')")
            raise ValueError(
                f"{path}:{start}: expected {len(header)} {_sep_name(sep)}-separated fields, "
                f"got {len(row)}{runs_on}"
            )
        for c, i in zip(columns, index):
            values[c].append(row[i])
        lines.append(start)
    return values, lambda i: f"{path}:{lines[i]}"


def _to_time(value: Any, where: str, column: str) -> float:
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, datetime.datetime):
        dt = value
    else:
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
        try:
            dt = datetime.datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise ValueError(
                f"{where}: expected a number or ISO-8601 time in column {column!r}, got {value!r}"
            ) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=datetime.UTC)
    return dt.timestamp()


def _ids(values: list[Any], where: Callable[[int], str], column: str) -> list[str]:
    out = ["" if v is None else str(v).strip() for v in values]
    for i, v in enumerate(out):
        if not v:
            raise ValueError(f"{where(i)}: expected a value in column {column!r}, got nothing")
    return out


def read_table(
    interactions_path: str | Path,
    *,
    user_col: str,
    item_col: str,
    time_col: str | None,
    sep: str | None = None,
    items_path: str | Path | None = None,
    item_id_col: str | None = None,
    text_cols: Sequence[str] = (),
    name: str | None = None,
    encoding: str = "utf-8",
) -> InteractionData:
    """Reads a generic interactions table (CSV, TSV or Parquet) and an optional item table.

    Columns are named by the header row. ``sep`` defaults from the suffix (``.csv`` comma, ``.tsv``
    TAB, ``.parquet`` needs ``pyarrow``), else is sniffed; a given ``sep`` applies to both files.
    Text files are decoded strictly as ``encoding`` (both files; Parquet is always UTF-8), never by
    guessing: a byte that is not valid ``encoding`` raises ``ValueError`` naming the file, line and
    byte offset (re-run with ``encoding="latin-1"`` / ``--encoding latin-1`` for a Latin-1 file).
    Times are numbers or ISO-8601 strings (naive means UTC); ``time_col=None`` keeps file order.
    Users and items are numbered by first appearance in the interactions file; each user's items are
    sorted by time, ties in file order. ``items_path`` (id column ``item_id_col``, default
    ``item_col``) supplies ``text_cols``: kept in ``item_fields`` and joined into ``item_text``;
    items it lacks get empty fields. ``name`` defaults to the interactions file's stem.

    Nothing is guessed: ``ValueError`` (naming the file, and the line where it has one) for a
    column named for two roles (e.g. ``user_col == item_col``, or a text column that is also the
    item id column), a requested column whose name the header repeats (with its positions), and a
    malformed CSV row such as an unbalanced quote (at the line where the row starts).
    ``provenance["encoding"]`` records the encoding of each text file read.
    """
    path = Path(interactions_path)
    _check_encoding(encoding)
    _check_roles([("user_col (--user-col)", user_col), ("item_col (--item-col)", item_col),
                  ("time_col (--time-col)", time_col)], path)
    columns = [user_col, item_col] + ([time_col] if time_col else [])
    values, where = _read_columns(path, columns, sep, encoding)
    users = _ids(values[user_col], where, user_col)
    items = _ids(values[item_col], where, item_col)
    user_index = {u: k for k, u in enumerate(dict.fromkeys(users))}
    item_index = {it: k for k, it in enumerate(dict.fromkeys(items))}
    if time_col:
        times = np.array([_to_time(v, where(i), time_col) for i, v in enumerate(values[time_col])])
    else:
        times = np.arange(len(users), dtype=np.float64)
    user_codes = np.array([user_index[u] for u in users], dtype=np.int64)
    item_codes = np.array([item_index[it] for it in items], dtype=np.int64)
    sequences = _group(user_codes, item_codes, times, len(user_index))
    item_ids = list(item_index)
    files, texts, fields, extra = [path], None, None, {}
    if items_path is not None:
        items_file, id_col = Path(items_path), item_id_col or item_col
        id_option = "item_id_col (--item-id-col)" if item_id_col else "item_col (--item-col)"
        _check_roles([(id_option, id_col)]
                     + [(f"text_cols[{k}] (--text-cols)", c) for k, c in enumerate(text_cols)],
                     items_file)
        meta_values, meta_where = _read_columns(items_file, [id_col, *text_cols], sep, encoding)
        meta: dict[str, list[str]] = {}
        for i, item_id in enumerate(_ids(meta_values[id_col], meta_where, id_col)):
            if item_id in meta:
                raise ValueError(
                    f"{meta_where(i)}: expected unique item ids, got {item_id!r} again"
                )
            meta[item_id] = [
                "" if meta_values[c][i] is None else str(meta_values[c][i]) for c in text_cols
            ]
        empty = [""] * len(text_cols)
        rows = [meta.get(it, empty) for it in item_ids]
        if text_cols:
            fields = {c: [r[k] for r in rows] for k, c in enumerate(text_cols)}
            texts = [join_text([("", v) for v in r]) for r in rows]
        files.append(items_file)
        extra["items_without_metadata"] = sum(it not in meta for it in item_ids)
    return _build(
        name or path.name.split(".")[0],
        "table",
        path,
        files,
        sequences,
        list(user_index),
        item_ids,
        "users and items by first appearance; per user by time, ties in file order",
        texts,
        fields,
        columns={"user": user_col, "item": item_col, "time": time_col},
        encoding={p.name: encoding for p in files if not _is_parquet(p, sep)},
        **extra,
    )

