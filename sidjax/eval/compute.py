"""Training compute of the compared models: FLOPs per token, per step and in total, PrefixMem's
share, pre-training, and whether the comparison is matched.

FLOPs per token are :func:`sidjax.train.loop.state_report`'s forward+backward estimate (6 x matmul
parameters + 12 x layers x sequence length x attention width, PrefixMem's projections included);
embedding and memory-table lookups are gathers and count as 0, but a tied output head (an
embedding table that is also the output matmul, e.g. SASRec's item table) counts 6 x its size.
PrefixMem's share is 3 x :func:`sidjax.nn.prefixmem.flops_per_token` (its forward FLOPs, x 3 for
forward+backward); it is part of the total, not added to it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from sidjax.nn import prefixmem
from sidjax.train.loop import state_report


@dataclasses.dataclass(frozen=True)
class TrainingCompute:
    """FLOPs of one model's training run (forward+backward)."""

    flops_per_token: int
    prefixmem_flops_per_token: int  # PrefixMem's share of flops_per_token (0 without it)
    tokens_per_step: int  # batch x sequence length, padding included
    steps: int
    batch_size: int
    pretrain_flops: float | None = None  # pre-training a PrefixMem used by this model; None: none

    @property
    def flops_per_step(self) -> float:
        """FLOPs of one optimizer step."""
        return float(self.flops_per_token) * self.tokens_per_step

    @property
    def train_flops(self) -> float:
        """FLOPs of all training steps."""
        return self.flops_per_step * self.steps

    @property
    def total_flops(self) -> float:
        """Training plus PrefixMem pre-training FLOPs."""
        return self.train_flops + (self.pretrain_flops or 0.0)

    def to_dict(self) -> dict:
        """JSON-ready fields and derived totals."""
        return {**dataclasses.asdict(self), "flops_per_step": self.flops_per_step,
                "train_flops": self.train_flops, "total_flops": self.total_flops}


def tokens_per_step(records: Sequence[Mapping]) -> int:
    """Tokens of one training step as the loop measured them (``tokens_per_s x step_time_s`` of a
    logged ``metrics.jsonl`` record): batch x sequence length, whatever the model's token layout."""
    for r in reversed(records):
        if "tokens_per_s" in r and "step_time_s" in r:
            return int(round(float(r["tokens_per_s"]) * float(r["step_time_s"])))
    raise ValueError("metrics.jsonl holds no record with tokens_per_s and step_time_s; "
                     "train the model (the loop logs them every train.log_every steps)")


