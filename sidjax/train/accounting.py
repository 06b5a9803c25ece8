"""What a training run holds and costs: parameter counts, training FLOPs per token, bytes per
device of the parameters and optimizer state (:func:`state_report`, logged before step 1 and
used to match compute across compared models)."""

from __future__ import annotations

import jax
from flax import nnx

from sidjax.parallel import axes
from sidjax.train.partition import path_names


def _count(tree) -> int:
    return int(sum(x.size for x in jax.tree.leaves(tree)))


def _bytes_per_device(tree) -> int:
    """Largest number of bytes of ``tree`` held by one device."""
    per_device: dict = {}
    for x in jax.tree.leaves(tree):
        for shard in getattr(x, "addressable_shards", ()):
            per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
    return max(per_device.values(), default=0)


def state_report(params, opt_state, seq_len: int, partitioner=None, *,
                 tied_output: int = 0) -> dict:
    """What a run holds, before step 1: parameter counts (decoder, memory tables), training
    FLOPs per token (6 x matmul parameters + 12 x layers x seq_len x attention width), bytes per
    device of params and optimizer state, the mesh and the sharding of the largest arrays.

    ``tied_output``: parameters of an embedding table that is also the output matmul (a tied
    head, e.g. SASRec's item table); embeddings are otherwise lookups and count 0 FLOPs. Models
    give it as ``tied_output_params`` (:func:`tied_output_params`). ``params``: the model's
    ``nnx.State``; memory tables are the parameters tagged ``group="table"``
    (:mod:`sidjax.parallel.axes`)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    is_table = jax.tree.leaves(axes.map_params(lambda _, v: axes.group(v) == axes.TABLE, params))
    table = sum(x.size for (_, x), t in zip(leaves, is_table) if t)
    embed = sum(x.size for p, x in leaves if "embedding" in path_names(p))
    matmul = sum(x.size for p, x in leaves if x.ndim >= 2) - table - embed
    q_proj = [x for p, x in leaves if path_names(p)[-2:] in (("w_q", "value"), ("w_q",))]
    attn_width = sum(x.shape[1] * x.shape[2] for x in q_proj)  # sum over layers of N * H
    largest = sorted(leaves, key=lambda px: -px[1].size)[:3]
    mesh = getattr(partitioner, "mesh", None)
    return {
        "params_total": _count(params),
        "params_decoder": _count(params) - int(table),
        "params_prefixmem_tables": int(table),
        "flops_per_token": int(6 * (matmul + tied_output) + 12 * seq_len * attn_width),
        "param_bytes_per_device": _bytes_per_device(params),
        "opt_state_bytes_per_device": _bytes_per_device(opt_state),
        "mesh": "1 device (no sharding)" if mesh is None else str(dict(mesh.shape)),
        "largest_arrays": {"/".join(n for n in path_names(p) if n != "value"):
                           f"{tuple(x.shape)} {getattr(x, 'sharding', None)}" for p, x in largest},
    }


def tied_output_params(model: nnx.Module) -> int:
    """Parameters of ``model``'s embedding table used as its output matmul (its
    ``tied_output_params`` attribute; 0 for a model without one)."""
    return int(getattr(model, "tied_output_params", 0))
