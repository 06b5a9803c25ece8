"""Item memory (PrefixMem's parameter-matched control): parameter counts equal PrefixMem's, a NumPy
reference of the hashing/gather/projection/gate, full-SID keying at level-L positions only,
causality, cached decoding and beam search parity, and the exclusivity with PrefixMem."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import assert_beam_steps_match_full, sid_layout
from flax import nnx

from sidjax.config import ItemMemConfig, ModelConfig, PrefixMemConfig
from sidjax.data.pipeline import SIDVocab, eval_arrays
from sidjax.decode.beam import beam_search, beam_search_naive, greedy_decode, trie_arrays
from sidjax.decode.scoring import score_sids
from sidjax.nn import itemmem as im
from sidjax.nn import prefixmem
from sidjax.nn.model import SIDRecommender, count_params
from sidjax.sid.table import add_collision_level
from sidjax.sid.trie import build_trie


def _model_cfg(item_memory=True, prefix_memory=False, orders=(1, 2, 3, 4), gate=True, **im_kw):
    pm = PrefixMemConfig(enabled=prefix_memory, orders=orders, mem_dim=8, exact_threshold=16,
                         hash_table_size=31, gate=gate)
    return ModelConfig(d_model=32, num_layers=2, num_heads=2, head_dim=16, mlp_dim=64, dropout=0.0,
                       prefixmem=pm, item_memory=ItemMemConfig(enabled=item_memory, **im_kw))


def _reference_rows(spec, codes, levels):
    """Loop-by-loop row ids: each head's hash of the full SID ending at each level-L position."""
    num_levels = spec.num_levels
    rows = np.full((len(codes), spec.heads), -1)
    for t, level in enumerate(levels):
        if level != num_levels:
            continue
        sid = [int(c) for c in codes[t - num_levels + 1:t + 1]]
        for table in spec.tables:
            h = 0
            for c, m in zip(sid, table.radix):
                h = ((h ^ (((c + 1) * m) & 0xFFFFFFFF)) * 0x9E3779B1) & 0xFFFFFFFF
                h ^= h >> 15
            rows[t, table.head] = table.offset + h % table.size
    return rows


def _reference_apply(params, spec, codes, levels, hidden):
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    rows = _reference_rows(spec, codes, levels)
    memory = np.where(rows[..., None] >= 0, p["table"][np.maximum(rows, 0)], 0).reshape(
        len(codes), -1)
    out = memory @ p["w_value"]
    if spec.gate:
        def rms(x, s):
            return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * s

        score = np.sum(rms(hidden, p["query_scale"]) * rms(memory @ p["w_key"], p["key_scale"]),
                       -1, keepdims=True)
        out = out / (1 + np.exp(-score / np.sqrt(spec.d_model)))
    out[levels != spec.num_levels] = 0
    return out


@pytest.mark.parametrize("ks, orders, gate", [((4, 5, 6), (1, 2, 3, 4), True),
                                              ((8, 8, 8, 8), (1, 2), True),
                                              ((16, 16, 16), (1, 3), False)])
