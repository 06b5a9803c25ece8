"""Recommendations for arbitrary histories (cold start from history only): items, scores, titles."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sidjax.data.pipeline import eval_arrays
from sidjax.decode.beam import recommend


def item_indices(item_ids: Sequence[str], catalog_ids: Sequence[str], *, source: str = "history"
                 ) -> np.ndarray:
    """0-based item indices of external ``item_ids``; an unknown id raises naming it and ``source``."""
    index = {str(item): i for i, item in enumerate(catalog_ids)}
    missing = [str(i) for i in item_ids if str(i) not in index]
    if missing:
        raise ValueError(f"{source}: unknown item id(s) {missing[:5]} (of {len(missing)}); use ids "
                         f"from the catalog the run was trained on, e.g. {list(catalog_ids[:3])}")
    return np.array([index[str(i)] for i in item_ids], np.int64)


def item_titles(data) -> list[str] | None:
    """A display title per item: the ``title`` field, else the item text, else None."""
    if data.item_fields and "title" in data.item_fields:
        return list(data.item_fields["title"])
    return None if data.item_text is None else list(data.item_text)


SCORE_MEANING = {
    "sid": "log-probability of the item's whole SID: the sum over SID levels of the log-softmax "
           "(over that level's codes) of the item's code given the history and the item's earlier "
           "codes, as ranked by the trie-constrained beam search; <= 0, higher is better",
    "item": "log-probability of the item: log-softmax of the model's item logits over all catalog "
            "items given the history; <= 0, higher is better",
}


def _beam_width(base: int, needed: int, num_items: int) -> int:
    """``base``, or a width >= ``needed`` (the next power of two, so that few widths compile, but
    at most the catalog size: a beam that wide already returns every item)."""
    if needed <= base:
        return base
    return max(base, min(1 << (needed - 1).bit_length(), num_items))


def recommend_for_histories(model, prep, histories: Sequence[Sequence[str]], k: int = 10, *,
                            beam: int | None = None, batch_size: int | None = None,
                            exclude_history: bool = True, progress=None) -> list[dict]:
    """Top-``k`` recommendations for each history of external item ids (no user id needed).

    ``prep`` is :class:`sidjax.run.Prepared` (SIDs, trie, vocab, catalog); the model sees
    the history's ``data.max_history`` most recent items; an empty history is allowed (the model
    then sees only BOS). Beam width ``max(k, eval.beam_size)`` unless ``beam`` is given.

    With ``exclude_history`` (the default) no item of the history (all of it, not only the part
    the model sees) is recommended: a SID model searches with a beam wide enough for ``k`` items
    to remain after removing them (``k`` + distinct history items, rounded up to a power of two,
    at most the catalog size; beam search returns ``min(width, catalog)`` distinct items), a
    SASRec model ranks ``k`` + that many items. Fewer than ``k`` items remain only when the
    catalog holds fewer than ``k`` items outside the history. Evaluation never excludes (the
    standard protocol).

    Returns one dict per history: ``{"history", "history_titles", "items" (ids), "scores" (best
    first; see :data:`SCORE_MEANING`: ``"score_kind"`` is ``"sid"`` for a SID model, ``"item"``
    for SASRec), "titles" (of the items), "exclude_history"}``; titles are None when the catalog
    has none. ``progress(n)`` is called with the number of histories done after each batch.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cfg = prep.cfg
    base = beam if beam is not None else max(k, cfg.eval.beam_size)
    if base < k:
        raise ValueError(f"beam ({base}) must be >= k ({k})")
    indices = [item_indices(h, prep.data.item_ids, source=f"history {n}")
               for n, h in enumerate(histories)]
    seen = [set(ix.tolist()) if exclude_history else set() for ix in indices]
    num_items = len(prep.data.item_ids)
    rows: list = [None] * len(indices)
    if hasattr(model, "item_logits"):  # an item-ID model (SASRec) scores every item at once
        from sidjax.data.pipeline import encode_item_ids
        from sidjax.decode.items import rank_items

        kind = "item"
        width = min(num_items, k + max((len(s) for s in seen), default=0))
        items_in = np.stack([encode_item_ids(h, cfg.data.max_history) for h in indices])
        items, scores, _ = rank_items(model, items_in, prep.sids.codes, np.zeros(len(indices), int),
                                      k=width, batch_size=batch_size or cfg.eval.batch_size,
                                      progress=progress)
        rows = list(zip(items, scores))
    else:
        kind = "sid"
        widths = [_beam_width(base, k + len(s), num_items) for s in seen]
        for width in sorted(set(widths)):
            group = [n for n, w in enumerate(widths) if w == width]
            arrays = eval_arrays([indices[n] for n in group], prep.sids.codes, prep.vocab,
                                 cfg.data.max_history, prep.prompt)
            items, scores = recommend(model, prep.trie, arrays, prep.vocab, beam=width,
                                      batch_size=batch_size or cfg.eval.batch_size,
                                      progress=progress)
            for n, row, row_scores in zip(group, items, scores):
                rows[n] = (row, row_scores)
    titles = item_titles(prep.data)
    out = []
    for history, ix, excluded, (row, row_scores) in zip(histories, indices, seen, rows):
        keep = (row >= 0) & ~np.isin(row, list(excluded))
        row, row_scores = row[keep][:k], row_scores[keep][:k]
        out.append({"history": [str(h) for h in history],
                    "history_titles": None if titles is None else [titles[i] for i in ix],
                    "items": [prep.data.item_ids[i] for i in row],
                    "scores": [float(s) for s in row_scores],
                    "titles": None if titles is None else [titles[i] for i in row],
                    "score_kind": kind, "exclude_history": bool(exclude_history)})
    return out


def _clip(text, width: int = 70) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[:width - 3] + "..."


def format_recommendations(recs: Sequence[dict]) -> str:
    """A text table per history: its items with titles, then the ranked items with scores and
    titles, and what the score means."""
    blocks = []
    for n, rec in enumerate(recs, 1):
        hist_titles = rec.get("history_titles") or [""] * len(rec["history"])
        note = ", excluded from the list" if rec.get("exclude_history") else \
            ", may be recommended again (--include-history)"
        lines = [f"history {n} ({len(rec['history'])} items, oldest first{note}):"]
        width = max((len(i) for i in rec["history"]), default=4)
        lines += [f"  {item:<{width}}  {_clip(t)}".rstrip()
                  for item, t in zip(rec["history"], hist_titles)] or ["  (empty)"]
        titles = rec.get("titles") or [""] * len(rec["items"])
        width = max([len(i) for i in rec["items"]] + [4])
        lines.append(f"top {len(rec['items'])}:")
        lines.append(f"  {'rank':>4}  {'item':<{width}}  {'score':>9}  title".rstrip())
        for rank, (item, score, title) in enumerate(zip(rec["items"], rec["scores"], titles), 1):
            lines.append(f"  {rank:>4}  {item:<{width}}  {score:>9.4f}  {_clip(title)}".rstrip())
        blocks.append("\n".join(lines))
    kinds = sorted({rec.get("score_kind", "sid") for rec in recs})
    blocks += [f"score: {SCORE_MEANING[kind]}" for kind in kinds]
    return "\n\n".join(blocks)
