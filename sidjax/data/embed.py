"""Item content vectors for catalogs without text: collaborative (PPMI + SVD) or user-supplied.

Semantic IDs are learnt from one vector per item. When items have text, those come from
:func:`sidjax.text.encode_texts`; otherwise :func:`collaborative_item_vectors` derives them from
which items co-occur in the training histories, and :func:`load_item_vectors` reads vectors the user
made elsewhere. :func:`item_vectors` is the one rule that picks among them (``sidjax prepare``,
``sidjax sids build`` and the SIDs of a run all use it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh
from scipy.special import logsumexp

from sidjax.data.types import InteractionData

# At or below this many items with co-occurrences a dense eigh is exact and fast enough.
DENSE_EIGH_MAX_ITEMS = 1024


def cooccurrence_matrix(
    train_sequences: Sequence[np.ndarray], num_items: int, window: int | None = 5
) -> sp.csr_matrix:
    """Symmetric item co-occurrence counts from user histories.

    Every ordered pair of positions at most ``window`` apart in one user's sequence adds 1 to
    ``C[a, b]`` and ``C[b, a]``; ``window=None`` counts all pairs in a sequence. The diagonal
    (an item next to itself) is dropped.

    Args:
      train_sequences: per-user arrays of 0-based item indices, chronological, TRAINING part only.
      num_items: catalog size; indices must lie in ``[0, num_items)``.
      window: largest position gap that counts as co-occurrence, or ``None`` for no limit.

    Returns:
      float64 CSR ``[num_items, num_items]``.
    """
    seqs = [np.asarray(s, dtype=np.int64).ravel() for s in train_sequences]
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
    bad = np.flatnonzero((flat < 0) | (flat >= num_items))
    if bad.size:
        user = int(np.searchsorted(np.cumsum(lengths), bad[0], side="right"))
        raise ValueError(
            f"item index {flat[bad[0]]} in training sequence {user} is outside [0, {num_items}): "
            "pass 0-based item indices and num_items = catalog size"
        )
    if window is not None and window < 1:
        raise ValueError(f"window={window} must be >= 1 (or None for whole sequences)")
    owner = np.repeat(np.arange(len(seqs)), lengths)
    max_gap = int(lengths.max(initial=1)) - 1
    max_gap = max_gap if window is None else min(window, max_gap)
    rows, cols = [], []
    for gap in range(1, max_gap + 1):
        same_user = owner[:-gap] == owner[gap:]
        rows.append(flat[:-gap][same_user])
        cols.append(flat[gap:][same_user])
    a = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    b = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    keep = a != b
    a, b = a[keep], b[keep]
    counts = sp.coo_matrix(
        (np.ones(2 * a.size), (np.concatenate([a, b]), np.concatenate([b, a]))),
        shape=(num_items, num_items),
    ).tocsr()
    return counts


def ppmi_matrix(counts: sp.csr_matrix, alpha: float = 1.0) -> sp.csr_matrix:
    """Positive pointwise mutual information of a symmetric co-occurrence matrix.

    ``PPMI[i, j] = max(0, log(C[i, j] / T) - log(p(i)) - log(p(j)))`` with ``T`` the total count
    and ``p(i)`` proportional to ``r[i] ** alpha`` (``r`` the row sums). ``alpha < 1`` is the
    context distribution smoothing of Levy, Goldberg & Dagan (2015), here applied to both sides
    so the result stays symmetric; ``alpha = 1`` is plain PPMI.
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    row_sum = np.asarray(counts.sum(axis=1)).ravel()
    total = row_sum.sum()
    if total == 0:
        return counts
    with np.errstate(divide="ignore"):
        log_p = alpha * np.log(row_sum)
    log_p -= logsumexp(log_p)
    coo = counts.tocoo()
    pmi = np.log(coo.data / total) - log_p[coo.row] - log_p[coo.col]
    keep = pmi > 0
    out = sp.coo_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=counts.shape)
    return out.tocsr()


