"""Activation sharding: logical constraints reach the compiled program on a (2, 2, 2) mesh."""
import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from tokjax import sharding
from tokjax.models import Transformer, TransformerConfig

RULES = sharding.preset("fsdp_tp")["rules"]


@pytest.fixture(scope="module")
def model_and_mesh():
  mesh = sharding.make_mesh((2, 2, 2))
  config = TransformerConfig(vocab_size=16, num_layers=1, d_model=16, num_heads=2, d_ff=32,
                             max_seq_len=8)
  return nnx.split(Transformer(config, rngs=nnx.Rngs(0))), mesh


def test_constrain_is_a_no_op_outside_the_context():
  x = jnp.ones((4, 8))
  assert sharding.constrain(x, ("batch", "activation_mlp")) is x


def test_activations_are_constrained_by_logical_axis_rules(model_and_mesh):
  """Under fsdp_tp rules the MLP hidden units, q/k/v and the attention output
  are split over 'tensor' and the batch over ('data', 'fsdp'), as the rules say."""
  (graphdef, params), mesh = model_and_mesh

  def loss(params, tokens):
    with sharding.activation_sharding(mesh, RULES):
      return nnx.merge(graphdef, params)(tokens).sum()

  lowered = jax.jit(loss).lower(params, jnp.zeros((4, 8), jnp.int32))
  constraints = [line for line in lowered.as_text().splitlines() if "sdy.sharding_constraint" in line]
  split = '[{"data", "fsdp"}, {}, {"tensor"}'
  assert sum(split in c and "tensor<4x8x2x8xf32>" in c for c in constraints) == 4  # q, k, v, out
  assert sum(split in c and "tensor<4x8x32xf32>" in c for c in constraints) == 1  # MLP hidden
  # After partitioning each device holds 1 of 4 batch rows and half the units:
  # 1 of 2 heads of q, k, v, token-major [1, 8, 1, 8] or heads-major [1, 1, 8, 8].
  compiled = lowered.compile().as_text()
  assert "f32[1,8,16]" in compiled
  assert "f32[1,8,1,8]" in compiled or "f32[1,1,8,8]" in compiled


def test_the_train_step_constrains_the_residual_stream_and_logits(tmp_path):
  """The real train step traces under the run's rules: the residual stream
  and the logits carry their logical constraints (vocab split over 'tensor')."""
  from tests.tiny import tiny_config
  from tokjax.experiment import Experiment
  from tokjax.trainer import make_train_step
  config = tiny_config(str(tmp_path), mesh="fsdp_tp")
  config.mesh.shape = (2, 2, 2)
  exp = Experiment.create(config)
  batch = jax.ShapeDtypeStruct((8, 32), jnp.int32, sharding=exp.batch_sharding)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       exp.abstract_state, exp.state_shardings)
  text = make_train_step(exp).lower(state, batch).as_text()
  constraints = [line for line in text.splitlines() if "sdy.sharding_constraint" in line]
  vocab = exp.model_config.vocab_size
  assert any(f"tensor<8x32x{vocab}xf32>" in c and '{"tensor"}]' in c for c in constraints)
  assert sum(f"tensor<8x32x{exp.model_config.d_model}x" in c for c in constraints) >= 2
