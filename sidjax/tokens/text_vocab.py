"""A text + SID vocabulary: a sentencepiece model trained on item text, then SID tokens.

Token ids ``0 .. n-1`` are the sentencepiece pieces (PAD 0, BOS 1, EOS 2, UNK 3), ids from ``n``
on are the SID tokens ``<s{level}_{code}>`` (level 1-based), level by level: exactly the layout
of ``SIDVocab(codes_per_level, text_size=n)``, so the model, loss, pipeline and beam search work
on it unchanged. Sequences may mix text and SIDs::

    vocab = TextSIDVocab.train(item_titles, codes_per_level=(32, 32, 32, 4), vocab_size=2000)
    ids = vocab.encode("Trail running shoe <s1_3><s2_17><s3_5><s4_0>")
    vocab.decode(ids)  # 'Trail running shoe <s1_3><s2_17><s3_5><s4_0>'
    prompt = vocab.prompt("Recommend the next item:", item_texts=titles, max_item_tokens=8)

The canonical text form has one space between a text run and a SID run and none between SID
tokens; text runs come back as sentencepiece normalises them (NFKC, collapsed whitespace).
``save``/``load`` write one JSON file (the sentencepiece model inline) atomically, so it can
live in a run folder next to ``sids.npz`` (:func:`load_or_train`).
"""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from sidjax.files import write_text
from sidjax.tokens.sid_vocab import SIDVocab, TextPrompt

SID_TOKEN = re.compile(r"<s(\d+)_(\d+)>")
FORMAT = "sidjax-text-sid-vocab"
SPECIAL_IDS = {"pad_id": 0, "bos_id": 1, "eos_id": 2, "unk_id": 3}


