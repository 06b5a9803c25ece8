"""RQ-VAE (Flax NNX + optax): an MLP autoencoder whose latent is residual-quantized by L codebooks.

Training loss: ``|x - dec(z_q)|^2 + sum_l |sg(r_l) - e_l|^2 + beta |r_l - sg(e_l)|^2`` where ``r_l`` is
the level-l residual of the latent ``z = enc(x)`` and ``e_l`` its nearest level-l code. Gradients pass
the quantizer by the straight-through estimator (``z + sg(z_q - z)``) or the rotation trick (Fifty et
al. 2024: ``z`` rotated and rescaled onto ``z_q`` by a stopped-gradient linear map). Codebooks start as
k-means of the first batch's residuals, then follow their residuals by moving averages
(``codebook_ema``: each used code moves ``1 - decay`` of the way to the mean of its batch residuals),
whatever the scale of the latent. Trained by Adam instead (``codebook_ema=0``) a code moves about one
learning rate per step, falls behind the spreading latent, and with the straight-through estimator the
codebook and commitment terms then outgrow the reconstruction gain (the total loss rises) or, with
small latents, most codes die between resets. Every ``reset_every`` steps, codes unused since the
last reset are re-drawn from the current batch's residuals, and after the last step codes unused by
the fit vectors are re-drawn from theirs. Deterministic for a seed on one platform.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from sidjax.sid.rqkmeans import RQKMeansConfig, check_vectors, kmeans

ESTIMATORS = ("ste", "rotation")


@dataclasses.dataclass(frozen=True)
class RQVAEConfig:
    """RQ-VAE settings (TIGER uses hidden (512, 256, 128), latent 32, 3 x 256 codes, beta 0.25).

    ``codebook_ema`` is the moving-average decay of the codebooks (0: Adam at ``learning_rate``);
    ``beta`` weighs the commitment term (1.0 keeps the straight-through estimator's quantization
    error from outgrowing its reconstruction gain).
    """

    levels: int = 3
    codes: int | tuple[int, ...] = 256
    hidden: tuple[int, ...] = (512, 256, 128)
    latent: int = 32
    beta: float = 1.0
    estimator: str = "rotation"
    learning_rate: float = 1e-3
    codebook_ema: float = 0.9
    steps: int = 2000
    batch_size: int = 1024
    reset_every: int = 100
    seed: int = 0

    def codes_per_level(self) -> tuple[int, ...]:
        """``K`` of every level, checked (same rules as residual k-means)."""
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator={self.estimator!r}; use one of {ESTIMATORS}")
        positive = {"latent": self.latent, "learning_rate": self.learning_rate, "steps": self.steps,
                    "batch_size": self.batch_size, "reset_every": self.reset_every}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name}={value} must be positive")
        if not 0.0 <= self.codebook_ema < 1.0:
            raise ValueError(f"codebook_ema={self.codebook_ema}; use a decay in [0, 1) (0: Adam)")
        if self.beta < 0 or any(int(h) < 1 for h in self.hidden):
            raise ValueError(f"beta={self.beta} must be >= 0 and hidden={self.hidden} widths >= 1")
        return RQKMeansConfig(levels=self.levels, codes=self.codes).codes_per_level()


class RQVAEModel(nnx.Module):
    """Encoder MLP, L residual codebooks (``nnx.Param`` ``[K_l, latent]``), decoder MLP."""

    def __init__(self, dim: int, cfg: RQVAEConfig, rngs: nnx.Rngs):
        sizes = (dim, *cfg.hidden, cfg.latent)
        self.encoder = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(sizes[:-1], sizes[1:])])
        back = sizes[::-1]
        self.decoder = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(back[:-1], back[1:])])
        self.codebooks = nnx.List([nnx.Param(jnp.zeros((k, cfg.latent))) for k in cfg.codes_per_level()])

    def encode(self, x: jax.Array) -> jax.Array:
        """Latent ``[N, latent]``."""
        for i, layer in enumerate(self.encoder):
            x = layer(x)
            x = jax.nn.silu(x) if i < len(self.encoder) - 1 else x
        return x

    def decode(self, z: jax.Array) -> jax.Array:
        """Reconstruction ``[N, dim]``."""
        for i, layer in enumerate(self.decoder):
            z = layer(z)
            z = jax.nn.silu(z) if i < len(self.decoder) - 1 else z
        return z

    def quantize(self, z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Residual quantization: ``(codes [N, L], residuals [L, N, E], selected [L, N, E])``."""
        codes, residuals, selected = [], [], []
        r = z
        for cb in self.codebooks:
            c = cb[...]
            d = (jnp.sum(r * r, 1, keepdims=True) - 2 * jnp.einsum("NE,KE->NK", r, c)
                 + jnp.sum(c * c, 1)[None])
            idx = jnp.argmin(d, axis=1)
            e = c[idx]
            codes.append(idx)
            residuals.append(r)
            selected.append(e)
            r = r - jax.lax.stop_gradient(e)
        return jnp.stack(codes, 1).astype(jnp.int32), jnp.stack(residuals), jnp.stack(selected)


