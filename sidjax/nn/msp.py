"""MSP: AsymRec's Multi-expert Semantic Projection of continuous item embeddings, as pure functions.

A history item enters the transformer as its continuous content embedding (e.g. a MiniLM sentence
vector, width ``C = content_dim``) instead of a looked-up ID row. MSP maps it to ``d_model`` with
``E = num_experts`` expert projections mixed by a router on the embedding itself:

* router: ``p = softmax(x @ W_r / router_temperature)`` (``[..., E]``);
* mixing weights: ``w = p`` (``top_k = 0``, dense), or the ``top_k`` largest of ``p`` kept and
  renormalised to sum to 1 (``top_k = k > 0``);
* experts: ``y_e = x @ W_e + b_e`` (``hidden = 0``), or ``y_e = gelu(x @ W1_e + b1_e) @ W2_e + b2_e``
  (tanh-approximate GELU, width ``hidden``);
* output: ``RMSNorm(sum_e w_e y_e) * scale``, zeros at padding positions (``mask`` False).

All experts are evaluated at every position (``E`` is small; top-k only sparsifies the mixture), so
:func:`flops_per_token` does not depend on ``top_k``.

    cfg = MSPConfig(content_dim=384, d_model=256, num_experts=4, top_k=2)
    params = init(key, cfg)
    x, aux = apply(params, vectors, cfg=cfg, mask=history_mask)  # vectors [B, T, 384] -> [B, T, 256]
    loss = task_loss + aux["balance_loss"]

Load balancing (``aux["balance_loss"]``): the Switch-Transformer term
``balance_weight * E * sum_e f_e * p_e`` over the real (masked) positions, with ``f_e`` the fraction
of positions whose top-1 expert is ``e`` (no gradient) and ``p_e`` the mean router probability of
``e``. A uniform router gives exactly ``balance_weight``; a router collapsed onto one expert gives up
to ``E * balance_weight``.

Parameters (:func:`param_axes` gives their logical axis names): ``router [C, E]``; experts stacked
on a leading ``experts`` axis, ``w_in [E, C, H]``, ``b_in [E, H]``, ``w_out [E, H, D]`` and
``b_out [E, D]`` (with ``hidden = 0``: ``w_out [E, C, D]``, ``b_out [E, D]``); ``norm_scale [D]``.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

NORM_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class MSPConfig:
    """Multi-expert Semantic Projection (see :mod:`sidjax.nn.msp`)."""

    content_dim: int = 384  # C: width of the input content embedding (MiniLM-L6: 384)
    d_model: int = 0  # D: output width; 0 = to be filled from model.d_model before init/apply
    num_experts: int = 4  # E
    hidden: int = 0  # H: expert MLP width; 0 = one linear layer per expert
    top_k: int = 0  # 0 = dense softmax mixture; k > 0 = keep the k largest router weights
    router_temperature: float = 1.0  # router logits are divided by this
    balance_weight: float = 0.01  # coefficient of the load-balancing term in aux["balance_loss"]


def check_config(cfg: MSPConfig) -> None:
    """Raises a one-line ``ValueError`` naming the field when ``cfg`` is not usable."""
    if cfg.content_dim < 1:
        raise ValueError(f"msp.content_dim must be >= 1 (the content embedding width), "
                         f"got {cfg.content_dim}")
    if cfg.d_model < 1:
        raise ValueError(f"msp.d_model must be >= 1 (set it to model.d_model), got {cfg.d_model}")
    if cfg.num_experts < 1:
        raise ValueError(f"msp.num_experts must be >= 1, got {cfg.num_experts}")
    if cfg.hidden < 0:
        raise ValueError(f"msp.hidden must be >= 0 (0 = one linear layer per expert), got {cfg.hidden}")
    if not 0 <= cfg.top_k <= cfg.num_experts:
        raise ValueError(f"msp.top_k must be in 0..num_experts={cfg.num_experts} (0 = dense), "
                         f"got {cfg.top_k}")
    if not (math.isfinite(cfg.router_temperature) and cfg.router_temperature > 0):
        raise ValueError(f"msp.router_temperature must be a finite number > 0, "
                         f"got {cfg.router_temperature}")
    if not (math.isfinite(cfg.balance_weight) and cfg.balance_weight >= 0):
        raise ValueError(f"msp.balance_weight must be a finite number >= 0, got {cfg.balance_weight}")


def param_axes(cfg: MSPConfig) -> dict[str, tuple[str | None, ...]]:
    """Logical axis names of every parameter :func:`init` makes for ``cfg``."""
    axes = {"router": ("content", "experts")}
    if cfg.hidden:
        axes["w_in"] = ("experts", "content", "mlp")
        axes["b_in"] = ("experts", "mlp")
        axes["w_out"] = ("experts", "mlp", "embed")
    else:
        axes["w_out"] = ("experts", "content", "embed")
    axes["b_out"] = ("experts", "embed")
    axes["norm_scale"] = ("embed",)
    return axes


def init(key: jax.Array, cfg: MSPConfig) -> dict[str, jax.Array]:
    """Fresh parameters: router, stacked expert weights and biases (zeros), output norm scale (ones)."""
    check_config(cfg)
    c, d, e, h = cfg.content_dim, cfg.d_model, cfg.num_experts, cfg.hidden
    k_router, k_in, k_out = jax.random.split(key, 3)
    params = {"router": jax.random.normal(k_router, (c, e)) / math.sqrt(c)}
    if h:
        params["w_in"] = jax.random.normal(k_in, (e, c, h)) / math.sqrt(c)
        params["b_in"] = jnp.zeros((e, h))
        params["w_out"] = jax.random.normal(k_out, (e, h, d)) / math.sqrt(h)
    else:
        params["w_out"] = jax.random.normal(k_out, (e, c, d)) / math.sqrt(c)
    params["b_out"] = jnp.zeros((e, d))
    params["norm_scale"] = jnp.ones((d,))
    return params


def _rms_norm(x: jax.Array, scale: jax.Array) -> jax.Array:
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + NORM_EPS) * scale


def route(params: dict[str, jax.Array], vectors: jax.Array, *,
          cfg: MSPConfig) -> tuple[jax.Array, jax.Array]:
    """``(probs, weights)``, both ``[..., E]``: router softmax and the (top-k renormalised) mixture."""
    logits = jnp.einsum("...C,CE->...E", vectors, params["router"]) / cfg.router_temperature
    probs = jax.nn.softmax(logits, axis=-1)
    if not cfg.top_k or cfg.top_k == cfg.num_experts:
        return probs, probs
    _, top = jax.lax.top_k(probs, cfg.top_k)  # ties: the lower expert index first
    keep = jnp.sum(jax.nn.one_hot(top, cfg.num_experts, dtype=probs.dtype), axis=-2)
    kept = probs * keep
    return probs, kept / jnp.sum(kept, axis=-1, keepdims=True)


def balance_loss(probs: jax.Array, mask: jax.Array, *,
                 cfg: MSPConfig) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(loss, f, p)``: ``balance_weight * E * sum_e f_e p_e`` over the positions where ``mask``.

    ``f [E]``: fraction of masked positions whose top-1 expert is ``e`` (a constant for the
    gradient); ``p [E]``: mean router probability. No masked positions give ``f = p = 0``, loss 0.
    """
    e = cfg.num_experts
    m = mask.astype(probs.dtype)[..., None]
    count = jnp.maximum(jnp.sum(m), 1.0)
    top1 = jax.nn.one_hot(jnp.argmax(probs, axis=-1), e, dtype=probs.dtype)
    f = jax.lax.stop_gradient(jnp.sum((top1 * m).reshape(-1, e), axis=0) / count)
    p = jnp.sum((probs * m).reshape(-1, e), axis=0) / count
    return cfg.balance_weight * e * jnp.sum(f * p), f, p


