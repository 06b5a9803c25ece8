"""Zero-collision reassignment: give colliding items free last-level codes under their own prefix.

Items sharing a full SID keep the one closest to the shared centroid; the others ("movers") are
matched to the last-level codes that no item of their prefix uses, minimising the total squared
distance from their last-level residuals to the new centroids (``scipy.optimize.linear_sum_assignment``
per prefix). Only the last level changes, so no item ever leaves its prefix. Where a prefix has fewer
free codes than movers, the rest stay colliding and an extra level numbering them is appended.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy.optimize import linear_sum_assignment

from sidjax.sid.table import add_collision_level


@dataclasses.dataclass(frozen=True)
class Reassignment:
    """Result of :func:`reassign_collisions`.

    Attributes:
      codes: int32 ``[N, L]`` unique SIDs, or ``[N, L + 1]`` when some prefix had no free codes.
      moved: number of items whose last code changed.
      cost: total increase of squared distance (residual to centroid) of the moved items.
      unresolved: items left colliding before the extra level (0 means no extra level).
    """

    codes: np.ndarray
    moved: int
    cost: float
    unresolved: int


def _sq_dists(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    return (np.einsum("ND,ND->N", x, x)[:, None] - 2.0 * np.einsum("ND,KD->NK", x, c)
            + np.einsum("KD,KD->K", c, c)[None, :])


def _group_ids(codes: np.ndarray) -> np.ndarray:
    if codes.shape[1] == 0:
        return np.zeros(len(codes), np.int64)
    return np.unique(codes, axis=0, return_inverse=True)[1].ravel()


def reassign_collisions(codes: np.ndarray, residuals: np.ndarray,
                        last_codebook: np.ndarray) -> Reassignment:
    """Makes SIDs unique by moving colliding items to free last-level codes of the same prefix.

    Args:
      codes: int ``[N, L]`` codes (L >= 1).
      residuals: float ``[N, D]``, what the last level quantizes (input minus earlier levels).
      last_codebook: float ``[K, D]``, the last level's centroids.
    """
    codes = np.asarray(codes, np.int32).copy()
    residuals = np.asarray(residuals, np.float32)
    last_codebook = np.asarray(last_codebook, np.float32)
    n, num_levels = codes.shape
    k = last_codebook.shape[0]
    if residuals.shape[0] != n or residuals.shape[1] != last_codebook.shape[1]:
        raise ValueError(f"residuals {residuals.shape} do not match codes {codes.shape} and codebook "
                         f"{last_codebook.shape}")
    full_id = _group_ids(codes)
    counts = np.bincount(full_id)
    colliding = np.flatnonzero(counts[full_id] > 1)
    if len(colliding) == 0:
        return Reassignment(codes, 0, 0.0, 0)
    last = codes[:, -1]
    own = np.sum((residuals[colliding] - last_codebook[last[colliding]]) ** 2, axis=1)
    # keeper of each full SID: the colliding item closest to the shared centroid (ties: lowest index)
    order = np.lexsort((colliding, own, full_id[colliding]))
    first = np.ones(len(order), bool)
    first[1:] = full_id[colliding[order][1:]] != full_id[colliding[order][:-1]]
    movers = colliding[order][~first]
    prefix_id = _group_ids(codes[:, :-1])
    by_prefix = np.argsort(prefix_id, kind="stable")
    starts = np.searchsorted(prefix_id[by_prefix], np.arange(prefix_id.max() + 2))
    mover_prefix = prefix_id[movers]
    moved, cost, unresolved = 0, 0.0, 0
    for p in np.unique(mover_prefix):
        group_movers = movers[mover_prefix == p]
        members = by_prefix[starts[p]:starts[p + 1]]
        free = np.setdiff1d(np.arange(k), last[members])
        if len(free):
            old = np.sum((residuals[group_movers] - last_codebook[last[group_movers]]) ** 2, axis=1)
            dist = _sq_dists(residuals[group_movers], last_codebook[free])
            rows, cols = linear_sum_assignment(dist)
            codes[group_movers[rows], -1] = free[cols]
            moved += len(rows)
            cost += float(np.sum(dist[rows, cols] - old[rows]))
        unresolved += len(group_movers) - min(len(group_movers), len(free))
    if unresolved:
        codes = add_collision_level(codes)
    return Reassignment(codes, moved, cost, unresolved)
