"""SID token sequences and the grain pipelines that stream them.

A history of items becomes ``BOS, s(1)_1..s(1)_L, s(2)_1..s(2)_L, ...``: L tokens per item, one per SID
level, left-padded with PAD to a fixed length (optionally with text tokens: :class:`TextPrompt`).
Every position also carries its raw SID code and its level (0 for BOS, PAD and text), which is
what PrefixMem keys on. Token ids come from a :class:`SIDVocab`. Training batches are indexed by step
(``dataset[step]``), so resuming at a step reproduces the exact same batches.

:func:`train_dataset` streams from a list of sequences or a random-access source such as the
ArrayRecord file of a prepared folder (:func:`sidjax.data.prepare.train_source`); it shards the
example stream across processes and can pack several users into one row (``segment_ids`` and
``positions``; see its docstring for the model-side contract). :func:`train_iterator` wraps it in a
thread-prefetched grain iterator whose state is checkpointable.
"""

from __future__ import annotations

import grain
import jax
import numpy as np

from sidjax.tokens import BOS, PAD, SIDVocab, TextPrompt  # noqa: F401  (re-exported)


def sequence_length(num_items: int, num_levels: int, prompt: TextPrompt | None = None) -> int:
    """Length of an encoded history of ``num_items`` items (BOS and, with ``prompt``, at most
    its instruction and item text tokens included)."""
    if prompt is None:
        return 1 + num_items * num_levels
    per_item = num_levels + (prompt.max_item_tokens if prompt.item_tokens is not None else 0)
    return 1 + len(prompt.instruction) + num_items * per_item


def _encode_with_prompt(items: np.ndarray, sid_codes: np.ndarray, vocab: SIDVocab, length: int,
                        prompt: TextPrompt, bare_last: bool) -> dict[str, np.ndarray]:
    """:func:`encode_items` with text tokens (see :class:`TextPrompt`)."""
    levels_n = vocab.num_levels
    budget = length - 1 - len(prompt.instruction)
    if budget < 0:
        raise ValueError(f"length {length} cannot hold BOS and the {len(prompt.instruction)} "
                         "instruction tokens")
    pieces = []  # (tokens, codes, levels) per item, most recent first
    for k, item in enumerate(items[::-1]):
        text = () if (bare_last and k == 0) else prompt.item_text(int(item))
        cost = len(text) + levels_n
        if cost > budget:
            break
        budget -= cost
        codes = np.asarray(sid_codes[item], np.int32)
        text_zeros = np.zeros(len(text), np.int32)
        pieces.append((np.concatenate([vocab.sid_tokens(codes), np.asarray(text, np.int32)]),
                       np.concatenate([codes, text_zeros]),
                       np.concatenate([np.arange(1, levels_n + 1, dtype=np.int32), text_zeros])))
    head = np.asarray((vocab.bos_id,) + prompt.instruction, np.int32)
    parts = [head] + [p[0] for p in pieces[::-1]]
    tokens = np.concatenate(parts)
    out = {"tokens": np.full(length, vocab.pad_id, np.int32),
           "codes": np.zeros(length, np.int32), "levels": np.zeros(length, np.int32)}
    out["tokens"][length - len(tokens):] = tokens
    for key, col in (("codes", 1), ("levels", 2)):
        values = np.concatenate([np.zeros(len(head), np.int32)] + [p[col] for p in pieces[::-1]])
        out[key][length - len(values):] = values
    return out


def encode_items(items: np.ndarray, sid_codes: np.ndarray, vocab: SIDVocab, length: int,
                 prompt: TextPrompt | None = None, *,
                 bare_last: bool = False) -> dict[str, np.ndarray]:
    """Encodes an item history as left-padded ``tokens``, ``codes``, ``levels`` of ``length``.

    Keeps the most recent items that fit after BOS (and the prompt's instruction). With
    ``prompt``, each item's text tokens follow its SID, except the last item's when
    ``bare_last`` (a training window's predicted item; see :class:`TextPrompt`).
    """
    if prompt is not None:
        return _encode_with_prompt(np.asarray(items, np.int64), sid_codes, vocab, length, prompt,
                                   bare_last)
    levels_n = vocab.num_levels
    keep = (length - 1) // levels_n
    items = np.asarray(items, np.int64)[-keep:] if keep else np.zeros(0, np.int64)
    codes = sid_codes[items].reshape(-1)
    levels = np.tile(np.arange(1, levels_n + 1, dtype=np.int32), len(items))
    tokens = vocab.level_offsets[levels - 1] + codes
    n = 1 + len(codes)
    out = {
        "tokens": np.full(length, vocab.pad_id, np.int32),
        "codes": np.zeros(length, np.int32),
        "levels": np.zeros(length, np.int32),
    }
    out["tokens"][length - n] = vocab.bos_id
    out["tokens"][length - n + 1:] = tokens
    out["codes"][length - n + 1:] = codes
    out["levels"][length - n + 1:] = levels
    return out


