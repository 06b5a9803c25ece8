"""An array-based trie of valid SIDs, usable inside ``jit`` to constrain decoding.

Depth d holds the distinct SID prefixes of length d, sorted; the children of a node are contiguous
at depth d + 1 (CSR layout: ``offsets[d][n]:offsets[d][n + 1]``). For decoding, each depth also has a
padded ``[num_nodes, max_children]`` view of child codes and child node ids (-1 = no child).
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class SIDTrie:
    """Valid SIDs of a catalog.

    Attributes:
      offsets: per depth d < L, int32 ``[num_nodes_d + 1]`` CSR offsets into depth d + 1.
      codes: per depth d >= 1, int32 ``[num_nodes_d]`` the last code of each node's prefix.
      child_codes: per depth d < L, int32 ``[num_nodes_d, max_children_d]``, -1 padded.
      child_nodes: per depth d < L, int32 ``[num_nodes_d, max_children_d]``, -1 padded.
      leaf_item: int32 ``[num_items]`` item index of each depth-L node.
    """

    offsets: tuple[np.ndarray, ...]
    codes: tuple[np.ndarray, ...]
    child_codes: tuple[np.ndarray, ...]
    child_nodes: tuple[np.ndarray, ...]
    leaf_item: np.ndarray

    @property
    def depth(self) -> int:
        return len(self.offsets)

    def item_of(self, sid) -> int:
        """Item index of a full SID, or -1 when the SID is not in the catalog."""
        node = 0
        for d, code in enumerate(sid):
            row = self.child_codes[d][node]
            hit = np.flatnonzero(row == code)
            if not len(hit):
                return -1
            node = int(self.child_nodes[d][node, hit[0]])
        return int(self.leaf_item[node])


def build_trie(codes: np.ndarray) -> SIDTrie:
    """Builds the trie of ``codes`` (``[num_items, L]``, unique rows). Linear memory in items."""
    codes = np.asarray(codes, np.int32)
    n, depth = codes.shape
    order = np.lexsort(codes.T[::-1])
    sorted_codes = codes[order]
    if n > 1 and not np.all(np.any(sorted_codes[1:] != sorted_codes[:-1], axis=1)):
        raise ValueError("build_trie: SIDs must be unique; add a collision level first")
    # node_at[d][i]: node id at depth d of the i-th sorted item.
    node_at = [np.zeros(n, np.int64)]
    for d in range(1, depth + 1):
        changed = np.ones(n, bool)
        changed[1:] = np.any(sorted_codes[1:, :d] != sorted_codes[:-1, :d], axis=1)
        node_at.append(np.cumsum(changed) - 1)
    offsets, node_codes, child_codes, child_nodes = [], [], [], []
    for d in range(depth):
        num_parents = int(node_at[d][-1]) + 1 if n else 0
        num_children = int(node_at[d + 1][-1]) + 1 if n else 0
        first = np.ones(n, bool)
        first[1:] = node_at[d + 1][1:] != node_at[d + 1][:-1]
        parent_of_child = node_at[d][first]
        code_of_child = sorted_codes[first, d]
        counts = np.bincount(parent_of_child, minlength=num_parents)
        off = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        width = int(counts.max()) if n else 0
        slot = np.arange(num_children) - off[parent_of_child]
        cc = np.full((num_parents, width), -1, np.int32)
        cn = np.full((num_parents, width), -1, np.int32)
        cc[parent_of_child, slot] = code_of_child
        cn[parent_of_child, slot] = np.arange(num_children)
        offsets.append(off)
        node_codes.append(code_of_child.astype(np.int32))
        child_codes.append(cc)
        child_nodes.append(cn)
    return SIDTrie(tuple(offsets), tuple(node_codes), tuple(child_codes), tuple(child_nodes),
                   order.astype(np.int32))


def save_trie(trie: SIDTrie, path) -> None:
    """Writes the trie's arrays as ``.npz`` atomically (temporary file, then rename)."""
    import os
    from pathlib import Path

    path = Path(path)
    arrays = {"leaf_item": trie.leaf_item}
    for d in range(trie.depth):
        arrays.update({f"offsets_{d}": trie.offsets[d], f"codes_{d}": trie.codes[d],
                       f"child_codes_{d}": trie.child_codes[d], f"child_nodes_{d}": trie.child_nodes[d]})
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_trie(path) -> SIDTrie:
    """Reads a trie written by :func:`save_trie`."""
    with np.load(path) as f:
        depth = sum(1 for k in f.files if k.startswith("offsets_"))
        if "leaf_item" not in f.files or depth == 0:
            raise ValueError(f"{path}: not a sidjax trie (needs leaf_item and offsets_<d> arrays)")
        parts = {name: tuple(f[f"{name}_{d}"] for d in range(depth))
                 for name in ("offsets", "codes", "child_codes", "child_nodes")}
        return SIDTrie(parts["offsets"], parts["codes"], parts["child_codes"], parts["child_nodes"],
                       f["leaf_item"])


def node_of(trie: SIDTrie, prefix) -> int:
    """Node id at depth ``len(prefix)`` of a SID prefix, or -1 when no item has that prefix."""
    node = 0
    for d, code in enumerate(prefix):
        hit = np.flatnonzero(trie.child_codes[d][node] == code)
        if not len(hit):
            return -1
        node = int(trie.child_nodes[d][node, hit[0]])
    return node


def child_mask(child_codes, nodes, num_codes: int):
    """Valid-continuation mask ``[B, num_codes]`` of trie nodes ``[B]`` at one depth; jittable.

    ``child_codes`` is that depth's padded ``[num_nodes, max_children]`` array (numpy or jax); a node
    id of -1 (dead prefix) gives an all-False row.
    """
    import jax.numpy as jnp

    child_codes = jnp.asarray(child_codes)
    nodes = jnp.asarray(nodes)
    rows = child_codes[jnp.maximum(nodes, 0)]
    rows = jnp.where((nodes >= 0)[:, None], rows, -1)
    hits = rows[:, :, None] == jnp.arange(num_codes)[None, None, :]
    return jnp.any(hits, axis=1)
