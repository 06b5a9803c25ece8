"""What a training run shows: metrics to ``metrics.jsonl`` and TensorBoard event files, log lines
that carry the process index, and the human-readable state report printed before step 1.

TensorBoard needs the optional ``tensorboardX`` package (``pip install sidjax[tensorboard]``);
without it only ``metrics.jsonl`` is written.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax

from sidjax.console import console_log, process_prefix  # noqa: F401 - re-exported
from sidjax.files import write_text


def _tensorboard_writer(logdir: Path, purge_step: int | None = None):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(logdir=str(logdir), purge_step=purge_step)


def drop_rows_after(path: Path, step: int) -> int:
    """Removes the rows of the ``metrics.jsonl`` file ``path`` whose ``step`` is above ``step``
    (logged by a run that stopped before checkpointing them, so a resume from ``step`` logs them
    again), and a last line torn by a crash mid-write. Every other line is kept as it was. The
    file is rewritten atomically (a temporary file, then a rename) and only when something is
    dropped; returns the number of lines dropped (0 also when there is no file)."""
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    keep, dropped = [], 0
    for number, line in enumerate(lines, start=1):
        try:
            row = json.loads(line)
        except ValueError:
            if number == len(lines) and not line.endswith("\n"):  # torn by a crash mid-write
                dropped += 1
                continue
            row = None
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step:
            dropped += 1
            continue
        keep.append(line if line.endswith("\n") else line + "\n")
    if dropped:
        write_text(path, "".join(keep))
    return dropped


class MetricsWriter:
    """Appends metric rows to ``workdir/metrics.jsonl`` and, when ``tensorboard`` is on and
    tensorboardX is installed, writes them as scalars to event files in ``workdir``.

    ``resume_step``: the step a run starts from (its restored checkpoint; 0 for a fresh run).
    Rows of later steps already in the file, logged by an earlier session that stopped before
    checkpointing them, are dropped first (:func:`drop_rows_after`; ``dropped`` says how many),
    so the file never holds a step twice, and TensorBoard is told to hide that session's events
    after ``resume_step`` (tensorboardX ``purge_step``).

    Only process 0 writes (``enabled`` defaults to that); other processes' writers do nothing.
    """

    def __init__(self, workdir: Path, *, tensorboard: bool = True, enabled: bool | None = None,
                 resume_step: int | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.dropped = 0
        purge_step = None
        if self.enabled and resume_step is not None:
            self.dropped = drop_rows_after(self.path, resume_step)
            if resume_step > 0 or self.dropped:
                purge_step = resume_step + 1
        self.tb = _tensorboard_writer(Path(workdir), purge_step) \
            if (self.enabled and tensorboard) else None

    def write(self, row: dict) -> None:
        """Writes one row (it must hold ``step``); non-numeric values go to the JSON line only."""
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tb is not None:
            for key, value in row.items():
                if key != "step" and isinstance(value, int | float):
                    self.tb.add_scalar(key, value, row["step"])
            self.tb.flush()

    def close(self) -> None:
        """Closes the TensorBoard writer (the JSON file is closed after every row)."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None


def _megabytes(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_state_report(report: dict) -> str:
    """The state report of :func:`sidjax.train.loop.state_report` as a few log lines."""
    lines = [
        f"parameters: {report['params_total']:,} (decoder {report['params_decoder']:,}, "
        f"PrefixMem tables {report['params_prefixmem_tables']:,})",
        f"training FLOPs per token: {report['flops_per_token']:,}",
        f"per device: params {_megabytes(report['param_bytes_per_device'])}, optimizer state "
        f"{_megabytes(report['opt_state_bytes_per_device'])}",
        f"mesh: {report['mesh']}",
        "largest arrays:",
    ]
    lines += [f"  {name}: {where}" for name, where in report["largest_arrays"].items()]
    return "\n".join(lines)
