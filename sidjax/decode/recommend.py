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


def recommend_for_histories(model, prep, histories: Sequence[Sequence[str]], k: int = 10, *,
                            beam: int | None = None, batch_size: int | None = None) -> list[dict]:
    """Top-``k`` recommendations for each history of external item ids (no user id needed).

    ``prep`` is :class:`sidjax.experiment.Prepared` (SIDs, trie, vocab, catalog); histories are
    truncated to the model's ``data.max_history`` most recent items; an empty history is allowed
    (the model then sees only BOS). Beam width ``max(k, eval.beam_size)`` unless ``beam`` is given.
    Returns one dict per history: ``{"history", "items" (ids), "scores" (summed SID
    log-probabilities, or item log-probabilities for a SASRec model; best first), "titles" (or
    None)}``.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    cfg = prep.cfg
    width = beam if beam is not None else max(k, cfg.eval.beam_size)
    if width < k:
        raise ValueError(f"beam ({width}) must be >= k ({k})")
    indices = [item_indices(h, prep.data.item_ids, source=f"history {n}")
               for n, h in enumerate(histories)]
    if hasattr(model, "item_logits"):  # an item-ID model (SASRec) scores every item at once
        from sidjax.data.pipeline import encode_item_ids
        from sidjax.decode.items import rank_items

        items_in = np.stack([encode_item_ids(h, cfg.data.max_history) for h in indices])
        items, scores, _ = rank_items(model, items_in, prep.sids.codes, np.zeros(len(indices), int),
                                      k=k, batch_size=batch_size or cfg.eval.batch_size)
    else:
        arrays = eval_arrays(indices, prep.sids.codes, prep.vocab, cfg.data.max_history,
                             prep.prompt)
        items, scores = recommend(model, prep.trie, arrays, prep.vocab, beam=width,
                                  batch_size=batch_size or cfg.eval.batch_size)
    titles = item_titles(prep.data)
    out = []
    for history, row, row_scores in zip(histories, items[:, :k], scores[:, :k]):
        keep = row >= 0
        row, row_scores = row[keep], row_scores[keep]
        out.append({"history": [str(h) for h in history],
                    "items": [prep.data.item_ids[i] for i in row],
                    "scores": [float(s) for s in row_scores],
                    "titles": None if titles is None else [titles[i] for i in row]})
    return out
