"""Know before you rent: compile the train step ahead of time for a target topology.

  python -m tokjax.compile --config configs/gpt2.py:size=1b --topology v5p-64 \
      [--hbm_gib=95] [--config.batch_size=512 ...]

compiles the very step `tokjax.trainer` runs (`trainer.make_train_step`: the
same function, in/out shardings and donation) for the topology's devices, on
this machine, from abstract inputs (`jax.ShapeDtypeStruct`s that carry their
shardings), as MaxText's `train_compile` does. Nothing is allocated. It prints
per device: parameter, optimizer-state, activation/temporary and total memory,
the step's FLOPs, the device's HBM and whether the step fits; it exits 1 with
suggestions (more fsdp, remat, bfloat16, a smaller per-device batch) when not.

Topologies (`get_topology`):
  TPU slices, named as Google Cloud names them: `v4-N` and `v5p-N` count
  TensorCores (2 per chip, one JAX device per chip: megacore), `v5e-N` (alias
  `v5litepod-N`) and `v6e-N` count chips (1 core each). They need libtpu
  (`pip install 'tokjax[tpu]'`): `jax.experimental.topologies.get_topology_desc`
  then describes the slice's compile-only devices, on any host; run with
  JAX_PLATFORMS=cpu (the CLI sets it). libtpu warns about
  TPU_ACCELERATOR_TYPE and TPU_WORKER_HOSTNAMES; that is harmless here.
  `cpu-N`: N CPU devices of this process (the CLI starts JAX with N), the same
  code path without libtpu; it has no HBM unless --hbm_gib gives one.

HBM per chip (`GENERATIONS`), from Google Cloud's TPU system architecture
pages (cloud.google.com/tpu/docs/v4, /v5p, /v5e, /v6e): v4 32 GiB, v5p 95 GiB,
v5e 16 GiB, v6e 32 GiB. The runtime keeps a little HBM for itself, so a total
within a few percent of it may still fail on the chip. libtpu's compiler
itself refuses a step that overflows HBM; that is reported as `DoesNotFit` too.

The slice's torus shape follows Google's published slice shapes: 2-D slices
(v5e, v6e) double their smaller side from 1x1 (2x2, 2x4, 4x4, 4x8, ...); 3-D
slices (v4, v5p) start at 2x2x1 and double their smallest side, the last of
equals first (2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ...).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import re
import time

import jax
import jax.numpy as jnp
import ml_collections
from absl import app, flags
from ml_collections import config_flags

from tokjax.checkpoint import abstract_with_shardings
from tokjax.device_peak import published_peak
from tokjax.experiment import Experiment
from tokjax.metrics import model_flops_per_token
from tokjax.sharding import axes_size
from tokjax.trainer import make_train_step

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Generation:
  """A TPU generation: libtpu's topology prefix, torus dims, cores per chip as
  slice names count them, and HBM per chip in GiB."""

  prefix: str
  dims: int
  cores_per_chip: int
  hbm_gib: float


GENERATIONS = {
    "v4": Generation("v4", 3, 2, 32),
    "v5p": Generation("v5p", 3, 2, 95),
    "v5e": Generation("v5e", 2, 1, 16),
    "v5litepod": Generation("v5e", 2, 1, 16),
    "v6e": Generation("v6e", 2, 1, 32),
}
_NAME = re.compile(r"([a-z0-9]+)-(\d+)")
EXAMPLES = "v5p-8, v5p-64, v4-32, v5e-16, v6e-8 or cpu-8"


class DoesNotFit(RuntimeError):
  """The step needs more memory per device than the device's HBM."""


@dataclasses.dataclass(frozen=True)
class Topology:
  """A target's devices (compile-only TPU devices, or CPU devices) and HBM.

  Attributes:
    name: as given, e.g. 'v5p-64'.
    devices: one per JAX device (a TPU chip, or a CPU device).
    hbm_bytes: memory per device in bytes; None when unknown (cpu-N).
  """

  name: str
  devices: tuple
  hbm_bytes: int | None

  @property
  def num_hosts(self) -> int:
    return len({d.process_index for d in self.devices})


