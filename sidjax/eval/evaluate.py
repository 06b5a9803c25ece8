"""Test-time evaluation of a trained model on a run's task (``prep``: a
:class:`sidjax.run.Prepared`): Recall/NDCG by trie-constrained beam search (or the full item
ranking of an item-ID model), teacher-forced per-level and greedy accuracy, the per-user arrays
the comparison statistics need, and the popularity baseline."""

from __future__ import annotations

import time

import numpy as np
from flax import nnx

from sidjax.config import check_beam
from sidjax.data.pipeline import eval_arrays
from sidjax.decode.beam import greedy, recommend
from sidjax.decode.scoring import score_sids
from sidjax.eval import stats
from sidjax.eval.metrics import (
    full_sid_correct,
    popularity_level_accuracy,
    popularity_ranking,
    ranks_of_targets,
)
from sidjax.eval.report import per_user_values


def level_correct(model: nnx.Module, prep, arrays: dict, targets: np.ndarray,
                  batch_size: int) -> np.ndarray:
    """Per user and SID level, whether the teacher-forced argmax code is the target's: bool [U, L]."""
    graphdef, state = nnx.split(model)
    target_codes = prep.sids.codes[targets]
    correct = []
    for start in range(0, len(targets), batch_size):
        sl = slice(start, start + batch_size)
        _, preds = score_sids(graphdef, state, arrays["tokens"][sl], arrays["codes"][sl],
                              arrays["levels"][sl], target_codes[sl], vocab=prep.vocab)
        correct.append(np.asarray(preds) == target_codes[sl])
    return np.concatenate(correct)


def evaluate_detailed(model: nnx.Module, prep, split: str = "test",
                      progress=None) -> tuple[dict, dict[str, np.ndarray]]:
    """:func:`evaluate` plus the per-user arrays (ranks, greedy and per-level correctness) that
    bootstrap intervals, paired tests and hard-example slices are computed from."""
    ecfg = prep.cfg.eval
    eval_set = prep.split.eval_set(split)
    if prep.cfg.model.kind == "sasrec":
        return _evaluate_items(model, prep, eval_set, split, progress)
    check_beam(prep.cfg)
    arrays = eval_arrays(eval_set.histories, prep.sids.codes, prep.vocab, prep.cfg.data.max_history,
                         prep.prompt)
    t0 = time.perf_counter()
    items, _ = recommend(model, prep.trie, arrays, prep.vocab, beam=ecfg.beam_size,
                         batch_size=ecfg.batch_size, progress=progress)
    decode_s = time.perf_counter() - t0
    ranks = ranks_of_targets(items, eval_set.targets)
    levels_ok = level_correct(model, prep, arrays, eval_set.targets, ecfg.batch_size)
    greedy_codes, _ = greedy(model, prep.trie, arrays, prep.vocab, constrained=False,
                             batch_size=ecfg.batch_size)
    greedy_ok = full_sid_correct(greedy_codes, prep.sids.codes[eval_set.targets])
    result = stats.summarize(ranks, ks=ecfg.top_k)
    result["level_accuracy"] = levels_ok.mean(axis=0).tolist()
    result.update(greedy_accuracy=float(greedy_ok.mean()), users=len(ranks), split=split,
                  users_per_s=len(ranks) / decode_s,
                  invalid_rate=float(np.mean(items[:, :max(ecfg.top_k)] < 0)))
    per_user = per_user_values(ranks, greedy_correct=greedy_ok, level_correct=levels_ok,
                               greedy_levels=greedy_codes == prep.sids.codes[eval_set.targets],
                               ks=ecfg.top_k)
    return result, per_user


def _evaluate_items(model: nnx.Module, prep, eval_set, split: str, progress=None
                    ) -> tuple[dict, dict[str, np.ndarray]]:
    """:func:`evaluate_detailed` for an item-ID model: full ranking of all items by softmax score;
    per-level accuracy from the item distribution marginalised over SID prefixes; "greedy" accuracy
    is top-1 accuracy (the model's single best guess)."""
    from sidjax.data.pipeline import encode_item_ids
    from sidjax.decode.items import rank_items

    ecfg = prep.cfg.eval
    histories = np.stack([encode_item_ids(h, prep.cfg.data.max_history)
                          for h in eval_set.histories])
    t0 = time.perf_counter()
    items, _, level_pred = rank_items(model, histories, prep.sids.codes, eval_set.targets,
                                      k=max(max(ecfg.top_k), 20), batch_size=ecfg.batch_size,
                                      progress=progress)
    decode_s = time.perf_counter() - t0
    ranks = ranks_of_targets(items, eval_set.targets)
    levels_ok = level_pred == prep.sids.codes[eval_set.targets]
    top1_ok = items[:, 0] == eval_set.targets
    result = stats.summarize(ranks, ks=ecfg.top_k)
    result["level_accuracy"] = levels_ok.mean(axis=0).tolist()
    result.update(greedy_accuracy=float(top1_ok.mean()), users=len(ranks), split=split,
                  users_per_s=len(ranks) / decode_s, invalid_rate=0.0)
    return result, per_user_values(ranks, greedy_correct=top1_ok, level_correct=levels_ok,
                                   ks=ecfg.top_k)


def evaluate(model: nnx.Module, prep, split: str = "test", progress=None) -> dict:
    """Recall/NDCG over all items by trie-constrained beam search, per-level (teacher-forced) and
    greedy full-SID accuracy."""
    return evaluate_detailed(model, prep, split, progress)[0]


def evaluate_popularity(prep, split: str = "test") -> tuple[dict, dict[str, np.ndarray]]:
    """The same metrics for the most-popular-items baseline, and its per-user arrays."""
    eval_set = prep.split.eval_set(split)
    top = popularity_ranking(prep.counts, max(prep.cfg.eval.top_k))
    ranks = ranks_of_targets(np.broadcast_to(top, (len(eval_set), len(top))), eval_set.targets)
    result = stats.summarize(ranks, ks=prep.cfg.eval.top_k)
    result["level_accuracy"] = popularity_level_accuracy(prep.sids.codes, prep.counts,
                                                         eval_set.targets)
    result.update(users=len(ranks), split=split)
    return result, per_user_values(ranks, ks=prep.cfg.eval.top_k)
