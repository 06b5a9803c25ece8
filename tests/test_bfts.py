"""TokenFormer's BFTS attention (per-layer sliding windows) and NLIR: the sliding mask and the
blocked attention against NumPy references, windows covering the row equal full attention bit for
bit, cached decoding (trimmed per-layer caches) and beam search equal the uncached full forward,
and NLIR off is the plain block."""

import dataclasses
import functools
import hashlib
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sidjax import config as C
from sidjax.config import ModelConfig, PrefixMemConfig
from sidjax.data.pipeline import SIDVocab, eval_arrays
from sidjax.decode.beam import beam_search, beam_search_naive, trie_arrays
from sidjax.nn import families
from sidjax.nn.decoder import Attention
from sidjax.nn.model import SIDRecommender
from sidjax.nn.sliding import blocked_sliding_attention, sliding_window_mask
from sidjax.run.model import run_hash
from sidjax.sid.table import add_collision_level
from sidjax.sid.trie import build_trie

WINDOWS = (0, 9, 4)  # bottom full, top sliding: both smaller than the 37-token histories


def _np_mask(queries, keys, window, offset=0):
    """Query t (key slot t + offset) sees key slots s with t+offset-w < s <= t+offset."""
    out = np.zeros((queries, keys), bool)
    for t in range(queries):
        for s in range(keys):
            out[t, s] = s <= t + offset and (window == 0 or s > t + offset - window)
    return out


def _np_attention(q, k, v, mask):
    """``q [T, K, G, H]``, ``k, v [S, K, H]``, ``mask [T, S]``, head by head in float64."""
    t, kv_heads, g, h = q.shape
    out = np.zeros(q.shape)
    for i in range(t):
        keys = np.flatnonzero(mask[i])
        for head in range(kv_heads):
            for j in range(g):
                scores = k[keys, head] @ q[i, head, j] / np.sqrt(h)
                weights = np.exp(scores - scores.max())
                out[i, head, j] = weights / weights.sum() @ v[keys, head]
    return out


@pytest.mark.parametrize("t, s, window, offset", [(6, 6, 2, 0), (5, 9, 4, 4), (7, 7, 0, 0),
                                                  (3, 3, 8, 0)])
def test_sliding_window_mask_matches_numpy_reference(t, s, window, offset):
    np.testing.assert_array_equal(sliding_window_mask(t, s, window, offset),
                                  _np_mask(t, s, window, offset))


@pytest.mark.parametrize("t, window, offset, packed", [(70, 5, 0, False), (53, 20, 0, True),
                                                       (36, 17, 17, False)])
def test_blocked_sliding_attention_matches_numpy_reference(t, window, offset, packed):
    rng = np.random.default_rng(t)
    b, kv_heads, g, h = 2, 2, 2, 4
    q = rng.normal(size=(b, t, kv_heads, g, h)).astype(np.float32)
    k, v = (rng.normal(size=(b, t + offset, kv_heads, h)).astype(np.float32) for _ in "kv")
    valid = np.ones((b, t + offset), bool)
    valid[0, :9] = False  # left padding (and, with an offset, an unfilled cache)
    segments = None
    if packed:  # three segments, then right padding
        segments = np.repeat(np.array([[1, 2, 3, 0]]), [20, 15, 10, t - 45], axis=1)
        segments = np.repeat(segments, b, 0).astype(np.int32)
        valid = valid & (segments > 0)
    out = np.asarray(jax.jit(blocked_sliding_attention, static_argnums=(4, 5))(
        q, k, v, valid, window, offset, segments))
    for row in range(b):
        mask = _np_mask(t, t + offset, window, offset) & valid[row][None]
        if packed:
            mask &= segments[row][:, None] == segments[row][None, :]
        live = mask.any(1)  # fully masked (padding) queries have no defined output
        ref = _np_attention(q[row].astype(np.float64), k[row], v[row], mask | ~live[:, None])
        np.testing.assert_allclose(out[row][live], ref[live], rtol=1e-5, atol=1e-5)


# jitted model calls: one compile each instead of op-by-op dispatch (the tests stay fast)
_forward = nnx.jit(lambda model, *args, **kw: model(*args, **kw))
_prefill = nnx.jit(lambda model, *args, extra=0: model.prefill(*args, extra=extra),
                   static_argnames="extra")
