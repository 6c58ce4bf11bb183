"""Checkpoints: orbax CheckpointManager over the train state, data position and config.

The data position is the train iterator's state as JSON: the same in every
process (`data.train_iterator` walks one sequence of global batches), so a run
saved by N processes resumes on any other number, onto any mesh (orbax
reshards the state to the restoring run's shardings).

Orbax writes each step into a temporary directory and renames it only once
complete, so a crash or SIGKILL mid-save leaves the previous checkpoint intact.
A checkpoint damaged afterwards (a truncated or garbled file) is reported and
skipped: the run resumes from the newest one that reads. A failed write (disk
full, unwritable directory) is a `CheckpointWriteError` naming the intact ones.
The config is saved beside the state, and a restore under a config that changes
the model, objective, tokenizer or optimizer shape fails with a clear error.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from tokjax.data.datasets import data_signature
from tokjax.models.transformer import TransformerConfig

# config.model entries that change how a step runs, not what the state holds:
# a run resumes, samples or evaluates under other values of these.
RUNTIME_MODEL_KEYS = ("dtype", "attention_impl", "remat", "kv_block_len")


def signature(config: dict) -> dict:
  """The config entries that fix the shapes and meaning of the saved state.

  config.model enters without RUNTIME_MODEL_KEYS, and a model setting that the
  config lacks (a checkpoint written before the setting existed) counts as its
  TransformerConfig default, and so does a data setting (`data_signature`).
  Values are as JSON stores them (a tuple setting
  such as fsq.code_levels compares as the list a saved config holds).
  """
  keys = ("objective", "seq_len", "batch_size", config["objective"])
  defaults = {f.name: f.default for f in dataclasses.fields(TransformerConfig)
              if f.default is not dataclasses.MISSING}
  model = {**defaults, **(config.get("model") or {})}
  return json.loads(json.dumps({
      "model": {k: v for k, v in model.items() if k not in RUNTIME_MODEL_KEYS},
      "data": data_signature(config.get("data")), **{k: config.get(k) for k in keys}}))


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (disk full, unwritable directory)."""


