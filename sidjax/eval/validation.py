"""The validation callback of training: fixed-subset metrics of the validation split at every
``train.eval_every`` steps (``prep``: a :class:`sidjax.run.Prepared`)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sidjax.config import check_beam
from sidjax.data.pipeline import eval_arrays
from sidjax.decode.beam import recommend
from sidjax.decode.scoring import score_sids
from sidjax.eval import stats
from sidjax.eval.metrics import ranks_of_targets


def validation_users(num_users: int, eval_users: int) -> np.ndarray:
    """The fixed validation subset: ``eval_users`` user rows drawn once with seed 0 (sorted), or
    all rows when ``eval_users`` is 0 or covers them."""
    if eval_users <= 0 or eval_users >= num_users:
        return np.arange(num_users)
    return np.sort(np.random.default_rng(0).choice(num_users, eval_users, replace=False))


def _pad_rows(arrays: dict[str, np.ndarray], multiple: int) -> dict[str, np.ndarray]:
    pad = -len(next(iter(arrays.values()))) % multiple
    return {k: np.pad(v, ((0, pad),) + ((0, 0),) * (v.ndim - 1)) for k, v in arrays.items()}


@functools.partial(jax.jit, static_argnames="graphdef")
def _item_nll(graphdef, state, items, targets):
    """Next-item negative log-likelihood ``[B]`` of an item-ID model after histories ``[B, T]``."""
    model = nnx.merge(graphdef, state)
    logits = model.item_logits(model.hidden(items)[:, -1]).astype(jnp.float32)
    return jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(
        logits, targets[:, None], axis=-1)[:, 0]


def make_validation(prep, graphdef) -> Callable[[object, int], dict]:
    """The ``evaluate(params, step)`` callback of :func:`sidjax.train.loop.train` on the fixed
    subset of the validation split (``train.eval_users``).

    SID models: ``valid/loss`` (teacher-forced NLL per SID token of the held-out item),
    ``valid/acc_l1..`` (teacher-forced per-level accuracy, as in :func:`level_correct`) and, with
    ``train.eval_recall``, ``valid/recall@K`` / ``valid/ndcg@K`` (``eval.top_k``) by the
    trie-constrained beam search. Item-ID models (SASRec): ``valid/loss`` (next-item NLL),
    per-level accuracy and Recall/NDCG of the full item ranking.
    """
    cfg, ecfg = prep.cfg, prep.cfg.eval
    check_beam(cfg)
    valid = prep.split.eval_set("valid")
    rows = validation_users(len(valid.targets), cfg.train.eval_users)
    histories, targets = [valid.histories[i] for i in rows], np.asarray(valid.targets)[rows]
    target_codes = prep.sids.codes[targets]
    bs = min(ecfg.batch_size, len(rows))

    def ranking(items: np.ndarray) -> dict:
        summary = stats.summarize(ranks_of_targets(items, targets), ks=ecfg.top_k)
        return {f"valid/{k}": v for k, v in summary.items()}

    if cfg.model.kind == "sasrec":
        from sidjax.data.pipeline import encode_item_ids
        from sidjax.decode.items import rank_items

        item_histories = np.stack([encode_item_ids(h, cfg.data.max_history) for h in histories])
        padded = _pad_rows({"items": item_histories, "targets": targets.astype(np.int32)}, bs)

        def evaluate_items(params, step):
            model = nnx.merge(graphdef, params)
            nll = np.concatenate([np.asarray(_item_nll(graphdef, params, padded["items"][i:i + bs],
                                                       padded["targets"][i:i + bs]))
                                  for i in range(0, len(padded["items"]), bs)])[:len(rows)]
            items, _, level_pred = rank_items(model, item_histories, prep.sids.codes, targets,
                                              k=max(ecfg.top_k), batch_size=bs)
            out = {"valid/loss": float(nll.mean())}
            out.update({f"valid/acc_l{lv + 1}": float(ok) for lv, ok in
                        enumerate((level_pred == target_codes).mean(axis=0))})
            return out | ranking(items)

        return evaluate_items
    arrays = eval_arrays(histories, prep.sids.codes, prep.vocab, cfg.data.max_history, prep.prompt)
    padded = _pad_rows(dict(arrays, target_codes=target_codes), bs)

    def evaluate_sids(params, step):
        log_probs, preds = [], []
        for i in range(0, len(padded["tokens"]), bs):
            lp, pr = score_sids(graphdef, params, *(padded[k][i:i + bs] for k in (
                "tokens", "codes", "levels", "target_codes")), vocab=prep.vocab)
            log_probs.append(np.asarray(lp))
            preds.append(np.asarray(pr))
        log_probs, preds = np.concatenate(log_probs)[:len(rows)], np.concatenate(preds)[:len(rows)]
        out = {"valid/loss": float(-log_probs.mean())}
        out.update({f"valid/acc_l{lv + 1}": float(ok) for lv, ok in
                    enumerate((preds == target_codes).mean(axis=0))})
        if cfg.train.eval_recall:
            items, _ = recommend(nnx.merge(graphdef, params), prep.trie, arrays, prep.vocab,
                                 beam=ecfg.beam_size, batch_size=bs)
            out |= ranking(items)
        return out

    return evaluate_sids
