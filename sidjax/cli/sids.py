"""``sidjax sids build`` / ``sidjax sids inspect``: argparse wiring over the SID artifact functions
of :mod:`sidjax.sid.artifacts`."""

from __future__ import annotations

import argparse
import sys

import numpy as np

from sidjax.cli.args import at_least, positive_float
from sidjax.console import _progress_factory
from sidjax.sid.artifacts import METHODS, build_sids, inspect_sids
from sidjax.sid.rqvae import ESTIMATORS, RQVAEConfig


def _codes_arg(text: str) -> int | tuple[int, ...]:
    try:
        parts = [int(p) for p in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected one int or one per level (e.g. 256 or 256,256,128), got {text!r}") from None
    if min(parts) < 2:
        raise argparse.ArgumentTypeError(f"every K must be >= 2, got {text}")
    return parts[0] if len(parts) == 1 else tuple(parts)


def add_sids_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``sids build`` and ``sids inspect`` on an argparse subparsers object."""
    p = subparsers.add_parser("sids", help="build and inspect Semantic IDs")
    sub = p.add_subparsers(dest="sids_command", required=True)
    b = sub.add_parser("build", help="quantize item vectors into unique SIDs")
    b.add_argument("--data", required=True, help="dataset folder (any format load_dataset reads, "
                   "including a `sidjax prepare` folder) or `synthetic` (the demo catalog)")
    b.add_argument("--format", default="auto", help="dataset format (default: detect)")
    b.add_argument("--vectors", help=".npy/.npz item vectors; default: the dataset's own vectors "
                   "(prepared folder, synthetic), else collaborative vectors of the leave-one-out "
                   "training split")
    b.add_argument("--text", action="store_true", help="embed item text with MiniLM instead")
    b.add_argument("--method", choices=sorted(METHODS), default="rqkmeans")
    b.add_argument("--levels", type=at_least(1), default=3, help="SID levels (default 3)")
    b.add_argument("--codes", type=_codes_arg, default=256, help="K per level: 256 or 256,256,128")
    b.add_argument("--out", required=True)
    b.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    b.add_argument("--no-reassign", action="store_true", help="always append a collision level")
    b.add_argument("--no-split", action="store_true", help="do not move items out of length-(L-1) "
                   "prefixes with more than K_L items (an extra level may then be needed)")
    b.add_argument("--balanced", action="store_true", help="rqkmeans: cap items per code")
    b.add_argument("--slack", type=at_least(0.0, float), default=0.0,
                   help="with --balanced: extra items allowed per code, as a fraction")
    b.add_argument("--iters", type=at_least(1), default=25, help="rqkmeans Lloyd iterations")
    vae = RQVAEConfig()
    b.add_argument("--steps", type=at_least(1), default=vae.steps, help="rqvae training steps")
    b.add_argument("--estimator", choices=ESTIMATORS, default=vae.estimator, help="rqvae gradient "
                   "estimator")
    b.add_argument("--beta", type=at_least(0.0, float), default=vae.beta, help="rqvae commitment weight")
    b.add_argument("--learning-rate", type=positive_float, default=vae.learning_rate,
                   help="rqvae Adam rate")
    b.add_argument("--quiet", action="store_true",
                   help="no progress of the MiniLM encoding (--text) and rqvae training (a bar in "
                        "a terminal, else a line at every tenth or 30 s)")
    i = sub.add_parser("inspect", help="print SID stats and example branches, plot code usage")
    i.add_argument("dir")
    i.add_argument("--examples", type=at_least(0), default=3,
                   help="level-1 branches shown (default 3)")
    i.add_argument("--no-plot", action="store_true")
    return p


def _data_vectors(args, progress_factory=None) -> tuple[np.ndarray, list[str], list[str] | None]:
    """``(vectors, item ids, titles)`` of ``--data``: ``--vectors``, else MiniLM with ``--text``,
    else the dataset's own vectors, else collaborative ones of the leave-one-out training split
    (:func:`sidjax.data.embed.item_vectors`)."""
    if args.data == "synthetic":
        from sidjax.data.synthetic import synthetic_catalog

        data = synthetic_catalog()
    else:
        from sidjax.data.sources import load_dataset

        data = load_dataset(args.data, args.format)
    titles = (data.item_fields or {}).get("title") or data.item_text
    from sidjax.data.embed import item_vectors
    from sidjax.data.split import leave_one_out

    vectors, _ = item_vectors(
        data, lambda: leave_one_out(data.sequences).train, "text" if args.text else "auto",
        vectors_path=args.vectors or None, auto_text=False, seed=args.seed,
        progress=progress_factory,
        no_text_error=f"{args.data}: the dataset has no item text; pass --vectors FILE instead")
    return vectors, data.item_ids, titles


def run_sids(args) -> int:
    """Runs the ``sids`` subcommand parsed by :func:`add_sids_parser`; returns the exit code.

    Bad input raises (``ValueError``, ``FileNotFoundError``, ...); ``sidjax.cli.main`` prints it
    as one line ``sidjax sids build: error: ...`` and exits 2."""
    if args.sids_command == "inspect":
        print(inspect_sids(args.dir, examples=args.examples, plot=not args.no_plot))
        return 0
    factory = _progress_factory(getattr(args, "quiet", False), sys.stderr.isatty())
    vectors, ids, titles = _data_vectors(args, factory)
    options = ({"iters": args.iters, "balanced": args.balanced, "slack": args.slack}
               if args.method == "rqkmeans" else
               {"steps": args.steps, "estimator": args.estimator, "beta": args.beta,
                "learning_rate": args.learning_rate})
    progress = None
    if args.method == "rqvae":
        progress = factory("sids build rqvae", args.steps, unit="step", absolute=True) \
            if factory else None
    build_sids(vectors, ids, method=args.method, levels=args.levels, codes=args.codes, out_dir=args.out,
               seed=args.seed, reassign=not args.no_reassign, split_prefixes=not args.no_split,
               item_titles=titles, progress=progress, **options)
    print(inspect_sids(args.out, plot=False))
    return 0
