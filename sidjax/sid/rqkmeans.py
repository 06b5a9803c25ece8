"""Residual k-means (RQ-KMeans): hierarchical codes by k-means on successive residuals, in JAX.

Level l clusters the residuals left by levels < l into ``K_l`` centroids. Small catalogs use full-batch
Lloyd iterations; large ones (more than ``minibatch_above`` items) use mini-batch k-means (Sculley 2010:
per-centroid running means over random batches) seeded by k-means++ on a sample. Optional balanced
assignment caps every code at ``ceil(n / K) * (1 + slack)`` items (items propose to their nearest codes
in turn; a full code keeps its closest items). Everything is deterministic for a seed on one platform;
SIDs may differ across hardware (floating point reductions): a built SID table is an archived artifact.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

MAX_CODES = 65536
MAX_LEVELS = 16


def _sq_dists(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Squared Euclidean distances ``[N, K]`` without forming ``[N, K, D]``."""
    return (jnp.sum(x * x, axis=1, keepdims=True) - 2.0 * jnp.einsum("ND,KD->NK", x, centroids)
            + jnp.sum(centroids * centroids, axis=1)[None, :])


@functools.partial(jax.jit, static_argnames=("k", "trials"))
def kmeans_plus_plus(key: jax.Array, x: jax.Array, k: int, trials: int = 1) -> jax.Array:
    """k-means++ seeding: ``k`` rows of ``x`` drawn with probability proportional to D(x)^2.

    With ``trials > 1`` (greedy k-means++), each step draws ``trials`` candidates and keeps the one
    that lowers the total squared distance most.
    """
    n = x.shape[0]
    key, first = jax.random.split(key)
    centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[jax.random.randint(first, (), 0, n)])
    min_d = jnp.sum((x - centroids[0]) ** 2, axis=1)

    def body(i, carry):
        centroids, min_d = carry
        logits = jnp.where(min_d > 0, jnp.log(jnp.maximum(min_d, 1e-30)), -jnp.inf)
        logits = jnp.where(jnp.all(min_d <= 0), jnp.zeros_like(logits), logits)
        if trials == 1:
            idx = jax.random.categorical(jax.random.fold_in(key, i), logits)
            new_d = jnp.minimum(min_d, jnp.sum((x - x[idx]) ** 2, axis=1))
        else:
            cand = jax.random.categorical(jax.random.fold_in(key, i), logits, shape=(trials,))
            cand_d = jnp.minimum(min_d[None, :], _sq_dists(x[cand], x).clip(0))
            best = jnp.argmin(jnp.sum(cand_d, axis=1))
            idx, new_d = cand[best], cand_d[best]
        return centroids.at[i].set(x[idx]), new_d

    centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, min_d))
    return centroids


@functools.partial(jax.jit, static_argnames=("k", "iters", "trials"))
def kmeans(key: jax.Array, x: jax.Array, k: int, iters: int = 25,
           trials: int = 1) -> tuple[jax.Array, jax.Array]:
    """Lloyd's k-means from k-means++ seeds (``trials`` candidates per seed, see
    :func:`kmeans_plus_plus`). Returns ``(centroids [K, D], assignment [N])``.

    An empty cluster keeps its previous centroid.
    """
    centroids = kmeans_plus_plus(key, x, k, trials)

    def step(_, centroids):
        assign = jnp.argmin(_sq_dists(x, centroids), axis=1)
        sums = jax.ops.segment_sum(x, assign, num_segments=k)
        counts = jax.ops.segment_sum(jnp.ones(x.shape[0], x.dtype), assign, num_segments=k)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts[:, None], 1), centroids)

    centroids = jax.lax.fori_loop(0, iters, step, centroids)
    return centroids, jnp.argmin(_sq_dists(x, centroids), axis=1)


