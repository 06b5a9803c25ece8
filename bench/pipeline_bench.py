"""Training sequences/s produced by the grain pipeline vs consumed by the jitted train step.

Data: Amazon Sports 2014 (P5 format) read with ``sources.read_p5``, leave-one-out training part.
SIDs: a seeded random code table with the demo config's shape (3 x 32 codes + an 8-code collision
level), or ``--sids build`` for ``build_sid_table`` on collaborative item vectors (slower, same
token statistics). Model and batch: the ``demo`` config (``--config tiny`` for the small one).

Usage: python bench/pipeline_bench.py [--path ../shared/data/amazon-sports-2014] [--steps 200]
       [--train-steps 20] [--threads 2] [--pack 0] [--sids random|build]
Prints both rates and their ratio; the issue's target is a ratio of at least 10.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from sidjax import config as config_lib
from sidjax.data.pipeline import SIDVocab, train_dataset, train_iterator
from sidjax.data.sources import read_p5
from sidjax.data.split import leave_one_out

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-sports-2014"


def sid_codes(train: list[np.ndarray], num_items: int, cfg, how: str, seed: int = 0):
    """``(codes [items, levels + 1], codes_per_level)``: random, or built from collab vectors."""
    if how == "build":
        from sidjax.data.embed import collaborative_item_vectors
        from sidjax.sid.build import build_sid_table

        vecs = collaborative_item_vectors(train, num_items)
        table, _ = build_sid_table(vecs, [str(i) for i in range(num_items)], levels=cfg.sid.levels,
                                   codes=cfg.sid.codes, iters=cfg.sid.kmeans_iters, seed=seed)
        return table.codes, table.codes_per_level
    per_level = (cfg.sid.codes,) * cfg.sid.levels + (8,)
    rng = np.random.default_rng(seed)
    return np.stack([rng.integers(0, k, num_items) for k in per_level], axis=1), per_level


def pipeline_rate(dataset, steps: int, threads: int) -> tuple[float, float]:
    """Sequences/s reading ``dataset[0..steps)`` by index, and through threaded prefetch."""
    batch = len(dataset[0]["tokens"])
    t0 = time.perf_counter()
    for step in range(steps):
        dataset[step]
    direct = steps * batch / (time.perf_counter() - t0)
    it = train_iterator(dataset, steps, num_threads=threads, prefetch=4 * threads)
    next(it)
    t0 = time.perf_counter()
    for _ in range(steps):
        next(it)
    threaded = steps * batch / (time.perf_counter() - t0)
    return direct, threaded


def train_rate(cfg, vocab: SIDVocab, batch: dict, steps: int) -> float:
    """Sequences/s of the jitted train step of ``cfg`` (compile excluded)."""
    from sidjax.run import build_model
    from sidjax.train.loop import make_optimizer, make_train_step

    graphdef, params = nnx.split(build_model(cfg, vocab))
    tx = make_optimizer(cfg.train)
    opt_state = tx.init(params)
    step_fn = make_train_step(graphdef, tx, vocab, dropout=True)
    key = jax.random.key(0, impl="unsafe_rbg")
    params, opt_state, metrics = step_fn(params, opt_state, batch, 0, key)
    jax.block_until_ready(metrics)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        params, opt_state, metrics = step_fn(params, opt_state, batch, step, key)
    jax.block_until_ready(metrics)
    return steps * len(batch["tokens"]) / (time.perf_counter() - t0)


def main() -> None:
    """Parse flags, measure both rates, print them and the ratio."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default=str(DEFAULT))
    p.add_argument("--config", default="demo")
    p.add_argument("--steps", type=int, default=200, help="pipeline batches to time")
    p.add_argument("--train-steps", type=int, default=20, help="train steps to time")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--pack", type=int, default=0, help="segments per packed row (0: padded rows)")
    p.add_argument("--sids", default="random", choices=["random", "build"])
    args = p.parse_args()
    cfg = config_lib.load_config(args.config)
    t0 = time.perf_counter()
    data = read_p5(args.path)
    train = leave_one_out(data.sequences).train
    codes, per_level = sid_codes(train, data.num_items, cfg, args.sids)
    vocab = SIDVocab(tuple(int(k) for k in per_level))
    print(f"{data.name}: {data.num_users} users, {data.num_items} items; read+SIDs "
          f"{time.perf_counter() - t0:.1f}s; config {cfg.name}: batch {cfg.train.batch_size}, "
          f"max_history {cfg.data.max_history}, vocab {vocab.size}, backend {jax.default_backend()}")
    ds = train_dataset(train, codes, vocab, max_history=cfg.data.max_history,
                       batch_size=cfg.train.batch_size, seed=0, pack_segments=args.pack)
    direct, threaded = pipeline_rate(ds, args.steps, args.threads)
    plain = train_dataset(train, codes, vocab, max_history=cfg.data.max_history,
                          batch_size=cfg.train.batch_size, seed=0)
    consume = train_rate(cfg, vocab, plain[0], args.train_steps)
    unit = f"rows/s ({args.pack} users per row)" if args.pack else "sequences/s"
    print(f"pipeline: {direct:,.0f} {unit} by index (1 thread), {threaded:,.0f} {unit} "
          f"with {args.threads} prefetch threads")
    print(f"train step ({cfg.name}): {consume:,.0f} sequences/s")
    print(f"ratio pipeline/train: {direct / consume:.1f}x by index, {threaded / consume:.1f}x "
          "threaded (target >= 10x)")


if __name__ == "__main__":
    main()
