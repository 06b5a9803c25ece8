"""Decoder families: presets and overrides, 1B-class shapes, and one block against plain NumPy."""

import dataclasses
import math

import jax
import numpy as np
import pytest
from flax import nnx

from sidjax import config as C
from sidjax.config import ModelConfig
from sidjax.nn import families
from sidjax.nn.decoder import Block
from sidjax.nn.model import SIDRecommender
from sidjax.tokens import SIDVocab
from sidjax.train.partition import param_logical_axes


@pytest.mark.parametrize("name, non_embedding", [
    # Hugging Face totals minus the (tied) text embedding: 1,235,814,400 - 128,256 x 2048,
    # 494,032,768 - 151,936 x 896 and 2,506,172,416 - 256,000 x 2048
    ("llama-3.2-1b", 973_146_112),
    ("qwen2-0.5b", 357_898_112),
    ("gemma-2b", 1_981_884_416),
])
def test_size_presets_have_the_public_checkpoint_shapes(name, non_embedding):
    vocab = SIDVocab((256, 256, 256, 8))
    cfg = families.preset(name, dropout=0.0)
    model = nnx.eval_shape(lambda: SIDRecommender(cfg, vocab, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    total = sum(math.prod(x.shape) for x in jax.tree.leaves(params))
    assert total == non_embedding + vocab.size * cfg.d_model  # tied: no separate head
    param_logical_axes(params)  # every parameter (biases included) has logical axes


def test_default_config_is_the_original_llama_style_model():
    arch = families.resolve(ModelConfig())
    assert (arch.family, arch.num_kv_heads, arch.qkv_bias, arch.activation, arch.norm_plus_one,
            arch.embed_scale, arch.tie_embeddings) == ("llama", 4, False, "swiglu", False, False,
                                                      False)
    gemma = families.resolve(ModelConfig(family="gemma", tie_embeddings=False))
    assert gemma.activation == "geglu" and gemma.norm_plus_one and not gemma.tie_embeddings


@pytest.mark.parametrize("assignments, expected", [
    (["model.family=qwen2"], dict(family="qwen2", d_model=128, qkv_bias=None)),
    (["model.family=gemma-2b"], dict(family="gemma", d_model=2048, num_kv_heads=1, head_dim=256)),
    (["model.family=qwen2-0.5b", "model.num_layers=2"], dict(num_layers=2, tie_embeddings=True)),
    (["model.qkv_bias=true", "model.family=llama-tiny"], dict(qkv_bias=None, num_kv_heads=2)),
    (["model.activation=geglu", "model.norm_eps=1e-5"], dict(activation="geglu", norm_eps=1e-5)),
])
def test_family_overrides_from_the_command_line(assignments, expected, tmp_path):
    cfg = C.apply_overrides(C.demo(), assignments)
    assert {k: getattr(cfg.model, k) for k in expected} == expected
    assert cfg.model.dropout == C.demo().model.dropout  # a preset keeps non-architecture fields
    C.save_config(cfg, tmp_path / "c.json")
    assert C.read_config(tmp_path / "c.json") == cfg


@pytest.mark.parametrize("assignment, message", [
    ("model.family=mistral", "not a family or size preset; use one of llama, qwen2, gemma"),
    ("model.qkv_bias=maybe", "expected a bool"),
])
def test_bad_family_overrides_name_the_choices(assignment, message):
    with pytest.raises(C.ConfigError, match=message):
        C.apply_overrides(C.demo(), [assignment])


@pytest.mark.parametrize("cfg, message", [
    (ModelConfig(num_heads=4, num_kv_heads=3), "must divide model.num_heads=4"),
    (ModelConfig(activation="relu"), "model.activation='relu'"),
    (ModelConfig(family="gemma-2b"), "a size preset"),
])
def test_resolve_rejects_inconsistent_configs(cfg, message):
    with pytest.raises(C.ConfigError, match=message):
        families.resolve(cfg)


def test_prefixmem_injection_past_the_last_block_is_refused():
    cfg = ModelConfig(d_model=16, num_layers=2, num_heads=2, head_dim=8, mlp_dim=32,
                      prefixmem=C.PrefixMemConfig(enabled=True, mem_dim=4, inject_layers=(1, 2)))
    with pytest.raises(ValueError, match=r"names blocks \[2\], but model.num_layers=2"):
        SIDRecommender(cfg, SIDVocab((4, 4)), rngs=nnx.Rngs(0))


# ---------------------------------------------------------------------------------------------
# One block against a plain NumPy transformer block


def _np_rms_norm(x, w, eps, plus_one):
    y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
    return y * ((1.0 + w) if plus_one else w)


def _np_rope(x, positions, base):
    """Rotates the pair (i, i + H/2) of every head by ``position * base^(-2i/H)``."""
    half = x.shape[-1] // 2
    angle = positions[:, None, None] * base ** (-2.0 * np.arange(half) / x.shape[-1])
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * np.cos(angle) - b * np.sin(angle),
                           b * np.cos(angle) + a * np.sin(angle)], axis=-1)