def parse_topology(name: str) -> tuple[str, int]:
  """'v5p-64' -> ('v5p', 64); 'cpu-8' -> ('cpu', 8).

  Raises:
    ValueError: a name that is not GENERATION-N for a known generation or cpu.
  """
  match = _NAME.fullmatch(name.strip().lower())
  if not match or match[1] not in (*GENERATIONS, "cpu") or int(match[2]) < 1:
    raise ValueError(f"Unknown topology {name!r}; use a TPU slice name such as {EXAMPLES} "
                     f"(generations: {', '.join(GENERATIONS)}).")
  return match[1], int(match[2])


def slice_shape(chips: int, dims: int) -> tuple[int, ...]:
  """The torus shape of a slice of `chips` chips, 2-D or 3-D (module docstring).

  Raises:
    ValueError: a chip count that is not a power of two (>= 4 for 3-D slices).
  """
  smallest = 4 if dims == 3 else 1
  if chips < smallest or chips & (chips - 1):
    raise ValueError(f"{chips} chips is not a {dims}-D TPU slice: use a power of two "
                     f"chips, at least {smallest}.")
  shape = [2, 2, 1] if dims == 3 else [1, 1]
  while math.prod(shape) < chips:
    side = min(shape)
    last = max(i for i, s in enumerate(shape) if s == side)
    shape[last] *= 2
  return tuple(shape)