class Checkpointer:
  """Saves and restores {state, data position, config} under WORKDIR/checkpoints."""

  def __init__(self, workdir: str, *, max_to_keep: int = 3, async_save: bool = True):
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    try:
      os.makedirs(directory, exist_ok=True)
    except OSError as error:
      raise CheckpointWriteError(f"Cannot create the checkpoint directory {directory} "
                                 f"({error}); pass a writable --workdir.") from error
    self.manager = ocp.CheckpointManager(
        directory,
        item_names=("state", "data_position", "config"),
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save
        ),
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator, config_dict: dict) -> None:
    """Starts an (async) save of `state`, the iterator position and the config.

    Raises:
      CheckpointWriteError: the disk is full or the directory unwritable (the
        write of an earlier async save may surface here too).
    """
    with self._writing(step):
      self.manager.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state),
              data_position=ocp.args.JsonSave(data_iterator.get_state()),
              config=ocp.args.JsonSave(config_dict),
          ),
      )

  @contextlib.contextmanager
  def _writing(self, step: int | None):
    try:
      yield
    except Exception as error:
      done = sorted(self.manager.all_steps())
      what = f"checkpoint {step}" if step is not None else "a checkpoint"
      raise CheckpointWriteError(
          f"Could not write {what} to {self.manager.directory}: {type(error).__name__}: "
          f"{error}. Orbax writes into a temporary directory first, so the finished "
          f"checkpoints {done} are intact. Free disk space (or fix the directory's "
          "permissions), then rerun the same command to resume.") from error

  def restore(self, abstract_state, config_dict: dict, data_iterator=None):
    """Restores the latest readable checkpoint onto `abstract_state`'s shardings.

    A given `data_iterator` is moved to the saved position in place. A
    checkpoint that cannot be read (truncated or garbled files) is reported,
    moved to WORKDIR/corrupt_checkpoints/STEP, and the one before it is
    tried. Returns (state, step), or (None, None) when there is no checkpoint.

    Raises:
      ValueError: the checkpoint was written by an incompatible config.
      RuntimeError: checkpoints exist but none can be read.
    """
    def read(step):
      items = dict(state=ocp.args.StandardRestore(abstract_state))
      if data_iterator is not None:
        items["data_position"] = ocp.args.JsonRestore()
      restored = self.manager.restore(step, args=ocp.args.Composite(**items))
      if data_iterator is not None:
        data_iterator.set_state(restored["data_position"])
      return restored["state"]

    if self.manager.latest_step() is None:
      return None, None
    return self._first_readable(read, config_dict, quarantine=True)

  def restore_params(self, abstract_params, config_dict: dict):
    """Restores only the parameters of the latest readable checkpoint, onto
    their shardings (an unreadable one is reported and skipped, not moved).

    For sampling and evaluation: the optimizer state is never read. Returns
    (params, step).

    Raises:
      FileNotFoundError: no checkpoint in the workdir.
      ValueError: the checkpoint was written by an incompatible config.
      RuntimeError: checkpoints exist but none can be read.
    """
    item = {"params": abstract_params}
    args = ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)

    def read(step):
      return self.manager.restore(step, args=ocp.args.Composite(state=args))["state"]["params"]

    self._latest()  # Raises FileNotFoundError without a checkpoint.
    return self._first_readable(read, config_dict, quarantine=False)

  def _first_readable(self, read, config_dict: dict | None, quarantine: bool):
    """(read(step), step) for the newest step that reads, checking each one's
    config against config_dict; with config_dict None, (its config, step)."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        saved = self._config_at(step)
      except Exception as error:  # Orbax raises many kinds on damaged files.
        self._report(step, error, quarantine)
        continue
      if config_dict is None:
        return saved, step
      check_compatible(saved, config_dict, self.manager.directory)
      try:
        return read(step), step
      except Exception as error:
        self._report(step, error, quarantine)
    raise RuntimeError(
        f"No checkpoint in {self.manager.directory} can be read (see the warnings above). "
        "Start a new run with another --workdir, or move the checkpoints directory aside.")

  def _report(self, step: int, error: Exception, quarantine: bool) -> None:
    """Warns about unreadable checkpoint `step`; with `quarantine`, moves it
    to WORKDIR/corrupt_checkpoints/STEP so that the step can be saved again."""
    directory = os.path.join(str(self.manager.directory), str(step))
    moved = ""
    if quarantine:
      target = os.path.join(os.path.dirname(str(self.manager.directory)), "corrupt_checkpoints")
      if jax.process_index() == 0:
        os.makedirs(target, exist_ok=True)
        shutil.move(directory, os.path.join(target, f"{step}-{int(time.time())}"))
      multihost_utils.sync_global_devices("tokjax_quarantine")
      self.manager.reload()
      moved = f"; moved to {target}"
    print(f"WARNING: checkpoint {directory} cannot be read ({type(error).__name__}: "
          f"{str(error)[:200]}){moved}; trying the previous one.", flush=True)

  def saved_config(self) -> dict:
    """The config dict stored with the latest checkpoint whose config reads.

    Raises:
      FileNotFoundError: no checkpoint in the workdir.
      RuntimeError: checkpoints exist but none can be read.
    """
    self._latest()
    return self._first_readable(lambda step: None, None, quarantine=False)[0]

  def _latest(self) -> int:
    step = self.manager.latest_step()
    if step is None:
      raise FileNotFoundError(
          f"No checkpoint in {self.manager.directory}; train first with "
          "python -m tokjax.train --workdir DIR, then pass the same --workdir."
      )
    return step

  def _config_at(self, step: int) -> dict:
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]

  def wait(self) -> None:
    """Waits for an async save (raises CheckpointWriteError as `save`)."""
    with self._writing(None):
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
