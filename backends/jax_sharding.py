"""Place softk's JAX inputs on several devices with ``jax.sharding`` (docs/distributed.md).

softk's solvers need no special entry point to run sharded: give ``jax.jit``
(or an eager call) arrays that are already sharded and XLA's partitioner splits
every op over the devices. Sharding the points of ``x`` over the devices makes
the log-sum-exps over ``x``'s points cross-device reductions (all-reduces of
``m``-vectors, once per Sinkhorn iteration); sharding a leading batch
dimension gives each device its own problems. These helpers only build the
shardings:

* :func:`device_mesh`: a 1-D mesh over all (or the given) devices;
* :func:`shard_batch`: split a leading batch axis over the mesh;
* :func:`shard_points`: split the points axis (``-2`` of a cloud ``(..., n, d)``,
  ``-1`` of weights ``(..., n)``) over the mesh;
* :func:`replicate`: a full copy on every device (e.g. the other cloud ``y``).

Meshes with ``Auto`` or ``Explicit`` axes both work (the glue runs each op
under ``jax.sharding.auto_axes`` on Explicit meshes). The sharded axis must be
divisible by the number of devices.

Examples
--------
>>> import jax, softk
>>> from softk.backends.jax_sharding import device_mesh, shard_points
>>> x = shard_points(jax.numpy.zeros((8, 2)), device_mesh())
>>> x.shape, tuple(x.sharding.spec)
((8, 2), ('devices', None))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = ["device_mesh", "shard_batch", "shard_points", "replicate"]

AXIS = "devices"


def device_mesh(devices: Sequence[Any] | None = None, *, name: str = AXIS, explicit: bool = False) -> Mesh:
    """A 1-D mesh named ``name`` over ``devices`` (default: all of ``jax.devices()``).

    ``explicit=True`` gives an ``Explicit`` axis (sharding in types, as
    ``jax.make_mesh`` does by default); the default ``Auto`` leaves every
    choice to the partitioner.
    """
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("device_mesh needs at least one device")
    kind = AxisType.Explicit if explicit else AxisType.Auto
    return jax.make_mesh((len(devices),), (name,), axis_types=(kind,), devices=devices)


def shard_batch(x: Any, mesh: Mesh | None = None, *, axis: int = 0, mesh_axis: str | None = None) -> jax.Array:
    """``x`` split along ``axis`` (a batch axis: each device gets whole problems), replicated elsewhere."""
    return _shard(x, mesh, axis, mesh_axis)


def shard_points(x: Any, mesh: Mesh | None = None, *, axis: int = -2, mesh_axis: str | None = None) -> jax.Array:
    """``x`` split along its points axis (default ``-2``: ``x`` of shape ``(..., n, d)``;
    pass ``axis=-1`` for weights ``(..., n)``), replicated elsewhere."""
    return _shard(x, mesh, axis, mesh_axis)


def replicate(x: Any, mesh: Mesh | None = None) -> jax.Array:
    """A full copy of ``x`` on every device of ``mesh``."""
    mesh = device_mesh() if mesh is None else mesh
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec()))


def _shard(x: Any, mesh: Mesh | None, axis: int, mesh_axis: str | None) -> jax.Array:
    mesh = device_mesh() if mesh is None else mesh
    if mesh_axis is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(f"the mesh has axes {mesh.axis_names}: name the one to shard over with mesh_axis")
        mesh_axis = mesh.axis_names[0]
    elif mesh_axis not in mesh.axis_names:
        raise ValueError(f"mesh_axis {mesh_axis!r} is not one of the mesh's axes {mesh.axis_names}")
    x = jax.numpy.asarray(x)
    if not -x.ndim <= axis < x.ndim:
        raise ValueError(f"axis {axis} is out of range for an array of shape {tuple(x.shape)}")
    axis %= x.ndim
    devices = mesh.shape[mesh_axis]
    if x.shape[axis] % devices:
        raise ValueError(
            f"axis {axis} of length {x.shape[axis]} does not split evenly over {devices} devices "
            f"(mesh axis {mesh_axis!r}): pad it or use fewer devices"
        )
    spec = [None] * x.ndim
    spec[axis] = mesh_axis
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(*spec)))
