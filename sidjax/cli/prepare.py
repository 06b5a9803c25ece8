"""``sidjax prepare``: argparse wiring over :func:`sidjax.data.prepare.prepare_dataset` (read a
dataset once, clean, split and store it as a prepared folder)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sidjax.data import sources
from sidjax.data.prepare import MIN_INTERACTIONS, prepare_dataset


def add_prepare_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Adds the ``prepare`` sub-command to an ``argparse`` sub-parsers object."""
    p = subparsers.add_parser(
        "prepare", help="read a dataset, split it and write a prepared folder",
        description="Read a dataset (MovieLens, Amazon P5, LC-Rec JSON or a CSV/TSV/Parquet table), "
        "drop users with < 3 interactions and duplicate events, split leave-one-out, compute item "
        "vectors and write a prepared folder that `--set data.source=DIR` can train on.")
    p.add_argument("--source", default="auto", choices=["auto", "movielens", "p5", "lcrec", "table"])
    p.add_argument("--path", required=True, help="dataset folder or file")
    p.add_argument("--out", required=True, help="prepared folder to write (atomically)")
    p.add_argument("--vectors", default="auto",
                   help="auto | text | collab | PATH (.npy in item order; .npz with ids/vectors or "
                        ".parquet keyed by item id, matched by id)")
    p.add_argument("--vector-dim", type=int, default=64, help="size of collaborative vectors")
    p.add_argument("--text-template", default=None,
                   help="item text fields, e.g. "
                   "'title; Brand:brand; Categories:categories; description'")
    p.add_argument("--kcore", type=int, nargs="+", default=None, metavar="N",
                   help="k-core filter: one N for users and items, or USER_MIN ITEM_MIN")
    p.add_argument("--min-interactions", type=int, default=MIN_INTERACTIONS)
    p.add_argument("--strict", action="store_true", help="error on short users / duplicates")
    p.add_argument("--quiet", action="store_true",
                   help="no progress of the MiniLM encoding (a bar in a terminal, else a line at "
                        "every tenth of the batches or 30 s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing --out folder written by sidjax prepare (never a "
                        "file, another folder, or the --path dataset)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("table format")
    g.add_argument("--user-col", default="user")
    g.add_argument("--item-col", default="item")
    g.add_argument("--time-col", default="timestamp", help="'' to keep file order")
    g.add_argument("--items", default=None, help="item table file (CSV/TSV/Parquet)")
    g.add_argument("--item-id-col", default=None)
    g.add_argument("--text-cols", default="", help="comma-separated text columns of --items")
    g.add_argument("--encoding", default=None,
                   help="text encoding of the CSV/TSV files, decoded strictly (default utf-8; "
                        "e.g. latin-1); a bad byte is an error naming the file and line")
    return p


def run_prepare(args: argparse.Namespace) -> int:
    """Runs ``sidjax prepare``; prints the counts and returns the exit code.

    An ``--out`` that may not be written (:func:`sidjax.data.prepare.check_output`: it exists
    without ``--overwrite``, is not a prepared folder, or overlaps ``--path``) prints a one-line
    error and returns 2 with nothing changed on disk; bad input raises ``ValueError`` /
    ``FileNotFoundError`` (the CLI prints those as ``sidjax prepare: error: ...``).
    """
    fmt = args.source
    if fmt == "auto":
        fmt = sources.detect_format(args.path)
    reader_args = {}
    if args.encoding is not None and fmt != "table":
        raise ValueError(f"--encoding applies to table sources only, not {fmt!r} (MovieLens and "
                         "P5 files are read as UTF-8 or else Latin-1; LC-Rec JSON as UTF-8)")
    if fmt == "table":
        reader_args = dict(user_col=args.user_col, item_col=args.item_col,
                           time_col=args.time_col or None, items_path=args.items,
                           item_id_col=args.item_id_col,
                           text_cols=[c for c in args.text_cols.split(",") if c],
                           encoding=args.encoding or "utf-8")
    kcore = None
    if args.kcore:
        if len(args.kcore) > 2:
            raise ValueError(f"--kcore takes 1 or 2 numbers, got {args.kcore}")
        kcore = tuple(args.kcore) if len(args.kcore) == 2 else args.kcore[0]
    from sidjax.console import _progress_factory

    factory = _progress_factory(getattr(args, "quiet", False), sys.stderr.isatty())

    def encoder(texts):
        from sidjax.text.minilm import encode_texts

        return encode_texts(texts, progress=factory or False)

    try:
        meta = prepare_dataset(args.path, args.out, fmt=fmt, kcore=kcore, encoder=encoder,
                               text_template=args.text_template, vectors=args.vectors,
                               vector_dim=args.vector_dim, seed=args.seed,
                               min_interactions=args.min_interactions, strict=args.strict,
                               overwrite=args.overwrite, reader_args=reader_args)
    except FileExistsError as err:
        print(f"sidjax prepare: error: {err}", file=sys.stderr)
        return 2
    c, d = meta["counts"], meta["dropped"]
    print(f"{meta['name']}: {c['users']} users, {c['items']} items, {c['interactions']} "
          f"interactions (read {meta['read_counts']['users']} users; dropped {d['short_users']} "
          f"with < {meta['min_interactions']} items, {d['duplicate_events']} duplicate events); "
          f"vectors {meta['vectors']['kind']} [{c['items']}, {meta['vectors']['dim']}] -> {args.out}")
    return 0
