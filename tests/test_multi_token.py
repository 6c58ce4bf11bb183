"""Multi-token prediction: head targets, loss weighting, trunk equivalence, mesh, sampling."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from tiny import tiny_config
from tokjax import objectives
from tokjax.data import load_split, to_global
from tokjax.experiment import Experiment
from tokjax.models import TransformerConfig
from tokjax.objectives.causal import Causal
from tokjax.objectives.multi_token import MultiToken
from tokjax.samplers import autoregressive, model_fns
from tokjax.trainer import make_train_step

V, PAD = 32, 31
CONFIG = TransformerConfig(vocab_size=V, num_layers=2, d_model=32, num_heads=4, d_ff=64,
                           max_seq_len=16)
WEIGHTS = (1.0, 0.5, 0.25)


def _objective(weights=WEIGHTS):
  return MultiToken(pad_id=PAD, num_bytes=30, num_predict=len(weights), head_weights=weights)


def _model(weights=WEIGHTS):
  return _objective(weights).build_model(CONFIG, nnx.Rngs(0))


def _tokens(seed=0):
  """int32[3, 12] random non-PAD ids; rows 1 and 2 end in PAD tails of 3 and 7."""
  tokens = np.random.default_rng(seed).integers(0, PAD, (3, 12))
  tokens[1, -3:] = PAD
  tokens[2, -7:] = PAD
  return jnp.asarray(tokens, jnp.int32)


def _log_softmax_ce(logits, targets):
  logits = np.asarray(logits, np.float64)
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  return logz - np.take_along_axis(logits, targets[..., None], -1)[..., 0]


def test_head_targets_are_shifted_tokens_masked_past_the_end_and_on_pad():
  obj, tokens = _objective(), _tokens()
  host = np.asarray(tokens)
  length = host.shape[1]
  for k in (1, 2, 3):
    t = obj.head_targets(tokens, k)
    np.testing.assert_array_equal(t.targets[:, : length - k], host[:, k:])
    valid = np.zeros(host.shape, np.float32)
    valid[:, : length - k] = host[:, k:] != PAD
    np.testing.assert_array_equal(t.valid, valid)
    np.testing.assert_array_equal(t.weights, valid)
  _, head1 = obj.corrupt(tokens, jax.random.key(0))
  _, causal = Causal(pad_id=PAD, num_bytes=30).corrupt(tokens, jax.random.key(0))
  np.testing.assert_array_equal(head1.valid, causal.valid)


def test_uniform_logits_give_log_vocab_for_every_head():
  model = _model()
  model.trunk.head[...] = jnp.zeros_like(model.trunk.head[...])  # The shared unembedding.
  loss, metrics = _objective().loss(model, _tokens(), jax.random.key(0))
  for k in (1, 2, 3):
    assert float(metrics[f"loss_head_{k}"]) == pytest.approx(math.log(V), rel=1e-6)
  assert float(loss) == pytest.approx(math.log(V), rel=1e-6)


def test_heads_weights_combine_per_head_mean_ces():
  model, obj, tokens = _model(), _objective(), _tokens(1)
  loss, metrics = jax.jit(lambda t: obj.loss(model, t, jax.random.key(0)))(tokens)
  logits = model.all_heads(tokens)
  assert logits.shape == (3, 3, 12, V) and logits.dtype == jnp.float32
  ces = []
  for k in (1, 2, 3):
    targets = obj.head_targets(tokens, k)
    valid = np.asarray(targets.valid) > 0
    ce = _log_softmax_ce(logits[k - 1], np.asarray(targets.targets))
    ces.append(ce[valid].mean())
    assert float(metrics[f"loss_head_{k}"]) == pytest.approx(ces[-1], rel=1e-5)
  expected = sum(w * ce for w, ce in zip(WEIGHTS, ces)) / sum(WEIGHTS)
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["tokens"]) == float(obj.head_targets(tokens, 1).valid.sum())


def test_call_and_likelihood_are_the_trunks_next_token_model():
  model, tokens = _model(), _tokens(2)
  np.testing.assert_array_equal(model(tokens), model.trunk(tokens))
  np.testing.assert_allclose(model.all_heads(tokens)[0], model.trunk(tokens), rtol=1e-6)
  ours = _objective().likelihood(model, tokens, jax.random.key(0))
  causal = Causal(pad_id=PAD, num_bytes=30).likelihood(model.trunk, tokens, jax.random.key(0))
  assert ours.keys() == causal.keys()
  for key in ours:
    np.testing.assert_allclose(ours[key], causal[key], rtol=1e-6)


def test_every_param_has_logical_axes():
  state = nnx.state(nnx.eval_shape(_model), nnx.Param)
  shapes = dict(nnx.to_flat_state(state))
  specs = dict(nnx.to_flat_state(nnx.get_partition_spec(state)))
  assert shapes.keys() == specs.keys() and ("extra_heads", 1, "mlp", "w_in") in specs
  for path, variable in shapes.items():
    spec = specs[path].get_value()
    assert isinstance(spec, PartitionSpec) and len(spec) == variable.get_value().ndim, path
    assert set(spec) <= {"vocab", "embed", "mlp", "heads", "kv"}, (path, spec)


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_predict=1), "objective=causal"),
    (dict(num_predict=3, head_weights=(1.0, 1.0)), "one weight per head"),
    (dict(num_predict=2, head_weights=(1.0, -1.0)), ">= 0"),
    (dict(num_predict=2, head_weights=(0.0, 0.0)), "sum to > 0"),
])
def test_bad_settings_raise_naming_the_fix(kwargs, match):
  with pytest.raises(ValueError, match=match):
    MultiToken(pad_id=PAD, num_bytes=30, **kwargs)


def test_model_with_the_wrong_number_of_heads_is_a_clear_error():
  with pytest.raises(ValueError, match="num_predict"):
    _objective((1.0, 1.0)).loss(_model(), _tokens(), jax.random.key(0))


def test_cached_greedy_sampling_equals_uncached():
  graphdef, params = nnx.split(_model())
  fns = model_fns(graphdef, CONFIG)
  prompt = jax.random.randint(jax.random.key(3), (2, 4), 0, PAD, dtype=jnp.int32)
  kwargs = dict(max_new_tokens=8, eos_id=PAD, pad_id=PAD, temperature=0.0)
  cached = autoregressive.sample(fns, params, prompt, jax.random.key(0), **kwargs).tokens
  uncached = autoregressive.sample(fns, params, prompt, jax.random.key(0), use_kv_cache=False,
                                   **kwargs).tokens
  assert cached.shape == (2, 12)
  np.testing.assert_array_equal(cached, uncached)
  np.testing.assert_array_equal(cached[:, :4], prompt)


def _one_step_loss(config):
  exp = Experiment.create(config)
  tokens = load_split(config.data, "train", exp.tokenizer)[: 8 * 32].reshape(8, 32)
  _, metrics = make_train_step(exp)(exp.init_state(), to_global(tokens, exp.batch_sharding))
  return {k: float(v) for k, v in metrics.items()}


def test_train_step_on_2x2x2_mesh_matches_one_device(tmp_path, monkeypatch):
  monkeypatch.setitem(objectives.REGISTRY, "multi_token", MultiToken)
  results = []
  for preset, shape in [("dp", (1,)), ("fsdp_tp", (2, 2, 2))]:
    config = tiny_config(str(tmp_path), mesh=preset)
    config.mesh.shape = shape
    config.objective = "multi_token"
    config.multi_token = ml_collections.ConfigDict(dict(num_predict=3, head_weights=WEIGHTS))
    results.append(_one_step_loss(config))
  single, sharded = results
  assert np.isfinite(single["loss"]) and {"loss_head_1", "loss_head_3"} <= single.keys()
  for key in ("loss", "loss_head_1", "loss_head_2", "loss_head_3", "grad_norm"):
    assert sharded[key] == pytest.approx(single[key], rel=1e-5), key
