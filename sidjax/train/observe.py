"""What a training run shows: metrics to ``metrics.jsonl`` and TensorBoard event files, log lines
that carry the process index, and the human-readable state report printed before step 1.

TensorBoard needs the optional ``tensorboardX`` package (``pip install sidjax[tensorboard]``);
without it only ``metrics.jsonl`` is written.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

import jax


def process_prefix() -> str:
    """``"[process i/n] "`` when several JAX processes run, else ``""``."""
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


def _tensorboard_writer(logdir: Path):
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(logdir=str(logdir))


class MetricsWriter:
    """Appends metric rows to ``workdir/metrics.jsonl`` and, when ``tensorboard`` is on and
    tensorboardX is installed, writes them as scalars to event files in ``workdir``.

    Only process 0 writes (``enabled`` defaults to that); other processes' writers do nothing.
    """

    def __init__(self, workdir: Path, *, tensorboard: bool = True, enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.path = Path(workdir) / "metrics.jsonl"
        self.tb = _tensorboard_writer(Path(workdir)) if (self.enabled and tensorboard) else None

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
