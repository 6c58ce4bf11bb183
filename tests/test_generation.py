"""generation: sharded sampler batches and infilling with a length per hole."""
import jax
import numpy as np
import pytest

from tests.tiny import tiny_config
from tokjax import generation
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
