"""Rebuilds a trained run from its workdir alone: config, experiment, params."""
from __future__ import annotations

import ml_collections

from tokjax.checkpoint import Checkpointer, abstract_with_shardings
from tokjax.config import apply_mesh_preset, base_config, sampler_config
from tokjax.experiment import Experiment


def load_run(workdir: str, sampler_overrides: dict | None = None, mesh: str | None = None):
  """Returns (Experiment, params, step) from the latest checkpoint in `workdir`.

  Only the parameters are restored; a BPE run's tokenizer is its own copy,
  WORKDIR/tokenizer.json. The run's saved settings are kept
  (top-level settings and sampler sections it lacks take today's defaults), and `sampler_overrides`, a flat
  dict such as {'ar.top_p': 0.9, 'prompt': 'ROMEO:'}, is applied on top.
  `mesh`, a key of `sharding.MESH_PRESETS`, lays the parameters out by that
  preset instead of the run's mesh (e.g. 'fsdp_tp': tensor parallel).

  Raises:
    FileNotFoundError: no checkpoint in `workdir`, or a BPE run with neither
      its tokenizer.json nor the trained file.
    ValueError: the checkpoint was written by an incompatible config; an
      unknown mesh preset.
  """
  ckpt = Checkpointer(workdir)
  config = ml_collections.ConfigDict(ckpt.saved_config())
  for key, default in base_config().items():  # Settings added after the run was saved.
    if key not in config:
      config[key] = default
  sampler = sampler_config()
  sampler.update(config.sampler)
  for key, value in (sampler_overrides or {}).items():
    *path, leaf = key.split(".")
    section = sampler
    for part in path:
      section = section[part]
    section[leaf] = value
  config.sampler = sampler
  if mesh:
    apply_mesh_preset(config, mesh)
  exp = Experiment.create(config, workdir=workdir)
  abstract = abstract_with_shardings(exp.abstract_state, exp.state_shardings)
  params, step = ckpt.restore_params(abstract["params"], config.to_dict())
  ckpt.close()
  return exp, params, step
