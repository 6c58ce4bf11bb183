"""Mesh construction and logical-axis sharding rules.

Parameters name logical axes ('vocab', 'embed', 'mlp', 'heads', 'kv');
activations name their own ('batch', 'activation_length', 'activation_embed',
'activation_heads', 'activation_kv', 'activation_mlp', 'activation_vocab', as
MaxText does), through `constrain`. The config's `logical_axis_rules` maps
each name to a mesh axis (or None: replicated; an unlisted name is
replicated). Mesh axis names live only here and in configs, never in model code.
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Presets are data: a mesh shape over MESH_AXES plus the logical axis rules.
_BATCH = ("batch", ("data", "fsdp"))
MESH_PRESETS = {
    # Pure data parallelism: parameters replicated.
    "dp": dict(shape=(-1, 1, 1), rules=(_BATCH,)),
    # ZeRO-3 style: parameters sharded over 'fsdp' along the model width.
    "fsdp": dict(shape=(1, -1, 1), rules=(_BATCH, ("embed", "fsdp"))),
    # FSDP plus Megatron-style tensor parallelism over heads and MLP width:
    # the attention heads, the MLP hidden units and the logits' vocabulary are
    # split over 'tensor' in the activations too.
    "fsdp_tp": dict(
        shape=(1, -1, 2),
        rules=(
            _BATCH,
            ("embed", "fsdp"),
            ("heads", "tensor"),
            ("mlp", "tensor"),
            ("vocab", "tensor"),
            ("activation_heads", "tensor"),
            ("activation_mlp", "tensor"),
            ("activation_vocab", "tensor"),
        ),
    ),
}


def preset(name: str) -> dict:
  """Returns {'shape', 'rules'} of a named mesh preset.

  Raises:
    ValueError: an unknown preset, listing the known ones.
  """
  if name not in MESH_PRESETS:
    raise ValueError(f"Unknown mesh preset {name!r}; use one of {sorted(MESH_PRESETS)}.")
  return MESH_PRESETS[name]


def make_mesh(shape, axes=MESH_AXES, devices=None) -> jax.sharding.Mesh:
  """Builds a mesh; one -1 entry is filled from the device count.

  Args:
    shape: sizes per axis, e.g. (2, 2, 2) or (-1, 1, 1); missing trailing axes
      are 1. A mesh smaller than the device count uses the first devices, as
      long as its size divides the device count.
    axes: mesh axis names.
    devices: the devices to lay it on (default `jax.devices()`), e.g. a TPU
      topology's compile-only devices (`tokjax.compile`).

  Raises:
    ValueError: a shape that cannot be laid on the available devices.
  """
  shape = tuple(int(s) for s in shape) + (1,) * (len(axes) - len(shape))
  if len(shape) != len(axes):
    raise ValueError(f"mesh shape {shape} has more entries than mesh axes {axes}.")
  devices = jax.devices() if devices is None else list(devices)
  n = len(devices)
  known = math.prod(s for s in shape if s != -1)
  if shape.count(-1) > 1 or any(s == 0 or s < -1 for s in shape):
    raise ValueError(f"mesh shape {shape}: use positive sizes and at most one -1.")
  if -1 in shape:
    if n % known:
      raise ValueError(
          f"mesh shape {shape}: {n} devices are not divisible by {known}; change the mesh "
          f"(--config.mesh.shape, or tokjax.sample --mesh) so the fixed sizes divide {n}, or "
          f"the device count (on CPU: --cpu_devices={known} or a multiple)."
      )
    shape = tuple(n // known if s == -1 else s for s in shape)
  size = math.prod(shape)
  if n % size:
    raise ValueError(
        f"mesh shape {shape} needs {size} devices, which does not divide the {n} "
        f"available; set --config.mesh.shape to sizes whose product divides {n} "
        "(or use -1 for one axis)."
    )
  # Auto axes: XLA's sharding propagation (GSPMD) places activations.
  auto = (jax.sharding.AxisType.Auto,) * len(axes)
  return jax.make_mesh(shape, axes, axis_types=auto, devices=devices[:size])


def _mesh_spec(logical: P, rules: dict) -> P:
  return P(*(rules.get(name) if name is not None else None for name in logical))


def logical_to_sharding(logical_specs, mesh, rules) -> object:
  """Maps a tree of logical PartitionSpecs to NamedShardings on `mesh`."""
  rules = dict(rules)
  return jax.tree.map(
      lambda spec: NamedSharding(mesh, _mesh_spec(spec, rules)),
      logical_specs,
      is_leaf=lambda x: isinstance(x, P),
  )


def state_shardings(abstract_state, mesh, rules):
  """NamedShardings for an abstract nnx.State whose params name logical axes.

  Raises:
    ValueError: a parameter dimension not divisible by its mesh axes.
  """
  specs = nnx.get_partition_spec(abstract_state)
  shardings = logical_to_sharding(specs, mesh, rules)
  check_divisible(abstract_state, shardings)
  return shardings


def check_divisible(abstract_tree, shardings) -> None:
  """Raises ValueError naming any array dimension its mesh axes don't divide."""
  flat, _ = jax.tree_util.tree_flatten_with_path(abstract_tree)
  for (path, leaf), sharding in zip(flat, jax.tree.leaves(shardings)):
    for dim, axes in zip(leaf.shape, sharding.spec):
      size = axes_size(sharding.mesh, axes)
      if dim % size:
        raise ValueError(
            f"{jax.tree_util.keystr(path)} has a dimension of {dim} that mesh axes "
            f"{axes} (size {size}) do not divide. Change the model width or "
            "--config.mesh.shape / --config.logical_axis_rules."
        )


def axes_size(mesh, axes) -> int:
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([mesh.shape[a] for a in axes]))


def batch_sharding(mesh, rules) -> NamedSharding:
  """Sharding of an int32[batch, seq_len] batch: batch over the data axes."""
  return NamedSharding(mesh, _mesh_spec(P("batch", None), dict(rules)))


_ACTIVATION_RULES = contextvars.ContextVar("activation_rules", default=None)


@contextlib.contextmanager
def activation_sharding(mesh, rules):
  """While tracing under this context, `constrain` pins activations on `mesh`
  by `rules` (the config's logical_axis_rules). Enter it inside the function
  that `jax.jit` traces, e.g. the train step."""
  token = _ACTIVATION_RULES.set((mesh, dict(rules)))
  try:
    yield
  finally:
    _ACTIVATION_RULES.reset(token)


def constrain(x: jax.Array, logical_axes: tuple[str | None, ...]) -> jax.Array:
  """`jax.lax.with_sharding_constraint` by logical axis names, one per axis of x.

  Under `activation_sharding` the names map to mesh axes by its rules; outside
  one (a model called eagerly, or a sampler), x is returned unchanged.
  """
  context = _ACTIVATION_RULES.get()
  if context is None:
    return x
  mesh, rules = context
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, _mesh_spec(P(*logical_axes), rules)))


def fsdp_report(abstract_state, shardings) -> float:
  """Fraction of parameter elements that are sharded (not fully replicated)."""
  sizes = [x.size for x in jax.tree.leaves(abstract_state)]
  sharded = [any(a is not None for a in s.spec) for s in jax.tree.leaves(shardings)]
  total = sum(sizes)
  return sum(n for n, s in zip(sizes, sharded) if s) / max(total, 1)
