"""The task of a run: its data, split, SID table, trie and token space (:class:`Prepared`),
loaded or built once per run folder by :func:`prepare`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sidjax.config import Config
from sidjax.data.embed import ITEM_VECTOR_KINDS
from sidjax.data.embed import item_vectors as pick_item_vectors
from sidjax.data.split import Split, item_counts, leave_one_out
from sidjax.data.synthetic import synthetic_catalog
from sidjax.data.types import InteractionData
from sidjax.files import write_json
from sidjax.sid.table import SIDTable, load_sid_table, save_sid_table
from sidjax.sid.trie import SIDTrie, build_trie
from sidjax.tokens import SIDVocab, TextPrompt

Log = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class Prepared:
    """Everything a model needs besides its weights."""

    cfg: Config
    data: InteractionData
    split: Split
    sids: SIDTable
    trie: SIDTrie
    vocab: SIDVocab
    counts: np.ndarray
    prompt: TextPrompt | None = None  # text prompt tokens (data.text_prompt, data.item_text_tokens)


def load_data(cfg: Config) -> InteractionData:
    """The interactions named by ``cfg.data.source``: the synthetic catalog or a dataset folder."""
    d = cfg.data
    if d.source == "synthetic":
        return synthetic_catalog(
            d.num_items, d.num_users, num_top=d.num_top_categories,
            num_mid_per_top=d.num_mid_per_top, num_fine_per_mid=d.num_fine_per_mid,
            content_dim=d.content_dim, min_len=d.min_seq_len, max_len=d.max_seq_len, seed=d.seed)
    from sidjax.data.sources import load_dataset

    return load_dataset(d.source)


ITEM_VECTORS = ITEM_VECTOR_KINDS


def item_vectors(data: InteractionData, split: Split, log: Log = print,
                 kind: str = "auto", progress_factory=None) -> np.ndarray:
    """Content vectors for SIDs (``data.item_vectors``): ``"auto"`` takes given vectors, else
    MiniLM over item text, else co-occurrence vectors; ``"text"`` and ``"collab"`` force one.
    ``progress_factory`` (see :func:`run_compare`) shows the MiniLM encoding's progress."""
    return pick_item_vectors(data, lambda: split.train, kind, log=log,
                             progress=progress_factory or False)[0]


def prepare(cfg: Config, workdir: Path | None = None, log: Log = print,
            progress_factory=None) -> Prepared:
    """Loads data, splits it, and builds (or reloads from ``workdir``) the SID table;
    ``progress_factory`` (see :func:`run_compare`) shows the item-text encoding's progress."""
    data = load_data(cfg)
    split = leave_one_out(data.sequences)
    sid_path = None if workdir is None else Path(workdir) / "sids.npz"
    if sid_path is not None:
        sid_path.parent.mkdir(parents=True, exist_ok=True)
    if sid_path is not None and sid_path.exists():
        sids = load_sid_table(sid_path)
        if sids.item_ids != tuple(data.item_ids):
            raise ValueError(f"{sid_path} was built for another catalog; use a new --workdir")
        log(f"reusing SID table {sid_path}")
    else:
        from sidjax.sid.build import build_from_settings
        from sidjax.sid.diagnostics import stats_table

        t0 = time.perf_counter()
        built = build_from_settings(item_vectors(data, split, log, cfg.data.item_vectors,
                                                 progress_factory),
                                    data.item_ids, cfg.sid)
        sids, diagnostics = built.table, built.diagnostics
        log(f"built {built.method} SIDs for {sids.num_items} items in {time.perf_counter() - t0:.1f}s: "
            f"levels {sids.codes_per_level}, collision rate {diagnostics['collision_rate']:.3f}\n"
            + stats_table(diagnostics))
        if sid_path is not None:
            save_sid_table(sids, sid_path)
            write_json(sid_path.with_name("sid_diagnostics.json"),
                        {**diagnostics, "vectors_sha256": built.vectors_sha256})
    from sidjax.tokens import run_prompt

    vocab, prompt = run_prompt(cfg.data, data.item_text, sids.codes_per_level, workdir, log) or (
        SIDVocab(sids.codes_per_level), None)
    return Prepared(cfg, data, split, sids, build_trie(sids.codes), vocab,
                    item_counts(split.train, data.num_items), prompt)