def get_topology(name: str, hbm_gib: float | None = None) -> Topology:
  """The devices of topology `name` (see the module docstring) and their HBM.

  Args:
    name: e.g. 'v5p-64' or 'cpu-8'.
    hbm_gib: HBM per device in GiB, overriding the generation's (cpu-N has none).

  Raises:
    ValueError: an unknown name, a slice size that does not exist, or cpu-N
      with more devices than this process has.
    ImportError: a TPU slice without libtpu installed.
  """
  generation, count = parse_topology(name)
  hbm = None if hbm_gib is None else int(hbm_gib * GIB)
  if generation == "cpu":
    return Topology(name, _cpu_devices(count), hbm)
  spec = GENERATIONS[generation]
  if count % spec.cores_per_chip:
    raise ValueError(f"{name}: {generation} slice names count {spec.cores_per_chip} cores per "
                     f"chip, so N must be a multiple of {spec.cores_per_chip}, e.g. {generation}-8.")
  shape = slice_shape(count // spec.cores_per_chip, spec.dims)
  return Topology(name, _tpu_devices(spec.prefix, shape),
                  int(spec.hbm_gib * GIB) if hbm is None else hbm)


def _cpu_devices(n: int) -> tuple:
  devices = jax.devices("cpu")
  if len(devices) < n:
    raise ValueError(
        f"cpu-{n} needs {n} CPU devices but this process has {len(devices)}; run "
        f"`python -m tokjax.compile --topology cpu-{n}` (it starts JAX with {n}), or set "
        f"XLA_FLAGS=--xla_force_host_platform_device_count={n} before JAX starts.")
  return tuple(devices[:n])


def _tpu_devices(prefix: str, shape: tuple[int, ...]) -> tuple:
  if importlib.util.find_spec("libtpu") is None:
    raise ImportError(
        "TPU topologies need libtpu: pip install 'tokjax[tpu]' (the libtpu release that "
        "jax's own `tpu` extra pins), or compile for cpu-N instead.")
  from jax.experimental import topologies  # Loads libtpu: only for TPU targets.
  name = f"{prefix}:{'x'.join(map(str, shape))}"
  return tuple(topologies.get_topology_desc(platform="tpu", topology_name=name).devices)


@dataclasses.dataclass(frozen=True)
class MemoryReport:
  """One compiled step on one topology. Bytes are per device.

  Attributes:
    param_bytes / opt_state_bytes: the shards of the parameters and of the
      optimizer state (AdamW moments) each device holds, from their shardings.
    argument_bytes / output_bytes / alias_bytes / temp_bytes / code_bytes:
      `compiled.memory_analysis()`: inputs (state and batch), outputs, outputs
      that reuse donated inputs, activations and temporaries, program code.
    hbm_bytes: the device's memory; None when unknown.
    flops: the step's floating-point operations per device, XLA's
      `cost_analysis()`: rematerialised work included, but a loop body (the
      scanned layers of `scan_layers`) counted once, not once per layer.
    model_flops: the model's training FLOPs per device per step,
      `metrics.model_flops_per_token` (6 N + 12 L d T) x tokens / devices;
      None for models that are not the transformer over the window's tokens.
    peak_flops: the device's published dense peak FLOP/s (`device_peak`), None
      when unknown (CPU); model_flops / peak_flops bounds the step time below.
    compile_seconds: wall time of `lower(...).compile()`.
  """

  topology: str
  device_kind: str
  mesh: dict
  per_device_batch: int
  param_bytes: int
  opt_state_bytes: int
  argument_bytes: int
  output_bytes: int
  alias_bytes: int
  temp_bytes: int
  code_bytes: int
  hbm_bytes: int | None
  flops: float
  model_flops: float | None
  peak_flops: float | None
  compile_seconds: float

  @property
  def total_bytes(self) -> int:
    """Peak estimate: inputs + outputs not aliased to donated inputs + temps + code."""
    return (self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes
            + self.code_bytes)

  @property
  def fits(self) -> bool:
    return self.hbm_bytes is None or self.total_bytes <= self.hbm_bytes

  def format(self) -> str:
    """A few lines for people: sizes in GiB (MiB below 1 GiB), FLOPs per device."""
    mesh = " x ".join(f"{axis}={size}" for axis, size in self.mesh.items())
    hbm = "unknown" if self.hbm_bytes is None else format_bytes(self.hbm_bytes)
    rows = [
        f"topology {self.topology}: {math.prod(self.mesh.values())} x {self.device_kind}",
        f"  mesh {mesh}; {self.per_device_batch} sequences per device",
        "  per device:",
        f"  parameters          {format_bytes(self.param_bytes)}",
        f"  optimizer state     {format_bytes(self.opt_state_bytes)}",
        f"  activations, temps  {format_bytes(self.temp_bytes)}",
        f"  total               {format_bytes(self.total_bytes)}"
        f"   (HBM {hbm}: {'fits' if self.fits else 'DOES NOT FIT'})",
        f"  step FLOPs          {self.flops:.3e} by XLA's cost analysis (a scanned "
        "layer counted once)",
    ]
    if self.model_flops is not None:
      rows.append(f"  model FLOPs         {self.model_flops:.3e} (6 N + 12 L d T per token)")
      if self.peak_flops:
        rows.append(f"  step time >= {self.model_flops / self.peak_flops:.3f} s at the "
                    f"published peak, {self.peak_flops / 1e12:.0f} TFLOP/s")
    rows.append(f"  compiled in {self.compile_seconds:.1f} s")
    return "\n".join(rows)


def format_bytes(n: int) -> str:
  """'1.50 GiB' from 1.5 * 2**30; MiB below 1 GiB."""
  return f"{n / GIB:.2f} GiB" if n >= GIB else f"{n / 2**20:.2f} MiB"


def sharded_bytes(tree) -> int:
  """Bytes one device holds of a tree of ShapeDtypeStructs with NamedShardings
  (the largest shard's size: the shard shape rounds up)."""
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * x.dtype.itemsize
             for x in jax.tree.leaves(tree))


