"""SASRec-style ID baseline: item embeddings, the sidjax causal decoder, full softmax over items.

The strong, simple baseline that generative-retrieval papers are often weaker than (Kang & McAuley,
"Self-Attentive Sequential Recommendation", 2018, trained here with full-softmax cross-entropy as in
Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better than SASRec?", 2023).
It shares the decoder blocks, the training loop, the optimizer recipe and the evaluation with the SID
models; only the tokens (one per item instead of one per SID level) and the head differ: the output
is a dot product with the (tied) item embedding table, so every item is scored at once.

Tokens: item index i is token i + 1; token 0 is PAD (left padding). See
:func:`sidjax.data.pipeline.encode_item_ids`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from sidjax.config import ModelConfig
from sidjax.nn.decoder import Decoder
from sidjax.nn.losses import smoothed_nll
from sidjax.nn.model import positions_from_valid
from sidjax.parallel.axes import metadata

PAD_ITEM = 0


class SASRec(nnx.Module):
    """Causal transformer over item tokens; ``__call__`` gives next-item logits ``[B, T, N]``."""

    def __init__(self, cfg: ModelConfig, num_items: int, *, rngs: nnx.Rngs):
        self.num_items = num_items
        self.embed = nnx.Embed(num_items + 1, cfg.d_model, rngs=rngs,
                               embedding_metadata=metadata(("vocab", "embed")))
        self.embed_dropout = nnx.Dropout(cfg.dropout)
        self.decoder = Decoder(cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.head_dim,
                               cfg.mlp_dim, cfg.rope_base, cfg.dropout, rngs=rngs)

    def hidden(self, items: jax.Array, *, dropout_key=None) -> jax.Array:
        """Final decoder states ``[B, T, D]`` of left-padded item tokens ``[B, T]``."""
        rngs = None if dropout_key is None else nnx.Rngs(dropout=dropout_key)
        valid = items != PAD_ITEM
        x = self.embed(items)
        x = self.embed_dropout(x, deterministic=rngs is None, rngs=rngs)
        x, _ = self.decoder(x, positions_from_valid(valid), valid, rngs=rngs)
        return x

    @property
    def tied_output_params(self) -> int:
        """Item-table parameters used as the output matmul (for FLOPs counts)."""
        return self.num_items * self.embed.embedding.shape[1]

    def item_logits(self, states: jax.Array) -> jax.Array:
        """Scores of every item ``[..., N]`` (item i at index i) for states ``[..., D]``."""
        table = self.embed.embedding[...][1:]
        rows = jnp.einsum("MD,ND->MN", states.reshape(-1, states.shape[-1]), table)
        return rows.reshape(states.shape[:-1] + (table.shape[0],))

    def __call__(self, items: jax.Array, *, dropout_key=None) -> jax.Array:
        """Next-item logits ``[B, T, N]`` at every position."""
        return self.item_logits(self.hidden(items, dropout_key=dropout_key))


def item_loss(logits: jax.Array, targets: jax.Array,
              label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
    """Mean full-softmax cross-entropy of next-item ``targets`` (item tokens, PAD ignored), with
    ``label_smoothing`` of the target spread over all items (:func:`sidjax.nn.losses.smoothed_nll`).

    Returns ``(loss, {"loss", "acc"})``; ``acc`` is the top-1 accuracy over non-PAD targets.
    """
    logits = logits.astype(jnp.float32)
    labels = jnp.maximum(targets - 1, 0)
    nll = smoothed_nll(logits, labels, None, label_smoothing)
    weight = (targets != PAD_ITEM).astype(jnp.float32)
    total = jnp.maximum(jnp.sum(weight), 1.0)
    loss = jnp.sum(nll * weight) / total
    acc = jnp.sum((jnp.argmax(logits, axis=-1) == labels) * weight) / total
    return loss, {"loss": loss, "acc": acc}


def sasrec_task_loss(model: SASRec, batch: dict, dropout_key,
                     label_smoothing: float = 0.0) -> tuple[jax.Array, dict]:
    """The training task for :func:`sidjax.train.loop.train` (``loss_fn``): batches of
    ``items``/``targets`` from ``train_dataset(..., item_ids=True)``."""
    return item_loss(model(batch["items"], dropout_key=dropout_key), batch["targets"],
                     label_smoothing)
