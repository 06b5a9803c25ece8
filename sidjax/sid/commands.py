"""`sidjax sids build` / `sidjax sids inspect`: SID artifacts as importable functions, argparse wiring.

A build folder holds ``sids.npz`` (the SID table, :func:`~sidjax.sid.table.load_sid_table`),
``quantizer.npz``, ``trie.npz``, ``sid_stats.json`` (config, sha256 of the input vectors, diagnostics)
and ``titles.json`` when titles are known. The table is the archived artifact: the same inputs and seed
give the same SIDs on the same platform, but SIDs may change across hardware.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from sidjax.sid import quantizer as quant
from sidjax.sid.build import METHODS, SIDBuild, build, quantizer_config, vectors_sha256
from sidjax.sid.diagnostics import stats_table
from sidjax.sid.rqvae import ESTIMATORS, RQVAEConfig
from sidjax.sid.table import load_sid_table, save_sid_table
from sidjax.sid.trie import build_trie, save_trie

__all__ = ["METHODS", "build_sids", "inspect_sids", "run_sids", "vectors_sha256", "write_build"]


def _write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)


def _load_vectors(source, item_ids) -> np.ndarray:
    if isinstance(source, (str, Path)):
        from sidjax.data.embed import load_item_vectors

        return load_item_vectors(source, item_ids)
    return np.asarray(source, np.float32)


def write_build(result: SIDBuild, out_dir, item_titles=None) -> dict:
    """Writes the artifacts of a build folder (see the module docstring); returns the stats."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_sid_table(result.table, out / "sids.npz")
    quant.save_quantizer(result.quantizer, out / "quantizer.npz")
    save_trie(build_trie(result.table.codes), out / "trie.npz")
    if item_titles is not None:
        _write_json(out / "titles.json", [str(t) for t in item_titles])
    cfg = result.quantizer.config
    stats = {"method": result.method, "config": dict(vars(cfg)),
             "vectors_sha256": result.vectors_sha256, "num_items": result.table.num_items,
             "dim": int(result.quantizer.dim), "extra_level": result.extra_level,
             "fit_seconds": round(result.fit_seconds, 3), "table_sha256": result.table.content_hash(),
             "diagnostics": result.diagnostics}
    if result.method == "rqvae":
        stats["training_log"] = result.quantizer.log
    _write_json(out / "sid_stats.json", stats)
    return stats


def build_sids(vectors_path_or_array, item_ids, *, method: str = "rqkmeans", levels: int = 3,
               codes: int | tuple[int, ...] = 256, out_dir, seed: int = 0, reassign: bool = True,
               split_prefixes: bool = True, item_titles=None, log=print, progress=None,
               **options) -> dict:
    """Builds unique SIDs (:func:`sidjax.sid.build.build`) and writes the artifacts of the folder
    ``out_dir``; returns the stats.

    Args:
      vectors_path_or_array: ``[N, D]`` array or a ``.npy`` / ``.npz`` file (see
        :func:`sidjax.data.embed.load_item_vectors`).
      item_ids: the N unique external item ids.
      method: ``"rqkmeans"`` or ``"rqvae"``.
      reassign: zero-collision reassignment (extra level only for prefixes without free codes);
        ``False`` always appends the collision level.
      split_prefixes: before reassigning, cap length-(L-1) prefixes at ``K_L`` items (see
        :func:`sidjax.sid.reassign.split_full_prefixes`), so no extra level is needed.
      item_titles: optional N titles, saved for ``inspect``.
      progress: rqvae: ``progress(steps_done, log_entry_or_None)`` after every training step
        (:func:`sidjax.sid.rqvae.fit`).
      options: other fields of :class:`~sidjax.sid.rqkmeans.RQKMeansConfig` or
        :class:`~sidjax.sid.rqvae.RQVAEConfig` (``iters``, ``balanced``, ``steps``, ...).
    """
    cfg = quantizer_config(method, levels=levels, codes=codes, seed=seed, **options)
    vectors = _load_vectors(vectors_path_or_array, item_ids)
    if item_titles is not None and len(item_titles) != len(item_ids):
        raise ValueError(f"{len(item_titles)} titles for {len(item_ids)} items; pass one title per item")
    result = build(vectors, item_ids, cfg, reassign=reassign, split_prefixes=split_prefixes,
                   progress=progress)
    stats = write_build(result, out_dir, item_titles)
    d = result.diagnostics
    log(f"built {method} SIDs for {result.table.num_items} items in {result.fit_seconds:.1f}s: levels "
        f"{result.table.codes_per_level}, collision rate before dedup "
        f"{d['collision_rate_before_dedup']:.4f}, moved {d['items_moved']} -> {out_dir}")
    return stats


