"""``sidjax prepare``: a dataset read once, cleaned, split and stored as a prepared folder.

A prepared folder (format ``sidjax-prepared``, version 1) holds:

``dataset.json``
    name, counts (users, items, interactions, train/valid/test examples), the protocol, what was
    dropped (short users, duplicate events, kcore rounds), how the vectors were made, the item text
    template, the reader's provenance (input files with bytes and sha256) and the sha256 of every
    other file in the folder. No time stamps and no output path, so re-running with the same inputs
    and options gives byte-identical files.
``users.json``
    external user ids, in user-index order.
``items.jsonl``
    one ``{"id": ..., "text": ...}`` object per line, in item-index order (``text`` is ``""`` for a
    catalog without text).
``train.array_record``
    one record per user, in user-index order: the training part of the user's chronological
    history (everything but the last two items) as little-endian int32 item indices. ArrayRecord
    with ``group_size:1``, readable with ``grain.sources.ArrayRecordDataSource`` (see
    :func:`train_source`).
``heldout.npy``
    int32 ``[users, 2]``: the validation target (second-to-last item) and test target (last item).
``item_vectors.npy``
    float32 ``[items, d]`` content vectors for Semantic IDs.

Protocol: per user chronological order; users with fewer than ``min_interactions`` (3) items are
dropped (counted; an error in strict mode); leave-one-out split (last item = test target,
second-to-last = validation target, the rest = training); ranking over all items. A duplicate event
is an item that repeats the same user's immediately preceding item (the same event logged twice); it
is dropped and counted (an error in strict mode).

Item text template: ``"title; Brand:brand; Categories:categories; description"`` names the
``item_fields`` to join, in order, separated by ``;``; ``Label:field`` prefixes the value with
``Label:``. Empty values are skipped (see :func:`sidjax.data.sources.join_text`). The default
(``None``) keeps the reader's own text, which is this template for LC-Rec data and
``"title; Genres:genres"`` for MovieLens.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sidjax.data import sources
from sidjax.data.embed import ITEM_VECTOR_KINDS, item_vectors
from sidjax.data.prepared import (  # noqa: F401 - the read side, also public here
    FILES,
    FORMAT,
    VERSION,
    _sha256,
    is_prepared,
    load_prepared,
    read_metadata,
    read_train_sequences,
    train_source,
)
from sidjax.data.types import InteractionData

MIN_INTERACTIONS = 3
PROTOCOL = (
    "per user chronological; users with < {m} interactions dropped; leave-one-out: last item = "
    "test target, second-to-last = validation target, rest = training; ranking over all items"
)
_ARRAY_RECORD_OPTIONS = "group_size:1"

Encoder = Callable[[Sequence[str]], np.ndarray]


def parse_template(template: str) -> list[tuple[str, str]]:
    """``"title; Brand:brand"`` -> ``[("", "title"), ("Brand", "brand")]``: (label, field) pairs."""
    out = []
    for part in template.split(";"):
        part = part.strip()
        if not part:
            continue
        label, _, field = part.rpartition(":")
        out.append((label.strip(), field.strip()))
    if not out:
        raise ValueError(f"text template {template!r} names no fields; e.g. 'title; description'")
    return out


def render_texts(data: InteractionData, template: str | None) -> list[str]:
    """Item texts: the reader's own (``template=None``) or ``template`` over ``item_fields``.

    Raises ``ValueError`` naming the unknown fields and the available ones.
    """
    if template is None:
        return list(data.item_text) if data.item_text is not None else [""] * data.num_items
    pairs = parse_template(template)
    fields = data.item_fields or {}
    unknown = [f for _, f in pairs if f not in fields]
    if unknown:
        raise ValueError(
            f"text template {template!r}: unknown field(s) {unknown}; this dataset has "
            f"{sorted(fields) or 'no text fields'}"
        )
    return [
        sources.join_text([(label, fields[f][i]) for label, f in pairs])
        for i in range(data.num_items)
    ]


def clean_sequences(
    data: InteractionData, *, min_interactions: int = MIN_INTERACTIONS, strict: bool = False
) -> tuple[InteractionData, dict[str, int]]:
    """Drops duplicate events and users with fewer than ``min_interactions`` items.

    Returns the cleaned data (item catalog unchanged) and ``{"duplicate_events": n,
    "short_users": n}``. In strict mode either problem raises ``ValueError`` naming the first user.
    """
    sequences, users, dup_total, short = [], [], 0, []
    for uid, seq in zip(data.user_ids, data.sequences, strict=True):
        seq = np.asarray(seq, np.int32)
        repeat = np.zeros(len(seq), bool)
        repeat[1:] = seq[1:] == seq[:-1]
        if repeat.any():
            if strict:
                at = int(np.argmax(repeat))
                raise ValueError(
                    f"user {uid!r}: duplicate event (item {data.item_ids[seq[at]]!r} twice in a "
                    f"row at positions {at - 1} and {at}); deduplicate the log or drop strict"
                )
            dup_total += int(repeat.sum())
            seq = seq[~repeat]
        if len(seq) < min_interactions:
            short.append(uid)
            continue
        sequences.append(seq)
        users.append(uid)
    if short and strict:
        raise ValueError(
            f"{len(short)} user(s) have fewer than {min_interactions} interactions (first: "
            f"{short[0]!r}); leave-one-out needs {min_interactions}: filter them or drop strict"
        )
    if not sequences:
        raise ValueError(
            f"{data.provenance.get('source', data.name)}: empty dataset: no user has "
            f"{min_interactions} or more interactions ({data.num_users} users read)"
        )
    cleaned = dataclasses.replace(data, sequences=sequences, user_ids=users)
    return cleaned, {"duplicate_events": dup_total, "short_users": len(short)}


def _item_vectors(
    data: InteractionData, train: list[np.ndarray], texts: list[str], vectors: str, *,
    vector_dim: int, seed: int, encoder: Encoder | None, strict: bool,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The vectors ``vectors`` names (``auto`` | ``text`` | ``collab`` | a file), made by
    :func:`sidjax.data.embed.item_vectors` (a reader's own vectors are not reused), and how they
    were made (for ``dataset.json``)."""
    path = None if vectors in ITEM_VECTOR_KINDS else Path(vectors)
    out, kind = item_vectors(
        data, train, "auto" if path is not None else vectors, vectors_path=path, use_given=False,
        texts=texts, strict=strict, dim=vector_dim, seed=seed, encoder=encoder, progress=True,
        no_text_error=f"vectors='text' but no item has text in {data.name}; use vectors='collab' "
        "or a vector file")
    if kind == "collab":
        info = {"kind": "collab", "method": "PPMI co-occurrence (window 5) + truncated SVD, training "
                "interactions only", "dim": vector_dim, "seed": seed}
    elif kind == "text":
        info = {"kind": "text", "encoder": "all-MiniLM-L6-v2 (sidjax.text.minilm)",
                "items_without_text": sum(not t for t in texts)}
    else:
        info = {"kind": "file", "file": path.name, "sha256": _sha256(path)}
    if out.shape[0] != data.num_items or out.ndim != 2 or not np.isfinite(out).all():
        raise ValueError(
            f"item vectors ({info['kind']}) have shape {out.shape} or non-finite values; expected "
            f"finite [{data.num_items}, d]"
        )
    info["dim"] = int(out.shape[1])
    return out.astype(np.float32), info


