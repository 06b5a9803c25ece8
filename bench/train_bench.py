"""Training throughput: tokens/s and MFU of the jitted train step, against the measured matmul
peak of this machine, for the reference config (d_model 256, 4 layers, 80 input tokens,
batch 128) without and with PrefixMem.

    python bench/train_bench.py                     # reference config, 5 timed steps each
    python bench/train_bench.py --steps 20 --batch 64 --compute-dtype bfloat16

The peak is the best FLOP/s of a jitted 2048 x 2048 float32 matmul (2 * 2048^3 FLOPs), measured
again before each model (the best of all measurements is used). Step times are printed as the median
and the best of the timed steps; MFU is given for both (on a shared machine the best step against
the best peak is the fairer ratio, since both then ran with the least interference).
FLOPs per token are ``state_report``'s estimate: 6 x matmul parameters + 12 x layers x T x
attention width (PrefixMem's table gather and its small projections are not counted as model
FLOPs beyond their matmul parameters).
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from sidjax import config as C
from sidjax import run as E
from sidjax.data.pipeline import train_dataset
from sidjax.train.accounting import state_report
from sidjax.train.loop import init_state, make_train_step


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
    """Best measured FLOP/s of an ``n x n`` float32 matmul on the default device."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: jnp.einsum("ij,jk->ik", x, y))
    f(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        f(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def reference_config(prefixmem: bool, batch: int, compute_dtype: str) -> C.Config:
    """d_model 256, 4 layers, 20 items x 4 SID tokens = 80 input tokens, ``batch`` rows."""
    cfg = C.demo()
    pm = dataclasses.replace(cfg.model.prefixmem, enabled=prefixmem)
    model = dataclasses.replace(cfg.model, d_model=256, num_layers=4, num_heads=4, head_dim=64,
                                mlp_dim=768, dropout=0.0, prefixmem=pm)
    return dataclasses.replace(
        cfg, data=dataclasses.replace(cfg.data, max_history=20), model=model,
        train=dataclasses.replace(cfg.train, batch_size=batch, compute_dtype=compute_dtype))


def bench(prep, cfg: C.Config, steps: int, peak: float) -> dict:
    """Times ``steps`` train steps after one compile step; returns the figures."""
    data = train_dataset(prep.split.train, prep.sids.codes, prep.vocab,
                         max_history=cfg.data.max_history, batch_size=cfg.train.batch_size, seed=0)
    graphdef, params, opt_state, tx, part, shardings = init_state(
        E.build_model(cfg, prep.vocab), cfg.train)
    step_fn = make_train_step(graphdef, tx, prep.vocab, False, partitioner=part,
                              state_shardings=shardings, compute_dtype=cfg.train.compute_dtype)
    batches = [part.shard_batch(data[i]) for i in range(steps + 1)]
    tokens = int(np.prod(batches[0]["tokens"].shape))
    report = state_report(params, opt_state, batches[0]["tokens"].shape[1], part)
    key = jax.random.key(0)
    params, opt_state, m = step_fn(params, opt_state, batches[0], 0, key)
    jax.block_until_ready(m)
    times = []
    for i in range(1, steps + 1):
        start = time.perf_counter()
        params, opt_state, m = step_fn(params, opt_state, batches[i], i, key)
        jax.block_until_ready(m)
        times.append(time.perf_counter() - start)
    median, best = float(np.median(times)), min(times)
    flops = tokens * report["flops_per_token"]
    return {"tokens_per_step": tokens, "step_time_s": median, "best_step_time_s": best,
            "tokens_per_s": tokens / median, "flops_per_token": report["flops_per_token"],
            "params": report["params_total"], "mfu": flops / median / peak,
            "mfu_best": flops / best / peak}


def main() -> None:
    """Prints the matmul peak and one row per model."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--compute-dtype", default="float32")
    args = parser.parse_args()
    prep = E.prepare(reference_config(False, args.batch, args.compute_dtype), None,
                     log=lambda _: None)
    rows, peak = [], 0.0
    for name, pm in (("plain SID", False), ("PrefixMem", True)):
        peak = max(peak, matmul_peak())
        rows.append((name, bench(prep, reference_config(pm, args.batch, args.compute_dtype),
                                 args.steps, peak)))
    peak = max(peak, matmul_peak())
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; measured matmul peak "
          f"(2048x2048 f32, best of 3 measurements): {peak / 1e9:.1f} GFLOP/s")
    print("| model | params | tokens/step | step time median / best (s) | tokens/s (median) | "
          "FLOPs/token | MFU median / best |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        flops = r["tokens_per_step"] * r["flops_per_token"]
        print(f"| {name} | {r['params']:,} | {r['tokens_per_step']} | {r['step_time_s']:.3f} / "
              f"{r['best_step_time_s']:.3f} | {r['tokens_per_s']:,.0f} | {r['flops_per_token']:,} "
              f"| {100 * flops / r['step_time_s'] / peak:.1f}% / "
              f"{100 * flops / r['best_step_time_s'] / peak:.1f}% |", flush=True)


if __name__ == "__main__":
    main()