def apply(params: dict[str, jax.Array], vectors: jax.Array, *, cfg: MSPConfig,
          mask: jax.Array | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """MSP output ``[..., d_model]`` of content embeddings ``vectors [..., C]`` and an aux dict.

    Args:
      params: from :func:`init`.
      vectors: ``[B, T, C]`` (or ``[N, C]``, any leading shape) content embeddings.
      cfg: the config the params were made with.
      mask: ``vectors.shape[:-1]`` bool (or 0/1), True at real positions; ``None`` = all real.
        Padding positions output zeros (whatever their input holds) and are left out of the
        balance loss.

    Returns:
      ``(out, aux)``: ``out [..., d_model]`` float32; ``aux`` holds ``router_probs [..., E]``
      (softmax), ``weights [..., E]`` (the mixture actually used), ``expert_fraction [E]`` and
      ``expert_prob [E]`` (f and p of :func:`balance_loss`) and the scalar ``balance_loss``.
      At padding positions the router sees a zero vector (uniform ``router_probs``).
    """
    check_config(cfg)
    if vectors.shape[-1] != cfg.content_dim:
        raise ValueError(f"msp: vectors have width {vectors.shape[-1]}, "
                         f"msp.content_dim is {cfg.content_dim}")
    lead = vectors.shape[:-1]
    mask = jnp.ones(lead, bool) if mask is None else jnp.asarray(mask).astype(bool)
    if mask.shape != lead:
        raise ValueError(f"msp: mask has shape {mask.shape}, expected vectors.shape[:-1] = {lead}")
    x = jnp.where(mask[..., None], vectors.astype(jnp.float32), 0.0)
    probs, weights = route(params, x, cfg=cfg)
    if cfg.hidden:
        h = jnp.einsum("...C,ECH->...EH", x, params["w_in"]) + params["b_in"]
        y = jnp.einsum("...EH,EHD->...ED", jax.nn.gelu(h, approximate=True), params["w_out"])
    else:
        y = jnp.einsum("...C,ECD->...ED", x, params["w_out"])
    y = y + params["b_out"]
    mixed = jnp.einsum("...E,...ED->...D", weights, y)
    out = jnp.where(mask[..., None], _rms_norm(mixed, params["norm_scale"]), 0.0)
    loss, f, p = balance_loss(probs, mask, cfg=cfg)
    aux = {"router_probs": probs, "weights": weights, "expert_fraction": f, "expert_prob": p,
           "balance_loss": loss}
    return out, aux


def param_count(cfg: MSPConfig) -> int:
    """Number of parameters :func:`init` creates."""
    check_config(cfg)
    c, d, e, h = cfg.content_dim, cfg.d_model, cfg.num_experts, cfg.hidden
    experts = e * (c * h + h + h * d + d) if h else e * (c * d + d)
    return c * e + experts + d


def flops_per_token(cfg: MSPConfig) -> int:
    """FLOPs of :func:`apply` per position (a multiply-add is 2): router, all experts, mix, norm.

    Elementwise work (softmax, GELU, bias adds, top-k) is counted only through the RMSNorm's
    ``4 * d_model``; every expert is evaluated, whatever ``top_k``.
    """
    check_config(cfg)
    c, d, e, h = cfg.content_dim, cfg.d_model, cfg.num_experts, cfg.hidden
    experts = e * 2 * (c * h + h * d) if h else e * 2 * c * d
    return 2 * c * e + experts + 2 * e * d + 4 * d
