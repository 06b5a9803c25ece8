"""Every preset: whole runs (:func:`demo`, :func:`tiny`, :data:`PRESETS`) and the decoder families and
sizes of ``ModelConfig`` (:data:`FAMILIES`, :data:`SIZE_PRESETS`, :func:`apply_preset`,
:func:`resolve`).

One decoder (:mod:`sidjax.nn.decoder`) covers the three families; a family only fixes a few
choices, each a ``ModelConfig`` field that is ``None`` unless set, and then takes the family's value:

==================  ========  ========  ==========================================
field               llama     qwen2     gemma
==================  ========  ========  ==========================================
``qkv_bias``        False     True      False
``activation``      swiglu    swiglu    geglu (tanh-approximate GELU)
``norm_plus_one``   False     False     True (RMSNorm scale ``1 + w``, ``w`` from 0)
``embed_scale``     False     False     True (embeddings times ``sqrt(d_model)``)
``tie_embeddings``  False     False     True (the output head is the embedding)
==================  ========  ========  ==========================================

All three use RMSNorm, RoPE and grouped-query attention (``num_kv_heads``; 0 = ``num_heads``).
The default ``ModelConfig`` (family ``llama``, ``num_kv_heads=0``) is the original sidjax model.

Sizes (:data:`SIZE_PRESETS`) set the whole architecture, shapes from the public checkpoints'
``config.json`` (the SID vocabulary replaces the text vocabulary, so only the embedding rows
differ): ``llama-3.2-1b``, ``qwen2-0.5b``, ``gemma-2b`` and ``<family>-tiny`` for tests. Llama 3's
RoPE frequency rescaling (``rope_scaling``) is not modelled. Use them as

    cfg = apply_preset(ModelConfig(), "gemma-2b")        # keeps dropout and prefixmem
    sidjax train --config demo --set model.family=qwen2      # a family: its style, same sizes
    sidjax train --config demo --set model.family=qwen2-0.5b  # a size preset: the whole shape
"""

from __future__ import annotations

import dataclasses

from sidjax.config.schema import (
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    ModelConfig,
    PrefixMemConfig,
    SIDConfig,
    TrainConfig,
)

# The activations the decoder implements (sidjax.nn.decoder.ACTIVATIONS).
ACTIVATIONS = ("swiglu", "geglu")

# Family -> values of the style fields a ModelConfig leaves at None.
FAMILIES: dict[str, dict] = {
    "llama": dict(qkv_bias=False, activation="swiglu", norm_plus_one=False, embed_scale=False,
                  tie_embeddings=False),
    "qwen2": dict(qkv_bias=True, activation="swiglu", norm_plus_one=False, embed_scale=False,
                  tie_embeddings=False),
    "gemma": dict(qkv_bias=False, activation="geglu", norm_plus_one=True, embed_scale=True,
                  tie_embeddings=True),
}
STYLE_FIELDS = tuple(FAMILIES["llama"])

_TINY = dict(d_model=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128,
             rope_base=10000.0, norm_eps=1e-6)

# Preset name -> every architecture field (style fields not listed come from the family).
SIZE_PRESETS: dict[str, dict] = {
    "llama-tiny": dict(family="llama", **_TINY),
    "qwen2-tiny": dict(family="qwen2", **_TINY),
    "gemma-tiny": dict(family="gemma", **{**_TINY, "num_kv_heads": 1}),
    # meta-llama/Llama-3.2-1B: 16 layers, 32 query / 8 kv heads, tied embeddings
    "llama-3.2-1b": dict(family="llama", d_model=2048, num_layers=16, num_heads=32,
                         num_kv_heads=8, head_dim=64, mlp_dim=8192, rope_base=500000.0,
                         norm_eps=1e-5, tie_embeddings=True),
    # Qwen/Qwen2-0.5B: 24 layers, 14 query / 2 kv heads, q/k/v biases, tied embeddings
    "qwen2-0.5b": dict(family="qwen2", d_model=896, num_layers=24, num_heads=14, num_kv_heads=2,
                       head_dim=64, mlp_dim=4864, rope_base=1000000.0, norm_eps=1e-6,
                       tie_embeddings=True),
    # google/gemma-2b: 18 layers, 8 query heads of width 256, multi-query (1 kv head)
    "gemma-2b": dict(family="gemma", d_model=2048, num_layers=18, num_heads=8, num_kv_heads=1,
                     head_dim=256, mlp_dim=16384, rope_base=10000.0, norm_eps=1e-6),
}


