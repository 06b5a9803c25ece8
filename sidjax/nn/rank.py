"""Ranking head on Semantic IDs (DCAT cross-attention, SIREN hard search), as pure functions on pytrees.

A ranking stage inside the generative model (after UniPinRec, PinFM's DCAT and SIREN): the user's
history states ``[B, T, D]`` (e.g. the decoder's hidden states, or the inputs of its last layer's
K/V projections) are projected to keys and values ONCE per user, and each of the N candidates,
represented from its SID alone, cross-attends to them; an MLP on ``[candidate, attended]`` gives
one logit per candidate. A second ranking model would instead run on (history + candidate) for
every candidate, recomputing the history's K/V N times (:func:`naive_score`, the reference path
the benchmark and the tests compare against: same scores).

    params = init(key, cfg)
    scores = score(params, history, history_mask, cand_codes, cfg=cfg,
                   history_codes=history_codes)                      # [B, N]
    loss = ranking_loss(scores, positive_index)

Candidate embedding (:func:`candidate_embed`): the sum over SID levels of the code's row in one
flattened ``[sum(codes_per_level), D]`` table (level l's codes start at ``offsets[l]``) plus a
per-level position row (a learned bias, as the levels are always all present).

Attention mask (``cfg.hard_search_levels``): 0 attends to every real history position
(``history_mask``). 1 or 2 is SIREN's SemID hard search: a candidate attends only to history
items sharing its first 1 (or 2) SID codes (``history_codes [B, T, L]``, the SIDs of the history
items), OR to one of the last ``cfg.recent_k`` real history positions (padding anywhere in the
history is skipped when counting). A candidate with nothing to attend gets the all-zeros attended
vector (its score then depends on the candidate alone), never NaN.

Dimension letters: B batch (users), T history positions, N candidates, L SID levels, D d_model,
H heads, K head_dim, F mlp_dim.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

_NEG = -1e30  # finite "minus infinity": masked logits, so all-masked rows stay NaN-free


@dataclasses.dataclass(frozen=True)
class RankConfig:
    """Ranking head sizes and candidate-to-history attention mask."""

    d_model: int = 128
    codes_per_level: tuple[int, ...] = (256, 256, 256)
    num_heads: int = 2
    head_dim: int = 64
    mlp_dim: int = 256
    recent_k: int = 16  # SIREN: last real history items every candidate may attend to
    hard_search_levels: int = 0  # 0 = full attention; 1 or 2 = shared first 1 or 2 SID codes


# Logical axis names of each parameter (mapped to mesh axes by sidjax.parallel rules).
PARAM_AXES = {
    "code_embed": ("vocab", "embed"),
    "level_embed": ("levels", "embed"),
    "w_query": ("embed", "heads", "kv"),
    "w_key": ("embed", "heads", "kv"),
    "w_value": ("embed", "heads", "kv"),
    "w_out": ("heads", "kv", "embed"),
    "mlp_in": ("embed", "mlp"),  # [2 * d_model, mlp_dim]: rows of the candidate, then attended
    "mlp_in_bias": ("mlp",),
    "mlp_out": ("mlp",),
    "mlp_out_bias": (),
}


def check_config(cfg: RankConfig) -> None:
    """Raises a one-line ``ValueError`` naming the field when ``cfg`` is unusable."""
    for name in ("d_model", "num_heads", "head_dim", "mlp_dim"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"rank.{name} must be >= 1, got {getattr(cfg, name)}")
    ks = cfg.codes_per_level
    if not ks or min(ks) < 1:
        raise ValueError(f"rank.codes_per_level must be a non-empty tuple of counts >= 1, got {ks}")
    if cfg.recent_k < 0:
        raise ValueError(f"rank.recent_k must be >= 0, got {cfg.recent_k}")
    if cfg.hard_search_levels not in (0, 1, 2) or cfg.hard_search_levels > len(ks):
        raise ValueError(f"rank.hard_search_levels must be 0, 1 or 2 (and <= {len(ks)} SID levels), "
                         f"got {cfg.hard_search_levels}")


def level_offsets(cfg: RankConfig) -> np.ndarray:
    """``[L]`` int32: first row of each level's codes in the flattened code table."""
    return np.concatenate([[0], np.cumsum(cfg.codes_per_level)[:-1]]).astype(np.int32)


def param_axes(cfg: RankConfig) -> dict[str, tuple[str, ...]]:
    """Logical axis names of every parameter :func:`init` makes for ``cfg``."""
    check_config(cfg)
    return dict(PARAM_AXES)


