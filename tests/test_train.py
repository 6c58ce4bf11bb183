"""Sharded training steps and bad-input errors, in process on 8 fake devices."""
import json
import os
import re

import jax
import numpy as np
import pytest

from tiny import ROOT, tiny_config
from tokjax.config import load_config_file
from tokjax import nonfinite, sharding, trainer
from tokjax.checkpoint import Checkpointer
from tokjax.data import load_split, to_global
from tokjax.experiment import Experiment
from tokjax.objectives import REGISTRY
from tokjax.objectives.images import ImageWindows
from tokjax.trainer import make_train_step


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


def _two_step_losses(config):
  exp = Experiment.create(config)
  step = make_train_step(exp)
  if config.data.name == "fashion_mnist":  # Random images with class tokens, no data needed.
    tok, rng = exp.tokenizer, np.random.default_rng(0)
    tokens = np.stack([tok.encode(rng.integers(0, 256, (28, 28), np.uint8), add_bos=True,
                                  label=i % 10 if tok.num_classes else None)
                       for i in range(16)]).reshape(2, 8, -1)
  else:
    tokens = load_split(config.data, "train", exp.tokenizer)[: 2 * 8 * 32].reshape(2, 8, 32)
  state, losses = exp.init_state(), []
  for batch in tokens:
    state, metrics = step(state, to_global(batch, exp.batch_sharding))
    losses.append(float(metrics["loss"]))
  return losses


def test_sharded_steps_match_single_device(data_dir):
  """One device, 8-way data parallel, and (2,2,2) FSDP x tensor parallel give
  the same losses for two steps (so the sharded gradients and updates agree)."""
  results = {}
  for name, shape, preset in [("1", (1,), "dp"), ("8", (8,), "dp"), ("2x2x2", (2, 2, 2), "fsdp_tp")]:
    config = tiny_config(data_dir, mesh=preset)
    config.mesh.shape = shape
    results[name] = _two_step_losses(config)
  np.testing.assert_allclose(results["8"], results["1"], rtol=1e-5)
  np.testing.assert_allclose(results["2x2x2"], results["1"], rtol=1e-5)
  assert results["1"][1] < results["1"][0] + 0.5  # A real update happened and it is sane.


def _config(data_dir, objective, mesh="dp"):
  """The tiny text config, or for objectives that see pixel values configs/fashion_mnist.py's."""
  if not issubclass(REGISTRY[objective], ImageWindows):
    return tiny_config(data_dir, objective=objective, mesh=mesh)
  config = load_config_file(os.path.join(ROOT, "configs", "fashion_mnist.py"),
                            f"objective={objective},size=tiny,mesh={mesh}")
  config.batch_size = 8
  return config


# Objectives whose model is not the plain backbone, or whose sampled corruption
# draws the most random numbers: their sharded steps must equal one device's.
# The rest share those code paths (test_sharded_steps_match_single_device runs
# causal; test_multi_token.py its own heads), so one compile each suffices:
# their sharded steps must run and stay finite.
MATCH_ONE_DEVICE = {"classifier", "electra", "fsq", "mae", "md4", "span_corruption"}


@pytest.mark.parametrize("objective", sorted(set(REGISTRY) - {"causal", "multi_token"}))
def test_each_objective_steps_on_the_2x2x2_mesh(data_dir, objective):
  sharded = _config(data_dir, objective, mesh="fsdp_tp")
  sharded.mesh.shape = (2, 2, 2)
  losses = _two_step_losses(sharded)
  assert np.isfinite(losses).all()
  if objective in MATCH_ONE_DEVICE:
    single = _config(data_dir, objective)
    single.mesh.shape = (1,)
    np.testing.assert_allclose(losses, _two_step_losses(single), rtol=1e-5)


def test_fsdp_tp_really_shards_parameters(data_dir):
  config = tiny_config(data_dir, mesh="fsdp_tp")
  config.mesh.shape = (2, 2, 2)
  exp = Experiment.create(config)
  specs = [s.spec for s in jax.tree.leaves(exp.state_shardings["params"])]
  assert any("tensor" in str(s) for s in specs) and any("fsdp" in str(s) for s in specs)
  assert sharding.fsdp_report(exp.abstract_state["params"], exp.state_shardings["params"]) > 0.9


def test_unknown_objective_is_a_clear_error(data_dir):
  config = tiny_config(data_dir)
  config.objective = "gpt5"
  with pytest.raises(ValueError, match="Registered"):
    Experiment.create(config)


@pytest.mark.parametrize("shape, match", [((3,), "does not divide"), ((-1, 3), "not divisible"),
                                          ((2, -1, -1), "at most one -1")])
def test_bad_mesh_is_a_clear_error(data_dir, shape, match):
  config = tiny_config(data_dir)
  config.mesh.shape = shape
  with pytest.raises(ValueError, match=match):
    Experiment.create(config)


def test_undividable_parameter_is_a_clear_error(data_dir):
  config = tiny_config(data_dir, mesh="fsdp")
  config.mesh.shape = (1, 8, 1)
  config.model.d_model = 36
  config.model.num_heads = 2
  with pytest.raises(ValueError, match="do not divide"):
    Experiment.create(config)


def test_batch_not_divisible_by_data_shards(data_dir):
  config = tiny_config(data_dir)
  config.batch_size = 12
  with pytest.raises(ValueError, match="batch_size"):
    Experiment.create(config)


def test_missing_data_path_is_a_clear_error(data_dir, tmp_path):
  config = tiny_config(data_dir)
  config.data.path = str(tmp_path / "no_such_dir")
  with pytest.raises(FileNotFoundError, match="data.path"):
    load_split(config.data, "train", Experiment.create(config).tokenizer)


def test_sampler_that_does_not_fit_the_objective_is_a_clear_error(data_dir):
  config = tiny_config(data_dir, objective="md4")
  config.sampler.name = "ar"
  with pytest.raises(ValueError, match="samplers that do: md4, first_hitting, maskgit"):
    Experiment.create(config)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_a_nonfinite_loss_stops_the_run_or_is_skipped(data_dir, tmp_path, policy):
  """A learning rate of 1e30 blows the parameters up after the first update,
  so every later loss is NaN/Inf. 'stop' raises naming the step, writes its
  batch and saves the state, whose parameters are finite (the bad update was
  not applied); 'skip' finishes and counts the skipped updates."""
  config = tiny_config(data_dir)
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e30, 0
  config.nan_policy = policy
  workdir = str(tmp_path)
  if policy == "skip":
    trainer.train(config, workdir)
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    skipped = [r["nonfinite_skipped"] for r in records if "nonfinite_skipped" in r]
    assert skipped[-1] >= 3 and skipped == sorted(skipped)
    return
  with pytest.raises(nonfinite.NonFiniteError, match=r"NaN/Inf at step (\d)") as error:
    trainer.train(config, workdir)
  bad_step = int(re.search(r"at step (\d)", str(error.value)).group(1))
  batch = np.load(os.path.join(workdir, f"nonfinite_batch_{bad_step}.npy"))
  assert batch.shape == (8, 32)
  saved = int(re.search(r"checkpoint (\d)", str(error.value)).group(1))
  assert saved == bad_step + 1  # Found one step late, while the next step ran.
  exp = Experiment.create(config)
  params, step = Checkpointer(workdir).restore_params(exp.abstract_state["params"],
                                                      config.to_dict())
  assert step == saved
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))