def _names() -> str:
    return ", ".join(list(FAMILIES) + list(SIZE_PRESETS))


def apply_preset(cfg: ModelConfig, name: str) -> ModelConfig:
    """``cfg`` with family or size preset ``name`` applied (dropout and prefixmem are kept).

    A family name sets ``family`` only (style fields left at ``None`` follow it); a size preset
    sets every architecture field and resets the style fields it does not list to the family's.
    """
    if name in FAMILIES:
        return dataclasses.replace(cfg, family=name)
    if name in SIZE_PRESETS:
        return dataclasses.replace(cfg, **{**dict.fromkeys(STYLE_FIELDS), **SIZE_PRESETS[name]})
    raise ConfigError(f"model.family={name!r} is not a family or size preset; use one of {_names()}")


def preset(name: str, **fields) -> ModelConfig:
    """A ``ModelConfig`` of family or size preset ``name`` with ``fields`` (e.g. ``prefixmem``)."""
    return dataclasses.replace(apply_preset(ModelConfig(), name), **fields)


def resolve(cfg: ModelConfig) -> ModelConfig:
    """``cfg`` with every style field and ``num_kv_heads`` concrete; raises naming a bad key."""
    if cfg.family not in FAMILIES:
        hint = (" (a size preset: expand it with config.apply_preset or --set model.family=..)"
                if cfg.family in SIZE_PRESETS else "")
        raise ConfigError(f"model.family={cfg.family!r} is not a family{hint}; use one of "
                          f"{', '.join(FAMILIES)}")
    style = {k: FAMILIES[cfg.family][k] if getattr(cfg, k) is None else getattr(cfg, k)
             for k in STYLE_FIELDS}
    kv_heads = cfg.num_kv_heads or cfg.num_heads
    if kv_heads < 1 or cfg.num_heads % kv_heads:
        raise ConfigError(f"model.num_kv_heads={cfg.num_kv_heads} must divide model.num_heads="
                          f"{cfg.num_heads} (0 = one kv head per query head)")
    if style["activation"] not in ACTIVATIONS:
        raise ConfigError(f"model.activation={style['activation']!r}; use one of "
                          f"{', '.join(ACTIVATIONS)}")
    return dataclasses.replace(cfg, num_kv_heads=kv_heads, **style)


def demo() -> Config:
    """The `sidjax demo` preset: about 2,000 items and 3,000 synthetic users, minutes on 2 cores."""
    return Config(name="demo")


def tiny() -> Config:
    """A preset small enough for end-to-end tests (well under a minute per model on CPU)."""
    return Config(
        name="tiny",
        data=DataConfig(num_items=400, num_users=800, num_top_categories=4, max_history=12),
        sid=SIDConfig(levels=3, codes=16, kmeans_iters=15),
        model=ModelConfig(d_model=64, num_layers=2, num_heads=2, head_dim=32, mlp_dim=192,
                          dropout=0.0, prefixmem=PrefixMemConfig(mem_dim=16)),
        train=TrainConfig(batch_size=32, steps=300, learning_rate=3e-3, warmup_steps=30,
                          log_every=100, checkpoint_every=150),
        eval=EvalConfig(beam_size=10, batch_size=256),
    )


PRESETS = {"demo": demo, "tiny": tiny}
