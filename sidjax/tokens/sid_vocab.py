"""The SID token space (:class:`SIDVocab`) and the text tokens around SID histories
(:class:`TextPrompt`): plain frozen dataclasses that the pipeline, the models, the loss and the
beam search share, with no grain and no JAX in them."""

from __future__ import annotations

import dataclasses

import numpy as np

PAD, BOS = 0, 1  # the ids of the default vocabulary (SIDVocab's defaults)


@dataclasses.dataclass(frozen=True)
class SIDVocab:
    """Token ids of a SID token space: ``text_size`` ids first, then each level's codes in their
    own range (level 1's codes, then level 2's, ...).

    The default (``text_size=2``: PAD 0, BOS 1, SID tokens from 2) is sidjax's own vocabulary. A
    vocabulary whose SID tokens follow a text vocabulary (a sentencepiece model,
    :mod:`sidjax.text.vocab`; an imported LLM, :mod:`sidjax.nn.hf_import`) sets ``text_size`` to
    that vocabulary's size and ``pad_id``/``bos_id`` to its ids. Ids below ``text_size`` are text
    (level 0): PrefixMem and the SID loss ignore them.
    """

    codes_per_level: tuple[int, ...]
    text_size: int = 2
    pad_id: int = PAD
    bos_id: int = BOS

    def __post_init__(self):
        object.__setattr__(self, "codes_per_level", tuple(int(k) for k in self.codes_per_level))
        if any(k < 1 for k in self.codes_per_level):
            raise ValueError(f"codes_per_level={self.codes_per_level}: every level needs >= 1 code")
        ids = {"pad_id": self.pad_id, "bos_id": self.bos_id}
        for name, value in ids.items():
            if not 0 <= value < self.text_size:
                raise ValueError(f"SIDVocab {name}={value} must be a text id in [0, text_size="
                                 f"{self.text_size})")
        if self.pad_id == self.bos_id:
            raise ValueError(f"SIDVocab pad_id and bos_id are both {self.pad_id}; padding must "
                             "have an id of its own (add a PAD token to the text vocabulary)")

    @property
    def num_levels(self) -> int:
        return len(self.codes_per_level)

    @property
    def level_offsets(self) -> np.ndarray:
        """First token id of each level (index 0 is level 1)."""
        return (self.text_size + np.cumsum((0,) + self.codes_per_level)[:-1]).astype(np.int32)

    @property
    def size(self) -> int:
        return self.text_size + int(sum(self.codes_per_level))

    def level_mask(self) -> np.ndarray:
        """Bool ``[L + 1, V]``: row l marks the token ids of level l (row 0: none)."""
        mask = np.zeros((self.num_levels + 1, self.size), bool)
        for level, (start, k) in enumerate(zip(self.level_offsets, self.codes_per_level), 1):
            mask[level, start:start + k] = True
        return mask

    def sid_tokens(self, codes) -> np.ndarray:
        """Token ids ``[..., L]`` of full SIDs ``codes [..., L]`` (one code per level)."""
        codes = np.asarray(codes)
        if codes.shape[-1:] != (self.num_levels,):
            raise ValueError(f"SID codes of shape {codes.shape}: expected [..., {self.num_levels}]")
        bad = (codes < 0) | (codes >= np.asarray(self.codes_per_level))
        if bad.any():
            raise ValueError(f"SID codes {codes[bad.any(axis=-1)][0].tolist()} out of range for "
                             f"codes_per_level={self.codes_per_level}")
        return (self.level_offsets + codes).astype(np.int32)


@dataclasses.dataclass(frozen=True, eq=False)
class TextPrompt:
    """Text tokens around SID histories (ids of the vocabulary's text range, level 0).

    ``instruction`` follows BOS (e.g. a fixed instruction); ``item_tokens[i]`` (e.g. the title
    tokens of item ``i``, at most ``max_item_tokens`` of them) follow the SID of item ``i`` at
    every history position, but not after the item the model predicts. An item's text comes after
    its SID so that the SID is never predicted from its own title (which the model cannot see at
    test time); the items after it see both. A training window ``a, b, c`` reads
    ``BOS instruction sid(a) title(a) sid(b) title(b) sid(c)`` and an evaluation history ``a, b``
    reads ``BOS instruction sid(a) title(a) sid(b) title(b)``, after which the model decodes the
    next SID: in both the predicted SID follows the previous item's title. PrefixMem sees level 0
    at text positions; the loss counts SID targets only.
    """

    instruction: tuple[int, ...] = ()
    item_tokens: tuple[tuple[int, ...], ...] | None = None
    max_item_tokens: int = 0

    def __post_init__(self):
        object.__setattr__(self, "instruction", tuple(int(t) for t in self.instruction))
        if self.item_tokens is not None:
            if self.max_item_tokens < 1:
                raise ValueError("TextPrompt: item_tokens needs max_item_tokens >= 1")
            object.__setattr__(self, "item_tokens", tuple(
                tuple(int(t) for t in toks[:self.max_item_tokens]) for toks in self.item_tokens))

    def item_text(self, item: int) -> tuple[int, ...]:
        """The text tokens after item ``item``'s SID (empty without ``item_tokens``)."""
        return () if self.item_tokens is None else self.item_tokens[item]

    def check(self, vocab: SIDVocab, num_items: int | None = None) -> None:
        """Raises if a token is not a text id of ``vocab`` or items lack text tokens."""
        tokens = list(self.instruction) + [t for toks in self.item_tokens or () for t in toks]
        bad = [t for t in tokens if not 0 <= t < vocab.text_size or t == vocab.pad_id]
        if bad:
            raise ValueError(f"prompt token ids {bad[:5]} are not text ids of the vocabulary "
                             f"(0..{vocab.text_size - 1}, not PAD {vocab.pad_id})")
        if num_items is not None and self.item_tokens is not None and \
                len(self.item_tokens) < num_items:
            raise ValueError(f"TextPrompt has text tokens for {len(self.item_tokens)} items, the "
                             f"catalog has {num_items}")