def _write_array_record(path: Path, sequences: Sequence[np.ndarray]) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    writer = ArrayRecordWriter(str(path), _ARRAY_RECORD_OPTIONS)
    try:
        for seq in sequences:
            writer.write(np.asarray(seq, "<i4").tobytes())
    finally:
        writer.close()


def _save_npy(path: Path, array: np.ndarray) -> None:
    with path.open("wb") as f:
        np.save(f, array, allow_pickle=False)


def _write_folder(tmp: Path, data: InteractionData, texts: list[str], vectors: np.ndarray,
                  meta: dict[str, Any]) -> None:
    seqs = data.sequences
    (tmp / "users.json").write_text(json.dumps(list(data.user_ids), ensure_ascii=False) + "\n",
                                    encoding="utf-8")
    with (tmp / "items.jsonl").open("w", encoding="utf-8", newline="\n") as f:
        for item_id, text in zip(data.item_ids, texts, strict=True):
            f.write(json.dumps({"id": item_id, "text": text}, ensure_ascii=False) + "\n")
    _write_array_record(tmp / "train.array_record", [s[:-2] for s in seqs])
    _save_npy(tmp / "heldout.npy", np.array([s[-2:] for s in seqs], np.int32).reshape(-1, 2))
    _save_npy(tmp / "item_vectors.npy", vectors)
    meta["sha256"] = {name: _sha256(tmp / name) for name in FILES}
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n",
                                      encoding="utf-8")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class OutputConflict(FileExistsError):
    """``out_dir`` cannot be written: it overlaps the dataset being read, or it exists and is not
    a prepared folder that may be replaced."""


