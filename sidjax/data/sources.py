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
"""

from __future__ import annotations

import array
import codecs
import csv
import dataclasses
import datetime
import hashlib
import html
import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sidjax.data.types import InteractionData

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
LCREC_FIELDS = ("title", "brand", "categories", "description")
FORMAT_PATTERNS = {
    "movielens": ("u.data", "ratings.dat"),
    "p5": ("sequential_data.txt",),
    "lcrec": ("*.inter.json",),
    "table": ("*.csv", "*.tsv", "*.parquet"),
}
_TABLE_SUFFIXES = {".csv": ",", ".tsv": "\t", ".tab": "\t", ".parquet": None, ".pq": None}
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


def kcore(data: InteractionData, user_min: int = 5, item_min: int = 5) -> InteractionData:
    """Iterated k-core filter, repeated to a fixed point.

    Each round drops the interactions of users with fewer than ``user_min`` and items with fewer
    than ``item_min`` interactions (repeats count). Users and items left with none are dropped; the
    rest keep their relative order and items are re-indexed, with ``item_text``, ``item_fields``
    and ``item_vectors`` subset to match. The filter, the number of rounds that removed something
    and the counts before and after are appended to ``provenance["filters"]``;
    ``provenance["counts"]`` is updated.
    """
    lengths = np.array([len(s) for s in data.sequences], dtype=np.int64)
    users = np.repeat(np.arange(data.num_users), lengths)
    items = np.concatenate(data.sequences).astype(np.int64) if len(users) else users
    keep = np.ones(len(items), dtype=bool)
    rounds = 0
    while True:
        user_count = np.bincount(users[keep], minlength=data.num_users)
        item_count = np.bincount(items[keep], minlength=data.num_items)
        new_keep = keep & (user_count[users] >= user_min) & (item_count[items] >= item_min)
        if new_keep.sum() == keep.sum():
            break
        keep = new_keep
        rounds += 1
    kept_users = np.flatnonzero(user_count > 0)
    kept_items = np.flatnonzero(item_count > 0)
    remap = np.full(data.num_items, -1, dtype=np.int64)
    remap[kept_items] = np.arange(len(kept_items))
    pieces = np.split(remap[items[keep]].astype(np.int32), np.cumsum(user_count)[:-1])
    fields = data.item_fields
    filtered = InteractionData(
        data.name,
        [pieces[u] for u in kept_users],
        [data.user_ids[u] for u in kept_users],
        [data.item_ids[i] for i in kept_items],
        None if data.item_text is None else [data.item_text[i] for i in kept_items],
        None if fields is None else {k: [v[i] for i in kept_items] for k, v in fields.items()},
        None if data.item_vectors is None else data.item_vectors[kept_items],
    )
    record = {
        "filter": "kcore",
        "user_min": user_min,
        "item_min": item_min,
        "rounds": rounds,
        "before": data.counts(),
        "after": filtered.counts(),
    }
    provenance = {**data.provenance, "counts": filtered.counts()}
    provenance["filters"] = [*data.provenance.get("filters", []), record]
    return dataclasses.replace(filtered, provenance=provenance)


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
