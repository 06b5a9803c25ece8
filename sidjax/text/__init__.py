"""Item text encoders: a JAX port of the all-MiniLM-L6-v2 sentence encoder."""

from sidjax.text.minilm import (
    MiniLMConfig,
    bert_forward,
    default_model_path,
    encode_texts,
    l2_normalize,
    load_minilm,
    mean_pool,
)

__all__ = [
    "MiniLMConfig",
    "bert_forward",
    "default_model_path",
    "encode_texts",
    "l2_normalize",
    "load_minilm",
    "mean_pool",
]
