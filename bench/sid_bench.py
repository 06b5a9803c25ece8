"""Residual k-means SID benchmark: fit + encode time, utilization and collision rate.

    python bench/sid_bench.py                 # 10k and 100k items, d=384, 3 x 256
    python bench/sid_bench.py --sizes 10000 --balanced
    python bench/sid_bench.py --million       # adds 1M items (needs ~4 GB RAM)
    python bench/sid_bench.py --rqvae --sizes 10000 --rqvae-steps 300    # RQ-VAE rows too

Vectors are synthetic: a three-level hierarchy of Gaussian clusters (like item content vectors).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sidjax.sid import quantizer, rqkmeans, rqvae
from sidjax.sid.diagnostics import level_stats
from sidjax.sid.reassign import reassign_collisions
from sidjax.sid.table import collision_rate


def synthetic_vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    """Unit vectors from a 3-level hierarchy of Gaussian clusters (32 x 8 x 8 leaves)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, d), np.float32)
    for width, scale in ((32, 1.0), (8, 0.5), (8, 0.25)):
        centers = rng.normal(size=(width, d)).astype(np.float32) * scale / np.sqrt(d) * 4
        x += centers[rng.integers(0, width, n)]
    x += rng.normal(size=(n, d)).astype(np.float32) * 0.1 / np.sqrt(d) * 4
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def run(n: int, d: int, levels: int, codes: int, balanced: bool, method: str = "rqkmeans",
        steps: int = 300) -> dict:
    """Times one fit + encode and returns the figures of one table row."""
    x = synthetic_vectors(n, d)
    if method == "rqkmeans":
        cfg = rqkmeans.RQKMeansConfig(levels=levels, codes=codes, iters=20, balanced=balanced)
    else:
        cfg = rqvae.RQVAEConfig(levels=levels, codes=codes, steps=steps, reset_every=100)
    module = rqkmeans if method == "rqkmeans" else rqvae
    t0 = time.perf_counter()
    q, fit_codes = quantizer.fit_with_codes(x, cfg)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    codes_arr = quantizer.encode(q, x)
    t_enc = time.perf_counter() - t0
    stats = level_stats(fit_codes, cfg.codes_per_level())
    last_res = module.residuals_before(q, x, fit_codes, levels - 1)
    t0 = time.perf_counter()
    result = reassign_collisions(fit_codes, last_res, q.codebooks[-1])
    t_re = time.perf_counter() - t0
    return {"n": n, "fit_s": t_fit, "encode_s": t_enc, "reassign_s": t_re,
            "util": [s["utilization"] for s in stats], "collision": collision_rate(fit_codes),
            "moved": result.moved / n, "extra_level": result.codes.shape[1] > levels,
            "nearest_equal": float(np.mean(np.all(codes_arr == fit_codes, axis=1)))}


def main() -> None:
    """Parses arguments and prints the table."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--million", action="store_true", help="also run 1,000,000 items")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codes", type=int, default=256)
    p.add_argument("--balanced", action="store_true")
    p.add_argument("--rqvae", action="store_true", help="also time RQ-VAE (d->512->256->128->32)")
    p.add_argument("--rqvae-steps", type=int, default=300)
    args = p.parse_args()
    sizes = args.sizes + ([1_000_000] if args.million else [])
    print(f"d={args.dim}, {args.levels} x {args.codes}, balanced={args.balanced} (rqkmeans)")
    print("| method | items | fit s | encode s | reassign s | util per level | collision rate | moved | "
          "extra level |")
    print("|---|---|---|---|---|---|---|---|---|")
    methods = ["rqkmeans"] + (["rqvae"] if args.rqvae else [])
    for method in methods:
        for n in sizes:
            r = run(n, args.dim, args.levels, args.codes, args.balanced, method, args.rqvae_steps)
            util = " / ".join(f"{u:.2f}" for u in r["util"])
            print(f"| {method} | {n:,} | {r['fit_s']:.1f} | {r['encode_s']:.1f} | "
                  f"{r['reassign_s']:.1f} | {util} | {r['collision']:.4f} | {r['moved']:.4f} | "
                  f"{r['extra_level']} |", flush=True)


if __name__ == "__main__":
    main()
