"""Device mesh with the three physical axes ``data``, ``fsdp`` and ``model``.

``data`` splits the batch (pure data parallelism, parameters replicated), ``fsdp`` splits the
batch *and* the parameters (ZeRO-3 style), and ``model`` splits big tables and layers (the Semantic
ID embedding table rows, MLP hidden units, attention heads, the output vocabulary). Which logical
tensor dimension goes to which of these axes is decided in one place, :mod:`sidjax.parallel.rules`.

A size of ``-1`` takes whatever devices the other sizes leave, so ``MeshConfig()`` is pure data
parallelism over every device and ``MeshConfig(model=2)`` is 2-way row sharding with the rest as
data parallelism. All axes are created as ``AxisType.Auto`` (the classic GSPMD mode that
``with_sharding_constraint``, Flax logical partitioning and ``shard_map`` all expect), not the
``Explicit`` default of ``jax.make_mesh`` in recent JAX releases.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
from jax.sharding import AxisType, Mesh

MESH_AXES: tuple[str, str, str] = ("data", "fsdp", "model")
"""Physical mesh axis names, outermost (slowest interconnect) first."""


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the ``data``, ``fsdp`` and ``model`` mesh axes.

    Each size is a positive integer or ``-1`` (at most one axis): ``-1`` is filled with the device
    count divided by the product of the other sizes. Without a ``-1`` the product must equal the
    device count exactly.
    """

    data: int = -1
    fsdp: int = 1
    model: int = 1

    def axis_sizes(self) -> tuple[int, int, int]:
        """The raw sizes in :data:`MESH_AXES` order, ``-1`` left as is."""
        return (self.data, self.fsdp, self.model)

    def resolve(self, num_devices: int) -> tuple[int, int, int]:
        """Concrete axis sizes for ``num_devices`` devices (``-1`` filled in).

        Raises:
          ValueError: a size is neither positive nor ``-1``, more than one size is ``-1``, or the
            sizes do not fit ``num_devices`` (the message names the sizes and the device count).
        """
        sizes = self.axis_sizes()
        named = ", ".join(f"{n}={s}" for n, s in zip(MESH_AXES, sizes))
        if num_devices < 1:
            raise ValueError(f"need at least one device, got {num_devices}")
        bad = [f"{n}={s}" for n, s in zip(MESH_AXES, sizes) if s != -1 and s < 1]
        if bad:
            raise ValueError(f"mesh axis sizes must be positive or -1, got {', '.join(bad)}")
        n_fill = sum(s == -1 for s in sizes)
        if n_fill > 1:
            raise ValueError(f"at most one mesh axis may be -1, got ({named})")
        fixed = math.prod(s for s in sizes if s != -1)
        if n_fill == 1:
            if num_devices % fixed:
                raise ValueError(
                    f"mesh sizes ({named}): the fixed sizes multiply to {fixed}, which does not "
                    f"divide the device count {num_devices}"
                )
            fill = num_devices // fixed
            return tuple(fill if s == -1 else s for s in sizes)  # type: ignore[return-value]
        if fixed != num_devices:
            raise ValueError(
                f"mesh sizes ({named}) multiply to {fixed}, but there are {num_devices} devices; "
                "the product must equal the device count (use -1 on one axis to fill it)"
            )
        return sizes


def make_mesh(cfg: MeshConfig | None = None, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Build a ``Mesh`` with axes ``('data', 'fsdp', 'model')`` sized by ``cfg``.

    Args:
      cfg: axis sizes; ``None`` means ``MeshConfig()`` (all devices on ``data``).
      devices: devices to lay out; defaults to ``jax.devices()`` (all global devices, so this also
        works multi-host). Pass e.g. ``jax.devices()[:1]`` for a one-device mesh.

    Returns:
      A mesh whose axes are all ``AxisType.Auto``. The device order comes from
      ``jax.make_mesh``, which is topology aware on TPU/GPU.
    """
    cfg = MeshConfig() if cfg is None else cfg
    devices = list(jax.devices() if devices is None else devices)
    sizes = cfg.resolve(len(devices))
    return jax.make_mesh(
        sizes, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
    )


def axis_size(mesh: Mesh | None, axis: str) -> int:
    """Size of ``axis`` in ``mesh``; 1 when ``mesh`` is ``None`` or lacks that axis."""
    if mesh is None:
        return 1
    return int(dict(mesh.shape).get(axis, 1))