def rotate_onto(z: jax.Array, q: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Rotation trick: ``q`` in the forward pass; gradients reach ``z`` through the stopped-gradient
    rotation (Householder form) and rescaling that map ``z`` onto ``q``."""
    sg = jax.lax.stop_gradient
    zn = jnp.linalg.norm(z, axis=-1, keepdims=True)
    qn = jnp.linalg.norm(q, axis=-1, keepdims=True)
    u, v = sg(z / (zn + eps)), sg(q / (qn + eps))
    w = sg((u + v) / (jnp.linalg.norm(u + v, axis=-1, keepdims=True) + eps))
    rotated = (z - 2 * jnp.sum(z * w, -1, keepdims=True) * w
               + 2 * jnp.sum(z * u, -1, keepdims=True) * v)
    return sg(qn / (zn + eps)) * rotated


def loss_fn(model: RQVAEModel, x: jax.Array, beta: float, estimator: str, ema: bool = False):
    """Total loss and ``(reconstruction loss, codes [N, L], residuals [L, N, E])``.

    With ``ema`` the codebook term is only reported (no gradient): the codebooks follow the residuals
    by moving averages instead (see :func:`ema_update`).
    """
    sg = jax.lax.stop_gradient
    z = model.encode(x)
    codes, residuals, selected = model.quantize(z)
    zq = jnp.sum(selected, axis=0)
    zq_st = rotate_onto(z, sg(zq)) if estimator == "rotation" else z + sg(zq - z)
    recon = jnp.mean(jnp.sum((x - model.decode(zq_st)) ** 2, axis=1))
    vq = jnp.mean(jnp.sum((sg(residuals) - (sg(selected) if ema else selected)) ** 2, axis=-1),
                  axis=1).sum()
    commit = jnp.mean(jnp.sum((residuals - sg(selected)) ** 2, axis=-1), axis=1).sum()
    return recon + vq + beta * commit, (recon, codes, sg(residuals))


def ema_update(codebook: jax.Array, residuals: jax.Array, codes: jax.Array, decay: float) -> jax.Array:
    """Moves every code used in the batch toward the mean of its residuals ``[N, E]``:
    ``e <- decay * e + (1 - decay) * mean``; unused codes stay (dead-code resets handle them)."""
    k = codebook.shape[0]
    sums = jax.ops.segment_sum(residuals, codes, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones(codes.shape[0], residuals.dtype), codes, num_segments=k)
    mean = sums / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where(counts[:, None] > 0, decay * codebook + (1.0 - decay) * mean, codebook)


@dataclasses.dataclass
class RQVAE:
    """A trained RQ-VAE quantizer, its config, input dim and the training log."""

    model: RQVAEModel
    config: RQVAEConfig
    dim: int
    log: list[dict] = dataclasses.field(default_factory=list)

    @property
    def codebooks(self) -> tuple[np.ndarray, ...]:
        return tuple(np.asarray(cb[...]) for cb in self.model.codebooks)


def _optimizer(cfg: RQVAEConfig) -> optax.GradientTransformation:
    """Adam for the networks; for the codebooks too unless they follow moving averages."""
    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda path, _: "codebook" if "codebooks" in jax.tree_util.keystr(path) else "network",
            params)

    return optax.multi_transform(
        {"network": optax.adam(cfg.learning_rate),
         "codebook": optax.set_to_zero() if cfg.codebook_ema > 0 else optax.adam(cfg.learning_rate)},
        labels)


def _init_codebooks(model: RQVAEModel, x: jax.Array, key: jax.Array) -> None:
    r = model.encode(x)
    for lv, cb in enumerate(model.codebooks):
        centroids, assign = kmeans(jax.random.fold_in(key, lv), r, cb.shape[0], 10)
        cb[...] = centroids
        r = r - centroids[assign]


def fit(vectors, cfg: RQVAEConfig, log: Callable[[dict], None] | None = None,
        progress: Callable[[int, dict | None], None] | None = None) -> RQVAE:
    """Trains an RQ-VAE on ``vectors`` ``[N, D]``; ``log`` gets a dict every ``reset_every`` steps.

    ``progress(steps_done, entry_or_None)`` is called after every step, with the ``log`` entry on
    the steps that make one.
    """
    x_all = check_vectors(vectors)
    ks = cfg.codes_per_level()
    n, dim = x_all.shape
    if n < max(ks):
        raise ValueError(f"{n} items but {max(ks)} codes per level: need at least as many items as "
                         "codes; lower codes or add items")
    model = RQVAEModel(dim, cfg, nnx.Rngs(cfg.seed))
    optimizer = nnx.Optimizer(model, _optimizer(cfg), wrt=nnx.Param)
    rng = np.random.default_rng(cfg.seed)
    batch = min(cfg.batch_size, n)
    _init_codebooks(model, jnp.asarray(x_all[rng.choice(n, batch, replace=False)]),
                    jax.random.key(cfg.seed))

    ema = cfg.codebook_ema > 0

    @nnx.jit
    def step(model, optimizer, xb):
        (loss, (recon, codes, residuals)), grads = nnx.value_and_grad(loss_fn, has_aux=True)(
            model, xb, cfg.beta, cfg.estimator, ema)
        optimizer.update(model, grads)
        if ema:
            for lv, cb in enumerate(model.codebooks):
                cb[...] = ema_update(cb[...], residuals[lv], codes[:, lv], cfg.codebook_ema)
        return loss, recon, codes

    usage = [np.zeros(k, np.int64) for k in ks]
    history = []
    for i in range(1, cfg.steps + 1):
        xb = jnp.asarray(x_all[rng.choice(n, batch, replace=False)])
        loss, recon, codes = step(model, optimizer, xb)
        codes = np.asarray(codes)
        for lv, k in enumerate(ks):
            usage[lv] += np.bincount(codes[:, lv], minlength=k)
        if i == 1 or i % cfg.reset_every == 0 or i == cfg.steps:
            entry = {"step": i, "loss": float(loss), "recon": float(recon),
                     "usage": [float(np.mean(u > 0)) for u in usage], "reset": []}
            if i == cfg.steps:  # final reset: usage of the trained model on all fit vectors
                entry["reset"] = _reset_dead(model, x_all, None)
            elif i % cfg.reset_every == 0:
                entry["reset"] = _reset_dead(model, xb, usage)
                usage = [np.zeros(k, np.int64) for k in ks]
            history.append(entry)
            if log:
                log(entry)
        if progress is not None:
            progress(i, history[-1] if history[-1]["step"] == i else None)
    return RQVAE(model, cfg, dim, history)


def _donors(codes: np.ndarray, err: np.ndarray, count: int) -> np.ndarray:
    """Up to ``count`` rows with the largest quantization error ``err``, taking from each code at most
    its number of users minus one (so no code is emptied by its donors moving)."""
    left = np.bincount(codes)
    picked = []
    for row in np.argsort(-err, kind="stable"):
        if len(picked) == count:
            break
        if left[codes[row]] > 1:
            left[codes[row]] -= 1
            picked.append(row)
    return np.asarray(picked, np.int64)


CHUNK = 65536  # rows encoded at once outside training


@nnx.jit
def _quantize_batch(model: RQVAEModel, x: jax.Array):
    return model.quantize(model.encode(x))


def _quantize_all(model: RQVAEModel, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``model.quantize(model.encode(x))`` as NumPy arrays (codes ``[N, L]``, residuals and selected
    codes ``[L, N, E]``), ``CHUNK`` rows at a time."""
    parts = [[np.asarray(a) for a in _quantize_batch(model, jnp.asarray(x[i:i + CHUNK]))]
             for i in range(0, len(x), CHUNK)]
    return tuple(np.concatenate([p[j] for p in parts], axis=min(j, 1)) for j in range(3))


def _reset_dead(model: RQVAEModel, xb, usage: list[np.ndarray] | None,
                max_rounds: int = 20) -> list[int]:
    """Re-draws dead codes from the residuals of ``xb`` at their level, level by level (later levels
    see the updated residuals). A dead code becomes the residual of an item that its current code
    quantizes worst (splitting the loosest clusters).

    Dead: zero in ``usage`` (counts since the last reset; one round), or with ``usage=None`` unused
    by ``xb`` under the current model, repeated until every code is used or ``max_rounds``. Returns
    the number of codes re-drawn per level.
    """
    counts = []
    for lv, cb in enumerate(model.codebooks):
        total = 0
        for _ in range(1 if usage is not None else max_rounds):
            codes, residuals, selected = _quantize_all(model, xb)
            codes = codes[:, lv]
            used = usage[lv] if usage is not None else np.bincount(codes, minlength=cb.shape[0])
            dead = np.flatnonzero(used == 0)
            if not len(dead):
                break
            res = residuals[lv]
            rows = _donors(codes, np.sum((res - selected[lv]) ** 2, axis=1), len(dead))
            cb[...] = cb[...].at[dead[: len(rows)]].set(res[rows])
            total += len(rows)
        counts.append(int(total))
    return counts


def encode(quantizer: RQVAE, vectors) -> np.ndarray:
    """Codes ``[N, L]`` (int32) of ``vectors``."""
    x = check_vectors(vectors)
    if x.shape[1] != quantizer.dim:
        raise ValueError(f"vectors have dim {x.shape[1]} but the quantizer was fit on dim "
                         f"{quantizer.dim}; use vectors from the same encoder")
    return _quantize_all(quantizer.model, x)[0]


def fit_with_codes(vectors, cfg: RQVAEConfig, progress=None) -> tuple[RQVAE, np.ndarray]:
    """Trains (``progress`` as in :func:`fit`) and returns ``(quantizer, codes of the fit items)``."""
    q = fit(vectors, cfg, progress=progress)
    return q, encode(q, vectors)


def residuals_before(quantizer: RQVAE, vectors, codes: np.ndarray, level: int) -> np.ndarray:
    """Latent residual quantized by level ``level`` (latent minus the codes of levels < ``level``)."""
    x = np.asarray(vectors, np.float32)
    r = np.concatenate([np.asarray(quantizer.model.encode(jnp.asarray(x[i:i + CHUNK])))
                        for i in range(0, len(x), CHUNK)])
    for lv in range(level):
        r = r - quantizer.codebooks[lv][codes[:, lv]]
    return r


def reconstruct(quantizer: RQVAE, codes: np.ndarray) -> np.ndarray:
    """Decoded vectors ``[N, dim]`` of ``codes``."""
    zq = sum(cb[codes[:, lv]] for lv, cb in enumerate(quantizer.codebooks))
    return np.concatenate([np.asarray(quantizer.model.decode(jnp.asarray(zq[i:i + CHUNK])))
                           for i in range(0, len(zq), CHUNK)])


def to_arrays(quantizer: RQVAE) -> dict[str, np.ndarray]:
    """Flat ``param/<path>`` arrays plus ``dim``."""
    pure = nnx.to_pure_dict(nnx.state(quantizer.model, nnx.Param))
    flat = jax.tree_util.tree_flatten_with_path(pure)[0]
    out = {"param/" + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v)
           for path, v in flat}
    out["dim"] = np.asarray(quantizer.dim)
    return out


def from_arrays(config: dict, arrays: dict[str, np.ndarray]) -> RQVAE:
    """Inverse of :func:`to_arrays`; checks every parameter's shape."""
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in config.items()}
    cfg = RQVAEConfig(**config)
    dim = int(arrays["dim"])
    model = RQVAEModel(dim, cfg, nnx.Rngs(0))
    state = nnx.state(model, nnx.Param)
    pure = nnx.to_pure_dict(state)
    paths = jax.tree_util.tree_flatten_with_path(pure)[0]
    leaves = []
    for path, v in paths:
        name = "param/" + "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        if name not in arrays or arrays[name].shape != v.shape:
            raise ValueError(f"{name}: expected shape {v.shape}, got "
                             f"{None if name not in arrays else arrays[name].shape}")
        leaves.append(jnp.asarray(arrays[name]))
    tree = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(pure), leaves)
    nnx.replace_by_pure_dict(state, tree)
    nnx.update(model, state)
    return RQVAE(model, cfg, dim)
