"""Beam search throughput: split-cache beam search vs naive re-encoding (and the previous version).

Top-10 with beam 20 on the demo model config over a 12k-item synthetic catalog, histories of 50
items. Prints users/s of each path and the speed-up. Usage:

    python bench/decode_bench.py [--users 32] [--history 50] [--beam 20] [--previous]

``--previous`` also times the beam search of the last commit (``git show HEAD:...``), which tiled the
whole history cache per beam and gathered it at every step.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from flax import nnx

from sidjax import config as config_lib
from sidjax.data.pipeline import eval_arrays
from sidjax.decode.beam import beam_search, beam_search_naive, trie_arrays
from sidjax.experiment import build_model, jax_backend, prepare


def _previous_beam_search():
    """``beam_search`` of ``HEAD:sidjax/decode/beam.py``, loaded as a throwaway module."""
    source = subprocess.run(["git", "show", "HEAD:sidjax/decode/beam.py"], check=True,
                            capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1]).stdout
    path = Path(tempfile.mkdtemp()) / "previous_beam.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("previous_beam", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.beam_search


def users_per_second(fn, arrays: dict, repeats: int) -> float:
    """Users/s of ``fn(tokens, codes, levels)`` after one compile-and-run warm-up."""
    args = [jax.numpy.asarray(arrays[k]) for k in ("tokens", "codes", "levels")]
    jax.block_until_ready(fn(*args))
    t0 = time.perf_counter()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return repeats * len(arrays["tokens"]) / (time.perf_counter() - t0)


def main(argv=None) -> None:
    """Builds the catalog, SIDs and a demo-config model, then times the decoders."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--items", type=int, default=12000)
    p.add_argument("--users", type=int, default=32, help="users per batch (one batch is timed)")
    p.add_argument("--history", type=int, default=50, help="history items per user")
    p.add_argument("--beam", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--previous", action="store_true", help="also time HEAD's beam search")
    args = p.parse_args(argv)

    cfg = config_lib.demo()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, num_items=args.items, max_history=args.history))
    t0 = time.perf_counter()
    prep = prepare(cfg, log=lambda s: None)
    print(f"catalog {prep.data.num_items} items, SID levels {prep.sids.codes_per_level} "
          f"(built in {time.perf_counter() - t0:.0f}s); {jax_backend()}")
    graphdef, state = nnx.split(build_model(cfg, prep.vocab))
    trie = trie_arrays(prep.trie)
    rng = np.random.default_rng(0)
    histories = [rng.integers(0, prep.data.num_items, args.history) for _ in range(args.users)]
    arrays = eval_arrays(histories, prep.sids.codes, prep.vocab, args.history)
    print(f"{args.users} users x {args.history} history items ({arrays['tokens'].shape[1]} tokens), "
          f"beam {args.beam}, top-10")

    def run(search):
        return lambda t, c, lv: search(graphdef, state, trie, t, c, lv, vocab=prep.vocab,
                                       beam=args.beam)

    cached = users_per_second(run(beam_search), arrays, args.repeats)
    print(f"split-cache beam search : {cached:10.1f} users/s")
    naive = users_per_second(run(beam_search_naive), arrays, args.repeats)
    print(f"naive (re-encode/step)  : {naive:10.1f} users/s")
    print(f"speed-up cached / naive : {cached / naive:10.1f}x")
    if args.previous:
        previous = users_per_second(run(_previous_beam_search()), arrays, args.repeats)
        print(f"previous (tiled cache)  : {previous:10.1f} users/s "
              f"(split cache is {cached / previous:.2f}x)")
    items_a, _ = run(beam_search)(arrays["tokens"], arrays["codes"], arrays["levels"])
    items_b, _ = run(beam_search_naive)(arrays["tokens"], arrays["codes"], arrays["levels"])
    agree = float(np.mean(np.asarray(items_a)[:, :10] == np.asarray(items_b)[:, :10]))
    print(f"top-10 agreement cached vs naive: {agree:.3f}")


if __name__ == "__main__":
    sys.exit(main())
