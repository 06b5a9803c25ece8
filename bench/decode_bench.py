"""Beam search throughput: split-cache beam search vs naive re-encoding (and the previous version).

Top-10 with beam 20 on the demo model config over a 12k-item synthetic catalog, histories of 50
items. Prints users/s of each path and the speed-up. Usage:

    python bench/decode_bench.py [--users 32] [--history 50] [--beam 20] [--previous] [--prefixmem]

``--previous`` also times the beam search of the last commit (``git show HEAD:...``), which tiled the
whole history cache per beam and gathered it at every step.

``--prefixmem`` enables PrefixMem (default sizes) on the model and adds its decoding figure: the
``L - 1`` split-cache beam steps of one decode (and the whole beam search), with PrefixMem hashing
and gathering the new position's rows only (``prefixmem.step_rows``, now) against reading the
rows of the beam's whole generated-prefix window and keeping the last (before).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import jax
import numpy as np
from flax import nnx

from sidjax import config as config_lib
from sidjax.data.pipeline import eval_arrays
from sidjax.decode.beam import _window, beam_search, beam_search_naive, trie_arrays
from sidjax.nn import prefixmem
from sidjax.nn.model import SIDRecommender
from sidjax.run import build_model, jax_backend, prepare


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


def _window_prefixmem(self, x, codes, levels, last_only: bool = False):
    """The previous ``SIDRecommender._with_prefixmem``: reads the rows of every position of the
    window (hashing and gathering them all) and keeps the last one's memory."""
    params = {k: v[...] for k, v in self.prefixmem.items()}
    memory = prefixmem.read_memory(params, codes, levels, cfg=self.pm_cfg, mesh=self.mesh,
                                   rules=self.rules)
    if last_only:
        memory, levels = memory[..., -1, :], levels[..., -1]
    inject = functools.partial(prefixmem.inject, params, memory, levels=levels, cfg=self.pm_cfg)
    return inject(x=x, layer=None), lambda i, h: inject(x=h, layer=i)


def prefixmem_decode_figures(graphdef, state, trie, arrays: dict, vocab, beam: int,
                             repeats: int) -> None:
    """Prints beam steps/s (the L - 1 cached steps of one decode) and beam-search users/s with
    PrefixMem read for the new position only (now) vs for the whole window (before)."""
    args = [jax.numpy.asarray(arrays[k]) for k in ("tokens", "codes", "levels")]
    num_levels = vocab.num_levels
    model = nnx.merge(graphdef, state)
    _, history = jax.jit(lambda t, c, lv: model.prefill(t, c, lv))(*args)
    rng = np.random.default_rng(1)
    sid = jax.numpy.asarray(rng.integers(0, min(vocab.codes_per_level), (len(args[0]), beam,
                                                                          num_levels - 1)))

    def steps(state, history, sid):  # the L - 1 beam steps of one decode, no reordering
        m, generated, out = nnx.merge(graphdef, state), None, []
        for depth in range(1, num_levels):
            logits, generated = m.beam_step(*_window(sid[..., :depth], vocab), history,
                                            generated, depth)
            out.append(logits)
        return out

    search = lambda s, t, c, lv: beam_search.__wrapped__(graphdef, s, trie, t, c, lv, vocab=vocab,
                                                         beam=beam)
    fns, outs = {}, {}
    for name, patch in (("before", mock.patch.object(SIDRecommender, "_with_prefixmem",
                                                     _window_prefixmem)),
                        ("now", mock.patch.object(SIDRecommender, "_with_prefixmem",
                                                  SIDRecommender._with_prefixmem))):
        with patch:  # fresh jits, compiled (traced) under the patch
            fns[name] = (functools.partial(jax.jit(steps), state, history, sid),
                         functools.partial(jax.jit(search), state, *args))
            outs[name] = jax.block_until_ready(fns[name][0]())
            jax.block_until_ready(fns[name][1]())
    times = {(name, i): [] for name in fns for i in (0, 1)}
    for _ in range(repeats):  # interleaved, so load changes on shared cores hit both alike
        for name in fns:
            for i in (0, 1):
                t0 = time.perf_counter()
                jax.block_until_ready(fns[name][i]())
                times[name, i].append(time.perf_counter() - t0)
    b_step, b_search, n_step, n_search = (float(np.median(times[k])) for k in (
        ("before", 0), ("before", 1), ("now", 0), ("now", 1)))
    same = all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(outs["before"], outs["now"]))
    users = len(arrays["tokens"])
    print(f"PrefixMem decode ({num_levels - 1} beam steps x {users * beam} beams), window read "
          f"(before): {(num_levels - 1) / b_step:8.1f} steps/s; one position (now): "
          f"{(num_levels - 1) / n_step:8.1f} steps/s ({b_step / n_step:.2f}x); logits identical: "
          f"{same}")
    print(f"PrefixMem beam search, window read (before): {users / b_search:8.1f} users/s; one "
          f"position (now): {users / n_search:8.1f} users/s ({b_search / n_search:.2f}x)")


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
    p.add_argument("--prefixmem", action="store_true",
                   help="enable PrefixMem and time its decoding (window read vs one position)")
    args = p.parse_args(argv)

    cfg = config_lib.demo()
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(
        cfg.data, num_items=args.items, max_history=args.history))
    if args.prefixmem:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, prefixmem=dataclasses.replace(cfg.model.prefixmem, enabled=True)))
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
    if args.prefixmem:
        prefixmem_decode_figures(graphdef, state, trie, arrays, prep.vocab, args.beam,
                                 args.repeats)


if __name__ == "__main__":
    sys.exit(main())