def test_parameter_count_equals_prefixmem(ks, orders, gate):
    vocab = SIDVocab(ks)
    with_pm = SIDRecommender(_model_cfg(False, True, orders, gate), vocab, rngs=nnx.Rngs(0))
    control = SIDRecommender(_model_cfg(True, False, orders, gate), vocab, rngs=nnx.Rngs(0))
    plain = SIDRecommender(_model_cfg(False, False, orders, gate), vocab, rngs=nnx.Rngs(0))
    assert count_params(control) == count_params(with_pm) > count_params(plain)
    shapes = {k: v.shape for k, v in control.itemmem.items()}
    assert shapes == {k: v.shape for k, v in with_pm.prefixmem.items()}
    spec = control.im_cfg
    assert spec.rows == prefixmem.layout(with_pm.pm_cfg).num_rows
    assert spec.heads == prefixmem.layout(with_pm.pm_cfg).num_slots == len(orders) * 2
    assert im.param_count(spec) == prefixmem.param_count(with_pm.pm_cfg)
    assert im.flops_per_token(spec) == prefixmem.flops_per_token(with_pm.pm_cfg)
    assert set(im.param_axes(spec)) == set(shapes)
    # the heads partition the table: contiguous, distinct primes, inside the rows
    sizes = [t.size for t in spec.tables]
    assert len(set(sizes)) == spec.heads and all(prefixmem._is_prime(s) for s in sizes)
    assert [t.offset for t in spec.tables] == list(np.cumsum([0] + sizes[:-1]))
    assert sum(sizes) <= spec.rows and len({t.radix for t in spec.tables}) == spec.heads
    explicit = im.resolve(dataclasses.replace(_model_cfg(), item_memory=ItemMemConfig(
        enabled=True, rows=500, heads=3)), ks)
    assert (explicit.rows, explicit.heads) == (500, 3)
    assert im.param_count(explicit) == sum(
        x.size for x in jax.tree.leaves(im.init(jax.random.key(0), explicit)))
    # sharded training names every parameter's logical axes, the control's included
    from sidjax.train.partition import param_logical_axes

    axes = param_logical_axes(nnx.state(control, nnx.Param))
    assert axes["itemmem"]["table"] == ("table_rows", "mem")


@pytest.mark.parametrize("gate, heads", [(True, 0), (False, 0), (True, 3)])
def test_apply_matches_numpy_reference(gate, heads):
    ks = (6, 5, 4, 3)
    spec = im.resolve(_model_cfg(gate=gate, heads=heads), ks)
    params = im.init(jax.random.key(1), spec)
    rng = np.random.default_rng(2)
    codes, levels = sid_layout(rng, 4, ks)
    hidden = rng.normal(size=(len(codes), spec.d_model)).astype(np.float32)
    rows = np.asarray(im.lookup_rows(spec, jnp.asarray(codes), jnp.asarray(levels)))
    np.testing.assert_array_equal(rows, _reference_rows(spec, codes, levels))
    out = np.asarray(im.apply(params, jnp.asarray(codes), jnp.asarray(levels), cfg=spec,
                              hidden=jnp.asarray(hidden)))
    np.testing.assert_allclose(out, _reference_apply(params, spec, codes, levels, hidden),
                               rtol=2e-5, atol=2e-5)
    batched = jax.jit(lambda p, c, lv, h: im.apply(p, c, lv, cfg=spec, hidden=h))(
        params, *(jnp.asarray(np.stack([a, a])) for a in (codes, levels, hidden)))
    np.testing.assert_allclose(batched[1], out, rtol=1e-5, atol=1e-6)


def test_only_level_L_positions_keyed_by_the_full_sid():
    ks = (4, 4, 4)
    spec = im.resolve(_model_cfg(), ks)
    params = im.init(jax.random.key(0), spec)
    #                 BOS  item 1    item 2    item 3 (= item 1)  item 4 (item 1's prefix)
    codes = np.array([0,   1, 2, 3,  0, 3, 1,  1, 2, 3,           1, 2, 0])
    levels = np.array([0] + [1, 2, 3] * 4)
    last = np.flatnonzero(levels == 3)  # 3, 6, 9, 12
    hidden = np.random.default_rng(0).normal(size=(len(codes), spec.d_model)).astype(np.float32)
    same_hidden = np.tile(hidden[:1], (len(codes), 1))

    def delta(c, h=hidden):
        return np.asarray(im.apply(params, jnp.asarray(c), jnp.asarray(levels), cfg=spec,
                                   hidden=jnp.asarray(h)))

    out = delta(codes)
    assert np.all(out[levels != 3] == 0) and np.all(np.abs(out[last]).sum(-1) > 0)
    flat = delta(codes, same_hidden)
    np.testing.assert_array_equal(flat[3], flat[9])  # same full SID, same rows
    assert not np.allclose(flat[3], flat[12], atol=1e-4)  # shared prefix (1, 2), other last code
    for t in range(1, 4):  # any code of item 1 moves only item 1's level-L delta
        changed = codes.copy()
        changed[t] = (changed[t] + 1) % 4
        moved = np.flatnonzero(np.any(delta(changed) != out, axis=-1))
        assert moved.tolist() == [3], (t, moved)