def _shapes(cfg: RankConfig) -> dict[str, tuple[tuple[int, ...], int | None]]:
    """``{name: (shape, fan_in)}`` of every parameter; ``fan_in`` None: initialised to zeros."""
    d, h, k, f, levels = (cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim,
                          len(cfg.codes_per_level))
    return {
        "code_embed": ((sum(cfg.codes_per_level), d), levels),
        "level_embed": ((levels, d), levels),
        "w_query": ((d, h, k), d),
        "w_key": ((d, h, k), d),
        "w_value": ((d, h, k), d),
        "w_out": ((h, k, d), h * k),
        "mlp_in": ((2 * d, f), 2 * d),
        "mlp_in_bias": ((f,), None),
        "mlp_out": ((f,), f),
        "mlp_out_bias": ((), None),
    }


@functools.partial(jax.jit, static_argnames="cfg")
def init(key: jax.Array, cfg: RankConfig) -> dict[str, jax.Array]:
    """Fresh float32 parameters (see :data:`PARAM_AXES` for the names and layouts): normal / sqrt(fan
    in), biases zero. One jitted draw, sliced, so initialisation compiles once."""
    check_config(cfg)
    shapes = _shapes(cfg)
    drawn = {n: s for n, (s, fan) in shapes.items() if fan is not None}
    flat = jax.random.normal(key, (sum(math.prod(s) for s in drawn.values()),), jnp.float32)
    params, start = {}, 0
    for name, (shape, fan) in shapes.items():
        if fan is None:
            params[name] = jnp.zeros(shape, jnp.float32)
            continue
        size = math.prod(shape)
        params[name] = flat[start:start + size].reshape(shape) / math.sqrt(fan)
        start += size
    return params


def param_count(cfg: RankConfig) -> int:
    """Number of parameters :func:`init` creates."""
    check_config(cfg)
    return sum(math.prod(shape) for shape, _ in _shapes(cfg).values())


def flops(cfg: RankConfig, T: int, N: int) -> dict[str, int]:
    """Matmul FLOPs per user (a multiply-add is 2) of scoring N candidates against T history items.

    ``{"dcat": ..., "naive": ...}``: DCAT projects the history's K/V once; the naive path projects
    the T + 1 positions of (history + candidate) for each candidate. Both share the candidate's
    query, output projection and MLP. Softmax, masking and the embedding sum are left out.
    """
    check_config(cfg)
    d, hk, f = cfg.d_model, cfg.num_heads * cfg.head_dim, cfg.mlp_dim
    per_candidate = 2 * d * hk + 2 * hk * d + 2 * 2 * d * f + 2 * f  # query, out proj, MLP
    kv = lambda positions: 2 * 2 * positions * d * hk
    attend = lambda positions: 2 * 2 * positions * hk  # logits + weighted sum of values
    return {"dcat": N * per_candidate + kv(T) + N * attend(T),
            "naive": N * (per_candidate + kv(T + 1) + attend(T + 1))}


def candidate_embed(params: dict[str, jax.Array], cand_codes: jax.Array, *,
                    cfg: RankConfig) -> jax.Array:
    """``[B, N, D]`` (any leading dims): sum over levels of the code rows + the level rows.

    ``cand_codes [B, N, L]`` are raw per-level codes (0 <= c < codes_per_level[l]); level l's
    rows of the flattened ``code_embed`` table start at ``level_offsets(cfg)[l]``.
    """
    levels = len(cfg.codes_per_level)
    if cand_codes.shape[-1] != levels:
        raise ValueError(f"cand_codes has {cand_codes.shape[-1]} SID levels, rank.codes_per_level "
                         f"{levels}")
    rows = cand_codes.astype(jnp.int32) + jnp.asarray(level_offsets(cfg))
    return jnp.sum(jnp.take(params["code_embed"], rows, axis=0), axis=-2) + jnp.sum(
        params["level_embed"], axis=0)


def attention_mask(history_mask: jax.Array, cand_codes: jax.Array, *, cfg: RankConfig,
                   history_codes: jax.Array | None = None) -> jax.Array:
    """``[B, N, T]`` bool: which history positions each candidate may attend to.

    Full attention (``hard_search_levels == 0``): every real position (``history_mask``). Hard
    search: real positions whose first ``hard_search_levels`` codes equal the candidate's, OR one
    of the last ``recent_k`` real positions.
    """
    check_config(cfg)
    real = history_mask.astype(bool)  # [B, T]
    n = cand_codes.shape[-2]
    if cfg.hard_search_levels == 0:
        return jnp.broadcast_to(real[:, None, :], real.shape[:1] + (n,) + real.shape[1:])
    if history_codes is None:
        raise ValueError("rank.hard_search_levels > 0 needs history_codes [B, T, L]")
    lv = cfg.hard_search_levels
    shared = jnp.all(history_codes[:, None, :, :lv] == cand_codes[:, :, None, :lv], axis=-1)
    from_end = jnp.cumsum(real[:, ::-1].astype(jnp.int32), axis=-1)[:, ::-1]  # real at or after t
    recent = real & (from_end <= cfg.recent_k)  # [B, T]
    return (shared & real[:, None, :]) | recent[:, None, :]


