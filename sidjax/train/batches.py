"""The training loop's batches: consecutive steps of a dataset indexed by step, streamed by a
thread-prefetched grain iterator whose state goes into every checkpoint.

Batches stay a pure function of the step (``dataset[step]``): the iterator only computes them
ahead on worker threads. Its saved state records the step it started at and grain's own state,
so a resumed run continues the very same iterator position; a state that does not match the
restored step (or none, in checkpoints written before iterator states were saved) starts a fresh
iterator at that step, which yields the same batches.
"""

from __future__ import annotations

from collections.abc import Callable

import grain

from sidjax.data.pipeline import train_iterator


class BatchStream:
    """``next()`` returns the batch of the next step, starting at ``start``.

    A ``grain.MapDataset`` is read through :func:`sidjax.data.pipeline.train_iterator` with
    ``num_threads`` worker threads and ``prefetch`` batches ahead; any other object indexable by
    step is read synchronously with ``dataset[step]`` (and has no state).
    """

    def __init__(self, dataset, start: int, state: dict | None = None, *, num_threads: int = 1,
                 prefetch: int = 4, log: Callable[[str], None] | None = None):
        self.dataset, self.step = dataset, start
        self._iterator, self._base = None, start
        if not isinstance(dataset, grain.MapDataset):
            return
        options = {"num_threads": num_threads, "prefetch": prefetch if num_threads else 0}
        if state is not None and state.get("step") == start:
            self._base = int(state["start_step"])
            self._iterator = train_iterator(dataset, self._base, **options)
            self._iterator.set_state(state["iterator"])
            return
        if state is not None and log is not None:
            log(f"data iterator state is for step {state.get('step')}, not {start}: starting a "
                f"fresh iterator at step {start} (same batches)")
        self._iterator = train_iterator(dataset, start, **options)

    def next(self):
        """The batch of step ``self.step``; advances by one step."""
        batch = self.dataset[self.step] if self._iterator is None else next(self._iterator)
        self.step += 1
        return batch

    def state(self) -> dict | None:
        """JSON-able position after the batches taken so far (None without an iterator)."""
        if self._iterator is None:
            return None
        return {"step": self.step, "start_step": self._base, "iterator": self._iterator.get_state()}

    def close(self) -> None:
        """Stops the worker threads."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
