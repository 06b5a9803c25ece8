"""The reusable building blocks of sidjax models.

Pure functions on parameter dicts (``init(key, cfg)`` / ``apply(params, ...)``), usable in any JAX
code:

* :mod:`~sidjax.nn.prefixmem`: PrefixMem, the prefix n-gram memory SID encoder (keying by
  :func:`~sidjax.nn.prefixmem.memory_rows` is parameter-free; ``read_memory`` gathers, ``inject``
  mixes into a decoder); :mod:`~sidjax.nn.prefixmem_io` saves, loads and attaches a pre-trained
  one.
* :mod:`~sidjax.nn.itemmem`: its parameter-matched control (a memory keyed by whole items).
* :mod:`~sidjax.nn.msp`: AsymRec's multi-expert semantic projection of content vectors.
* :mod:`~sidjax.nn.rank`: a ranking head scoring many candidates against one history (DCAT),
  optionally over SID-prefix hard search (SIREN).

Flax NNX modules (parameters carry their logical axes, :mod:`sidjax.parallel.axes`):
:class:`SIDRecommender` (decoder + SID tokens + optional PrefixMem), :class:`SASRec` (the item-ID
baseline), :class:`Decoder` and its blocks (Llama / Qwen2 / Gemma styles via
:func:`build_decoder`); :mod:`~sidjax.nn.hf_import` loads Hugging Face checkpoints into them.
"""

from sidjax.nn import itemmem, msp, prefixmem, prefixmem_io, rank
from sidjax.nn.decoder import Attention, Block, BlockStyle, Decoder, GatedMLP, RMSNorm, rope
from sidjax.nn.families import block_style, build_decoder
from sidjax.nn.losses import smoothed_nll
from sidjax.nn.model import SIDRecommender, count_params
from sidjax.nn.sasrec import SASRec

__all__ = [
    "Attention", "Block", "BlockStyle", "Decoder", "GatedMLP", "RMSNorm", "SASRec",
    "SIDRecommender", "block_style", "build_decoder", "count_params", "itemmem", "msp",
    "prefixmem", "prefixmem_io", "rank", "rope", "smoothed_nll",
]