def _top_eigen(matrix: sp.csr_matrix, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (largest algebraic) eigenpairs of a symmetric matrix, descending, fixed signs."""
    n = matrix.shape[0]
    if n <= DENSE_EIGH_MAX_ITEMS:
        w, v = np.linalg.eigh(matrix.toarray())
    else:
        v0 = np.random.default_rng(seed).standard_normal(n)
        w, v = eigsh(matrix, k=min(k, n - 1), which="LA", v0=v0)
    order = np.argsort(-w)[:k]
    w, v = w[order], v[:, order]
    # Eigenvectors are defined up to sign: make each column's largest entry positive.
    signs = np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(v.shape[1])])
    return w, v * np.where(signs == 0, 1.0, signs)


def _random_unit_rows(item_idx: np.ndarray, dim: int, seed: int) -> np.ndarray:
    """One random unit vector per item, depending only on ``(seed, item index)``."""
    rows = [np.random.default_rng([seed, int(i)]).standard_normal(dim) for i in item_idx]
    out = np.array(rows, dtype=np.float64).reshape(len(rows), dim)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def collaborative_item_vectors(
    train_sequences: Sequence[np.ndarray],
    num_items: int,
    dim: int = 64,
    window: int | None = 5,
    seed: int = 0,
    *,
    alpha: float = 1.0,
) -> np.ndarray:
    """Item vectors from co-occurrence in training histories: truncated SVD of the PPMI matrix.

    For catalogs without text. Pass the TRAINING interactions only (each user's history without
    its validation and test items), or the vectors leak the held-out items.

    The PPMI matrix ``M`` of the items that have co-occurrences is symmetric, so its truncated SVD
    is computed as the top-``dim`` eigenpairs ``(w, V)``; rows are ``V * sqrt(max(w, 0))``, so
    ``x_i . x_j`` approximates ``M[i, j]`` and items that co-occur often are close. (Plain
    ``U * sqrt(S)`` would also keep negative-eigenvalue directions, which push two items that
    always co-occur apart.) Rows are L2-normalised. Items whose vector vanishes (no positive PMI:
    never seen in training, or only alone) get a random unit vector that depends only on
    ``(seed, item index)``: nearly orthogonal to all others, so it carries no false similarity.
    Deterministic for a given ``seed``.

    Args:
      train_sequences: per-user arrays of 0-based item indices, chronological.
      num_items: catalog size.
      dim: vector size; when fewer items co-occur than ``dim``, the extra columns are zero.
      window: largest position gap counted as co-occurrence, ``None`` for whole sequences.
      seed: seed of the ARPACK start vector and of the unseen items' random vectors.
      alpha: context distribution smoothing exponent of the PPMI (see :func:`ppmi_matrix`).

    Returns:
      float32 ``[num_items, dim]`` with unit-norm rows.
    """
    if dim < 1:
        raise ValueError(f"dim={dim} must be >= 1")
    ppmi = ppmi_matrix(cooccurrence_matrix(train_sequences, num_items, window), alpha)
    active = np.flatnonzero(np.diff(ppmi.indptr) > 0)
    out = np.zeros((num_items, dim), np.float64)
    if active.size > 1:
        w, v = _top_eigen(ppmi[active][:, active], min(dim, active.size), seed)
        vecs = v * np.sqrt(np.maximum(w, 0.0))
        out[active, : vecs.shape[1]] = vecs
    norms = np.linalg.norm(out, axis=1)
    empty = norms < 1e-12
    out[~empty] /= norms[~empty, None]
    out[empty] = _random_unit_rows(np.flatnonzero(empty), dim, seed)
    return out.astype(np.float32)


def _format_ids(ids: Sequence, limit: int = 5) -> str:
    shown = ", ".join(repr(i) for i in ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")


def _by_id(path: Path, ids: list, vectors: np.ndarray, item_keys: list[str],
           ids_name: str) -> tuple[np.ndarray, np.ndarray]:
    """``vectors`` (one row per entry of ``ids``, stored as ``ids_name``) in catalog order, and
    the file row of each."""
    row_of: dict[str, int] = {}
    for row, key in enumerate(str(i) for i in ids):
        if key in row_of:
            raise ValueError(
                f"{path}: item id {key!r} appears twice in {ids_name} (rows {row_of[key]} and "
                f"{row}); keep one vector per item"
            )
        row_of[key] = row
    missing = [k for k in item_keys if k not in row_of]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} of {len(item_keys)} catalog items have no vector "
            f"(first: {_format_ids(missing)}); add them to the file, or use "
            "collaborative_item_vectors for a catalog without content"
        )
    file_rows = np.array([row_of[k] for k in item_keys], dtype=np.int64)
    return vectors[file_rows], file_rows


def _parquet_vectors(path: Path, id_col: str | None) -> tuple[str, list, np.ndarray]:
    """``(id column, ids, vectors [n, d])`` of a Parquet file: an id column and either one list column
    ``vector`` or numeric columns (one per dimension, in file order). Nulls become NaN."""
    try:
        import pyarrow as pa
        import pyarrow.compute as pc
        import pyarrow.parquet as pq
    except ImportError:
        raise ImportError(f"reading {path} needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except pa.ArrowException as err:
        raise ValueError(f"{path}: not a readable Parquet file ({err})") from None
    names = table.column_names
    id_col = id_col or next((c for c in ("item_id", "id") if c in names), None)
    if id_col not in names:
        raise ValueError(f"{path}: no item id column (looked for {id_col or 'item_id, id'}; "
                         f"columns: {', '.join(names)})")
    id_column = table.column(id_col)
    if id_column.null_count:
        row = int(np.flatnonzero(id_column.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(f"{path}: row {row} has no item id in column {id_col!r}")
    ids = id_column.to_pylist()
    rest = [c for c in names if c != id_col]
    is_list = [c for c in rest if pa.types.is_list(table.schema.field(c).type)
               or pa.types.is_large_list(table.schema.field(c).type)
               or pa.types.is_fixed_size_list(table.schema.field(c).type)]
    if is_list:
        name = "vector" if "vector" in is_list else is_list[0]
        if len(is_list) > 1 and name != "vector":
            raise ValueError(f"{path}: several list columns {is_list}; name the vector column "
                             "'vector'")
        column = table.column(name).combine_chunks()
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise ValueError(f"{path}: item id {ids[row]!r} (row {row}) has no vector in "
                             f"column {name!r}")
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            row = int(np.flatnonzero(lengths != lengths[0])[0])
            raise ValueError(f"{path}: the vector of item id {ids[row]!r} (row {row}) has "
                             f"{lengths[row]} values, row 0 has {lengths[0]}; all vectors need "
                             "the same size")
        values = column.flatten()
        if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
            raise ValueError(f"{path}: column {name!r} holds {values.type}, expected numbers")
        d = int(lengths[0]) if len(lengths) else 0
        return id_col, ids, values.to_numpy(zero_copy_only=False).astype(np.float64).reshape(
            len(ids), d)
    numeric = [c for c in rest if pa.types.is_floating(table.schema.field(c).type)
               or pa.types.is_integer(table.schema.field(c).type)]
    other = [c for c in rest if c not in numeric]
    if other or not numeric:
        raise ValueError(f"{path}: columns {other or rest} are not numeric; expected an id "
                         "column plus a list column 'vector' or one numeric column per dimension")
    return id_col, ids, np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64)
                          for c in numeric], axis=1)


def load_item_vectors(path: str | Path, item_ids: Sequence, *,
                      id_col: str | None = None) -> np.ndarray:
    """Read user-supplied item vectors and put them in catalog order.

    Three layouts are accepted:

    * ``.npy``: a float array ``[len(item_ids), d]`` whose row ``i`` belongs to ``item_ids[i]``;
    * ``.npz``: arrays ``ids`` ``[n]`` and ``vectors`` ``[n, d]``, matched to ``item_ids`` by id
      (compared as strings, so ``42`` matches ``"42"``); ids not in the catalog are ignored;
    * ``.parquet`` (needs ``pyarrow``): an id column (``id_col``, default ``item_id`` or ``id``)
      and either a list column ``vector`` or one numeric column per dimension; matched by id as
      ``.npz``. Null values count as NaN.

    Args:
      path: the ``.npy``, ``.npz`` or ``.parquet`` file.
      item_ids: the catalog's external item ids, in item-index order.
      id_col: the id column of a Parquet file.

    Returns:
      float32 ``[len(item_ids), d]``, as stored (not normalised).

    Raises:
      FileNotFoundError, ValueError: with a message that names the problem (wrong shape, NaN/inf
        with the first bad item id and row, missing or duplicate ids) and how to fix it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"item vector file {path} does not exist")
    item_keys = [str(i) for i in item_ids]
    suffix = path.suffix.lower()
    if suffix == ".npy":
        vectors = np.load(path, allow_pickle=False)
        if vectors.ndim != 2 or vectors.shape[0] != len(item_keys):
            raise ValueError(
                f"{path} has shape {vectors.shape}, expected [{len(item_keys)}, d]: one row per "
                "catalog item in item order; save an .npz with 'ids' and 'vectors' to match by id"
            )
        file_rows = np.arange(len(item_keys))
    elif suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            if "ids" not in data or "vectors" not in data:
                raise ValueError(
                    f"{path} holds arrays {sorted(data.files)}, expected 'ids' [n] and "
                    "'vectors' [n, d]: save with np.savez(path, ids=ids, vectors=vectors)"
                )
            ids, vectors = data["ids"], data["vectors"]
        if ids.ndim != 1 or vectors.ndim != 2 or vectors.shape[0] != ids.shape[0]:
            raise ValueError(
                f"{path}: 'ids' has shape {ids.shape} and 'vectors' {vectors.shape}, expected "
                "[n] and [n, d] with one vector per id"
            )
        vectors, file_rows = _by_id(path, ids.tolist(), vectors, item_keys, "'ids'")
    elif suffix in (".parquet", ".pq"):
        id_col, ids, vectors = _parquet_vectors(path, id_col)
        vectors, file_rows = _by_id(path, ids, vectors, item_keys, f"column {id_col!r}")
    else:
        raise ValueError(f"{path}: unsupported suffix {path.suffix!r}, use .npy, .npz or .parquet")
    if vectors.shape[1] == 0 or not np.issubdtype(vectors.dtype, np.number):
        raise ValueError(f"{path}: vectors must be numeric with d >= 1, got {vectors.dtype}")
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        first = int(np.argmin(finite))
        raise ValueError(
            f"{path}: the vector of item id {item_keys[first]!r} (row {file_rows[first]} of the "
            f"file) contains NaN or inf ({int((~finite).sum())} bad rows in all; nulls count "
            "as NaN); recompute or replace those rows before loading"
        )
    return vectors.astype(np.float32)


