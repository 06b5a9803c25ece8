"""Validation during training: when to evaluate, which evaluation was the best, and when to stop.

The loop calls a task-supplied ``evaluate(params, step) -> dict[str, float]`` (for SID models,
:func:`sidjax.eval.validation.make_validation`); :class:`BestTracker` follows one of its metrics
(``train.best_metric`` with ``train.best_mode``) and counts evaluations without improvement for
early stopping (``train.patience``). Its state is saved in every checkpoint, so a resumed run
keeps the same best and the same count.
"""

from __future__ import annotations

import dataclasses
import math

from sidjax.config import TrainConfig

BEST_MODES = ("min", "max")


def check_validation_config(cfg: TrainConfig) -> None:
    """Raises ``ValueError`` naming the key when a validation setting cannot be used."""
    if cfg.eval_every < 0:
        raise ValueError(f"train.eval_every={cfg.eval_every} must be >= 0 (0 = no validation)")
    if cfg.eval_users < 0:
        raise ValueError(f"train.eval_users={cfg.eval_users} must be >= 0 (0 = all users)")
    if cfg.best_mode not in BEST_MODES:
        raise ValueError(f"train.best_mode={cfg.best_mode!r}; use 'min' (e.g. valid/loss) or "
                         "'max' (e.g. valid/recall@10)")
    if cfg.patience < 0:
        raise ValueError(f"train.patience={cfg.patience} must be >= 0 (0 = no early stopping)")


def is_eval_step(cfg: TrainConfig, done: int) -> bool:
    """Whether the loop evaluates after ``done`` steps: every ``eval_every`` and at the end."""
    return cfg.eval_every > 0 and (done % cfg.eval_every == 0 or done == cfg.steps)


@dataclasses.dataclass
class BestTracker:
    """The best value of ``metric`` so far, its step, and evaluations since it improved."""

    metric: str
    mode: str = "min"
    patience: int = 0
    best: float | None = None
    best_step: int | None = None
    evals_since_best: int = 0

    def better(self, value: float) -> bool:
        """Whether ``value`` improves on the best so far (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        return value < self.best if self.mode == "min" else value > self.best

    def update(self, metrics: dict[str, float], step: int) -> bool:
        """Records an evaluation at ``step``; returns whether it is the new best."""
        if self.metric not in metrics:
            raise ValueError(
                f"train.best_metric={self.metric!r} is not among the validation metrics "
                f"({', '.join(sorted(metrics))}); set train.best_metric to one of them (recall "
                "and NDCG need train.eval_recall=true)")
        value = float(metrics[self.metric])
        if self.better(value):
            self.best, self.best_step, self.evals_since_best = value, step, 0
            return True
        self.evals_since_best += 1
        return False

    def should_stop(self) -> bool:
        """Early stopping: ``patience`` evaluations in a row without improvement."""
        return self.patience > 0 and self.evals_since_best >= self.patience

    def state(self) -> dict:
        """A JSON-able dict (saved in checkpoints)."""
        return {"metric": self.metric, "mode": self.mode, "best": self.best,
                "best_step": self.best_step, "evals_since_best": self.evals_since_best}

    @classmethod
    def restore(cls, cfg: TrainConfig, state: dict | None) -> BestTracker:
        """The tracker of ``cfg``, continuing ``state`` when it followed the same metric and mode."""
        tracker = cls(cfg.best_metric, cfg.best_mode, cfg.patience)
        if state and state.get("metric") == cfg.best_metric and state.get("mode") == cfg.best_mode:
            tracker.best, tracker.best_step = state.get("best"), state.get("best_step")
            tracker.evals_since_best = int(state.get("evals_since_best", 0))
        return tracker
