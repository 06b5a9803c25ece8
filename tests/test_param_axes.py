"""Logical axes and optimizer groups travel with the parameters (nnx.Param metadata), not with
their names: a table named anything is a table when tagged, an untagged Param fails loudly, and
the models' metadata gives exactly the axes and groups the old leaf-name table gave."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sidjax import config as C
from sidjax.nn.model import SIDRecommender
from sidjax.parallel.axes import TABLE, is_variable, param, path_str
from sidjax.tokens import SIDVocab
from sidjax.train.accounting import state_report
from sidjax.train.optim import decay_mask, make_optimizer, param_labels
from sidjax.train.partition import make_partitioner, param_logical_axes


def _flat(tree) -> dict:
    """``{"a/b": value}`` of a tree of Variables (the axes / labels of a state)."""
    return {path_str(p): v.get_value()
            for p, v in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_variable)[0]}


class _Toy(nnx.Module):
    """A memory table named ``memory`` (not ``table``), tagged as one, and a matrix."""

    def __init__(self):
        self.memory = param(jnp.ones((16, 4)), ("table_rows", "mem"), group=TABLE)
        self.w = param(jnp.ones((4, 8)), ("embed", "mlp"))
        self.scale = param(jnp.ones((8,)), (None,))


def test_a_tagged_table_under_any_name_gets_the_table_axes_group_and_sharding():
    state = nnx.state(_Toy(), nnx.Param)
    assert _flat(param_logical_axes(state)) == {
        "memory": ("table_rows", "mem"), "w": ("embed", "mlp"), "scale": (None,)}
    assert _flat(decay_mask(state)) == {"memory": False, "w": True, "scale": False}
    assert _flat(param_labels(state)) == {"memory": "table", "w": "decay", "scale": "no_decay"}
    assert _flat(param_labels(state, freeze=True))["memory"] == "frozen_table"
    assert state_report(state, None, 4)["params_prefixmem_tables"] == 16 * 4
    spec = {k: s.spec for k, s in _flat(make_partitioner(1, 2, 4).param_shardings(state)).items()}
    assert spec == {"memory": jax.P("model", None), "w": jax.P("fsdp", "model"),
                    "scale": jax.P(None)}
    # the table's own learning rate (prefixmem_lr_mult) and no decay reach it by its tag
    tx = make_optimizer(C.TrainConfig(learning_rate=0.1, warmup_steps=4, steps=100,
                                      weight_decay=0.5, prefixmem_lr_mult=10.0))
    grads = jax.tree.map(lambda x: jnp.full(x.shape, 1e-3), state)
    opt_state = tx.init(state)
    for _ in range(3):
        updates, opt_state = tx.update(grads, opt_state, state)
    ratio = float(jnp.abs(updates["memory"][...]).mean() / jnp.abs(updates["scale"][...]).mean())
    np.testing.assert_allclose(ratio, 10.0, rtol=1e-3)


def test_a_param_without_axes_fails_with_one_line_naming_it():
    class Bare(nnx.Module):
        def __init__(self):
            self.inner = nnx.Dict({"bare": nnx.Param(jnp.ones((3,)))})

    with pytest.raises(ValueError) as err:
        param_logical_axes(nnx.state(Bare(), nnx.Param))
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("no logical axes for parameter inner/bare of shape (3,): add "
                              "out_sharding=")
    assert "nnx.Param" in message
    with pytest.raises(ValueError, match=r"^parameter w of shape \(2, 2\) has 1 logical axes"):
        param_logical_axes({"w": nnx.Param(jnp.ones((2, 2)), out_sharding=("embed",),
                                           eager_sharding=False)})
    with pytest.raises(ValueError, match=r"^parameter w is a plain array without metadata"):
        param_labels({"w": np.ones((2, 2))})  # a raw pytree cannot say what is a table
    with pytest.raises(ValueError, match="2 logical axes"):
        param(jnp.ones(3), ("embed", "mlp"))


# What the leaf-name table of sidjax/train/partition.py (_DECODER_AXES + prefixmem.PARAM_AXES)
# and the "table"-in-path groups of sidjax/train/loop.py gave for this model before the axes
# moved into the parameters' metadata (recorded from that code).
NAME_TABLE_AXES = {
    "decoder/blocks/0/attn/w_k": ("embed", "heads", "kv"),
    "decoder/blocks/0/attn/w_o": ("heads", "kv", "embed"),
    "decoder/blocks/0/attn/w_q": ("embed", "heads", "kv"),
    "decoder/blocks/0/attn/w_v": ("embed", "heads", "kv"),
    "decoder/blocks/0/attn_norm/scale": (None,),
    "decoder/blocks/0/mlp/w_down": ("mlp", "embed"),
    "decoder/blocks/0/mlp/w_gate": ("embed", "mlp"),
    "decoder/blocks/0/mlp/w_up": ("embed", "mlp"),
    "decoder/blocks/0/mlp_norm/scale": (None,),
    "decoder/final_norm/scale": (None,),
    "embed/embedding": ("vocab", "embed"),
    "head/kernel": ("embed", "vocab"),
    "prefixmem/key_scale": ("embed",),
    "prefixmem/query_scale": ("embed",),
    "prefixmem/table": ("table_rows", "mem"),
    "prefixmem/w_key": ("mem_concat", "embed"),
    "prefixmem/w_value": ("mem_concat", "embed"),
}
NAME_TABLE_LABELS = {k: "table" if k == "prefixmem/table" else "no_decay" if len(v) == 1
                     else "decay" for k, v in NAME_TABLE_AXES.items()}
ADAPTERS = {"prefixmem/key_scale", "prefixmem/query_scale", "prefixmem/w_key", "prefixmem/w_value"}
# PrefixMem injected before blocks 0 and 1: its projections and gate get a leading "sites" axis
NAME_TABLE_INJECTED = {
    "prefixmem/key_scale": ("sites", "embed"),
    "prefixmem/query_scale": ("sites", "embed"),
    "prefixmem/table": ("table_rows", "mem"),
    "prefixmem/w_key": ("sites", "mem_concat", "embed"),
    "prefixmem/w_value": ("sites", "mem_concat", "embed"),
}


def _tiny_prefixmem(**pm):
    model = C.tiny().model
    prefixmem = dataclasses.replace(model.prefixmem, enabled=True, orders=(1, 2),
                                    hash_table_size=512, **pm)
    return dataclasses.replace(model, d_model=32, num_layers=1 if not pm else 2, num_heads=2,
                               head_dim=16, mlp_dim=64, prefixmem=prefixmem)


def test_metadata_axes_and_groups_equal_the_old_name_table():
    state = nnx.state(SIDRecommender(_tiny_prefixmem(), SIDVocab((16, 16, 16)),
                                     rngs=nnx.Rngs(0)), nnx.Param)
    assert _flat(param_logical_axes(state)) == NAME_TABLE_AXES
    assert _flat(param_labels(state)) == NAME_TABLE_LABELS
    assert _flat(param_labels(state, freeze=True)) == {
        k: v if k in ADAPTERS else f"frozen_{v}" for k, v in NAME_TABLE_LABELS.items()}
    injected = nnx.state(SIDRecommender(_tiny_prefixmem(inject_layers=(0, 1)),
                                         SIDVocab((16, 16, 16)), rngs=nnx.Rngs(0)), nnx.Param)
    axes = _flat(param_logical_axes(injected))
    assert {k: v for k, v in axes.items() if k.startswith("prefixmem/")} == NAME_TABLE_INJECTED
