"""Residual k-means (RQ-KMeans): hierarchical codes by k-means on successive residuals, in JAX."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _sq_dists(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Squared Euclidean distances ``[N, K]`` without forming ``[N, K, D]``."""
    return (jnp.sum(x * x, axis=1, keepdims=True) - 2.0 * jnp.einsum("ND,KD->NK", x, centroids)
            + jnp.sum(centroids * centroids, axis=1)[None, :])


@functools.partial(jax.jit, static_argnames=("k",))
def kmeans_plus_plus(key: jax.Array, x: jax.Array, k: int) -> jax.Array:
    """k-means++ seeding: ``k`` rows of ``x`` drawn with probability proportional to D(x)^2."""
    n = x.shape[0]
    key, first = jax.random.split(key)
    centroids = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[jax.random.randint(first, (), 0, n)])
    min_d = jnp.sum((x - centroids[0]) ** 2, axis=1)

    def body(i, carry):
        centroids, min_d = carry
        logits = jnp.where(min_d > 0, jnp.log(jnp.maximum(min_d, 1e-30)), -jnp.inf)
        logits = jnp.where(jnp.all(min_d <= 0), jnp.zeros_like(logits), logits)
        idx = jax.random.categorical(jax.random.fold_in(key, i), logits)
        centroids = centroids.at[i].set(x[idx])
        return centroids, jnp.minimum(min_d, jnp.sum((x - x[idx]) ** 2, axis=1))

    centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, min_d))
    return centroids


@functools.partial(jax.jit, static_argnames=("k", "iters"))
def kmeans(key: jax.Array, x: jax.Array, k: int, iters: int = 25) -> tuple[jax.Array, jax.Array]:
    """Lloyd's k-means from k-means++ seeds. Returns ``(centroids [K, D], assignment [N])``.

    An empty cluster keeps its previous centroid.
    """
    centroids = kmeans_plus_plus(key, x, k)

    def step(_, centroids):
        assign = jnp.argmin(_sq_dists(x, centroids), axis=1)
        sums = jax.ops.segment_sum(x, assign, num_segments=k)
        counts = jax.ops.segment_sum(jnp.ones(x.shape[0], x.dtype), assign, num_segments=k)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts[:, None], 1), centroids)

    centroids = jax.lax.fori_loop(0, iters, step, centroids)
    return centroids, jnp.argmin(_sq_dists(x, centroids), axis=1)


def fit_rqkmeans(vectors: np.ndarray, levels: int, codes: int, *, iters: int = 25,
                 seed: int = 0) -> list[np.ndarray]:
    """Fits ``levels`` codebooks of ``codes`` centroids each on successive residuals.

    Returns the list of codebooks ``[K, D]`` (float32). Deterministic for a seed.
    """
    x = jnp.asarray(vectors, jnp.float32)
    if x.ndim != 2 or not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("fit_rqkmeans: vectors must be a finite [num_items, dim] array")
    k = min(codes, x.shape[0])
    codebooks = []
    key = jax.random.key(seed)
    for level in range(levels):
        centroids, assign = kmeans(jax.random.fold_in(key, level), x, k, iters)
        codebooks.append(np.asarray(centroids))
        x = x - centroids[assign]
    return codebooks


def encode_rqkmeans(codebooks: list[np.ndarray], vectors: np.ndarray) -> np.ndarray:
    """Codes ``[N, levels]`` (int32) of ``vectors`` under residual codebooks."""
    x = jnp.asarray(vectors, jnp.float32)
    out = []
    for centroids in codebooks:
        c = jnp.asarray(centroids)
        assign = jnp.argmin(_sq_dists(x, c), axis=1)
        out.append(assign)
        x = x - c[assign]
    return np.asarray(jnp.stack(out, axis=1), dtype=np.int32)
