"""SID benchmark: fit + encode time, utilization and collision rate, residual k-means and RQ-VAE.

    python bench/sid_bench.py                 # 10k and 100k items, d=384, 3 x 256, both methods
    python bench/sid_bench.py --sizes 10000 --balanced --methods rqkmeans
    python bench/sid_bench.py --million       # adds 1M items (needs ~6 GB RAM)
    python bench/sid_bench.py --rqvae-steps 300 --estimator ste

Vectors are synthetic: a three-level hierarchy of Gaussian clusters (like item content vectors). Each
row is one :func:`sidjax.sid.build.build` (fit, zero-collision reassignment after splitting full
prefixes, diagnostics) plus a separate encode of all items; "collision rate" is the share of items
sharing a full SID before reassignment, "moved" the share that reassignment moved.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from sidjax.sid import quantizer
from sidjax.sid.build import build, quantizer_config


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
        steps: int = 300, estimator: str = "rotation") -> dict:
    """Times one build + encode and returns the figures of one table row."""
    x = synthetic_vectors(n, d)
    options = ({"iters": 20, "balanced": balanced} if method == "rqkmeans" else
               {"steps": steps, "estimator": estimator, "reset_every": 100})
    cfg = quantizer_config(method, levels=levels, codes=codes, **options)
    t0 = time.perf_counter()
    result = build(x, [str(i) for i in range(n)], cfg, reassign=True, split_prefixes=True)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    quantizer.encode(result.quantizer, x)
    t_enc = time.perf_counter() - t0
    d = result.diagnostics
    return {"n": n, "fit_s": result.fit_seconds, "encode_s": t_enc, "build_s": t_build,
            "util": [s["utilization"] for s in d["levels"]], "collision": d["collision_rate"],
            "moved": d["share_moved"], "extra_level": result.extra_level,
            "rel_err": d["relative_reconstruction_error"]}


def main() -> None:
    """Parses arguments and prints the table."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    p.add_argument("--million", action="store_true", help="also run 1,000,000 items")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--levels", type=int, default=3)
    p.add_argument("--codes", type=int, default=256)
    p.add_argument("--methods", nargs="+", default=["rqkmeans", "rqvae"],
                   choices=["rqkmeans", "rqvae"])
    p.add_argument("--balanced", action="store_true", help="rqkmeans: balanced assignment")
    p.add_argument("--rqvae-steps", type=int, default=300)
    p.add_argument("--estimator", default="rotation", choices=["rotation", "ste"])
    args = p.parse_args()
    sizes = args.sizes + ([1_000_000] if args.million else [])
    print(f"d={args.dim}, {args.levels} x {args.codes}, rqkmeans: 20 Lloyd iterations, "
          f"balanced={args.balanced}; rqvae: {args.rqvae_steps} steps of 1024, {args.estimator}")
    print("| method | items | fit s | encode s | build s | util per level | collision rate | moved | "
          "extra level | rel. error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for method in args.methods:
        for n in sizes:
            r = run(n, args.dim, args.levels, args.codes, args.balanced, method, args.rqvae_steps,
                    args.estimator)
            util = " / ".join(f"{u:.2f}" for u in r["util"])
            print(f"| {method} | {n:,} | {r['fit_s']:.1f} | {r['encode_s']:.1f} | {r['build_s']:.1f} | "
                  f"{util} | {r['collision']:.4f} | {r['moved']:.4f} | {r['extra_level']} | "
                  f"{r['rel_err']:.3f} |", flush=True)


if __name__ == "__main__":
    main()
