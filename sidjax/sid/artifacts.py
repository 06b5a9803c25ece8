"""SID artifacts as importable functions: build a folder of them, inspect it (the work of
`sidjax sids build` / `sidjax sids inspect`, whose argparse wiring is :mod:`sidjax.cli.sids`).

A build folder holds ``sids.npz`` (the SID table, :func:`~sidjax.sid.table.load_sid_table`),
``quantizer.npz``, ``trie.npz``, ``sid_stats.json`` (config, sha256 of the input vectors, diagnostics)
and ``titles.json`` when titles are known. The table is the archived artifact: the same inputs and seed
give the same SIDs on the same platform, but SIDs may change across hardware.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from sidjax.files import write_json
from sidjax.sid import quantizer as quant
from sidjax.sid.build import METHODS, SIDBuild, build, quantizer_config, vectors_sha256
from sidjax.sid.diagnostics import stats_table
from sidjax.sid.table import load_sid_table, save_sid_table
from sidjax.sid.trie import build_trie, save_trie

__all__ = ["METHODS", "build_sids", "inspect_sids", "vectors_sha256", "write_build"]


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
        write_json(out / "titles.json", [str(t) for t in item_titles])
    cfg = result.quantizer.config
    stats = {"method": result.method, "config": dict(vars(cfg)),
             "vectors_sha256": result.vectors_sha256, "num_items": result.table.num_items,
             "dim": int(result.quantizer.dim), "extra_level": result.extra_level,
             "fit_seconds": round(result.fit_seconds, 3), "table_sha256": result.table.content_hash(),
             "diagnostics": result.diagnostics}
    if result.method == "rqvae":
        stats["training_log"] = result.quantizer.log
    write_json(out / "sid_stats.json", stats)
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
