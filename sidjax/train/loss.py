"""The next-SID-token loss: per-token NLL restricted to each target's SID level (label-smoothed
within the level), its metrics, and the task-loss adapter :func:`sidjax.train.loop.train` calls."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from sidjax.nn.losses import smoothed_nll
from sidjax.tokens import SIDVocab


def token_levels(vocab: SIDVocab) -> np.ndarray:
    """Level of every token id (0 for PAD and BOS)."""
    return np.argmax(vocab.level_mask(), axis=0).astype(np.int32)


def sid_token_nll(logits: jax.Array, targets: jax.Array,
                  vocab: SIDVocab) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per position ``[B, T]``: the cross-entropy of the target token over its own level's codes,
    whether the level-restricted argmax is the target, and the target's level (0 for PAD)."""
    target_level = jnp.asarray(token_levels(vocab))[targets]
    allowed = jnp.asarray(vocab.level_mask())[target_level]  # B T V
    logits = jnp.where(allowed, logits.astype(jnp.float32), -1e9)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
        logits, targets[..., None], axis=-1)[..., 0]
    return nll, jnp.argmax(logits, axis=-1) == targets, target_level


def sid_loss(logits: jax.Array, targets: jax.Array, vocab: SIDVocab,
             label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
    """Mean cross-entropy of next SID tokens, each over its own level's codes. Targets that are not
    SID tokens (PAD, and the BOS that follows the last left-padding position) are ignored.
    ``label_smoothing`` spreads that share of the target over the level's codes
    (:func:`smoothed_nll`; the metrics' ``nll`` stays unsmoothed).

    Returns ``(loss, metrics)`` where metrics hold the loss and per-level token accuracy.
    """
    nll, correct, target_level = sid_token_nll(logits, targets, vocab)
    weight = (target_level > 0).astype(jnp.float32)
    total = jnp.maximum(jnp.sum(weight), 1.0)
    if label_smoothing:
        allowed = jnp.asarray(vocab.level_mask())[target_level]
        smoothed = smoothed_nll(logits, targets, allowed, label_smoothing)
        loss = jnp.sum(smoothed * weight) / total
    else:
        loss = jnp.sum(nll * weight) / total
    correct = correct * weight
    metrics = {"loss": loss}
    if label_smoothing:
        metrics["nll"] = jnp.sum(nll * weight) / total
    for level in range(1, vocab.num_levels + 1):
        at = (target_level == level) * weight
        metrics[f"acc_l{level}"] = jnp.sum(correct * at) / jnp.maximum(jnp.sum(at), 1.0)
    return loss, metrics


def sid_task_loss(vocab: SIDVocab, label_smoothing: float = 0.0) -> Callable:
    """The next-SID-token loss as a task: ``(model, batch, dropout_key) -> (loss, metrics)``.

    ``batch`` holds ``tokens/codes/levels/targets`` and, for packed rows, ``segment_ids`` and
    ``positions``. ``label_smoothing``: see :func:`sid_loss`.
    """
    def loss(model, batch, dropout_key):
        logits = model(batch["tokens"], batch["codes"], batch["levels"], dropout_key=dropout_key,
                       segment_ids=batch.get("segment_ids"), positions=batch.get("positions"))
        return sid_loss(logits, batch["targets"], vocab, label_smoothing)

    return loss
