"""Ranking head throughput: DCAT (history K/V once per user) vs naive (K/V per candidate).

    python bench/rank_bench.py --quick    # N in 50, 200 and T in 50, 200: ~20 s on 2 CPU cores
    python bench/rank_bench.py --steps 1  # N in 50, 200, 1000 and T in 50, 200, 800: ~2 min on
                                          # 2 CPU cores (the naive path at N=1000, T=800 is
                                          # 0.4 TFLOP a call, ~16 s there); default --steps 3

For every history length T and candidate count N, times the jitted :func:`sidjax.nn.rank.score`
(each candidate cross-attends to the history's K/V, projected once per user) and
:func:`sidjax.nn.rank.naive_score` (vmap over candidates of (history + candidate), so the history
projections are recomputed per candidate, as a second ranking model would) on random history states
``[B, T, D]`` and random SIDs, and prints a Markdown table: milliseconds per call, candidates scored
per second (B * N / time), the speed-up, the matmul FLOPs per user of each path from
:func:`sidjax.nn.rank.flops`, and the largest score difference between the two paths.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from sidjax.nn import rank


def time_calls(fn, args, steps: int) -> tuple[float, jax.Array]:
    """``(median seconds per call, output)`` of ``fn(*args)`` after one warm-up (compile) call."""
    out = jax.block_until_ready(fn(*args))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def make_inputs(cfg: rank.RankConfig, batch: int, history: int, candidates: int, seed: int = 0):
    """Random history states, an all-real history mask, and history / candidate SIDs."""
    rng = np.random.default_rng(seed)
    ks = cfg.codes_per_level
    hist = rng.normal(size=(batch, history, cfg.d_model)).astype(np.float32)
    mask = np.ones((batch, history), bool)
    hcodes = np.stack([rng.integers(0, k, size=(batch, history)) for k in ks], -1).astype(np.int32)
    ccodes = np.stack([rng.integers(0, k, size=(batch, candidates)) for k in ks], -1).astype(np.int32)
    return tuple(jnp.asarray(a) for a in (hist, mask, ccodes, hcodes))


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x.strip())


def main() -> None:
    """Prints the DCAT vs naive table for every (history length, candidate count)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8, help="users per call (B)")
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--mlp-dim", type=int, default=256)
    ap.add_argument("--codes", type=str, default="256,256,256", help="codes per SID level")
    ap.add_argument("--candidates", type=str, default="50,200,1000", help="values of N")
    ap.add_argument("--history", type=str, default="50,200,800", help="history lengths T")
    ap.add_argument("--hard-search-levels", type=int, default=0, help="0 (full), 1 or 2 (SIREN)")
    ap.add_argument("--recent-k", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="timed calls (median reported)")
    ap.add_argument("--quick", action="store_true", help="N and T in 50, 200 only; 2 timed calls")
    args = ap.parse_args()
    if args.quick:
        args.candidates, args.history, args.steps = "50,200", "50,200", 2

    cfg = rank.RankConfig(d_model=args.d_model, codes_per_level=ints(args.codes),
                          num_heads=args.heads, head_dim=args.head_dim, mlp_dim=args.mlp_dim,
                          recent_k=args.recent_k, hard_search_levels=args.hard_search_levels)
    params = rank.init(jax.random.key(0), cfg)
    dcat = jax.jit(rank.score, static_argnames="cfg")
    naive = jax.jit(rank.naive_score, static_argnames="cfg")
    print(f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}); batch {args.batch} "
          f"users, d_model {cfg.d_model}, {cfg.num_heads} heads x {cfg.head_dim}, mlp {cfg.mlp_dim}, "
          f"SID levels {cfg.codes_per_level}, hard_search_levels {cfg.hard_search_levels}, "
          f"{rank.param_count(cfg):,} params\n")
    print("| T | N | DCAT ms | naive ms | DCAT cand/s | naive cand/s | speed-up "
          "| DCAT MFLOP/user | naive MFLOP/user | FLOP ratio | max abs diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for t in ints(args.history):
        for n in ints(args.candidates):
            hist, mask, ccodes, hcodes = make_inputs(cfg, args.batch, t, n)
            call = lambda fn: (lambda p, h, m, c, hc: fn(p, h, m, c, cfg=cfg, history_codes=hc))
            t_dcat, s_dcat = time_calls(call(dcat), (params, hist, mask, ccodes, hcodes), args.steps)
            t_naive, s_naive = time_calls(call(naive), (params, hist, mask, ccodes, hcodes),
                                          args.steps)
            f = rank.flops(cfg, t, n)
            diff = float(jnp.max(jnp.abs(s_dcat - s_naive)))
            scored = args.batch * n
            print(f"| {t} | {n} | {t_dcat * 1e3:.2f} | {t_naive * 1e3:.2f} | {scored / t_dcat:,.0f} "
                  f"| {scored / t_naive:,.0f} | {t_naive / t_dcat:.1f}x | {f['dcat'] / 1e6:,.1f} "
                  f"| {f['naive'] / 1e6:,.1f} | {f['naive'] / f['dcat']:.1f}x | {diff:.1e} |",
                  flush=True)


if __name__ == "__main__":
    main()