def _setup(num_items=30, seed=0, **kw):
    """A tiny model with the item memory, a catalog of 3 x 3 SIDs plus a collision level, and 4
    encoded histories (as tests/test_decode.py's setup)."""
    rng = np.random.default_rng(seed)
    codes = add_collision_level(rng.integers(0, 3, size=(num_items, 2)))
    vocab = SIDVocab((3, 3, int(codes[:, -1].max()) + 1))
    model = SIDRecommender(_model_cfg(**kw), vocab, rngs=nnx.Rngs(params=seed))
    histories = [rng.integers(0, num_items, size=n) for n in (1, 3, 5, 2)]
    return model, codes, vocab, eval_arrays(histories, codes, vocab, max_history=4)


def test_item_memory_changes_the_model_and_is_causal():
    model, codes, vocab, arrays = _setup()
    tokens, sid_codes, levels = (np.asarray(arrays[k]) for k in ("tokens", "codes", "levels"))
    out = np.asarray(model(tokens, sid_codes, levels))
    plain = nnx.merge(*nnx.split(model))
    plain.im_cfg = None
    assert not np.allclose(out, np.asarray(plain(tokens, sid_codes, levels)), atol=1e-4)
    rng = np.random.default_rng(1)
    user = 2  # four items (max_history): positions 1..12, levels 1, 2, 3 repeating, no padding
    assert levels[user].tolist() == [0] + [1, 2, 3] * 4
    for t in (2, 3, 6, 11):  # level L-1 (the next code completes an item) or level L
        later = sid_codes.copy()
        later[user, t + 1:] = rng.integers(0, 3, size=later.shape[1] - t - 1)
        later_tokens = tokens.copy()
        sid = levels[user, t + 1:] > 0
        later_tokens[user, t + 1:][sid] = (vocab.level_offsets[levels[user, t + 1:][sid] - 1]
                                           + later[user, t + 1:][sid])
        new = np.asarray(model(later_tokens, later, levels))
        np.testing.assert_allclose(new[user, :t + 1], out[user, :t + 1], rtol=1e-5, atol=1e-5)
        assert not np.allclose(new[user, t + 1:], out[user, t + 1:], atol=1e-4)


def test_cached_decoding_matches_full_forward():
    model, codes, vocab, arrays = _setup()
    target = codes[[5, 7, 9, 11]]
    num_levels = vocab.num_levels
    offsets = vocab.level_offsets
    t = arrays["tokens"].shape[1]
    full = np.asarray(model(*(jnp.asarray(np.concatenate([arrays[k], v], 1)) for k, v in (
        ("tokens", offsets + target), ("codes", target),
        ("levels", np.tile(np.arange(1, num_levels + 1), (4, 1)))))))
    logits, cache = model.prefill(jnp.asarray(arrays["tokens"]), jnp.asarray(arrays["codes"]),
                                  jnp.asarray(arrays["levels"]), extra=num_levels)
    np.testing.assert_allclose(logits, full[:, t - 1], rtol=1e-4, atol=1e-4)
    for depth in range(1, num_levels + 1):  # depth L completes the item: its window gets rows
        window = target[:, :depth]
        logits, cache = model.decode_step(jnp.asarray(offsets[:depth] + window),
                                          jnp.asarray(window),
                                          jnp.asarray(np.tile(np.arange(1, depth + 1), (4, 1))),
                                          cache)
        np.testing.assert_allclose(logits, full[:, t - 1 + depth], rtol=1e-4, atol=1e-4)
    # beam steps (split cache) over K = 3 beams per user
    beams = np.stack([codes[[5, 7, 9]], codes[[11, 13, 15]], codes[[2, 4, 6]], codes[[1, 3, 8]]])
    assert_beam_steps_match_full(model, arrays, beams, offsets)