def _stats_header(stats: dict) -> str:
    return (f"method {stats['method']}, {stats['num_items']} items, dim {stats['dim']}, levels "
            f"{tuple(stats['diagnostics']['codes_per_level'])}, extra level {stats['extra_level']}, "
            f"fit {stats['fit_seconds']:.1f}s, vectors sha256 {stats['vectors_sha256'][:16]}...")


def _branches(codes: np.ndarray, titles, examples: int, per_branch: int = 4) -> str:
    """The ``examples`` largest level-1 branches; under each, its largest level-2 groups' items."""
    out = []
    top, counts = np.unique(codes[:, 0], return_counts=True)
    for c1 in top[np.argsort(-counts, kind="stable")][:examples]:
        rows = np.flatnonzero(codes[:, 0] == c1)
        out.append(f"({c1}, ...): {len(rows)} items")
        if codes.shape[1] < 2:
            continue
        sub, sub_counts = np.unique(codes[rows, 1], return_counts=True)
        for c2 in sub[np.argsort(-sub_counts, kind="stable")][:3]:
            members = rows[codes[rows, 1] == c2]
            out.append(f"  ({c1}, {c2}, ...): {len(members)} items")
            for i in members[:per_branch]:
                sid = ", ".join(str(v) for v in codes[i])
                title = "" if titles is None else str(titles[i])
                title = title if len(title) <= 90 else title[:87] + "..."
                out.append(f"    ({sid}) {title}".rstrip())
    return "\n".join(out)


def plot_code_usage(codes: np.ndarray, codes_per_level, path) -> None:
    """PNG bar plot of item count per code, one panel per level (codes sorted by count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(codes_per_level)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3), squeeze=False)
    for lv, (ax, k) in enumerate(zip(axes[0], codes_per_level)):
        counts = np.sort(np.bincount(codes[:, lv], minlength=int(k)))[::-1]
        ax.bar(np.arange(len(counts)), counts, width=1.0)
        ax.set_title(f"level {lv + 1}: {np.sum(counts > 0)}/{k} codes used")
        ax.set_xlabel("code (sorted by count)")
        ax.set_ylabel("items")
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def inspect_sids(sid_dir, item_titles=None, *, examples: int = 3, plot: bool = True) -> str:
    """Stats table and a few example branches (with titles) of a build folder; writes
    ``code_usage.png`` there when ``plot``."""
    sid_dir = Path(sid_dir)
    stats_path = sid_dir / "sid_stats.json"
    if not stats_path.is_file():
        raise FileNotFoundError(f"{stats_path} not found; build SIDs with "
                                f"`sidjax sids build --out {sid_dir}`")
    stats = json.loads(stats_path.read_text())
    table = load_sid_table(sid_dir / "sids.npz")
    if item_titles is None and (sid_dir / "titles.json").is_file():
        item_titles = json.loads((sid_dir / "titles.json").read_text())
    branches = _branches(table.codes, item_titles, examples)
    text = _stats_header(stats) + "\n" + stats_table(stats["diagnostics"])
    text += "\n\nexample branches:\n" + branches
    if plot:
        plot_code_usage(table.codes, table.codes_per_level, sid_dir / "code_usage.png")
        text += f"\n\ncode usage plot: {sid_dir / 'code_usage.png'}"
    return text


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
    from sidjax.console import at_least, positive_float

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
    if args.data == "synthetic":
        from sidjax.data.synthetic import synthetic_catalog

        data = synthetic_catalog()
    else:
        from sidjax.data.sources import load_dataset

        data = load_dataset(args.data, args.format)
    titles = (data.item_fields or {}).get("title") or data.item_text
    if args.vectors:
        from sidjax.data.embed import load_item_vectors

        return load_item_vectors(args.vectors, data.item_ids), data.item_ids, titles
    if args.text:
        if data.item_text is None:
            raise ValueError(f"{args.data}: the dataset has no item text; pass --vectors FILE instead")
        from sidjax.text import encode_texts

        return (encode_texts(data.item_text, progress=progress_factory or False), data.item_ids,
                titles)
    if data.item_vectors is not None:
        return data.item_vectors, data.item_ids, titles
    from sidjax.data.embed import collaborative_item_vectors
    from sidjax.data.split import leave_one_out

    train = leave_one_out(data.sequences).train
    return collaborative_item_vectors(train, data.num_items, seed=args.seed), data.item_ids, titles


def run_sids(args) -> int:
    """Runs the ``sids`` subcommand parsed by :func:`add_sids_parser`; returns the exit code.

    Bad input raises (``ValueError``, ``FileNotFoundError``, ...); ``sidjax.cli.main`` prints it
    as one line ``sidjax sids build: error: ...`` and exits 2."""
    if args.sids_command == "inspect":
        print(inspect_sids(args.dir, examples=args.examples, plot=not args.no_plot))
        return 0
    import sys

    from sidjax.console import _progress_factory

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
