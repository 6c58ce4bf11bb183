"""Everything a run derives from its config: mesh, model, objective, shardings.

`Experiment.create(config)` is shared by training, evaluation and sampling, so
the three agree on shapes and shardings by construction.
"""
from __future__ import annotations

import dataclasses
import logging

import jax
import ml_collections
import optax
from flax import nnx

from tokjax import sharding
from tokjax.config import check_image_windows, validate
from tokjax.data import BPETokenizer, ByteTokenizer, PixelTokenizer
from tokjax.models import TransformerConfig
from tokjax.objectives import Objective, make_objective, make_tokenizer


def make_optimizer(config: ml_collections.ConfigDict):
  """AdamW with linear warmup, cosine decay and global-norm clipping.

  Returns (optax.GradientTransformation, learning-rate schedule). Weight decay
  applies to matrices only (ndim >= 2), not to norm scales.
  """
  o = config.optimizer
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=o.learning_rate,
      warmup_steps=o.warmup_steps,
      decay_steps=max(config.num_train_steps, o.warmup_steps + 1),
      end_value=o.learning_rate * o.min_lr_ratio,
  )
  tx = optax.chain(
      optax.clip_by_global_norm(o.grad_clip_norm),
      optax.adamw(
          schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay,
          mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params),
      ),
  )
  return tx, schedule


@dataclasses.dataclass
class Experiment:
  """A run's static pieces. `state` pytrees are {'step', 'params', 'opt_state'}."""

  config: ml_collections.ConfigDict
  tokenizer: ByteTokenizer | BPETokenizer | PixelTokenizer  # Or an FSQTokenizer of FSQ codes.
  objective: Objective
  model_config: TransformerConfig
  mesh: jax.sharding.Mesh
  optimizer: optax.GradientTransformation
  lr_schedule: optax.Schedule
  graphdef: nnx.GraphDef
  abstract_state: dict
  state_shardings: dict
  batch_sharding: jax.sharding.NamedSharding

  @classmethod
  def create(cls, config: ml_collections.ConfigDict, devices=None, *,
             workdir: str = "") -> "Experiment":
    """`devices`: the mesh's devices (default `jax.devices()`; `tokjax.compile`
    passes a target topology's). `workdir`: the run's, where a BPE run keeps
    its tokenizer (`make_tokenizer`); '' for none."""
    validate(config)
    tokenizer = make_tokenizer(config, workdir)
    check_image_windows(config, tokenizer)
    objective = make_objective(config, tokenizer)
    objective.pick_sampler(config.sampler.name)  # Fails early on a sampler that does not fit.
    mesh = sharding.make_mesh(config.mesh.shape, tuple(config.mesh.axes), devices)
    rules = tuple(config.logical_axis_rules)
    model_config = TransformerConfig(
        vocab_size=tokenizer.vocab_size,
        max_seq_len=config.seq_len,
        time_conditioning=objective.uses_time,
        **config.model,
    )
    optimizer, lr_schedule = make_optimizer(config)
    init = _init_fn(objective, model_config, optimizer, config.seed)
    graphdef = nnx.graphdef(nnx.eval_shape(lambda: objective.build_model(model_config, nnx.Rngs(0))))
    abstract_state = jax.eval_shape(init)
    param_shardings = sharding.state_shardings(abstract_state["params"], mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)
    _check_batch(config.batch_size, batch_sharding)
    _warn_if_replicated(abstract_state["params"], param_shardings, rules)
    replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    state_shardings = {
        "step": replicated,
        "params": param_shardings,
        "opt_state": optax.tree_map_params(
            optimizer,
            lambda _, s: s,
            abstract_state["opt_state"],
            param_shardings,
            transform_non_params=lambda _: replicated,
        ),
    }
    return cls(
        config, tokenizer, objective, model_config, mesh, optimizer, lr_schedule,
        graphdef, abstract_state, state_shardings, batch_sharding,
    )

  def init_state(self) -> dict:
    """Initialises the train state directly into its shardings (no host copy)."""
    init = _init_fn(self.objective, self.model_config, self.optimizer, self.config.seed)
    return jax.jit(init, out_shardings=self.state_shardings)()

  def activation_sharding(self):
    """The context a jitted step traces under, so that the model's
    `sharding.constrain` calls pin activations by the config's logical_axis_rules."""
    return sharding.activation_sharding(self.mesh, tuple(self.config.logical_axis_rules))

  def model(self, params) -> nnx.Module:
    """The objective's model (the backbone, or modules around it) bound to `params`."""
    return nnx.merge(self.graphdef, params)


def _init_fn(objective, model_config, optimizer, seed):
  def init():
    params = nnx.state(objective.build_model(model_config, nnx.Rngs(seed)), nnx.Param)
    return {"step": jax.numpy.zeros((), jax.numpy.int32), "params": params,
            "opt_state": optimizer.init(params)}
  return init


def _check_batch(batch_size: int, batch_sharding) -> None:
  shards = sharding.axes_size(batch_sharding.mesh, batch_sharding.spec[0])
  if batch_size % shards or batch_size % jax.process_count():
    raise ValueError(
        f"batch_size={batch_size} must be divisible by the {shards} data shards of "
        f"the mesh and the {jax.process_count()} processes; change --config.batch_size "
        "or --config.mesh.shape."
    )


def _warn_if_replicated(abstract_params, shardings, rules) -> None:
  """Warns when FSDP is requested but most parameters stay replicated."""
  if not any(mesh_axes == "fsdp" for _, mesh_axes in rules):
    return
  fraction = sharding.fsdp_report(abstract_params, shardings)
  if fraction < 0.5:
    logging.warning(
        "FSDP requested but only %.0f%% of parameters are sharded; check "
        "logical_axis_rules.", 100 * fraction,
    )
