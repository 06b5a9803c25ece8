"""sidjax: generative recommendation with Semantic IDs and PrefixMem, in JAX/Flax."""

__version__ = "0.1.0"