class TextSIDVocab:
    """A sentencepiece text vocabulary followed by the SID tokens of ``codes_per_level``."""

    def __init__(self, model_proto: bytes, codes_per_level: Sequence[int]):
        import sentencepiece as spm

        self.model_proto = bytes(model_proto)
        self.processor = spm.SentencePieceProcessor(model_proto=self.model_proto)
        sp = self.processor
        if sp.pad_id() < 0 or sp.bos_id() < 0:
            raise ValueError("the sentencepiece model needs PAD and BOS pieces (train it with "
                             "TextSIDVocab.train, or with pad_id/bos_id set)")
        self.sids = SIDVocab(tuple(codes_per_level), text_size=sp.get_piece_size(),
                             pad_id=sp.pad_id(), bos_id=sp.bos_id())

    @classmethod
    def train(cls, texts: Iterable[str], codes_per_level: Sequence[int], *,
              vocab_size: int = 2000, model_type: str = "unigram") -> TextSIDVocab:
        """Trains the text part on ``texts`` (e.g. item titles and categories), one thread, in
        input order (same texts, same model). ``vocab_size`` is an upper bound: a small corpus
        gets fewer pieces."""
        import sentencepiece as spm

        texts = [t.strip() for t in texts if t and t.strip()]
        if not texts:
            raise ValueError("no item text to train the text vocabulary on")
        bad = next((t for t in texts if SID_TOKEN.search(t)), None)
        if bad is not None:
            raise ValueError(f"item text {bad[:60]!r} contains a SID token pattern <sL_C>; "
                             "remove it from the training texts")
        buffer = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts), model_writer=buffer, vocab_size=vocab_size,
            model_type=model_type, hard_vocab_limit=False, character_coverage=1.0,
            num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
            minloglevel=2, **SPECIAL_IDS)
        return cls(buffer.getvalue(), codes_per_level)

    @property
    def size(self) -> int:
        """Number of token ids (text pieces + SID tokens)."""
        return self.sids.size

    @property
    def text_size(self) -> int:
        """Number of text ids (SID tokens start here)."""
        return self.sids.text_size

    def encode_text(self, text: str) -> list[int]:
        """Token ids of plain text (no SID tokens)."""
        return list(self.processor.encode(text))

    def sid_token(self, level: int, code: int) -> int:
        """The id of ``<s{level}_{code}>`` (``level`` 1-based)."""
        if not 1 <= level <= self.sids.num_levels or not \
                0 <= code < self.sids.codes_per_level[level - 1]:
            raise ValueError(f"<s{level}_{code}> is not a SID token of codes_per_level="
                             f"{self.sids.codes_per_level} (levels 1..{self.sids.num_levels})")
        return int(self.sids.level_offsets[level - 1] + code)

    def encode(self, text: str) -> np.ndarray:
        """int32 ids of a string mixing text and ``<s{level}_{code}>`` tokens."""
        ids, at = [], 0
        for match in SID_TOKEN.finditer(text):
            ids += self.encode_text(text[at:match.start()].strip())
            ids.append(self.sid_token(int(match.group(1)), int(match.group(2))))
            at = match.end()
        ids += self.encode_text(text[at:].strip())
        return np.asarray(ids, np.int32)

    def levels(self, ids) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, levels)`` of each id: its SID code and 1-based level, 0 and 0 for text (what
        the model's ``codes``/``levels`` inputs hold)."""
        ids = np.asarray(ids, np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"token ids must be in [0, {self.size}), got {ids.min()}..{ids.max()}")
        offsets = self.sids.level_offsets
        levels = np.where(ids >= self.text_size, np.searchsorted(offsets, ids, side="right"), 0)
        codes = np.where(levels > 0, ids - offsets[np.maximum(levels - 1, 0)], 0)
        return codes.astype(np.int32), levels.astype(np.int32)

    def decode(self, ids) -> str:
        """The canonical string of ``ids``: text runs decoded by sentencepiece (PAD, BOS and EOS
        dropped), SID tokens as ``<s{level}_{code}>``."""
        codes, levels = self.levels(ids)
        segments, run = [], []  # (is_sid, text)
        for token, code, level in zip(np.asarray(ids).tolist(), codes, levels):
            if level == 0:
                run.append(int(token))
                continue
            if run:
                segments.append((False, self.processor.decode(run)))
                run = []
            segments.append((True, f"<s{level}_{code}>"))
        if run:
            segments.append((False, self.processor.decode(run)))
        segments = [s for s in segments if s[1]]
        out = []
        for i, (is_sid, text) in enumerate(segments):
            if i and not (is_sid and segments[i - 1][0]):
                out.append(" ")
            out.append(text)
        return "".join(out)

    def prompt(self, instruction: str = "", item_texts: Sequence[str] | None = None,
               max_item_tokens: int = 0) -> TextPrompt:
        """A :class:`~sidjax.data.pipeline.TextPrompt`: ``instruction``'s tokens after BOS and,
        with ``item_texts`` (one per catalog item, e.g. titles), at most ``max_item_tokens``
        tokens of each history item's text after its SID."""
        item_tokens = None
        if item_texts is not None:
            item_tokens = tuple(tuple(self.encode_text(t or "")[:max_item_tokens])
                                for t in item_texts)
        return TextPrompt(tuple(self.encode_text(instruction)) if instruction else (),
                          item_tokens, max_item_tokens if item_texts is not None else 0)

    def save(self, path: str | Path) -> Path:
        """Writes the vocabulary as one JSON file (temporary name, then renamed)."""
        path = Path(path)
        record = {"format": FORMAT, "version": 1,
                  "codes_per_level": list(self.sids.codes_per_level),
                  "text_size": self.text_size,
                  "sentencepiece_model": base64.b64encode(self.model_proto).decode("ascii")}
        return write_text(path, json.dumps(record, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> TextSIDVocab:
        """Reads a file written by :meth:`save`; raises naming the file and the problem."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: text vocabulary not found")
        try:
            record = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            raise ValueError(f"{path}: not a sidjax text vocabulary (expected format {FORMAT!r})")
        for key in ("codes_per_level", "sentencepiece_model"):
            if key not in record:
                raise ValueError(f"{path}: missing key {key!r}; re-create it with "
                                 "TextSIDVocab.save")
        vocab = cls(base64.b64decode(record["sentencepiece_model"]), record["codes_per_level"])
        if record.get("text_size", vocab.text_size) != vocab.text_size:
            raise ValueError(f"{path}: text_size {record['text_size']} does not match its "
                             f"sentencepiece model ({vocab.text_size} pieces)")
        return vocab


def load_or_train(path: str | Path, texts: Iterable[str], codes_per_level: Sequence[int], *,
                  vocab_size: int = 2000, log=print) -> TextSIDVocab:
    """The vocabulary at ``path`` (e.g. ``workdir/text_vocab.json``) when it exists and matches
    ``codes_per_level``, else one trained on ``texts`` and saved there."""
    path = Path(path)
    if path.exists():
        vocab = TextSIDVocab.load(path)
        if vocab.sids.codes_per_level != tuple(codes_per_level):
            raise ValueError(f"{path} is for SID levels {vocab.sids.codes_per_level}, not "
                             f"{tuple(codes_per_level)}; delete it or use a new run folder")
        log(f"reusing text vocabulary {path} ({vocab.text_size} text pieces)")
        return vocab
    vocab = TextSIDVocab.train(texts, codes_per_level, vocab_size=vocab_size)
    vocab.save(path)
    log(f"trained a text vocabulary of {vocab.text_size} pieces -> {path}")
    return vocab


def run_prompt(data_cfg, item_text: Sequence[str] | None, codes_per_level: Sequence[int],
               workdir: str | Path | None = None, log=print) -> tuple[SIDVocab, TextPrompt] | None:
    """The token space and prompt of a run's ``data.text_prompt`` / ``data.item_text_tokens``
    (``None`` when both are off): the vocabulary of ``workdir/text_vocab.json``, trained on the
    item text (and saved there) when missing."""
    if not (data_cfg.text_prompt or data_cfg.item_text_tokens):
        return None
    if item_text is None or not any(t and t.strip() for t in item_text):
        raise ValueError("data.text_prompt / data.item_text_tokens need item text, and "
                         f"data.source={data_cfg.source!r} has none; set both to their defaults")
    texts = [t or "" for t in item_text]
    if workdir is None:
        vocab = TextSIDVocab.train(texts, codes_per_level, vocab_size=data_cfg.text_vocab_size)
    else:
        vocab = load_or_train(Path(workdir) / "text_vocab.json", texts, codes_per_level,
                              vocab_size=data_cfg.text_vocab_size, log=log)
    prompt = vocab.prompt(data_cfg.text_prompt, texts if data_cfg.item_text_tokens else None,
                          data_cfg.item_text_tokens)
    return vocab.sids, prompt
