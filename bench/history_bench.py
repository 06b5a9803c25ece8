"""Long histories: training step time and peak memory against the history length, full attention
vs TokenFormer's BFTS (``model.attention=bfts``: lower layers full, upper layers sliding windows).

    python bench/history_bench.py                            # histories 50, 200, 500 items
    python bench/history_bench.py --histories 50,200 --batch 8 --layers 6 --bfts-window 32

Each row is one jitted training step (forward, backward, AdamW update) of a small SID model
(default d_model 64, 4 layers, 4 heads of 16, MLP 192) on ``--batch`` full rows of
``(max_history + 1) x 3`` SID tokens (``data.max_history`` items plus the predicted one; no
padding, the worst case). Step time is the median of ``--steps`` timed steps after a compile
step; peak memory is XLA's buffer assignment of the compiled step (arguments + outputs +
temporaries, ``Compiled.memory_analysis()``), which is what grows with the T x T attention
scores. The step is self-contained (next-token cross-entropy, optax AdamW), so it measures the
model, not the data pipeline.
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sidjax.config import ModelConfig
from sidjax.nn import families
from sidjax.nn.model import SIDRecommender
from sidjax.tokens import SIDVocab

LEVELS = (32, 32, 32)


def batch_rows(batch: int, max_history: int, vocab: SIDVocab, seed: int = 0) -> dict:
    """``batch`` BOS + ``max_history + 1`` random items rows: inputs and next-token targets."""
    rng = np.random.default_rng(seed)
    codes = rng.integers(0, min(vocab.codes_per_level), size=(batch, max_history + 1, len(LEVELS)))
    tokens = (np.asarray(vocab.level_offsets) + codes).reshape(batch, -1)
    levels = np.tile(np.arange(1, len(LEVELS) + 1), (batch, max_history + 1))
    full = {"tokens": np.concatenate([np.full((batch, 1), vocab.bos_id), tokens], 1),
            "codes": np.concatenate([np.zeros((batch, 1), int), codes.reshape(batch, -1)], 1),
            "levels": np.concatenate([np.zeros((batch, 1), int), levels], 1)}
    out = {k: jnp.asarray(v[:, :-1], jnp.int32) for k, v in full.items()}
    out["targets"] = jnp.asarray(full["tokens"][:, 1:], jnp.int32)
    return out


def bench(cfg: ModelConfig, max_history: int, batch: int, steps: int) -> dict:
    """Median step time (s) and compiled peak memory (bytes) of one training step."""
    vocab = SIDVocab(LEVELS)
    model = SIDRecommender(cfg, vocab, rngs=nnx.Rngs(params=0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adamw(1e-3)
    opt_state = tx.init(params)

    def loss_fn(p, rows):
        logits = nnx.merge(graphdef, p)(rows["tokens"], rows["codes"], rows["levels"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, rows["targets"]).mean()

    def step(p, s, rows):
        loss, grads = jax.value_and_grad(loss_fn)(p, rows)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    rows = batch_rows(batch, max_history, vocab)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, rows).compile()
    mem = compiled.memory_analysis()
    peak = None if mem is None else (mem.argument_size_in_bytes + mem.output_size_in_bytes
                                     + mem.temp_size_in_bytes - mem.alias_size_in_bytes)
    params, opt_state, loss = compiled(params, opt_state, rows)
    jax.block_until_ready(loss)
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        params, opt_state, loss = compiled(params, opt_state, rows)
        jax.block_until_ready(loss)
        times.append(time.perf_counter() - start)
    return {"tokens": int(rows["tokens"].shape[1]), "step_s": float(np.median(times)),
            "peak_bytes": peak, "loss": float(loss)}


def main() -> None:
    """Prints one markdown row per (history length, attention)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--histories", default="50,200,500", help="data.max_history values")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--d-model", type=int, default=64)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--bfts-window", type=int, default=64)
    args = parser.parse_args()
    base = ModelConfig(d_model=args.d_model, num_layers=args.layers, num_heads=4,
                       head_dim=args.d_model // 4, mlp_dim=3 * args.d_model, dropout=0.0)
    bfts = dataclasses.replace(base, attention="bfts", bfts_window=args.bfts_window)
    print(f"device: {jax.devices()[0].device_kind}; batch {args.batch}; d_model {args.d_model}, "
          f"{args.layers} layers; BFTS windows {families.layer_windows(bfts)}")
    print("| max_history | tokens | attention | step time (s) | peak memory (MiB) |")
    print("|---|---|---|---|---|")
    for history in (int(h) for h in args.histories.split(",")):
        for name, cfg in (("full", base), ("bfts", bfts)):
            r = bench(cfg, history, args.batch, args.steps)
            mib = "n/a" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**20:,.1f}"
            print(f"| {history} | {r['tokens']} | {name} | {r['step_s']:.3f} | {mib} |",
                  flush=True)


if __name__ == "__main__":
    main()
