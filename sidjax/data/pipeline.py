"""SID token sequences and the grain pipelines that stream them.

A history of items becomes ``BOS, s(1)_1..s(1)_L, s(2)_1..s(2)_L, ...``: L tokens per item, one per SID
level, left-padded with PAD to a fixed length. Every position also carries its raw SID code and its
level (0 for BOS and PAD), which is what PrefixMem keys on. Training batches are indexed by step
(``dataset[step]``), so resuming at a step reproduces the exact same batches.
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

PAD, BOS = 0, 1


@dataclasses.dataclass(frozen=True)
class SIDVocab:
    """Token ids of SID codes: PAD, BOS, then each level's codes in their own range."""

    codes_per_level: tuple[int, ...]

    @property
    def num_levels(self) -> int:
        return len(self.codes_per_level)

    @property
    def level_offsets(self) -> np.ndarray:
        """First token id of each level (index 0 is level 1)."""
        return 2 + np.concatenate([[0], np.cumsum(self.codes_per_level)[:-1]]).astype(np.int32)

    @property
    def size(self) -> int:
        return 2 + int(sum(self.codes_per_level))

    def level_mask(self) -> np.ndarray:
        """Bool ``[L + 1, V]``: row l marks the token ids of level l (row 0: none)."""
        mask = np.zeros((self.num_levels + 1, self.size), bool)
        for level, (start, k) in enumerate(zip(self.level_offsets, self.codes_per_level), 1):
            mask[level, start:start + k] = True
        return mask


def sequence_length(num_items: int, num_levels: int) -> int:
    """Length of an encoded history of ``num_items`` items (BOS included)."""
    return 1 + num_items * num_levels


def encode_items(items: np.ndarray, sid_codes: np.ndarray, vocab: SIDVocab,
                 length: int) -> dict[str, np.ndarray]:
    """Encodes an item history as left-padded ``tokens``, ``codes``, ``levels`` of ``length``.

    Keeps the most recent items that fit after BOS.
    """
    levels_n = vocab.num_levels
    keep = (length - 1) // levels_n
    items = np.asarray(items, np.int64)[-keep:] if keep else np.zeros(0, np.int64)
    codes = sid_codes[items].reshape(-1)
    levels = np.tile(np.arange(1, levels_n + 1, dtype=np.int32), len(items))
    tokens = vocab.level_offsets[levels - 1] + codes
    n = 1 + len(codes)
    out = {
        "tokens": np.full(length, PAD, np.int32),
        "codes": np.zeros(length, np.int32),
        "levels": np.zeros(length, np.int32),
    }
    out["tokens"][length - n] = BOS
    out["tokens"][length - n + 1:] = tokens
    out["codes"][length - n + 1:] = codes
    out["levels"][length - n + 1:] = levels
    return out


def training_example(sequence: np.ndarray, sid_codes: np.ndarray, vocab: SIDVocab,
                     max_history: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One next-token example: a window of at most ``max_history`` items ending at a random item.

    Returns ``tokens/codes/levels`` (inputs) and ``targets`` (next token; PAD where there is none),
    each of length ``max_history * L``.
    """
    sequence = np.asarray(sequence)
    end = len(sequence) if len(sequence) <= max_history else int(
        rng.integers(max_history, len(sequence) + 1))
    full = encode_items(sequence[max(0, end - max_history):end], sid_codes, vocab,
                        sequence_length(max_history, vocab.num_levels))
    example = {k: v[:-1] for k, v in full.items()}
    example["targets"] = full["tokens"][1:]
    return example


def train_dataset(train_sequences: list[np.ndarray], sid_codes: np.ndarray, vocab: SIDVocab, *,
                  max_history: int, batch_size: int, seed: int) -> grain.MapDataset:
    """An infinite grain ``MapDataset`` of training batches; element ``i`` is the batch of step i.

    Users are shuffled by seed, reshuffled every epoch; window ends are drawn from
    ``(seed, example index)``, so every batch is a pure function of its step.
    """
    usable = [s for s in train_sequences if len(s) > 0]
    if len(usable) < batch_size:
        raise ValueError(f"only {len(usable)} training sequences for batch_size {batch_size}; "
                         "lower train.batch_size")

    def make(index, user):
        rng = np.random.default_rng((seed, index))
        return training_example(usable[user], sid_codes, vocab, max_history, rng)

    return (grain.MapDataset.range(len(usable)).shuffle(seed=seed).repeat(None)
            .map_with_index(make).batch(batch_size, drop_remainder=True))


def eval_arrays(histories: list[np.ndarray], sid_codes: np.ndarray, vocab: SIDVocab,
                max_history: int) -> dict[str, np.ndarray]:
    """Encodes evaluation histories into stacked ``[U, 1 + max_history * L]`` arrays."""
    length = sequence_length(max_history, vocab.num_levels)
    encoded = [encode_items(h, sid_codes, vocab, length) for h in histories]
    return {k: np.stack([e[k] for e in encoded]) for k in ("tokens", "codes", "levels")}