_decode_step = nnx.jit(lambda model, *args: model.decode_step(*args))


@functools.cache
def _setup(prefixmem=False, windows=WINDOWS, nlir=False, seed=0, num_items=30):
    """A 3-layer tiny GQA model with BFTS ``windows`` and 4 encoded 12-item histories (37 tokens,
    the first one shorter: left padding)."""
    rng = np.random.default_rng(seed)
    codes = add_collision_level(rng.integers(0, 3, size=(num_items, 2)))
    vocab = SIDVocab((3, 3, int(codes[:, -1].max()) + 1))
    pm = PrefixMemConfig(enabled=prefixmem, mem_dim=8, exact_threshold=4, hash_table_size=11)
    cfg = ModelConfig(d_model=32, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=48,
                      dropout=0.0, prefixmem=pm, attention="bfts" if windows else "full",
                      attention_windows=windows, nlir=nlir)
    model = SIDRecommender(cfg, vocab, rngs=nnx.Rngs(params=seed))
    histories = [rng.integers(0, num_items, size=n) for n in (7, 12, 15, 12)]
    return model, codes, vocab, eval_arrays(histories, codes, vocab, max_history=12)


def _full_forward(model, arrays, target, vocab):
    """Logits of history + the whole target SID, uncached."""
    depth = target.shape[1]
    levels = np.tile(np.arange(1, depth + 1), (len(target), 1))
    extras = (("tokens", vocab.level_offsets[:depth] + target), ("codes", target),
              ("levels", levels))
    return np.asarray(_forward(model, *(jnp.asarray(np.concatenate([arrays[n], extra], 1))
                                        for n, extra in extras)))


def test_windows_covering_the_row_equal_full_attention_exactly():
    model, _, _, arrays = _setup(windows=())
    wide, _, _, _ = _setup(windows=(0, 37, 100))
    narrow, _, _, _ = _setup(windows=WINDOWS)
    args = [jnp.asarray(arrays[n]) for n in ("tokens", "codes", "levels")]
    # packed rows of two segments each (the first one left-padded: padding inside a segment too)
    segments = jnp.asarray(np.repeat([[1] * 20 + [2] * 17], 4, 0))
    full = np.asarray(_forward(model, *args, segment_ids=segments))
    np.testing.assert_array_equal(np.asarray(_forward(wide, *args, segment_ids=segments)), full)
    assert not np.allclose(_forward(narrow, *args, segment_ids=segments), full, atol=1e-3)


@pytest.mark.parametrize("prefixmem", [False, True])
def test_cached_decoding_with_sliding_layers_matches_full_forward(prefixmem):
    model, codes, vocab, arrays = _setup(prefixmem=prefixmem)
    target = codes[[5, 7, 9, 11]]
    full = _full_forward(model, arrays, target, vocab)
    t = arrays["tokens"].shape[1]
    logits, cache = _prefill(model, *(jnp.asarray(arrays[n]) for n in ("tokens", "codes",
                                                                        "levels")), extra=2)
    # per-layer caches: the full layer holds all t + 2 slots, a sliding layer its window only
    assert cache["k"].shape[:3] == (1, 4, t + 2)
    assert [c["k"].shape[1] for c in cache["window"]] == [9, 4]
    np.testing.assert_allclose(logits, full[:, t - 1], rtol=1e-5, atol=1e-5)
    for depth in (1, 2):
        window = target[:, :depth]
        logits, cache = _decode_step(model, jnp.asarray(vocab.level_offsets[:depth] + window),
                                     jnp.asarray(window),
                                     jnp.asarray(np.tile(np.arange(1, depth + 1), (4, 1))), cache)
        assert [c["valid"].shape for c in cache["window"]] == [(4, 9), (4, 4)]
        np.testing.assert_allclose(logits, full[:, t - 1 + depth], rtol=1e-5, atol=1e-5)


