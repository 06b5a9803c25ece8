"""Decoding parity: cached vs uncached logits, beam search vs brute force and the naive search,
greedy decoding, validity, and packed rows (segment ids) vs separate sequences; over the decoder
families (GQA, biases, Gemma norms/tied head) and PrefixMem injected at the embeddings or at layers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_beam_steps_match_full
from flax import nnx

from sidjax.config import ModelConfig, PrefixMemConfig
from sidjax.data.pipeline import PAD, SIDVocab, eval_arrays
from sidjax.decode.beam import (
    beam_search,
    beam_search_naive,
    beam_widths,
    greedy,
    greedy_decode,
    level_log_probs,
    recommend,
    trie_arrays,
)
from sidjax.decode.scoring import score_sids
from sidjax.nn import prefixmem
from sidjax.nn.model import SIDRecommender, positions_from_valid
from sidjax.sid.table import add_collision_level
from sidjax.sid.trie import build_trie
from sidjax.train.partition import path_names

# (family, PrefixMem inject_layers): every family with GQA, PrefixMem at the embeddings or at layers
FAMILY_CASES = [("llama", ()), ("qwen2", (1,)), ("gemma", (0, 1))]


def _setup(prefixmem: bool, num_items=40, seed=0, family=None, inject_layers=()):
    """A tiny model (the original MHA one, or ``family`` with GQA and random biases/norm scales),
    a catalog of 3 x 3 SIDs plus a collision level, and 4 encoded histories."""
    rng = np.random.default_rng(seed)
    codes = add_collision_level(rng.integers(0, 3, size=(num_items, 2)))
    vocab = SIDVocab((3, 3, int(codes[:, -1].max()) + 1))
    pm = PrefixMemConfig(enabled=prefixmem, mem_dim=8, exact_threshold=4, hash_table_size=11,
                         inject_layers=inject_layers)
    cfg = ModelConfig(d_model=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64, dropout=0.0,
                      prefixmem=pm)
    if family is not None:
        cfg = dataclasses.replace(cfg, family=family, num_heads=4, num_kv_heads=2, head_dim=8)
    model = SIDRecommender(cfg, vocab, rngs=nnx.Rngs(params=seed))
    if family is not None:  # zero biases and unit (or 1 + 0) norm scales would hide mistakes
        nnx.update(model, jax.tree_util.tree_map_with_path(
            lambda path, v: v + 0.2 * rng.normal(size=v.shape).astype(np.float32)
            if {"b_q", "b_k", "b_v", "scale"} & set(path_names(path)) else v,
            nnx.state(model, nnx.Param)))
    histories = [rng.integers(0, num_items, size=n) for n in (1, 3, 5, 2)]
    arrays = eval_arrays(histories, codes, vocab, max_history=4)
    return model, codes, vocab, arrays


@pytest.mark.parametrize("family, inject_layers", [(None, ())] + FAMILY_CASES)
def test_cached_decoding_matches_full_forward(family, inject_layers):
    model, codes, vocab, arrays = _setup(prefixmem=True, family=family, inject_layers=inject_layers)
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


def test_prefixmem_is_injected_before_the_listed_blocks():
    model, codes, vocab, arrays = _setup(prefixmem=True, inject_layers=(1,))
    tokens, sid_codes, levels = (jnp.asarray(arrays[k]) for k in ("tokens", "codes", "levels"))
    params = {k: v[...] for k, v in model.prefixmem.items()}
    memory = prefixmem.read_memory(params, sid_codes, levels, cfg=model.pm_cfg)
    valid = tokens != PAD
    positions = positions_from_valid(valid)
    first, second = model.decoder.blocks
    x, _ = first(model.embed_tokens(tokens), positions, valid)  # nothing added at the embeddings
    plain, _ = second(x, positions, valid)
    x = x + prefixmem.project(params, memory, levels, cfg=model.pm_cfg, hidden=x, site=0)
    x, _ = second(x, positions, valid)
    out = np.asarray(model(tokens, sid_codes, levels))
    np.testing.assert_allclose(out, model.head(model.decoder.final_norm(x)), rtol=1e-5, atol=1e-5)
    assert not np.allclose(out, model.head(model.decoder.final_norm(plain)), atol=1e-3)


@pytest.mark.parametrize("prefixmem, family, inject_layers",
                         [(False, None, ()), (True, None, ()), (True, *FAMILY_CASES[-1])])
def test_full_width_beam_equals_brute_force_ranking(prefixmem, family, inject_layers):
    model, codes, vocab, arrays = _setup(prefixmem, family=family, inject_layers=inject_layers)
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


@pytest.mark.parametrize("seed", [0, 1])
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


@pytest.mark.parametrize("family, inject_layers", [(None, ())] + FAMILY_CASES[1:])
def test_split_cache_beam_step_matches_full_forward(family, inject_layers):
    model, codes, vocab, arrays = _setup(prefixmem=True, family=family, inject_layers=inject_layers)
    beams = np.stack([codes[[5, 7, 9]], codes[[11, 13, 15]], codes[[2, 4, 6]], codes[[1, 3, 8]]])
    assert_beam_steps_match_full(model, arrays, beams, vocab.level_offsets)


def test_cached_beam_search_equals_naive(beam=(2, 6, 4)):
    model, codes, vocab, arrays = _setup(prefixmem=True, num_items=30, seed=3)
    graphdef, state = nnx.split(model)
    trie = trie_arrays(build_trie(codes))
    args = (graphdef, state, trie, arrays["tokens"], arrays["codes"], arrays["levels"])
    items, scores = beam_search(*args, vocab=vocab, beam=beam)
    ref_items, ref_scores = beam_search_naive(*args, vocab=vocab, beam=beam)
    width = beam_widths(beam, vocab.num_levels)[-1]
    assert items.shape == (4, width)
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-4)


def test_greedy_decode_is_beam_one_and_argmax():
    model, codes, vocab, arrays = _setup(prefixmem=True, num_items=30, seed=4)
    graphdef, state = nnx.split(model)
    trie = build_trie(codes)
    args = (graphdef, state, trie_arrays(trie), arrays["tokens"], arrays["codes"], arrays["levels"])
    sid, items, scores = greedy_decode(*args, vocab=vocab)
    beam_items, beam_scores = beam_search(*args, vocab=vocab, beam=1)
    np.testing.assert_array_equal(items, beam_items[:, 0])
    np.testing.assert_allclose(scores, beam_scores[:, 0], rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(codes[np.asarray(items)], sid)
    free_sid, free_items, free_scores = greedy_decode(*args, vocab=vocab, constrained=False)
    logp, preds = score_sids(graphdef, state, arrays["tokens"], arrays["codes"], arrays["levels"],
                             free_sid, vocab=vocab)
    np.testing.assert_array_equal(preds, free_sid)  # each code is the argmax given its prefix
    np.testing.assert_allclose(free_scores, np.asarray(logp).sum(1), rtol=1e-4, atol=1e-4)
    assert [trie.item_of(row) for row in np.asarray(free_sid)] == np.asarray(free_items).tolist()
    batched_sid, batched_items = greedy(model, trie, arrays, vocab, constrained=False, batch_size=4)
    np.testing.assert_array_equal(batched_sid, free_sid)
    np.testing.assert_array_equal(batched_items, free_items)


def test_beam_widths_validation():
    assert beam_widths(4, 3) == (4, 4, 4)
    assert beam_widths((1, 2, 3), 3) == (1, 2, 3)
    with pytest.raises(ValueError, match="one per SID level"):
        beam_widths((1, 2), 3)
    with pytest.raises(ValueError, match="positive"):
        beam_widths(0, 3)


def test_packed_row_matches_separate_sequences():
    model, codes, vocab, arrays = _setup(prefixmem=True)
    lengths = [1 + 2 * vocab.num_levels, 1 + 3 * vocab.num_levels]
    rows = [{k: v[i, -n:] for k, v in arrays.items()} for i, n in zip((3, 1), lengths)]
    pad = 4
    packed = {k: np.concatenate([rows[0][k], rows[1][k], np.zeros(pad, np.int32)])[None]
              for k in ("tokens", "codes", "levels")}
    segment_ids = np.concatenate([np.full(lengths[0], 1), np.full(lengths[1], 2),
                                  np.zeros(pad)]).astype(np.int32)[None]
    positions = np.concatenate([np.arange(lengths[0]), np.arange(lengths[1]),
                                np.zeros(pad)]).astype(np.int32)[None]
    out = np.asarray(model(*(jnp.asarray(packed[k]) for k in ("tokens", "codes", "levels")),
                           segment_ids=jnp.asarray(segment_ids)))
    given = np.asarray(model(*(jnp.asarray(packed[k]) for k in ("tokens", "codes", "levels")),
                             segment_ids=jnp.asarray(segment_ids), positions=jnp.asarray(positions)))
    np.testing.assert_allclose(out, given, rtol=1e-5, atol=1e-5)
    start = 0
    for row, n in zip(rows, lengths):
        alone = np.asarray(model(*(jnp.asarray(row[k][None]) for k in ("tokens", "codes", "levels"))))
        np.testing.assert_allclose(out[:, start:start + n], alone, rtol=1e-4, atol=1e-4)
        start += n
    unmasked = np.asarray(model(*(jnp.asarray(packed[k]) for k in ("tokens", "codes", "levels"))))
    assert not np.allclose(unmasked[:, lengths[0]:lengths[0] + lengths[1]],
                           out[:, lengths[0]:lengths[0] + lengths[1]], atol=1e-3)


@pytest.mark.parametrize("inject_layers", [(), (0, 1)])
def test_cached_prefixmem_decoding_reads_one_position_and_matches_full_forward(
        inject_layers, monkeypatch):
    """Each cached step hashes and gathers the new position's PrefixMem rows only ([B, K, S], not
    a [B, K, depth, S] window), and its logits equal the uncached full forward's to 1e-5."""
    model, codes, vocab, arrays = _setup(prefixmem=True, inject_layers=inject_layers)
    read = prefixmem.read_memory
    shapes = []
    monkeypatch.setattr(prefixmem, "read_memory",
                        lambda *a, **kw: shapes.append(kw["rows"].shape) or read(*a, **kw))
    slots = prefixmem.layout(model.pm_cfg).num_slots
    beams = np.stack([codes[[5, 7, 9]], codes[[11, 13, 15]], codes[[2, 4, 6]], codes[[1, 3, 8]]])
    b, k, num_levels = beams.shape
    t = arrays["tokens"].shape[1]
    _, history = model.prefill(*(jnp.asarray(arrays[n]) for n in ("tokens", "codes", "levels")))
    assert shapes.pop() == (b, t, slots)
    generated = None
    for depth in range(1, num_levels):
        window = beams[..., :depth]
        levels = np.broadcast_to(np.arange(1, depth + 1), window.shape)
        tokens = vocab.level_offsets[:depth] + window
        step, generated = model.beam_step(jnp.asarray(tokens), jnp.asarray(window),
                                          jnp.asarray(levels), history, generated, depth)
        assert shapes.pop() == (b, k, slots)  # one position per beam
        full = model(*(jnp.asarray(np.concatenate([np.repeat(arrays[n], k, 0),
                                                   w.reshape(b * k, depth)], 1))
                       for n, w in (("tokens", tokens), ("codes", window), ("levels", levels))))
        np.testing.assert_allclose(np.asarray(step).reshape(b * k, -1),
                                   np.asarray(full)[:, t - 1 + depth], rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(prefixmem, "read_memory", read)
    graphdef, state = nnx.split(model)
    args = (graphdef, state, trie_arrays(build_trie(codes)), arrays["tokens"], arrays["codes"],
            arrays["levels"])
    items, scores = beam_search(*args, vocab=vocab, beam=(3, 6, 5))
    ref_items, ref_scores = beam_search_naive(*args, vocab=vocab, beam=(3, 6, 5))
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
