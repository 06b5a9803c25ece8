"""The in-memory form every data source returns."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np


@dataclasses.dataclass(frozen=True)
class InteractionData:
    """Per-user chronological item sequences plus an item table.

    Attributes:
      name: dataset name, e.g. ``"synthetic"`` or ``"movielens-100k"``.
      sequences: one int32 array per user, chronological, of 0-based item indices into ``item_ids``.
      user_ids: external user id per sequence (strings), same order as ``sequences``.
      item_ids: external item id per item index (strings).
      item_text: one text per item (title and other fields joined), or ``None`` when the source has
        no text.
      item_fields: optional raw text fields per item, e.g. ``{"title": [...], "brand": [...]}``.
      item_vectors: optional float32 ``[num_items, d]`` content vectors (the synthetic catalog has them).
      provenance: where the data came from: source paths, sha256 of inputs, counts, filters applied.
    """

    name: str
    sequences: list[np.ndarray]
    user_ids: list[str]
    item_ids: list[str]
    item_text: list[str] | None = None
    item_fields: dict[str, list[str]] | None = None
    item_vectors: np.ndarray | None = None
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def num_users(self) -> int:
        return len(self.sequences)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def num_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def counts(self) -> dict[str, int]:
        """Users, items and interactions, as reported in provenance and READMEs."""
        return {
            "users": self.num_users,
            "items": self.num_items,
            "interactions": self.num_interactions,
        }
