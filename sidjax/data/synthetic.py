"""A synthetic catalog with learnable sequential dynamics, generated from a seed.

Items belong to a three-level category hierarchy (top / mid / fine), so their content vectors cluster
at three scales, and get a title made of category words. Users walk a Markov chain over fine
categories (mostly staying near the current category), pick items by within-category popularity, and
often jump to a fixed "companion" item of the current one: the next item depends on the category and
on the exact item, which is what deep SID levels must capture.
"""

from __future__ import annotations

import numpy as np

from sidjax.data.types import InteractionData

_TOP_WORDS = ["outdoor", "kitchen", "garden", "office", "audio", "fitness", "travel", "craft",
              "baby", "auto", "pet", "lab", "music", "beauty", "toy", "home"]
_MID_WORDS = ["steel", "bamboo", "classic", "compact", "pro", "eco", "deluxe", "mini", "smart",
              "vintage", "rugged", "soft"]
_FINE_WORDS = ["kit", "lamp", "bottle", "bag", "stand", "brush", "case", "tool", "mat", "cable",
               "box", "timer", "filter", "pump", "clip", "scale"]
_ADJECTIVES = ["red", "blue", "large", "small", "light", "heavy", "quiet", "fast", "slim", "round"]


def _category_vectors(rng, n_top, n_mid, n_fine, dim):
    top = rng.normal(size=(n_top, dim)) * 3.0
    mid = np.repeat(top, n_mid, axis=0) + rng.normal(size=(n_top * n_mid, dim)) * 1.5
    fine = np.repeat(mid, n_fine, axis=0) + rng.normal(size=(n_top * n_mid * n_fine, dim)) * 0.8
    return fine


def _transition_matrix(rng, n_top, per_top):
    """Fine-category Markov chain: stay (0.3), two siblings in the same top category, one far jump."""
    n_fine = n_top * per_top
    trans = np.zeros((n_fine, n_fine))
    for f in range(n_fine):
        top = f // per_top
        siblings = rng.choice(per_top, size=2, replace=per_top < 2) + top * per_top
        trans[f, f] += 0.3
        trans[f, siblings] += 0.25
        trans[f, rng.integers(n_fine)] += 0.2
    return trans / trans.sum(axis=1, keepdims=True)


def synthetic_catalog(
    num_items: int = 2000,
    num_users: int = 3000,
    *,
    num_top: int = 8,
    num_mid_per_top: int = 4,
    num_fine_per_mid: int = 4,
    content_dim: int = 64,
    min_len: int = 5,
    max_len: int = 50,
    companion_prob: float = 0.35,
    seed: int = 0,
) -> InteractionData:
    """Generates a deterministic synthetic catalog and user histories.

    Returns an :class:`InteractionData` with content vectors, titles and sequences whose lengths
    follow a long-tailed distribution clipped to ``[min_len, max_len]``.
    """
    if num_items < 2 or num_users < 1 or min_len < 3 or max_len < min_len:
        raise ValueError("synthetic_catalog needs num_items >= 2, num_users >= 1, "
                         f"3 <= min_len <= max_len; got {num_items}, {num_users}, {min_len}, {max_len}")
    rng = np.random.default_rng(seed)
    per_top = num_mid_per_top * num_fine_per_mid
    n_fine = num_top * per_top
    centers = _category_vectors(rng, num_top, num_mid_per_top, num_fine_per_mid, content_dim)

    fine_of_item = np.concatenate([
        np.arange(min(n_fine, num_items)),
        rng.choice(n_fine, size=max(0, num_items - n_fine), p=rng.dirichlet(np.full(n_fine, 3.0))),
    ])
    rng.shuffle(fine_of_item)
    vectors = centers[fine_of_item] + rng.normal(size=(num_items, content_dim)) * 1.0
    popularity = rng.pareto(1.2, size=num_items) + 1.0

    members = [np.flatnonzero(fine_of_item == f) for f in range(n_fine)]
    member_cdf = [np.cumsum(popularity[m]) / popularity[m].sum() if len(m) else None for m in members]
    trans = _transition_matrix(rng, num_top, per_top)
    trans[:, [f for f in range(n_fine) if not len(members[f])]] = 0.0
    trans_cdf = np.cumsum(trans / np.maximum(trans.sum(axis=1, keepdims=True), 1e-12), axis=1)
    companion = np.array([
        members[f][rng.integers(len(members[f]))]
        for f in (np.searchsorted(trans_cdf[fine_of_item[i]], rng.random()) for i in range(num_items))
    ])
    start_cdf = np.cumsum(popularity) / popularity.sum()

    lengths = np.clip(min_len + rng.geometric(0.1, size=num_users) - 1, min_len, max_len)
    sequences = []
    for length in lengths:
        item = int(np.searchsorted(start_cdf, rng.random()))
        seq = [item]
        for _ in range(length - 1):
            if rng.random() < companion_prob:
                item = int(companion[item])
            else:
                f = min(int(np.searchsorted(trans_cdf[fine_of_item[item]], rng.random())), n_fine - 1)
                item = int(members[f][np.searchsorted(member_cdf[f], rng.random())])
            seq.append(item)
        sequences.append(np.asarray(seq, dtype=np.int32))

    titles, paths = [], []
    for i, f in enumerate(fine_of_item):
        top, mid = f // per_top, (f // num_fine_per_mid) % num_mid_per_top
        words = (_TOP_WORDS[top % len(_TOP_WORDS)], _MID_WORDS[(top * 3 + mid) % len(_MID_WORDS)],
                 _FINE_WORDS[f % len(_FINE_WORDS)], _ADJECTIVES[i % len(_ADJECTIVES)])
        titles.append(f"{words[3]} {words[1]} {words[2]} for {words[0]}")
        paths.append(f"{words[0]}/{words[1]}/{words[2]}")
    return InteractionData(
        name="synthetic",
        sequences=sequences,
        user_ids=[f"u{u}" for u in range(num_users)],
        item_ids=[f"i{i}" for i in range(num_items)],
        item_text=[f"{t} ({p})" for t, p in zip(titles, paths)],
        item_fields={"title": titles, "category": paths},
        item_vectors=vectors.astype(np.float32),
        provenance={
            "generator": "sidjax.data.synthetic.synthetic_catalog",
            "seed": seed, "num_items": num_items, "num_users": num_users,
            "categories": [num_top, num_mid_per_top, num_fine_per_mid],
            "companion_prob": companion_prob,
            "fine_category": fine_of_item.tolist(),
        },
    )
