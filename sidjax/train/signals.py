"""Preemption and Ctrl-C: SIGTERM and SIGINT set a flag that the training loop checks at every step
boundary, where it saves a checkpoint and stops (:class:`Preempted`, :class:`Interrupted`).

With several JAX processes the flag of one process is not enough (the others would wait forever
in the next collective): the loop stops at the first agreement boundary where
:func:`any_process` says some process has it set, and every process saves and stops there."""

from __future__ import annotations

import contextlib
import signal
import threading


class Preempted(SystemExit):
    """Raised by the training loop after it saved a checkpoint on SIGTERM (exit status 0)."""

    def __init__(self, step: int, code: int = 0):
        super().__init__(code)
        self.step = step

    def __str__(self) -> str:
        return f"preempted (SIGTERM): checkpoint saved at step {self.step}"


class Interrupted(Preempted):
    """Raised by the training loop after it saved a checkpoint on Ctrl-C (SIGINT; exit status 130,
    the shell's code for a SIGINT death)."""

    def __init__(self, step: int):
        super().__init__(step, 130)

    def __str__(self) -> str:
        return f"interrupted at step {self.step}; checkpoint saved"


class StopFlag:
    """Set by SIGTERM or a first SIGINT (or by hand with :meth:`set`); read with :meth:`is_set`.

    :attr:`signum` is the signal that set it (None when set by hand or not set).
    """

    def __init__(self):
        self._event = threading.Event()
        self.signum: int | None = None

    def set(self, signum: int | None = None, _frame=None) -> None:
        """Requests a stop at the next step boundary (signal-handler compatible)."""
        if self.signum is None and signum is not None:
            self.signum = signum
        self._event.set()

    def on_sigint(self, signum: int, frame) -> None:
        """SIGINT handler: the first Ctrl-C requests a stop at the next step boundary (with a
        checkpoint); a second one, while that is pending, aborts at once (KeyboardInterrupt)."""
        if self._event.is_set() and self.signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.set(signum, frame)

    def is_set(self) -> bool:
        """Whether a stop was requested."""
        return self._event.is_set()

    def stopped(self, step: int) -> Preempted:
        """The exception to raise after the checkpoint of ``step`` was saved on this request:
        :class:`Interrupted` after Ctrl-C, else :class:`Preempted`."""
        return Interrupted(step) if self.signum == signal.SIGINT else Preempted(step)


@contextlib.contextmanager
def stop_flag():
    """A :class:`StopFlag` set by SIGTERM or Ctrl-C (SIGINT) while the block runs; the previous
    handlers come back after.

    Outside the main thread (where Python cannot install handlers) the flag is never set by a
    signal.
    """
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous_term = signal.signal(signal.SIGTERM, flag.set)
    try:
        previous_int = signal.signal(signal.SIGINT, flag.on_sigint)
    except BaseException:
        signal.signal(signal.SIGTERM, previous_term)
        raise
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous_int)
        signal.signal(signal.SIGTERM, previous_term)


def any_process(flag: bool, gather=None) -> bool:
    """Whether ``flag`` is set on any JAX process; ``flag`` itself with one process.

    A collective: with several processes every process must call it at the same step.
    ``gather`` (default ``jax.experimental.multihost_utils.process_allgather``) maps this
    process's int32 scalar to the array of every process's value.
    """
    import jax
    import numpy as np

    if gather is None:
        if jax.process_count() == 1:
            return bool(flag)
        from jax.experimental import multihost_utils

        gather = multihost_utils.process_allgather
    return bool(np.max(np.asarray(gather(np.asarray(flag, np.int32)))))
