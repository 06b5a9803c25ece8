"""Cross-entropy with label smoothing, shared by the SID loss and the SASRec item loss."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def smoothed_nll(logits: jax.Array, labels: jax.Array, allowed: jax.Array | None,
                 smoothing: float) -> jax.Array:
    """Cross-entropy ``[...]`` of ``labels`` against ``(1 - smoothing)`` on the label plus
    ``smoothing`` spread uniformly over the allowed classes (bool ``allowed [..., V]``, None: all);
    ``smoothing=0`` is the plain negative log-likelihood."""
    logits = logits.astype(jnp.float32)
    if allowed is not None:
        logits = jnp.where(allowed, logits, -1e9)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    nll = log_z - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    if not smoothing:
        return nll
    if allowed is None:
        uniform = log_z - jnp.mean(logits, axis=-1)
    else:
        n = jnp.maximum(jnp.sum(allowed, axis=-1), 1)
        uniform = log_z - jnp.sum(jnp.where(allowed, logits, 0.0), axis=-1) / n
    return (1.0 - smoothing) * nll + smoothing * uniform
