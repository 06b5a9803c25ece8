"""Leave-one-out split (the TIGER / P5 protocol)."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """Histories and held-out targets of one evaluation split.

    Attributes:
      users: user index per example.
      histories: item-index history per example (everything before the target).
      targets: held-out item per example.
    """

    users: np.ndarray
    histories: list[np.ndarray]
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.targets)


@dataclasses.dataclass(frozen=True)
class Split:
    """Training sequences plus validation and test sets."""

    train: list[np.ndarray]
    valid: EvalSet
    test: EvalSet

    def eval_set(self, name: str) -> EvalSet:
        """The ``"valid"`` or ``"test"`` set."""
        if name not in ("valid", "test"):
            raise ValueError(f"unknown split {name!r}; use 'valid' or 'test'")
        return self.valid if name == "valid" else self.test


def leave_one_out(sequences: list[np.ndarray]) -> Split:
    """Last item of each user is the test target, second-last the validation target, rest training.

    Users with fewer than 3 items contribute only training data.
    """
    train, sets = [], {"valid": ([], [], []), "test": ([], [], [])}
    for user, seq in enumerate(sequences):
        seq = np.asarray(seq, dtype=np.int32)
        if len(seq) < 3:
            train.append(seq)
            continue
        train.append(seq[:-2])
        for name, cut in (("valid", len(seq) - 2), ("test", len(seq) - 1)):
            users, histories, targets = sets[name]
            users.append(user)
            histories.append(seq[:cut])
            targets.append(seq[cut])

    def to_set(name):
        users, histories, targets = sets[name]
        return EvalSet(np.asarray(users, np.int32), histories, np.asarray(targets, np.int32))

    return Split(train=train, valid=to_set("valid"), test=to_set("test"))


def item_counts(train: list[np.ndarray], num_items: int) -> np.ndarray:
    """Training interaction count per item (the popularity baseline's scores)."""
    flat = np.concatenate(train) if train else np.zeros(0, np.int32)
    return np.bincount(flat, minlength=num_items)