@functools.partial(jax.jit, static_argnames=("k", "steps", "batch_size", "init_size", "init_iters"))
def minibatch_kmeans(key: jax.Array, x: jax.Array, k: int, steps: int, batch_size: int,
                     init_size: int, init_iters: int = 10) -> jax.Array:
    """Mini-batch k-means: full k-means on ``init_size`` sampled rows, then ``steps`` batch updates.

    Each centroid is the running mean of the points ever assigned to it (learning rate ``1 / count``),
    counting the sample's points, so every centroid starts as a cell mean: starting from raw
    k-means++ seeds instead lets the first few updated centroids (pulled toward the data mean) win
    almost every point on nearly isotropic residuals. Returns the centroids ``[K, D]``.
    """
    n = x.shape[0]
    k_init, k_seed, k_steps = jax.random.split(key, 3)
    sample = x[jax.random.choice(k_init, n, (min(init_size, n),), replace=False)]
    centroids, assign = kmeans(k_seed, sample, k, init_iters, 2 + int(math.log(k)))
    counts = jax.ops.segment_sum(jnp.ones(sample.shape[0], x.dtype), assign, num_segments=k)

    def step(i, carry):
        centroids, counts = carry
        xb = x[jax.random.randint(jax.random.fold_in(k_steps, i), (batch_size,), 0, n)]
        assign = jnp.argmin(_sq_dists(xb, centroids), axis=1)
        sums = jax.ops.segment_sum(xb, assign, num_segments=k)
        batch_counts = jax.ops.segment_sum(jnp.ones(batch_size, x.dtype), assign, num_segments=k)
        counts = counts + batch_counts
        delta = (sums - batch_counts[:, None] * centroids) / jnp.maximum(counts, 1)[:, None]
        return centroids + delta, counts

    centroids, _ = jax.lax.fori_loop(0, steps, step, (centroids, counts))
    return centroids


@functools.partial(jax.jit, static_argnames=("capacity", "max_rounds"))
def balanced_assign(dists: jax.Array, capacity: int, max_rounds: int = 1000) -> jax.Array:
    """Nearest-code assignment with at most ``capacity`` items per code (deferred acceptance).

    Every round, each item proposes to its nearest code not yet refusing it; a code over capacity
    keeps its ``capacity`` closest proposers and refuses the others. Needs ``capacity * K >= N``.
    Returns ``[N]`` codes; stops after ``max_rounds`` (then a code may stay over capacity).
    """
    n, k = dists.shape
    rows = jnp.arange(n)

    def round_(state):
        r, refused, _, _ = state
        d = jnp.where(refused, jnp.inf, dists)
        assign = jnp.argmin(d, axis=1)
        best = d[rows, assign]
        order = jnp.lexsort((best, assign))
        counts = jnp.bincount(assign, length=k)
        starts = jnp.cumsum(counts) - counts
        rank = jnp.zeros(n, jnp.int32).at[order].set(rows - starts[assign[order]])
        over = rank >= capacity
        refused = refused.at[rows, assign].set(refused[rows, assign] | over)
        return r + 1, refused, assign, jnp.any(over)

    state = (0, jnp.zeros((n, k), bool), jnp.zeros(n, jnp.int32), True)
    _, _, assign, _ = jax.lax.while_loop(lambda s: s[3] & (s[0] < max_rounds), round_, state)
    return assign


@jax.jit
def _nearest(x: jax.Array, centroids: jax.Array) -> jax.Array:
    return jnp.argmin(_sq_dists(x, centroids), axis=1).astype(jnp.int32)


def nearest_code(x: jax.Array, centroids: jax.Array, chunk: int = 65536) -> jax.Array:
    """``argmin_k |x_n - c_k|^2`` for every row, in chunks so ``[N, K]`` never has to fit at once."""
    n = x.shape[0]
    if n <= chunk:
        return _nearest(x, centroids)
    pad = (-n) % chunk
    xp = jnp.pad(x, ((0, pad), (0, 0)))
    parts = [_nearest(xp[i:i + chunk], centroids) for i in range(0, n + pad, chunk)]
    return jnp.concatenate(parts)[:n]


