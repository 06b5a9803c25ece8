"""Decoding parity: cached vs uncached logits, beam search vs brute force, validity."""

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sidjax.config import ModelConfig, PrefixMemConfig
from sidjax.data.pipeline import SIDVocab, eval_arrays
from sidjax.decode.beam import beam_search, level_log_probs, recommend, trie_arrays
from sidjax.decode.scoring import score_sids
from sidjax.nn.model import SIDRecommender
from sidjax.sid.table import add_collision_level
from sidjax.sid.trie import build_trie


def _setup(prefixmem: bool, num_items=40, seed=0):
    rng = np.random.default_rng(seed)
    codes = add_collision_level(rng.integers(0, 3, size=(num_items, 2)))
    vocab = SIDVocab((3, 3, int(codes[:, -1].max()) + 1))
    cfg = ModelConfig(d_model=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64, dropout=0.0,
                      prefixmem=PrefixMemConfig(enabled=prefixmem, mem_dim=8, exact_threshold=4,
                                                hash_table_size=11))
    model = SIDRecommender(cfg, vocab, rngs=nnx.Rngs(params=seed))
    histories = [rng.integers(0, num_items, size=n) for n in (1, 3, 5, 2)]
    arrays = eval_arrays(histories, codes, vocab, max_history=4)
    return model, codes, vocab, arrays


@pytest.mark.parametrize("prefixmem", [False, True])
def test_cached_decoding_matches_full_forward(prefixmem):
    model, codes, vocab, arrays = _setup(prefixmem)
    target = codes[[5, 7, 9, 11]]
    offsets = vocab.level_offsets
    tokens = np.concatenate([arrays["tokens"], offsets + target], 1)
    full = np.asarray(model(jnp.asarray(tokens),
                            jnp.asarray(np.concatenate([arrays["codes"], target], 1)),
                            jnp.asarray(np.concatenate(
                                [arrays["levels"], np.tile([1, 2, 3], (4, 1))], 1))))
    t = arrays["tokens"].shape[1]
    logits, cache = model.prefill(jnp.asarray(arrays["tokens"]), jnp.asarray(arrays["codes"]),
                                  jnp.asarray(arrays["levels"]), extra=2)
    np.testing.assert_allclose(logits, full[:, t - 1], rtol=1e-4, atol=1e-4)
    for depth in (1, 2):
        window = target[:, :depth]
        logits, cache = model.decode_step(jnp.asarray(offsets[:depth] + window),
                                          jnp.asarray(window),
                                          jnp.asarray(np.tile(np.arange(1, depth + 1), (4, 1))),
                                          cache)
        np.testing.assert_allclose(logits, full[:, t - 1 + depth], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prefixmem", [False, True])
def test_full_width_beam_equals_brute_force_ranking(prefixmem):
    model, codes, vocab, arrays = _setup(prefixmem)
    num_items = len(codes)
    graphdef, state = nnx.split(model)
    items, scores = beam_search(graphdef, state, trie_arrays(build_trie(codes)),
                                arrays["tokens"], arrays["codes"], arrays["levels"], vocab=vocab,
                                beam=num_items)
    items, scores = np.asarray(items), np.asarray(scores)
    for user in range(len(items)):
        rep = {k: np.repeat(v[user:user + 1], num_items, 0) for k, v in arrays.items()}
        logp, _ = score_sids(graphdef, state, rep["tokens"], rep["codes"], rep["levels"], codes,
                             vocab=vocab)
        total = np.asarray(logp).sum(1)
        assert sorted(items[user].tolist()) == list(range(num_items))
        np.testing.assert_allclose(scores[user], total[items[user]], rtol=1e-4, atol=1e-4)
        assert np.all(np.diff(scores[user]) <= 1e-6)
        np.testing.assert_allclose(np.sort(total)[::-1], scores[user], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_search_only_returns_real_items(seed):
    model, codes, vocab, arrays = _setup(prefixmem=seed % 2 == 1, num_items=25, seed=seed)
    items, scores = recommend(model, build_trie(codes), arrays, vocab, beam=10, batch_size=3)
    assert items.shape == (4, 10)
    assert np.all((items >= 0) & (items < 25))
    assert all(len(set(row)) == 10 for row in items.tolist())
    assert np.all(np.diff(scores, axis=1) <= 1e-6)


def test_beam_wider_than_catalog_pads_with_invalid():
    model, codes, vocab, arrays = _setup(prefixmem=False, num_items=6)
    items, scores = recommend(model, build_trie(codes), arrays, vocab, beam=9)
    assert np.all(items[:, :6] >= 0) and np.all(items[:, 6:] == -1)
    assert np.all(scores[:, 6:] < -1e29)


def test_level_log_probs_normalise_within_level():
    vocab = SIDVocab((3, 4))
    logits = jnp.arange(2 + 7, dtype=jnp.float32)[None]
    for level, k in ((1, 3), (2, 4)):
        lp = level_log_probs(logits, vocab, level)
        assert lp.shape == (1, k)
        np.testing.assert_allclose(np.exp(lp).sum(), 1.0, rtol=1e-6)
    assert dataclasses.is_dataclass(vocab)
