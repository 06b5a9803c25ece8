"""Filters over any reader's :class:`InteractionData`: the iterated k-core filter, recorded in
``provenance["filters"]``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sidjax.data.types import InteractionData


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