def _window(sequence: np.ndarray, max_history: int, rng: np.random.Generator) -> np.ndarray:
    """The at most ``max_history`` items ending at a random end (the last item if it fits)."""
    end = len(sequence) if len(sequence) <= max_history else int(
        rng.integers(max_history, len(sequence) + 1))
    return np.asarray(sequence)[max(0, end - max_history):end]


def training_example(sequence: np.ndarray, sid_codes: np.ndarray, vocab: SIDVocab,
                     max_history: int, rng: np.random.Generator,
                     prompt: TextPrompt | None = None) -> dict[str, np.ndarray]:
    """One next-token example: a window of at most ``max_history + 1`` items ending at a random
    item, so that the last item's SID is predicted from up to ``max_history`` items of history,
    as at evaluation (:func:`eval_arrays`).

    Returns ``tokens/codes/levels`` (inputs) and ``targets`` (next token; PAD where there is none),
    each of length :func:`training_length` ``(max_history, L, prompt)``.
    """
    full = encode_items(_window(sequence, max_history + 1, rng), sid_codes, vocab,
                        sequence_length(max_history + 1, vocab.num_levels, prompt), prompt,
                        bare_last=True)
    example = {k: v[:-1] for k, v in full.items()}
    example["targets"] = full["tokens"][1:]
    return example


def training_length(max_history: int, num_levels: int, prompt: TextPrompt | None = None) -> int:
    """Positions of a (padded, unpacked) training row: ``max_history`` history items plus the SID
    of the predicted item, less its last token (which is only a target).

    It covers the positions evaluation uses: the ``sequence_length(max_history, L, prompt)``
    history positions and the ``L - 1`` generated tokens fed back while decoding (with a prompt,
    plus the unused text slot of the predicted item, left as padding)."""
    if prompt is None:
        return (max_history + 1) * num_levels
    return sequence_length(max_history + 1, num_levels, prompt) - 1


def encode_item_ids(items: np.ndarray, length: int) -> np.ndarray:
    """Item indices as left-padded item tokens ``[length]``: item i is token i + 1, PAD is 0.

    Keeps the most recent ``length`` items (the input of ID-based models such as SASRec).
    """
    items = np.asarray(items, np.int64)[-length:] if length else np.zeros(0, np.int64)
    out = np.zeros(length, np.int32)
    out[length - len(items):] = items + 1
    return out