@dataclasses.dataclass(frozen=True)
class RQKMeansConfig:
    """Residual k-means settings.

    Attributes:
      levels: number of code levels L (1..16).
      codes: codes per level, one int for all levels or a tuple of L ints (each 2..65536).
      iters: Lloyd iterations (full batch) per level.
      seed: PRNG seed; same seed, data and platform give the same codebooks.
      batch_size: mini-batch size; mini-batch k-means runs when there are more than
        ``minibatch_above`` items.
      minibatch_above: item count above which mini-batch updates replace full-batch Lloyd.
      minibatch_steps: mini-batch updates per level.
      balanced: cap each code at ``ceil(n / K) * (1 + slack)`` items when assigning the fit items.
      slack: extra capacity share of balanced assignment.
    """

    levels: int = 3
    codes: int | tuple[int, ...] = 256
    iters: int = 25
    seed: int = 0
    batch_size: int = 4096
    minibatch_above: int = 65536
    minibatch_steps: int = 100
    balanced: bool = False
    slack: float = 0.0

    def codes_per_level(self) -> tuple[int, ...]:
        """``K`` of every level, checked against ``levels``."""
        if not 1 <= self.levels <= MAX_LEVELS:
            raise ValueError(f"levels={self.levels} out of range; use 1..{MAX_LEVELS}")
        ks = (self.codes,) * self.levels if isinstance(self.codes, int) else tuple(self.codes)
        if len(ks) != self.levels:
            raise ValueError(f"codes={self.codes} gives {len(ks)} levels but levels={self.levels}; "
                             "pass one int or a tuple with one K per level")
        for k in ks:
            if not 2 <= int(k) <= MAX_CODES:
                raise ValueError(f"codes per level {k} out of range; use 2..{MAX_CODES}")
        return tuple(int(k) for k in ks)


@dataclasses.dataclass(frozen=True)
class RQKMeans:
    """A fitted residual k-means quantizer: one float32 codebook ``[K_l, D]`` per level."""

    codebooks: tuple[np.ndarray, ...]
    config: RQKMeansConfig

    @property
    def dim(self) -> int:
        return int(self.codebooks[0].shape[1])


def check_vectors(vectors, where: str = "vectors") -> np.ndarray:
    """Returns ``vectors`` as float32 ``[N, D]``; raises naming the first non-finite row."""
    x = np.asarray(vectors, np.float32)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{where}: expected a non-empty [num_items, dim] array, got shape {x.shape}")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        rows = np.flatnonzero(bad)
        raise ValueError(f"{where}: {len(rows)} rows contain NaN or inf (first row {rows[0]}); "
                         "drop or re-embed those items")
    return x


def fit_with_codes(vectors, cfg: RQKMeansConfig) -> tuple[RQKMeans, np.ndarray]:
    """Fits the quantizer and returns it with the codes ``[N, L]`` of the fit items.

    With ``cfg.balanced`` the returned codes respect the per-code capacity (plain :func:`encode`
    of the same vectors uses nearest codes instead).
    """
    x_np = check_vectors(vectors)
    ks = cfg.codes_per_level()
    n = x_np.shape[0]
    if n < max(ks):
        raise ValueError(f"{n} items but {max(ks)} codes per level: need at least as many items as "
                         "codes; lower codes (e.g. --codes) or add items")
    x = jnp.asarray(x_np)
    key = jax.random.key(cfg.seed)
    codebooks, codes = [], []
    for level, k in enumerate(ks):
        lkey = jax.random.fold_in(key, level)
        if n > cfg.minibatch_above:
            centroids = minibatch_kmeans(lkey, x, k, cfg.minibatch_steps, cfg.batch_size,
                                         max(cfg.batch_size, 16 * k))
        else:
            centroids, _ = kmeans(lkey, x, k, cfg.iters)
        if cfg.balanced:
            capacity = math.ceil(math.ceil(n / k) * (1.0 + cfg.slack))
            assign = balanced_assign(_sq_dists(x, centroids), capacity)
        else:
            assign = nearest_code(x, centroids)
        codebooks.append(np.asarray(centroids))
        codes.append(np.asarray(assign, np.int32))
        x = x - centroids[assign]
    return RQKMeans(tuple(codebooks), cfg), np.stack(codes, axis=1)