def dot_types(compiled_hlo: str) -> list[tuple[tuple[str, ...], str]]:
  """(operand element types, result element type) of every dot in XLA's
  optimized HLO text (`jitted.lower(...).compile().as_text()`), e.g.
  (('bf16', 'bf16'), 'f32'). A low-precision dot listed with float32 operands
  was upcast by XLA, which had no native kernel for its operands' layout."""
  dots = []
  for body in compiled_hlo.split("\n\n"):  # One computation each.
    types = dict(re.findall(r"%(\S+) = (\w+)\[", body))
    for result, operands in re.findall(r"= (\w+)\[[^=]*? dot\(([^)]*)\)", body):
      dots.append((tuple(types[o.strip().lstrip("%")] for o in operands.split(",")), result))
  return dots


def compile_train_step(config: ml_collections.ConfigDict, topology: Topology) -> MemoryReport:
  """Compiles `trainer.make_train_step` for `topology` from abstract inputs.

  The state is `Experiment.abstract_state` on its shardings; the batch is
  int32[batch_size, seq_len] on the batch sharding. The report may say the
  step does not fit (see `check_fits`).

  Raises:
    ValueError: a mesh that does not use every device of the topology (or
      that `Experiment.create` rejects), or a batch the topology's hosts cannot
      split evenly.
    DoesNotFit: libtpu's compiler ran out of HBM.
  """
  exp = Experiment.create(config, topology.devices)
  _check_layout(config, exp.mesh, topology)
  state = abstract_with_shardings(exp.abstract_state, exp.state_shardings)
  batch = jax.ShapeDtypeStruct((config.batch_size, config.seq_len), jnp.int32,
                               sharding=exp.batch_sharding)
  start = time.perf_counter()
  try:
    compiled = make_train_step(exp).lower(state, batch).compile()
  except jax.errors.JaxRuntimeError as error:
    if "RESOURCE_EXHAUSTED" not in str(error):
      raise
    message = str(error).strip().splitlines()[0]
    raise DoesNotFit(f"{topology.name}: the compiler ran out of device memory ({message}).\n"
                     + _advice(config, exp, state, topology.hbm_bytes)) from error
  seconds = time.perf_counter() - start
  memory = compiled.memory_analysis()
  return MemoryReport(
      topology=topology.name,
      device_kind=topology.devices[0].device_kind,
      mesh=dict(exp.mesh.shape),
      per_device_batch=_per_device_batch(config, exp),
      param_bytes=sharded_bytes(state["params"]),
      opt_state_bytes=sharded_bytes(state["opt_state"]),
      argument_bytes=memory.argument_size_in_bytes,
      output_bytes=memory.output_size_in_bytes,
      alias_bytes=memory.alias_size_in_bytes,
      temp_bytes=memory.temp_size_in_bytes,
      code_bytes=memory.generated_code_size_in_bytes,
      hbm_bytes=topology.hbm_bytes,
      flops=float(compiled.cost_analysis().get("flops", 0.0)),
      model_flops=_model_flops(config, exp, len(topology.devices)),
      peak_flops=_peak(config, topology.devices[0]),
      compile_seconds=seconds,
  )


def check_fits(report: MemoryReport, config: ml_collections.ConfigDict) -> None:
  """Raises DoesNotFit, saying what to change, when the step's total memory per
  device exceeds the device's HBM."""
  if report.fits:
    return
  state_first = report.param_bytes + report.opt_state_bytes > report.temp_bytes
  raise DoesNotFit(
      f"{report.topology}: the train step needs {report.total_bytes / GIB:.2f} GiB per "
      f"device, more than its {report.hbm_bytes / GIB:.2f} GiB of HBM.\n"
      + _suggestions(config, report.mesh, report.per_device_batch, state_first))


def _check_layout(config, mesh, topology: Topology) -> None:
  n = len(topology.devices)
  if mesh.size != n:
    raise ValueError(
        f"mesh {dict(mesh.shape)} uses {mesh.size} of {topology.name}'s {n} devices; set "
        f"--config.mesh.shape to sizes whose product is {n}, e.g. with one -1 entry.")
  if config.batch_size % topology.num_hosts:
    raise ValueError(
        f"batch_size={config.batch_size} does not split over {topology.name}'s "
        f"{topology.num_hosts} hosts; set --config.batch_size to a multiple of "
        f"{topology.num_hosts}.")


