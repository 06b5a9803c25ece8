"""Token spaces: SID tokens (:class:`SIDVocab`), text around them (:class:`TextPrompt`) and the
sentencepiece text + SID vocabulary (:class:`TextSIDVocab`, needs the ``text`` extra)."""

from sidjax.tokens.sid_vocab import BOS, PAD, SIDVocab, TextPrompt
from sidjax.tokens.text_vocab import TextSIDVocab, load_or_train, run_prompt

__all__ = ["BOS", "PAD", "SIDVocab", "TextPrompt", "TextSIDVocab", "load_or_train", "run_prompt"]
