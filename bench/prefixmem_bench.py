"""PrefixMem cost: training step time with and without it, and sharded vs unsharded lookups.

    python bench/prefixmem_bench.py               # d_model 256, 4 layers, 4 SID levels, batch 32,
                                                  # 80 tokens: ~1.5 min on 2 CPU cores
    python bench/prefixmem_bench.py --batch 128   # the reference config (batch 128; ~5 min on 2
                                                  # CPU cores, seconds on an accelerator)

Part 1 builds ``SIDRecommender`` twice at the same decoder size, once plain and once with PrefixMem
(default PrefixMemConfig: orders 1-4, 2 hash heads, concat fusion, gate; ``--mem-dim``,
``--inject-layers``), and times
the jitted ``make_train_step`` (forward, backward, AdamW) on one device. Part 2 times the jitted
``prefixmem.apply`` forward on the same batch, unsharded and with the table row-sharded over
meshes (data, model) = (8, 1), (2, 4), (1, 8) of 8 devices (8 virtual CPU devices unless an
accelerator platform provides them).
"""

from __future__ import annotations

import os

if "XLA_FLAGS" not in os.environ and os.environ.get("JAX_PLATFORMS", "cpu") == "cpu":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from sidjax.config import ModelConfig, PrefixMemConfig, TrainConfig  # noqa: E402
from sidjax.data.pipeline import SIDVocab  # noqa: E402
from sidjax.nn import prefixmem as pm  # noqa: E402
from sidjax.nn.model import SIDRecommender, count_params, resolve_prefixmem  # noqa: E402
from sidjax.parallel import MeshConfig, make_mesh, shard_pytree  # noqa: E402
from sidjax.train.loop import make_optimizer, make_train_step  # noqa: E402


