"""Data room: sources, synthetic catalog, splits and grain pipelines."""

from sidjax.data.types import InteractionData

__all__ = ["InteractionData"]
