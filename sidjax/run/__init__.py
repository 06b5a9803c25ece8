"""The end-to-end job as importable steps: prepare a task, train, evaluate, compare.

Each step reads and writes a run folder (``workdir``): ``config.json``, ``sids.npz``,
``sid_diagnostics.json``, ``checkpoints/``, ``metrics.jsonl``, ``eval.json`` and, for a comparison,
``report.md``. The CLI is a thin layer over these functions::

    from sidjax import config, run
    prep = run.prepare(config.tiny(), "runs/tiny")          # data, split, SIDs, trie, vocabulary
    model = run.train_model(prep, "runs/tiny")              # trains or resumes; best checkpoint
    print(run.results_table({"tiny": run.evaluate(model, prep)}))

Rooms: :mod:`~sidjax.run.task` (:class:`Prepared`, :func:`prepare`), :mod:`~sidjax.run.model`
(building a model, checkpoint identity), :mod:`~sidjax.run.training` (train / load) and
:mod:`~sidjax.run.compare`; evaluation itself lives in :mod:`sidjax.eval` (re-exported here).
"""

from sidjax.config import check_beam
from sidjax.eval.evaluate import evaluate, evaluate_detailed, evaluate_popularity, level_correct
from sidjax.eval.tables import jax_backend, results_table, write_report
from sidjax.eval.validation import make_validation, validation_users
from sidjax.run.compare import (
    BUILTIN_COMPARE_MODELS,
    DEFAULT_COMPARE_MODELS,
    accumulate_train_time,
    compute_matched_steps,
    run_compare,
)
from sidjax.run.model import (
    MODEL_KINDS,
    attach_prefixmem_init,
    build_model,
    model_description,
    prefixmem_pretrain_flops,
    run_hash,
    variant,
)
from sidjax.run.task import ITEM_VECTORS, Log, Prepared, item_vectors, load_data, prepare
from sidjax.run.training import load_model, train_model

__all__ = [
    "BUILTIN_COMPARE_MODELS", "DEFAULT_COMPARE_MODELS", "ITEM_VECTORS", "Log", "MODEL_KINDS",
    "Prepared", "accumulate_train_time", "attach_prefixmem_init", "build_model", "check_beam",
    "compute_matched_steps", "evaluate", "evaluate_detailed", "evaluate_popularity", "item_vectors",
    "jax_backend", "level_correct", "load_data", "load_model", "make_validation",
    "model_description", "prefixmem_pretrain_flops", "prepare", "results_table", "run_compare",
    "run_hash", "train_model", "validation_users", "variant", "write_report",
]