def fit(vectors, cfg: RQKMeansConfig) -> RQKMeans:
    """Fits a residual k-means quantizer (see :class:`RQKMeansConfig`)."""
    return fit_with_codes(vectors, cfg)[0]


def encode(quantizer: RQKMeans, vectors) -> np.ndarray:
    """Codes ``[N, L]`` (int32) of ``vectors``: nearest centroid level by level."""
    x = check_vectors(vectors)
    if x.shape[1] != quantizer.dim:
        raise ValueError(f"vectors have dim {x.shape[1]} but the quantizer was fit on dim "
                         f"{quantizer.dim}; use vectors from the same encoder")
    return encode_rqkmeans(list(quantizer.codebooks), x)


def residuals_before(quantizer: RQKMeans, vectors, codes: np.ndarray, level: int) -> np.ndarray:
    """What level ``level`` quantizes: ``vectors`` minus the centroids of levels < ``level``."""
    x = np.asarray(vectors, np.float32).copy()
    for lv in range(level):
        x -= quantizer.codebooks[lv][codes[:, lv]]
    return x


def reconstruct(quantizer: RQKMeans, codes: np.ndarray) -> np.ndarray:
    """Sum of the selected centroids of every level, ``[N, D]``."""
    return sum(cb[codes[:, lv]] for lv, cb in enumerate(quantizer.codebooks))


def fit_rqkmeans(vectors: np.ndarray, levels: int, codes: int | tuple[int, ...], *, iters: int = 25,
                 seed: int = 0, **options) -> list[np.ndarray]:
    """Fits ``levels`` codebooks on successive residuals; ``options`` are other
    :class:`RQKMeansConfig` fields. Returns the codebooks ``[K_l, D]`` (float32).

    Deterministic for a seed.
    """
    cfg = RQKMeansConfig(levels=levels, codes=codes, iters=iters, seed=seed, **options)
    return list(fit(vectors, cfg).codebooks)


def encode_rqkmeans(codebooks: list[np.ndarray], vectors: np.ndarray) -> np.ndarray:
    """Codes ``[N, levels]`` (int32) of ``vectors`` under residual codebooks."""
    x = jnp.asarray(vectors, jnp.float32)
    out = []
    for centroids in codebooks:
        c = jnp.asarray(centroids)
        assign = nearest_code(x, c)
        out.append(assign)
        x = x - c[assign]
    return np.asarray(jnp.stack(out, axis=1), dtype=np.int32)


def to_arrays(quantizer: RQKMeans) -> dict[str, np.ndarray]:
    """The arrays to save: ``codebook_<level>``."""
    return {f"codebook_{lv}": cb for lv, cb in enumerate(quantizer.codebooks)}


def from_arrays(config: dict, arrays: dict[str, np.ndarray]) -> RQKMeans:
    """Inverse of :func:`to_arrays` with the saved config; checks the codebook shapes."""
    if isinstance(config.get("codes"), list):
        config = {**config, "codes": tuple(config["codes"])}
    cfg = RQKMeansConfig(**config)
    ks = cfg.codes_per_level()
    books = []
    for lv, k in enumerate(ks):
        cb = arrays.get(f"codebook_{lv}")
        if cb is None or cb.ndim != 2 or cb.shape[0] != k:
            raise ValueError(f"codebook_{lv}: expected [{k}, D], got "
                             f"{None if cb is None else cb.shape}")
        if books and cb.shape[1] != books[0].shape[1]:
            raise ValueError(f"codebook_{lv} has dim {cb.shape[1]}, codebook_0 has {books[0].shape[1]}")
        books.append(np.asarray(cb, np.float32))
    return RQKMeans(tuple(books), cfg)