def _attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """``'BNHK,BTHK->BNHK'`` masked softmax attention; a row with no allowed key gives zeros."""
    logits = jnp.einsum("BNHK,BTHK->BHNT", q, k) / math.sqrt(q.shape[-1])
    allowed = mask[:, None, :, :]  # [B, 1, N, T]
    logits = jnp.where(allowed, logits, _NEG)
    e = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True)) * allowed
    total = jnp.sum(e, axis=-1, keepdims=True)
    weights = e / jnp.where(total > 0, total, 1.0)
    return jnp.einsum("BHNT,BTHK->BNHK", weights, v)


def _head(params: dict[str, jax.Array], cand: jax.Array, attended: jax.Array) -> jax.Array:
    """Logit ``[B, N]`` of the MLP on ``[candidate, W_out attended]``."""
    out = jnp.einsum("BNHK,HKD->BND", attended, params["w_out"])
    x = jnp.concatenate([cand, out], axis=-1)
    hidden = jax.nn.gelu(jnp.einsum("BNE,EF->BNF", x, params["mlp_in"]) + params["mlp_in_bias"])
    return jnp.einsum("BNF,F->BN", hidden, params["mlp_out"]) + params["mlp_out_bias"]


def score(params: dict[str, jax.Array], history: jax.Array, history_mask: jax.Array,
          cand_codes: jax.Array, *, cfg: RankConfig,
          history_codes: jax.Array | None = None) -> jax.Array:
    """DCAT scores ``[B, N]``: each candidate cross-attends to the history's K/V, projected once.

    Args:
      params: from :func:`init`.
      history: ``[B, T, D]`` history states of each user.
      history_mask: ``[B, T]`` bool/int, true at real (non-padding) history positions.
      cand_codes: ``[B, N, L]`` int SID codes of the candidates.
      cfg: the config the params were made with.
      history_codes: ``[B, T, L]`` SID codes of the history items (needed when
        ``cfg.hard_search_levels > 0``).
    """
    mask = attention_mask(history_mask, cand_codes, cfg=cfg, history_codes=history_codes)
    cand = candidate_embed(params, cand_codes, cfg=cfg)
    q = jnp.einsum("BND,DHK->BNHK", cand, params["w_query"])
    k = jnp.einsum("BTD,DHK->BTHK", history, params["w_key"])
    v = jnp.einsum("BTD,DHK->BTHK", history, params["w_value"])
    return _head(params, cand, _attend(q, k, v, mask))


def naive_score(params: dict[str, jax.Array], history: jax.Array, history_mask: jax.Array,
                cand_codes: jax.Array, *, cfg: RankConfig,
                history_codes: jax.Array | None = None) -> jax.Array:
    """The same scores as :func:`score`, the way a second ranking model computes them.

    For each candidate separately (``vmap`` over N), the sequence (history + that candidate)
    ``[B, T + 1, D]`` is projected to keys and values, so the history's K/V are recomputed N
    times; the candidate's query attends to the history positions :func:`attention_mask` allows
    (not to its own key: DCAT's cross-attention has no self term).
    """
    mask = attention_mask(history_mask, cand_codes, cfg=cfg, history_codes=history_codes)
    cand = candidate_embed(params, cand_codes, cfg=cfg)  # [B, N, D]

    def one(c: jax.Array, m: jax.Array) -> jax.Array:  # c [B, D], m [B, T] -> [B]
        seq = jnp.concatenate([history, c[:, None, :]], axis=1)  # [B, T + 1, D]
        keep = jnp.concatenate([m, jnp.zeros_like(m[:, :1])], axis=1)[:, None, :]  # [B, 1, T + 1]
        q = jnp.einsum("BND,DHK->BNHK", c[:, None, :], params["w_query"])
        k = jnp.einsum("BTD,DHK->BTHK", seq, params["w_key"])
        v = jnp.einsum("BTD,DHK->BTHK", seq, params["w_value"])
        return _head(params, c[:, None, :], _attend(q, k, v, keep))[:, 0]

    return jax.vmap(one, in_axes=(1, 1), out_axes=1)(cand, mask)


def ranking_loss(scores: jax.Array, positive_index: jax.Array,
                 candidate_mask: jax.Array | None = None) -> jax.Array:
    """Mean softmax cross-entropy of the true item among each user's candidates.

    ``scores [B, N]`` come from :func:`score`; ``positive_index [B]`` is the column of the true
    item. The negatives are whatever else the caller put in the candidate list (in-batch items,
    sampled or hard negatives): this function does no sampling. ``candidate_mask [B, N]`` (true
    = real) drops padded candidates from the softmax.
    """
    if candidate_mask is not None:
        scores = jnp.where(candidate_mask.astype(bool), scores, _NEG)
    positive = jnp.take_along_axis(scores, positive_index[:, None].astype(jnp.int32), axis=-1)[:, 0]
    return jnp.mean(jax.nn.logsumexp(scores, axis=-1) - positive)