def check_output(source_path: str | Path, out_dir: str | Path, overwrite: bool) -> None:
    """Raises before anything is read or written when ``out_dir`` may not be (re)written.

    ``out_dir`` may not be ``source_path``, a folder containing it or a path inside it. An
    existing ``out_dir`` needs ``overwrite`` (else ``FileExistsError``), and even then only a
    folder written by :func:`prepare_dataset` (``dataset.json`` of format ``sidjax-prepared``)
    is replaced: a file, a symbolic link or any other folder raises :class:`OutputConflict`.
    """
    src, out = Path(source_path), Path(out_dir)
    real_src, real_out = src.resolve(), out.resolve()
    fix = "choose another --out"
    if real_out == real_src or (out.exists() and src.exists() and os.path.samefile(out, src)):
        raise OutputConflict(f"--out {out} is the dataset being read (--path {src}); {fix}")
    if real_out in real_src.parents:
        raise OutputConflict(f"--out {out} contains the dataset being read (--path {src}); {fix}")
    if real_src in real_out.parents:
        raise OutputConflict(f"--out {out} is inside the dataset being read (--path {src}); {fix}")
    if not (out.exists() or out.is_symlink()):
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True (--overwrite) to replace it")
    if out.is_symlink() or not out.is_dir():
        kind = "a symbolic link" if out.is_symlink() else "a file"
        raise OutputConflict(f"{out} is {kind}, not a folder from sidjax prepare, so --overwrite "
                             f"does not replace it; {fix} or remove it yourself")
    if not is_prepared(out):
        raise OutputConflict(f"{out} is not a folder from sidjax prepare (no dataset.json of format "
                             f"{FORMAT!r}), so --overwrite does not replace it; {fix} or remove it "
                             "yourself")


def _publish(tmp: Path, out: Path, source_path: Path, overwrite: bool) -> None:
    """Renames the finished ``tmp`` folder to ``out`` (an existing ``out`` only if ``overwrite``
    and :func:`check_output` allows it)."""
    if out.exists() or out.is_symlink():
        check_output(source_path, out, overwrite)  # again: out may have changed while preparing
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old)
    else:
        os.replace(tmp, out)


def prepare_dataset(
    source_path: str | Path,
    out_dir: str | Path,
    *,
    fmt: str = "auto",
    kcore: tuple[int, int] | int | None = None,
    text_template: str | None = None,
    vectors: str = "auto",
    vector_dim: int = 64,
    seed: int = 0,
    min_interactions: int = MIN_INTERACTIONS,
    strict: bool = False,
    overwrite: bool = False,
    encoder: Encoder | None = None,
    reader_args: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Reads, cleans, splits and writes a prepared dataset folder atomically; returns its metadata.

    Args:
      source_path: dataset folder or file for :func:`sidjax.data.sources.load_dataset`.
      out_dir: folder to create. It is built in a temporary folder beside it and renamed when
        complete, so a failure leaves nothing behind.
      fmt: reader format (``auto``, ``movielens``, ``p5``, ``lcrec``, ``table``).
      kcore: ``(user_min, item_min)`` or one int for both: iterated k-core filter before cleaning.
      text_template: item text template (module docstring); ``None`` keeps the reader's text.
      vectors: ``"auto"`` (text if any item has text, else collab), ``"text"`` (MiniLM),
        ``"collab"`` (PPMI + SVD of training co-occurrences) or a ``.npy``/``.npz``/``.parquet``
        vector file.
      vector_dim, seed: size and seed of collaborative vectors.
      min_interactions: users with fewer items are dropped (or an error if ``strict``).
      strict: raise on short users, duplicate events and (text vectors) items without text.
      overwrite: replace an existing ``out_dir``; only a prepared folder (see
        :func:`check_output`) is replaced, anything else raises :class:`OutputConflict`.
      encoder: texts -> vectors function; default :func:`sidjax.text.encode_texts`.
      reader_args: extra keyword arguments for the reader (``read_table``'s column names).
    """
    source_path, out = Path(source_path), Path(out_dir)
    check_output(source_path, out, overwrite)
    raw = sources.load_dataset(source_path, fmt, **(reader_args or {}))
    if kcore is not None:
        user_min, item_min = (kcore, kcore) if isinstance(kcore, int) else kcore
        raw = sources.kcore(raw, user_min, item_min)
    data, dropped = clean_sequences(raw, min_interactions=min_interactions, strict=strict)
    texts = render_texts(data, text_template)
    train = [s[:-2] for s in data.sequences]
    vecs, vec_info = _item_vectors(data, train, texts, vectors, vector_dim=vector_dim, seed=seed,
                                   encoder=encoder, strict=strict)
    counts = data.counts()
    counts.update(train_interactions=int(sum(len(s) for s in train)), valid=data.num_users,
                  test=data.num_users)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "name": data.name,
        "counts": counts,
        "read_counts": raw.counts(),
        "dropped": dropped,
        "min_interactions": min_interactions,
        "protocol": PROTOCOL.format(m=min_interactions),
        "text_template": text_template,
        "items_without_text": sum(not t for t in texts),
        "vectors": vec_info,
        "provenance": raw.provenance,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        _write_folder(tmp, data, texts, vecs, meta)
        _publish(tmp, out, source_path, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta
