"""Preemption: SIGTERM sets a flag that the training loop checks at every step boundary."""

from __future__ import annotations

import contextlib
import signal
import threading


class Preempted(SystemExit):
    """Raised by the training loop after it saved a checkpoint on SIGTERM (exit status 0)."""

    def __init__(self, step: int):
        super().__init__(0)
        self.step = step

    def __str__(self) -> str:
        return f"preempted (SIGTERM): checkpoint saved at step {self.step}; rerun to resume"


class StopFlag:
    """Set by SIGTERM (or by hand with :meth:`set`); read with :meth:`is_set`."""

    def __init__(self):
        self._event = threading.Event()

    def set(self, *_args) -> None:
        """Requests a stop at the next step boundary (signal-handler compatible)."""
        self._event.set()

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()


@contextlib.contextmanager
def sigterm_flag():
    """A :class:`StopFlag` set by SIGTERM while the block runs; the old handler comes back after.

    Outside the main thread (where Python cannot install handlers) the flag is never set by a
    signal.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGTERM, flag.set)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGTERM, previous)
