"""Atomic writes of the small text files a run folder holds (JSON records, reports)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def write_text(path: str | Path, text: str) -> Path:
    """Writes ``text`` to ``path`` through a temporary file in the same folder and a rename, so a
    reader sees the old file or the whole new one, never half of it. Returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, obj: Any, *, sort_keys: bool = False) -> Path:
    """Writes ``obj`` as indented JSON (one trailing newline) atomically (:func:`write_text`)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=sort_keys) + "\n")