def make_batch(vocab: SIDVocab, batch: int, tokens: int, seed: int = 0) -> dict[str, jax.Array]:
    """A random full-length batch of SID token sequences (items of ``L`` consecutive levels)."""
    rng = np.random.default_rng(seed)
    num_levels = vocab.num_levels
    levels = np.tile(np.arange(1, num_levels + 1, dtype=np.int32), -(-(tokens + 1) // num_levels))
    levels = np.broadcast_to(levels[:tokens + 1], (batch, tokens + 1))
    codes = rng.integers(0, np.asarray(vocab.codes_per_level)[levels - 1]).astype(np.int32)
    toks = (vocab.level_offsets[levels - 1] + codes).astype(np.int32)
    return {"tokens": jnp.asarray(toks[:, :-1]), "codes": jnp.asarray(codes[:, :-1]),
            "levels": jnp.asarray(levels[:, :-1]), "targets": jnp.asarray(toks[:, 1:])}


def time_calls(fn, args, steps: int) -> float:
    """Median seconds per call of ``fn(*args)`` after one warm-up (compile) call."""
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def make_stepper(model_cfg: ModelConfig, vocab: SIDVocab, batch: dict):
    """``(run_one_step, parameter count)``: ``run_one_step(i)`` does one jitted training step."""
    model = SIDRecommender(model_cfg, vocab, rngs=nnx.Rngs(params=0))
    graphdef, params = nnx.split(model)
    tx = make_optimizer(TrainConfig(steps=1000, warmup_steps=10))
    step_fn = make_train_step(graphdef, tx, vocab, dropout=False)
    key = jax.random.key(0)
    state = {"params": params, "opt": tx.init(params)}

    def run(i: int):
        state["params"], state["opt"], metrics = step_fn(state["params"], state["opt"], batch,
                                                         i, key)
        return jax.block_until_ready(metrics["loss"])

    return run, count_params(model)


def interleaved_step_times(runs: list, steps: int) -> list[float]:
    """Median seconds per step of each runner, timed alternately so load changes hit all alike."""
    for run in runs:
        run(0)  # compile
    times = [[] for _ in runs]
    for i in range(steps):
        for run, out in zip(runs, times):
            t0 = time.perf_counter()
            run(i + 1)
            out.append(time.perf_counter() - t0)
    return [float(np.median(t)) for t in times]


def main() -> None:
    """Prints step times with/without PrefixMem and lookup throughput sharded vs unsharded."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32, help="128 for the reference config")
    ap.add_argument("--tokens", type=int, default=80)
    ap.add_argument("--codes", type=str, default="256,256,256,16", help="codes per SID level")
    ap.add_argument("--mem-dim", type=int, default=32)
    ap.add_argument("--inject-layers", type=str, default="",
                    help="blocks PrefixMem is added before, e.g. 0,2 (default: the embeddings)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-lookup", action="store_true")
    args = ap.parse_args()

    vocab = SIDVocab(tuple(int(c) for c in args.codes.split(",")))
    batch = make_batch(vocab, args.batch, args.tokens)
    d = args.d_model
    base = ModelConfig(d_model=d, num_layers=args.layers, num_heads=d // 64, head_dim=64,
                       mlp_dim=3 * d, dropout=0.0,
                       prefixmem=PrefixMemConfig(mem_dim=args.mem_dim))
    layers = tuple(int(i) for i in args.inject_layers.split(",") if i.strip())
    with_pm = dataclasses.replace(base, prefixmem=PrefixMemConfig(enabled=True, mem_dim=args.mem_dim,
                                                                  inject_layers=layers))
    pm_cfg = resolve_prefixmem(with_pm, vocab.codes_per_level)
    print(f"backend {jax.default_backend()} ({jax.device_count()} devices: "
          f"{jax.devices()[0].device_kind}); d_model {d}, {args.layers} layers, "
          f"{vocab.num_levels} SID levels {vocab.codes_per_level}, batch {args.batch} x "
          f"{args.tokens} tokens")
    print(f"PrefixMem: {pm.layout(pm_cfg).num_rows:,} table rows x {pm_cfg.mem_dim}, "
          f"{pm.param_count(pm_cfg):,} params, {pm.flops_per_token(pm_cfg):,} FLOPs/token, "
          f"injected {'before blocks ' + str(layers) if layers else 'at the embeddings'}")

    if not args.skip_train:
        (run_base, n_base), (run_pm, n_pm) = (make_stepper(c, vocab, batch) for c in (base, with_pm))
        t_base, t_pm = interleaved_step_times([run_base, run_pm], args.steps)
        print(f"train step  baseline : {t_base * 1e3:9.2f} ms  ({n_base:,} params)")
        print(f"train step  prefixmem: {t_pm * 1e3:9.2f} ms  ({n_pm:,} params)")
        print(f"overhead ratio (prefixmem / baseline): {t_pm / t_base:.3f}")

    if not args.skip_lookup:
        params = pm.init(jax.random.key(0), pm_cfg)
        hidden = jax.random.normal(jax.random.key(1), batch["codes"].shape + (d,))
        tokens = batch["codes"].size
        f = jax.jit(lambda p, c, lv, h: pm.apply(p, c, lv, cfg=pm_cfg, hidden=h))
        t = time_calls(f, (params, batch["codes"], batch["levels"], hidden), args.steps)
        print(f"lookup unsharded (1 device)  : {t * 1e3:8.2f} ms  {tokens / t / 1e6:7.2f} M tok/s")
        if jax.device_count() >= 8:
            for data, model in ((8, 1), (2, 4), (1, 8)):
                mesh = make_mesh(MeshConfig(data=data, model=model), devices=jax.devices()[:8])
                cfg = pm.for_mesh(pm_cfg, mesh)
                sharded = shard_pytree(pm.init(jax.random.key(0), cfg), pm.param_axes(cfg), mesh)
                g = jax.jit(lambda p, c, lv, h, cfg=cfg, mesh=mesh: pm.apply(
                    p, c, lv, cfg=cfg, hidden=h, mesh=mesh))
                t = time_calls(g, (sharded, batch["codes"], batch["levels"], hidden), args.steps)
                print(f"lookup sharded (data={data}, model={model}): {t * 1e3:8.2f} ms  "
                      f"{tokens / t / 1e6:7.2f} M tok/s")


if __name__ == "__main__":
    main()
