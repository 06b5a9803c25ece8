"""Time MiniLM encoding of a catalog's item texts (default: Amazon Scientific 2018, 4,344 items).

Usage: python bench/encode_bench.py [--path ../shared/data/amazon-scientific-2018] [--limit N]
       [--batch-size 64] [--max-length 128]
Prints items, seconds (model load and compile included, and excluded) and items per second.
The issue's target: all 4,344 Scientific items in under 5 minutes on the CPU.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from sidjax.data.sources import load_dataset
from sidjax.text import minilm

DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-scientific-2018"


def main() -> None:
    """Parse flags, encode the item texts once, print timings."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--path", default=str(DEFAULT))
    p.add_argument("--limit", type=int, default=None, help="encode only the first N texts")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    args = p.parse_args()
    data = load_dataset(args.path)
    texts = data.item_text[: args.limit] if args.limit else data.item_text
    t0 = time.perf_counter()
    minilm._cached_model(None)
    t_load = time.perf_counter() - t0
    t1 = time.perf_counter()
    vecs = minilm.encode_texts(texts, batch_size=args.batch_size, max_length=args.max_length)
    t_enc = time.perf_counter() - t1
    assert vecs.shape == (len(texts), 384) and np.isfinite(vecs).all()
    import jax

    print(f"backend {jax.default_backend()}, {len(texts)} item texts of {data.name}")
    print(f"model load {t_load:.1f}s; encode (compile included) {t_enc:.1f}s; "
          f"total {t_load + t_enc:.1f}s; {len(texts) / t_enc:.1f} items/s")


if __name__ == "__main__":
    main()