ITEM_VECTOR_KINDS = ("auto", "text", "collab")


def item_vectors(
    data: InteractionData,
    train_sequences: Sequence[np.ndarray] | Callable[[], Sequence[np.ndarray]],
    kind: str = "auto",
    *,
    vectors_path: str | Path | None = None,
    use_given: bool = True,
    auto_text: bool = True,
    texts: Sequence[str] | None = None,
    strict: bool = False,
    dim: int = 64,
    seed: int = 0,
    encoder: Callable[[Sequence[str]], np.ndarray] | None = None,
    progress=False,
    log: Callable[[str], None] | None = None,
    setting: str = "data.item_vectors",
    no_text_error: str | None = None,
) -> tuple[np.ndarray, str]:
    """The content vectors SIDs are built from, and which rule made them.

    The first rule that applies wins:

    1. ``vectors_path`` given: the user's vector file (:func:`load_item_vectors`), ``"file"``;
    2. ``kind="auto"``, ``use_given`` and the dataset has its own vectors (``data.item_vectors``:
       the synthetic catalog, a prepared folder): those, ``"given"``;
    3. ``kind="text"``, or ``kind="auto"`` with ``auto_text`` and item text: MiniLM over the item
       text, ``"text"`` (``ValueError`` ``no_text_error`` for ``"text"`` without text);
    4. otherwise collaborative vectors (PPMI co-occurrence + SVD, :func:`collaborative_item_vectors`)
       of the TRAINING interactions, ``"collab"``.

    Args:
      data: the catalog (``item_ids``, ``item_text``, ``item_vectors``, ``name``).
      train_sequences: the training part of each user's history, or a function returning it
        (called only when collaborative vectors are made).
      kind: ``"auto"``, ``"text"`` or ``"collab"`` (anything else: ``ValueError`` naming
        ``setting``).
      vectors_path: a ``.npy`` / ``.npz`` / ``.parquet`` vector file; wins over ``kind``.
      use_given: whether rule 2 applies (``sidjax prepare`` recomputes vectors: ``False``).
      auto_text: whether ``"auto"`` encodes text (``sidjax sids build`` does so only with
        ``--text``: ``False``).
      texts: the item texts to encode (default ``data.item_text``, which counts as text when it is
        not ``None``); given texts count as text when one of them is non-empty.
      strict: text: refuse items without text (``ValueError`` naming the first).
      dim, seed: size and seed of collaborative vectors.
      encoder: texts -> vectors; default :func:`sidjax.text.encode_texts` with ``progress``.
      progress: ``encode_texts``'s ``progress`` (a factory, ``True`` for a tqdm bar; falsy: none).
      log: gets a line before MiniLM encoding and before collaborative vectors (``None``: silent).
      setting: the name of ``kind``'s setting in messages.
      no_text_error: the message for ``kind="text"`` without text (default names ``setting``).

    Returns:
      ``(vectors, rule)``: ``[num_items, d]`` vectors and ``"file"``, ``"given"``, ``"text"`` or
      ``"collab"``.
    """
    if kind not in ITEM_VECTOR_KINDS:
        raise ValueError(f"{setting}={kind!r}; use one of {', '.join(ITEM_VECTOR_KINDS)}")
    if vectors_path is not None:
        return load_item_vectors(vectors_path, data.item_ids), "file"
    if kind == "auto" and use_given and data.item_vectors is not None:
        return data.item_vectors, "given"
    if texts is None:
        texts, has_text = data.item_text, data.item_text is not None
    else:
        has_text = any(bool(t) for t in texts)
    if kind == "text" or (kind == "auto" and auto_text and has_text):
        if not has_text:
            raise ValueError(no_text_error or (
                f"{setting}='text' but {data.name} has no item text; use 'collab' (vectors from "
                "training interactions)"))
        missing = [data.item_ids[i] for i, t in enumerate(texts) if not t] if strict else []
        if missing:
            raise ValueError(
                f"{len(missing)} item(s) have no text (first: {missing[0]!r}); fill the text "
                "fields, change the template, or drop strict"
            )
        if log is not None:
            log(f"encoding {data.num_items} item texts with MiniLM")
        if encoder is None:
            from sidjax.text.minilm import encode_texts

            return np.asarray(encode_texts(texts, progress=progress or False), np.float32), "text"
        return np.asarray(encoder(texts), np.float32), "text"
    if log is not None:
        log(("no item text" if kind == "auto" else f"{setting}='collab'")
            + ": collaborative item vectors from training co-occurrences")
    train = train_sequences() if callable(train_sequences) else train_sequences
    return collaborative_item_vectors(train, data.num_items, dim=dim, seed=seed), "collab"