def item_training_example(sequence: np.ndarray, max_history: int,
                          rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One next-item example for an ID-based model: a window of at most ``max_history + 1`` items
    ending at a random item; ``items`` (inputs) and ``targets`` (next item token, PAD where none),
    each left-padded to ``max_history``."""
    full = encode_item_ids(_window(sequence, max_history + 1, rng), max_history + 1)
    return {"items": full[:-1], "targets": full[1:]}


def decode_int32(record: bytes) -> np.ndarray:
    """An ArrayRecord record of little-endian int32 item indices (``sidjax prepare``) as an array."""
    return np.frombuffer(record, dtype="<i4").astype(np.int32)


def _shard(shard_index: int | None, shard_count: int | None) -> tuple[int, int]:
    index = jax.process_index() if shard_index is None else shard_index
    count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= index < count:
        raise ValueError(f"shard_index={index} must be in [0, shard_count={count})")
    return index, count


def packed_row(windows: list[np.ndarray], sid_codes: np.ndarray, vocab: SIDVocab,
               length: int) -> dict[str, np.ndarray]:
    """Packs item windows into one right-padded row of ``length`` positions.

    Each window becomes a segment ``BOS, s(1)_1..s(m)_L`` (inputs) with targets shifted by one
    inside the segment. Segments are laid out in order; one that does not fit keeps its most recent
    items that do (at least one item, else it and all later ones are left out). Returns
    ``tokens/codes/levels/targets`` plus ``segment_ids`` (1, 2, ... per segment, 0 on padding) and
    ``positions`` (0-based position inside the segment, 0 on padding), all int32 ``[length]``.
    """
    levels_n = vocab.num_levels
    out = {k: np.zeros(length, np.int32)
           for k in ("tokens", "codes", "levels", "targets", "segment_ids", "positions")}
    out["tokens"][:] = out["targets"][:] = vocab.pad_id
    at = 0
    for segment, window in enumerate(windows, start=1):
        fit = (length - at) // levels_n
        if fit < 1:
            break
        items = np.asarray(window, np.int64)[-fit:]
        full = encode_items(items, sid_codes, vocab, sequence_length(len(items), levels_n))
        n = len(full["tokens"]) - 1
        span = slice(at, at + n)
        out["tokens"][span] = full["tokens"][:-1]
        out["codes"][span] = full["codes"][:-1]
        out["levels"][span] = full["levels"][:-1]
        out["targets"][span] = full["tokens"][1:]
        out["segment_ids"][span] = segment
        out["positions"][span] = np.arange(n)
        at += n
    return out


def train_dataset(train_sequences, sid_codes: np.ndarray, vocab: SIDVocab, *,
                  max_history: int, batch_size: int, seed: int,
                  shard_index: int | None = None, shard_count: int | None = None,
                  pack_segments: int = 0, pack_length: int | None = None,
                  item_ids: bool = False, prompt: TextPrompt | None = None) -> grain.MapDataset:
    """An infinite grain ``MapDataset`` of training batches; element ``i`` is the batch of step i.

    Users are shuffled by seed, reshuffled every epoch; window ends are drawn from
    ``(seed, example index)``, so every batch is a pure function of its step.

    ``train_sequences`` is a list of int arrays or any random-access source of them (e.g.
    :func:`sidjax.data.prepare.train_source`; a non-list source is assumed to hold no empty
    sequence). Sharding: the global example stream is dealt round-robin over ``shard_count``
    processes (default ``jax.process_count()``); process ``shard_index`` (default
    ``jax.process_index()``) gets global examples ``shard_index, shard_index + shard_count, ...``,
    and ``batch_size`` is the per-process batch. So step ``s`` of shard ``k``, row ``r`` is row
    ``r * shard_count + k`` of step ``s`` of the unsharded stream with batch
    ``batch_size * shard_count``: the processes read disjoint examples that together form the
    global batch.

    Packing (``pack_segments > 0``): each row holds ``pack_segments`` consecutive examples of the
    stream as segments (see :func:`packed_row`), ``pack_length`` positions long (default
    :func:`training_length`: one full window), right-padded, with ``segment_ids`` and
    ``positions``. Contract for the model: attention must stay inside a segment
    (``segment_ids[q] == segment_ids[k] != 0`` and causal), positions (RoPE) restart at 0 with
    each segment's BOS, and the loss must ignore ``targets == PAD`` (padding and nothing else:
    every segment's last input predicts its last code).

    ``item_ids=True`` streams :func:`item_training_example` rows (``items``/``targets`` of item
    tokens, for ID-based baselines) instead of SID tokens; ``sid_codes``/``vocab`` are then unused.

    ``prompt`` (:class:`TextPrompt`) adds text tokens: an instruction after BOS and/or each
    history item's text after its SID (rows are then :func:`training_length` long). Not with
    packing or ``item_ids``.
    """
    if item_ids and pack_segments:
        raise ValueError("packing (data.pack_segments) is for SID sequences; set it to 0 for an "
                         "item-ID model")
    if prompt is not None and (pack_segments or item_ids):
        raise ValueError("text prompt tokens work with padded SID rows only: set "
                         "data.pack_segments=0 (and use a SID model)")
    if prompt is not None:
        prompt.check(vocab, len(sid_codes))
    if isinstance(train_sequences, list):
        usable = [s for s in train_sequences if len(s) > 0]
    else:
        usable = train_sequences
    shard_index, shard_count = _shard(shard_index, shard_count)
    per_row = max(1, pack_segments)
    needed = batch_size * shard_count * per_row
    if len(usable) < needed:
        raise ValueError(f"only {len(usable)} training sequences for batch_size {batch_size} x "
                         f"{shard_count} process(es) x {per_row} segment(s) per row; "
                         "lower train.batch_size")

    def make(index, user):
        rng = np.random.default_rng((seed, index))
        if item_ids:
            return item_training_example(usable[user], max_history, rng)
        if pack_segments:
            return _window(usable[user], max_history + 1, rng)
        return training_example(usable[user], sid_codes, vocab, max_history, rng, prompt)

    ds = grain.MapDataset.range(len(usable)).shuffle(seed=seed).repeat(None).map_with_index(make)
    if pack_segments:
        length = pack_length or training_length(max_history, vocab.num_levels)
        ds = ds.batch(pack_segments, batch_fn=list).map(
            lambda windows: packed_row(windows, sid_codes, vocab, length))
    if shard_count > 1:
        ds = ds[shard_index::shard_count]
    return ds.batch(batch_size, drop_remainder=True)


def train_iterator(dataset: grain.MapDataset, start_step: int = 0, *, num_threads: int = 2,
                   prefetch: int = 8) -> grain.DatasetIterator:
    """Iterator over ``dataset[start_step:]`` prefetched by ``num_threads`` worker threads.

    Its ``get_state()`` / ``set_state()`` is grain's checkpointable state (a JSON-able dict);
    restoring it, or starting a fresh iterator at the saved step, yields the same batches.
    """
    options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch)
    return iter(dataset[start_step:].to_iter_dataset(options))


def eval_arrays(histories: list[np.ndarray], sid_codes: np.ndarray, vocab: SIDVocab,
                max_history: int, prompt: TextPrompt | None = None) -> dict[str, np.ndarray]:
    """Encodes evaluation histories into stacked ``[U, sequence_length(max_history, L, prompt)]``
    arrays (``[U, 1 + max_history * L]`` without a prompt)."""
    length = sequence_length(max_history, vocab.num_levels, prompt)
    # at most max_history items, as in training (with a prompt, short item texts would leave room)
    encoded = [encode_items(np.asarray(h)[-max_history:], sid_codes, vocab, length, prompt)
               for h in histories]
    return {k: np.stack([e[k] for e in encoded]) for k in ("tokens", "codes", "levels")}