def test_beam_search_with_bfts_and_nlir_equals_naive():
    model, codes, vocab, arrays = _setup(nlir=True, seed=3, windows=(0, 6, 2))
    graphdef, state = nnx.split(model)
    args = (graphdef, state, trie_arrays(build_trie(codes)), arrays["tokens"], arrays["codes"],
            arrays["levels"])
    items, scores = beam_search(*args, vocab=vocab, beam=(3, 6, 5))
    ref_items, ref_scores = beam_search_naive(*args, vocab=vocab, beam=(3, 6, 5))
    np.testing.assert_array_equal(items, ref_items)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    _, history = nnx.eval_shape(lambda: model.prefill(*(jnp.asarray(arrays[n]) for n in (
        "tokens", "codes", "levels"))))
    assert [c["k"].shape[1] for c in history["window"]] == [6, 2]  # the shared history, trimmed


def test_nlir_gates_the_attention_output_and_off_is_the_plain_block():
    plain = Attention(16, 4, 4, 10000.0, num_kv_heads=2, rngs=nnx.Rngs(0))
    gated = Attention(16, 4, 4, 10000.0, num_kv_heads=2, nlir=True, rngs=nnx.Rngs(0))
    for name in ("w_q", "w_k", "w_v", "w_o"):  # NLIR's W comes last: the others are the same
        np.testing.assert_array_equal(getattr(plain, name)[...], getattr(gated, name)[...])
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 5, 16)), jnp.float32)
    args = (x, jnp.tile(jnp.arange(5), (2, 1)), jnp.ones((2, 5), bool))
    call = nnx.jit(lambda attn, *a: attn(*a)[0])
    y_plain, y_gated = call(plain, *args), call(gated, *args)
    assert not np.allclose(y_gated, y_plain, atol=1e-3)
    gated.w_nlir.set_value(jnp.zeros_like(gated.w_nlir[...]))  # sigmoid(0) = 1/2 on every head
    np.testing.assert_allclose(call(gated, *args), 0.5 * y_plain, rtol=1e-6, atol=1e-7)
    assert set(nnx.to_pure_dict(nnx.state(gated))) - set(nnx.to_pure_dict(nnx.state(plain))) \
        == {"w_nlir"}  # off: no NLIR parameter (the e2e test pins the numerics of the default)


def test_bfts_config_rule_validation_and_run_hash():
    assert families.bfts_windows(4, 64) == (0, 0, 64, 32)
    assert families.bfts_windows(6, 64) == (0, 0, 0, 64, 43, 22)
    assert families.bfts_windows(1, 64) == (0,)
    assert families.layer_windows(ModelConfig(attention="bfts", bfts_window=10)) == (0, 10)
    assert families.layer_windows(ModelConfig()) == (0, 0)
    cfg = C.apply_overrides(C.demo(), ["model.attention=bfts", "model.attention_windows=0,16",
                                       "model.nlir=true"])
    assert (cfg.model.attention_windows, cfg.model.nlir) == ((0, 16), True)
    C.validate(cfg)
    for sets, message in [(["model.attention=sliding"], "model.attention=sliding: must be one of"),
                          (["model.attention=bfts", "model.attention_windows=0,8,4"],
                           "model.attention_windows=0,8,4: must give one window per layer"),
                          (["model.attention_windows=0,8"], "model.attention=bfts only"),
                          (["model.attention=bfts", "model.attention_windows=0,-1"],
                           "model.attention_windows=0,-1: every value must be >= 0"),
                          (["model.bfts_window=0"], "model.bfts_window=0: must be >= 1"),
                          (["model.kind=sasrec", "model.nlir=true"], "model.nlir=True: the SASRec")]:
        with pytest.raises(C.ConfigError, match=message):
            C.validate(C.apply_overrides(C.demo(), sets))
    # the new keys at their defaults leave the hash of earlier runs as it was
    sids = types.SimpleNamespace(content_hash=lambda: "table")
    relevant = {k: v for k, v in C.to_dict(C.demo()).items() if k in ("data", "sid", "model")}
    for key in ("pack_segments", "pack_length", "text_prompt", "item_text_tokens",
                "text_vocab_size", "item_vectors"):
        relevant["data"].pop(key)
    for key in ("item_memory", "attention", "attention_windows", "bfts_window", "nlir"):
        relevant["model"].pop(key)
    old = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
    old.update(b"table")
    assert run_hash(C.demo(), sids) == old.hexdigest()
    bfts = dataclasses.replace(C.demo(), model=cfg.model)
    assert run_hash(bfts, sids) != old.hexdigest()
