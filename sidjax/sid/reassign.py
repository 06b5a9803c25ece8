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
    movers = movers[np.argsort(prefix_id[movers], kind="stable")]
    mover_prefix = prefix_id[movers]
    cuts = np.flatnonzero(np.diff(mover_prefix)) + 1
    moved, cost, unresolved = 0, 0.0, 0
    for group_movers in np.split(movers, cuts):
        p = prefix_id[group_movers[0]]
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


def _greedy_fill(dist: np.ndarray, room: np.ndarray) -> np.ndarray:
    """Column per row of ``dist`` ``[M, K]`` with at most ``room[k]`` rows per column, -1 where no
    column has room: in rounds, every unplaced row proposes to its nearest column with room left and
    each column accepts its closest proposers."""
    room = room.copy()
    out = np.full(dist.shape[0], -1, np.int64)
    todo = np.arange(dist.shape[0])
    while len(todo) and room.any():
        d = np.where(room[None, :] > 0, dist[todo], np.inf)
        choice = np.argmin(d, axis=1)
        best = d[np.arange(len(todo)), choice]
        order = np.lexsort((best, choice))
        counts = np.bincount(choice, minlength=len(room))
        rank = np.empty(len(todo), np.int64)
        rank[order] = np.arange(len(todo)) - (np.cumsum(counts) - counts)[choice[order]]
        accept = rank < room[choice]
        out[todo[accept]] = choice[accept]
        room -= np.bincount(choice[accept], minlength=len(room))
        todo = todo[~accept]
    return out


def split_full_prefixes(codes: np.ndarray, residuals: np.ndarray, codebook: np.ndarray,
                        last_codebook: np.ndarray) -> Reassignment:
    """Caps every prefix of length L - 1 at ``K_L`` items, so that :func:`reassign_collisions` needs
    no extra level: the items of an over-full prefix farthest from its level-(L-1) centroid move to
    the nearest level-(L-1) codes with room under the same length-(L-2) prefix (greedily, closest
    first); a moved item then takes its nearest last-level code.

    Args:
      codes: int ``[N, L]`` codes, L >= 2.
      residuals: float ``[N, D]``, what level L - 1 quantizes (input minus levels < L - 1).
      codebook: float ``[K_{L-1}, D]``, level L - 1 centroids.
      last_codebook: float ``[K_L, D]``, level L centroids (``K_L`` is the capacity).

    Returns the new codes, the number of items moved, their added squared distance at level L - 1,
    and the number of items left in over-full prefixes (their parent prefix had no room).
    """
    codes = np.asarray(codes, np.int32).copy()
    residuals = np.asarray(residuals, np.float32)
    codebook = np.asarray(codebook, np.float32)
    last_codebook = np.asarray(last_codebook, np.float32)
    n, num_levels = codes.shape
    if num_levels < 2:
        raise ValueError(f"codes have {num_levels} level(s); splitting prefixes needs at least 2")
    k, capacity = codebook.shape[0], last_codebook.shape[0]
    prefix_id = _group_ids(codes[:, :-1])
    sizes = np.bincount(prefix_id)
    if sizes.max() <= capacity:
        return Reassignment(codes, 0, 0.0, 0)
    parent_id = _group_ids(codes[:, :-2])
    col = num_levels - 2
    own = np.sum((residuals - codebook[codes[:, col]]) ** 2, axis=1)
    full_parents = np.unique(parent_id[sizes[prefix_id] > capacity])
    rows = np.flatnonzero(np.isin(parent_id, full_parents))
    rows = rows[np.argsort(parent_id[rows], kind="stable")]
    cuts = np.flatnonzero(np.diff(parent_id[rows])) + 1
    moved_rows, cost, unresolved = [], 0.0, 0
    for members in np.split(rows, cuts):
        counts = np.bincount(codes[members, col], minlength=k)
        movers = []
        for code in np.flatnonzero(counts > capacity):
            group = members[codes[members, col] == code]
            movers.extend(group[np.argsort(-own[group], kind="stable")[: counts[code] - capacity]])
        movers = np.asarray(movers, np.int64)
        target = _greedy_fill(_sq_dists(residuals[movers], codebook),
                              np.maximum(capacity - counts, 0))
        placed = movers[target >= 0]
        codes[placed, col] = target[target >= 0]
        cost += float(np.sum(np.sum((residuals[placed] - codebook[codes[placed, col]]) ** 2, axis=1)
                             - own[placed]))
        moved_rows.append(placed)
        unresolved += int(np.sum(target < 0))
    moved = np.concatenate(moved_rows) if moved_rows else np.zeros(0, np.int64)
    if len(moved):
        rest = residuals[moved] - codebook[codes[moved, col]]
        codes[moved, -1] = np.argmin(_sq_dists(rest, last_codebook), axis=1)
    return Reassignment(codes, len(moved), cost, unresolved)
