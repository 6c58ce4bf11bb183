"""Checkpoints: orbax CheckpointManager over the train state, data iterator and config.

Orbax writes each step into a temporary directory and renames it only once
complete, so a crash or SIGKILL mid-save leaves the previous checkpoint intact.
The config is saved beside the state, and a restore under a config that changes
the model, objective, tokenizer or optimizer shape fails with a clear error.
"""
from __future__ import annotations

import dataclasses
import json
import os

import grain
import jax
import orbax.checkpoint as ocp

from tokjax.models.transformer import TransformerConfig

# config.model entries that change how a step runs, not what the state holds:
# a run resumes, samples or evaluates under other values of these.
RUNTIME_MODEL_KEYS = ("dtype", "attention_impl", "remat")


def signature(config: dict) -> dict:
  """The config entries that fix the shapes and meaning of the saved state.

  config.model enters without RUNTIME_MODEL_KEYS, and a model setting that the
  config lacks (a checkpoint written before the setting existed) counts as its
  TransformerConfig default. Values are as JSON stores them (a tuple setting
  such as fsq.code_levels compares as the list a saved config holds).
  """
  keys = ("objective", "seq_len", "batch_size", "data", config["objective"])
  defaults = {f.name: f.default for f in dataclasses.fields(TransformerConfig)
              if f.default is not dataclasses.MISSING}
  model = {**defaults, **(config.get("model") or {})}
  return json.loads(json.dumps({
      "model": {k: v for k, v in model.items() if k not in RUNTIME_MODEL_KEYS},
      **{k: config.get(k) for k in keys}}))


class Checkpointer:
  """Saves and restores {state, data iterator, config} under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
    self.manager = ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), "checkpoints"),
        item_names=("state", "data", "config"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save
        ),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, config_dict: dict) -> None:
    """Starts an (async) save of `state`, the iterator position and the config."""
    self.manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config_dict),
        ),
    )

  def restore(self, abstract_state, config_dict: dict, data_iterator=None):
    """Restores the latest checkpoint onto `abstract_state`'s shardings.

    A given `data_iterator` is moved to the saved position in place. Returns
    (state, step), or (None, None) when there is no checkpoint.

    Raises:
      ValueError: the checkpoint was written by an incompatible config.
    """
    step = self.manager.latest_step()
    if step is None:
      return None, None
    check_compatible(self.saved_config(), config_dict, self.manager.directory)
    items = dict(state=ocp.args.StandardRestore(abstract_state))
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], step

  def restore_params(self, abstract_params, config_dict: dict):
    """Restores only the parameters of the latest checkpoint, onto their shardings.

    For sampling and evaluation: the optimizer state is never read. Returns
    (params, step).

    Raises:
      FileNotFoundError: no checkpoint in the workdir.
      ValueError: the checkpoint was written by an incompatible config.
    """
    check_compatible(self.saved_config(), config_dict, self.manager.directory)
    item = {"params": abstract_params}
    args = ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)
    step = self.manager.latest_step()
    restored = self.manager.restore(step, args=ocp.args.Composite(state=args))
    return restored["state"]["params"], step

  def saved_config(self) -> dict:
    """The config dict stored with the latest checkpoint.

    Raises:
      FileNotFoundError: no checkpoint in the workdir.
    """
    step = self.manager.latest_step()
    if step is None:
      raise FileNotFoundError(
          f"No checkpoint in {self.manager.directory}; train first with "
          "python -m tokjax.train --workdir DIR, then pass the same --workdir."
      )
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def check_compatible(saved: dict, current: dict, directory) -> None:
  """Raises ValueError listing the config entries that differ from the checkpoint's."""
  saved, current = signature(saved), signature(current)
  diffs = [
      f"{key}: checkpoint has {saved.get(key)!r}, config has {current.get(key)!r}"
      for key in current
      if saved.get(key) != current.get(key)
  ]
  if diffs:
    raise ValueError(
        f"The checkpoint in {directory} was written by a different config:\n  "
        + "\n  ".join(diffs)
        + "\nUse a new --workdir, or restore the original settings."
    )


def abstract_with_shardings(tree, shardings):
  """ShapeDtypeStructs carrying the target shardings, for restore."""
  return jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
  )
