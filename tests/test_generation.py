"""generation: sharded sampler batches, infilling with a length per hole, image samples."""
import json
import os

import jax
import numpy as np
import pytest

from tests.tiny import ROOT, tiny_config
from tokjax import generation
from tokjax.config import load_config_file
from tokjax.experiment import Experiment


@pytest.fixture(scope="module")
def md4_run(tmp_path_factory):
  """A freshly initialised tiny md4 model on the (1, 4, 2) fsdp_tp mesh: 4 data shards."""
  config = tiny_config(str(tmp_path_factory.mktemp("data")), "md4", mesh="fsdp_tp")
  config.sampler.md4.num_steps = 2
  exp = Experiment.create(config)
  return exp, exp.init_state()["params"]


def test_sampler_rows_are_sharded_over_the_data_axes(md4_run):
  """3 samples on 4 data shards: 4 rows, one per shard, sampled where they
  live (the output keeps the batch sharding), and 3 texts come back."""
  exp, params = md4_run
  rows = generation.prompt_rows(exp.batch_sharding, np.array([1, 2, 3]), num_samples=3)
  assert rows.shape == (4, 3) and rows.sharding == exp.batch_sharding
  assert len({shard.device for shard in rows.addressable_shards}) == 8
  assert {shard.data.shape for shard in rows.addressable_shards} == {(1, 3)}
  fns = generation._model_fns(exp.graphdef, exp.model_config)
  out = generation.sampler_module("md4").sample(
      fns, params, rows, jax.random.key(0), spec=exp.objective.sampling_spec(), seq_len=8,
      num_steps=2)
  assert out.tokens.sharding.is_equivalent_to(exp.batch_sharding, 2)
  texts, record = generation.generate(exp, params, prompt="ab", num_samples=3, seed=0)
  assert len(texts) == 3 and all(t.startswith("ab") for t in texts) and record["nfe"] == 2


def test_infill_takes_one_length_per_hole(md4_run):
  exp, params = md4_run
  mask = exp.objective.mask_id
  prompt = exp.objective.infill_prompt([np.array([1]), np.array([2]), np.array([3])], (2, 5))
  np.testing.assert_array_equal(prompt, [1, mask, mask, 2] + [mask] * 5 + [3])
  texts, record = generation.infill(exp, params, "ab__cd__ef", placeholder="__", hole_len=[2, 5],
                                    num_samples=2, seed=0)
  assert record["hole_len"] == [2, 5] and len(texts) == 2
  assert all(t.startswith("ab") and t.endswith("ef") for t in texts)
  _, record = generation.infill(exp, params, "ab__cd__ef", placeholder="__", hole_len=3,
                                num_samples=2, seed=0)
  assert record["hole_len"] == [3, 3]
  for bad in ([2, 5, 1], [0]):
    with pytest.raises(ValueError, match="one per hole"):
      generation.infill(exp, params, "ab__cd__ef", placeholder="__", hole_len=bad,
                        num_samples=2, seed=0)


@pytest.mark.parametrize("objective", ["causal", "md4"])
def test_pixel_runs_sample_whole_images(objective, tmp_path):
  """From BOS alone, AR appends 784 pixels (never a special) and md4 fills the
  785-token window; the samples come back as 28x28 images, in the JSON and
  as a PNG grid beside it."""
  config = load_config_file(os.path.join(ROOT, "configs", "fashion_mnist.py"),
                            f"objective={objective},size=tiny,levels=16")
  config.sampler.num_samples = 3
  config.sampler.md4.num_steps = 2
  exp = Experiment.create(config)
  params = exp.init_state()["params"]
  tok = exp.tokenizer
  rows, record = generation._run(exp, params, np.array([tok.bos_id]), num_samples=3, seed=0)
  assert rows.shape == (3, 785) and record["length"] == 785 and (rows[:, 0] == tok.bos_id).all()
  never = tok.non_target_ids if objective == "causal" else tok.non_text_ids
  assert not np.isin(rows[:, 1:], never).any()

  images = generation.write_samples(exp, params, str(tmp_path), 7, "samples_7.json")
  assert [(i.shape, i.dtype) for i in images] == [((28, 28), np.uint8)] * 3
  with open(tmp_path / "samples_7.json") as f:
    np.testing.assert_array_equal(json.load(f)["samples"], np.stack(images))
  from matplotlib import image as mpimage
  png = mpimage.imread(tmp_path / "samples_7.png")
  assert png.shape[:2] == (4 * 32, 4 * (3 * 30 + 2))  # One row of 3 images, 2-pixel borders, x4.
  with pytest.raises(ValueError, match="prompt must be empty"):
    generation.generate(exp, params, prompt="ROMEO:", num_samples=1, seed=0)
  with pytest.raises(ValueError, match="Infilling takes text"):
    generation.infill(exp, params, "a__b", placeholder="__", hole_len=2, num_samples=1, seed=0)
