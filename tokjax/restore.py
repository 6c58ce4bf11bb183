"""Rebuilds a trained run from its workdir alone: config, experiment, params."""
from __future__ import annotations

import ml_collections

from tokjax.checkpoint import Checkpointer, abstract_with_shardings
from tokjax.experiment import Experiment


def load_run(workdir: str, overrides: dict | None = None):
  """Returns (Experiment, params, step) from the latest checkpoint in `workdir`.

  `overrides` replaces top-level config sections that do not change the saved
  state (e.g. {'sampler': ...}).

  Raises:
    FileNotFoundError: no checkpoint in `workdir`.
  """
  ckpt = Checkpointer(workdir)
  config = ml_collections.ConfigDict(ckpt.saved_config())
  for key, value in (overrides or {}).items():
    config[key] = value
  exp = Experiment.create(config)
  abstract = abstract_with_shardings(exp.abstract_state, exp.state_shardings)
  state, step = ckpt.restore(abstract, config.to_dict())
  ckpt.close()
  return exp, state["params"], step