def _per_device_batch(config, exp: Experiment) -> int:
  return config.batch_size // axes_size(exp.mesh, exp.batch_sharding.spec[0])


def _model_flops(config, exp: Experiment, num_devices: int) -> float | None:
  if not exp.objective.transformer_flops:
    return None
  per_token = model_flops_per_token(config, exp.abstract_state["params"])
  return per_token * config.batch_size * config.seq_len / num_devices


def _peak(config, device) -> float | None:
  # TPUs multiply float32 in bfloat16 passes at JAX's default precision.
  dtype = "bfloat16" if device.platform == "tpu" else config.model.dtype
  return published_peak(device.device_kind, dtype)[0]


def _advice(config, exp: Experiment, state, hbm_bytes: int | None) -> str:
  """Suggestions when the compiler, not `check_fits`, found the step too big:
  the state comes first when it alone takes over half the HBM."""
  state_bytes = sharded_bytes(state["params"]) + sharded_bytes(state["opt_state"])
  state_first = hbm_bytes is None or 2 * state_bytes > hbm_bytes
  return _suggestions(config, dict(exp.mesh.shape), _per_device_batch(config, exp), state_first)


def _suggestions(config, mesh: dict, per_device_batch: int, state_first: bool) -> str:
  """What to change, the larger part first: the state (parameters and optimizer
  state) or the activations."""
  m = config.model
  state = []
  if mesh.get("data", 1) > 1:
    state.append("shard the parameters and optimizer state instead of replicating them: "
                 "mesh=fsdp (--config.mesh.shape='(1,-1,1)') or mesh=fsdp_tp")
  if m.param_dtype == "float32":
    state.append("--config.model.param_dtype=bfloat16 (halves parameters and AdamW moments)")
  activations = []
  if m.remat != "full":
    scan = "" if m.scan_layers else " --config.model.scan_layers=True"
    activations.append(f"--config.model.remat=full{scan} (recompute each block's "
                       "activations in the backward pass)")
  if m.dtype == "float32":
    activations.append("--config.model.dtype=bfloat16 (activations in bfloat16)")
  if per_device_batch > 1:
    activations.append(f"a smaller per-device batch: --config.batch_size="
                       f"{config.batch_size // 2} ({per_device_batch // 2} sequences per "
                       f"device instead of {per_device_batch})")
  items = (state + activations if state_first else activations + state)
  items.append("a larger slice (more devices), or a smaller model")
  return "Try:\n  - " + "\n  - ".join(items)


def start_jax(names) -> None:
  """Starts JAX for compiling to the topologies `names` here: on the CPU
  platform (a TPU slice's devices are compile-only descriptions), with as many
  CPU devices as the largest cpu-N. Call it before any JAX computation.

  Raises:
    ValueError: an unknown topology name.
  """
  jax.config.update("jax_platforms", "cpu")
  cpus = [count for generation, count in map(parse_topology, names) if generation == "cpu"]
  if cpus:
    jax.config.update("jax_num_cpu_devices", max(cpus))


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  cfg, name = flags.FLAGS.config, flags.FLAGS.topology
  try:
    start_jax([name])
    report = compile_train_step(cfg, get_topology(name, flags.FLAGS.hbm_gib))
    print(report.format())
    check_fits(report, cfg)
  except (ValueError, ImportError, FileNotFoundError, DoesNotFit) as error:
    raise SystemExit(f"tokjax.compile: {error}") from None


def _define_flags() -> None:
  """The CLI's flags; defined only when run as a program, so that importing
  this module (tests, benchmarks) leaves absl's global flags alone."""
  config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                  lock_config=True)
  flags.DEFINE_string("topology", None, f"Target topology, e.g. {EXAMPLES}.")
  flags.DEFINE_float("hbm_gib", None, "Memory per device in GiB (default: the TPU "
                     "generation's).")
  flags.mark_flags_as_required(["config", "topology"])


if __name__ == "__main__":
  _define_flags()
  app.run(main)