def test_beam_search_and_greedy_match_full_forward_scoring():
    model, codes, vocab, arrays = _setup(num_items=20, seed=3)
    graphdef, state = nnx.split(model)
    trie = build_trie(codes)
    args = (graphdef, state, trie_arrays(trie), arrays["tokens"], arrays["codes"],
            arrays["levels"])
    items, scores = (np.asarray(a) for a in beam_search(*args, vocab=vocab, beam=len(codes)))
    for user in range(len(items)):
        rep = {k: np.repeat(v[user:user + 1], len(codes), 0) for k, v in arrays.items()}
        logp, _ = score_sids(graphdef, state, rep["tokens"], rep["codes"], rep["levels"], codes,
                             vocab=vocab)
        total = np.asarray(logp).sum(1)
        assert sorted(items[user].tolist()) == list(range(len(codes)))
        np.testing.assert_allclose(scores[user], total[items[user]], rtol=1e-4, atol=1e-4)
    narrow = beam_search(*args, vocab=vocab, beam=(2, 5, 4))
    naive = beam_search_naive(*args, vocab=vocab, beam=(2, 5, 4))
    np.testing.assert_array_equal(narrow[0], naive[0])
    np.testing.assert_allclose(narrow[1], naive[1], rtol=1e-4, atol=1e-4)
    sid, greedy_items, greedy_scores = greedy_decode(*args, vocab=vocab, constrained=False)
    logp, preds = score_sids(graphdef, state, arrays["tokens"], arrays["codes"], arrays["levels"],
                             sid, vocab=vocab)
    np.testing.assert_array_equal(preds, sid)
    np.testing.assert_allclose(greedy_scores, np.asarray(logp).sum(1), rtol=1e-4, atol=1e-4)


def test_sharded_read_equals_unsharded():
    from sidjax.parallel import MeshConfig, make_mesh, shard_pytree

    mesh = make_mesh(MeshConfig(data=2, model=4))
    ks = (6, 5, 4)
    spec = im.resolve(_model_cfg(rows=201), ks, mesh=mesh)
    assert spec.rows == 204  # rounded up to the 4 row shards
    params = im.init(jax.random.key(0), spec)
    rng = np.random.default_rng(0)
    seqs = [sid_layout(rng, 3, ks) for _ in range(4)]
    codes, levels = (jnp.asarray(np.stack([s[i] for s in seqs])) for i in (0, 1))
    hidden = jnp.asarray(rng.normal(size=codes.shape + (spec.d_model,)).astype(np.float32))
    ref = im.apply(params, codes, levels, cfg=spec, hidden=hidden)
    sharded = shard_pytree(params, im.param_axes(spec), mesh)
    assert sharded["table"].sharding.spec[0] == "model"
    out = jax.jit(lambda p: im.apply(p, codes, levels, cfg=spec, hidden=hidden, mesh=mesh))(sharded)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


def test_refuses_prefixmem_and_item_memory_together_and_bad_sizes():
    vocab = SIDVocab((4, 4, 4))
    with pytest.raises(ValueError, match=r"model\.prefixmem\.enabled and model\.item_memory"
                                         r"\.enabled"):
        SIDRecommender(_model_cfg(True, True), vocab, rngs=nnx.Rngs(0))
    tiny = im.resolve(_model_cfg(rows=30, heads=8), (4, 4, 4))  # too few distinct primes <= 3
    assert [t.size for t in tiny.tables] == [3] * 8
    with pytest.raises(ValueError, match=r"raise model\.item_memory\.rows"):
        im.resolve(_model_cfg(rows=15, heads=8), (4, 4, 4))
    with pytest.raises(ValueError, match=r"model\.item_memory\.rows=-1"):
        im.resolve(_model_cfg(rows=-1), (4, 4, 4))