def _np_attention(x, p, positions, base):
    """Causal grouped-query attention of one sequence ``x [T, D]``, head by head."""
    n, h = p["w_q"].shape[1:]
    kv = p["w_k"].shape[1]
    proj = {name: np.einsum("TD,DNH->TNH", x, p[f"w_{name}"]) for name in "qkv"}
    for name in "qkv":
        if f"b_{name}" in p:
            proj[name] = proj[name] + p[f"b_{name}"].reshape(proj[name].shape[1:])
    q, k = (_np_rope(proj[name], positions, base) for name in "qk")
    out = np.zeros((len(x), n, h))
    for head in range(n):
        src = head // (n // kv)  # the kv head this query head reads
        for t in range(len(x)):
            scores = k[:t + 1, src] @ q[t, head] / np.sqrt(h)
            weights = np.exp(scores - scores.max())
            out[t, head] = (weights / weights.sum()) @ proj["v"][:t + 1, src]
    return np.einsum("TNH,NHD->TD", out, p["w_o"])


def _np_block(x, p, style, positions, base):
    act = {"swiglu": lambda z: z / (1 + np.exp(-z)),
           "geglu": lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3)))}
    norm = lambda z, w: _np_rms_norm(z, w, style.norm_eps, style.norm_plus_one)  # noqa: E731
    x = x + _np_attention(norm(x, p["attn_norm"]["scale"]), p["attn"], positions, base)
    y = norm(x, p["mlp_norm"]["scale"])
    mlp = p["mlp"]
    return x + (act[style.activation](y @ mlp["w_gate"]) * (y @ mlp["w_up"])) @ mlp["w_down"]


@pytest.mark.parametrize("name", ["llama-tiny", "qwen2-tiny", "gemma-tiny"])
def test_block_matches_numpy_reference(name):
    cfg = dataclasses.replace(families.preset(name), num_heads=4, num_kv_heads=2, head_dim=8,
                              d_model=16, mlp_dim=24)
    style = families.block_style(cfg)
    block = Block(cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim, cfg.rope_base, 0.0,
                  rngs=nnx.Rngs(0), style=style)
    state = nnx.state(block, nnx.Param)
    rng = np.random.default_rng(0)
    # random biases and norm scales too, so that a skipped or misplaced one shows
    state = jax.tree.map(lambda v: np.asarray(v) + 0.3 * rng.normal(size=v.shape), state)
    nnx.update(block, jax.tree.map(lambda v: np.asarray(v, np.float32), state))
    t = 7
    x = rng.normal(size=(1, t, cfg.d_model)).astype(np.float32)
    positions = np.arange(t)[None]
    y, _ = block(x, positions, np.ones((1, t), bool))
    params = jax.tree.map(lambda v: np.asarray(v, np.float64),
                          nnx.to_pure_dict(nnx.state(block, nnx.Param)))
    ref = _np_block(x[0].astype(np.float64), params, style, positions[0], cfg.rope_base)
    assert ("b_q" in params["attn"]) == (name == "qwen2-tiny")
    np.testing.assert_allclose(np.asarray(y[0]), ref, rtol=1e-4, atol=1e-5)


def test_the_config_names_exactly_the_activations_the_decoder_implements():
    from sidjax.config.presets import ACTIVATIONS as NAMES
    from sidjax.nn.decoder import ACTIVATIONS

    assert set(NAMES) == set(ACTIVATIONS)