def training_compute(params, pm_cfg, *, tokens: int, batch_size: int, steps: int,
                     pretrain_flops: float | None = None, tied_output: int = 0,
                     im_cfg=None) -> TrainingCompute:
    """:class:`TrainingCompute` of a model with parameters ``params`` (an ``nnx.State`` or pytree),
    PrefixMem config ``pm_cfg`` (None without PrefixMem), ``tokens`` per step of ``batch_size``
    sequences, trained for ``steps``; ``tied_output``: see :func:`state_report`. ``im_cfg``: the
    item-memory control's spec (:func:`sidjax.nn.itemmem.resolve`), whose share is reported in
    PrefixMem's column (the same memory FLOPs at matched sizes)."""
    if tokens % batch_size:
        raise ValueError(f"{tokens} tokens per step is not a multiple of the batch {batch_size}")
    report = state_report(params, None, tokens // batch_size, tied_output=tied_output)
    share = 3 * prefixmem.flops_per_token(pm_cfg) if pm_cfg is not None else 0
    if im_cfg is not None:
        from sidjax.nn import itemmem

        share = 3 * itemmem.flops_per_token(im_cfg)
    return TrainingCompute(report["flops_per_token"], share, tokens, steps, batch_size,
                           pretrain_flops)


def matched_steps(flops_per_token: Mapping[str, float], steps: int) -> dict[str, int]:
    """Training steps per model that give every model the FLOPs of the costliest one trained for
    ``steps`` (same batch and tokens per step): ``round(steps x max_fpt / fpt)`` for each model's
    FLOPs per token ``fpt``. The costliest model keeps ``steps``; cheaper ones train longer."""
    if not flops_per_token or min(flops_per_token.values()) <= 0:
        raise ValueError(f"FLOPs per token must be positive, got {dict(flops_per_token)}")
    top = max(flops_per_token.values())
    return {name: int(round(steps * top / f)) for name, f in flops_per_token.items()}


def _flops(v: float | None) -> str:
    return "–" if v is None else f"{v:.3g}"


def matched_statement(computes: Mapping[str, TrainingCompute], reference: str, *,
                      tolerance: float = 0.05) -> tuple[bool, str]:
    """Whether the comparison is matched, and a sentence saying so: same batch and tokens per step
    (steps may differ, see :func:`matched_steps`), and total FLOPs (pre-training included) within
    ``tolerance`` of ``reference``'s."""
    ref = computes[reference]
    if len(computes) == 1:
        return True, f"Only {reference} is trained: there is nothing to match."
    same_setup = all((c.batch_size, c.tokens_per_step) == (ref.batch_size, ref.tokens_per_step)
                     for c in computes.values())
    same_steps = all(c.steps == ref.steps for c in computes.values())
    ratios = {name: c.total_flops / ref.total_flops - 1 for name, c in computes.items()
              if name != reference}
    within = all(abs(r) <= tolerance for r in ratios.values())
    diffs = ", ".join(f"{name} {100 * r:+.1f}%" for name, r in ratios.items())
    if not same_setup:
        setup = "batch or tokens per step differ"
    elif same_steps:
        setup = "same steps, batch and tokens per step"
    else:
        setup = ("same batch and tokens per step, steps set per model ("
                 + ", ".join(f"{name} {c.steps:,}" for name, c in computes.items()) + ")")
    if same_setup and within:
        return True, (f"**Matched compute**: {setup}; total FLOPs within {100 * tolerance:.0f}% of "
                      f"{reference} ({diffs}).")
    extra = []
    for name, r in ratios.items():
        if r > tolerance:
            steps = computes[name].total_flops / ref.flops_per_step
            extra.append(f"{reference} would need {steps:,.0f} steps to match {name}'s FLOPs")
    return False, (f"**Not FLOPs-matched**: {setup}; total FLOPs vs {reference}: {diffs} "
                   f"(tolerance {100 * tolerance:.0f}%)" + ("; " + "; ".join(extra) if extra else "")
                   + ".")


def compute_markdown(computes: Mapping[str, TrainingCompute], reference: str, *,
                     tolerance: float = 0.05) -> str:
    """A Markdown section: the FLOPs table and the matched/not matched statement."""
    lines = ["## Training compute", "",
             "Forward+backward FLOPs (state_report: 6 x matmul parameters + attention; lookups "
             "count 0). PrefixMem's share is included in FLOPs/token.", "",
             "| model | FLOPs/token | PrefixMem share | tokens/step | FLOPs/step | steps | "
             "train FLOPs | pre-training FLOPs | total FLOPs |", "|---" * 9 + "|"]
    for name, c in computes.items():
        pm = c.prefixmem_flops_per_token
        share = f"{pm:,} ({100 * pm / c.flops_per_token:.1f}%)" if pm else "0"
        lines.append(f"| {name} | {c.flops_per_token:,} | {share} | {c.tokens_per_step:,} | "
                     f"{_flops(c.flops_per_step)} | {c.steps:,} | {_flops(c.train_flops)} | "
                     f"{'none' if c.pretrain_flops is None else _flops(c.pretrain_flops)} | "
                     f"{_flops(c.total_flops)} |")
    lines += ["", matched_statement(computes, reference, tolerance=tolerance)[1]]
    if all(c.pretrain_flops is None for c in computes.values()):
        lines += ["", "No pre-trained PrefixMem is used (a model with `train.prefixmem_init` "
                  "reports the pre-training FLOPs recorded with its checkpoint, or pass them as "
                  "`run_compare(..., pretrain_flops={model: flops})`)."]
    return "\n".join(lines) + "\n"
