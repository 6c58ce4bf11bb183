"""The mixture objective: per-batch draws, exact component losses, bad mixes."""
import jax
import numpy as np
import pytest

from tiny import tiny_config
from tokjax.experiment import Experiment
from tokjax.objectives import make_objective, make_tokenizer
from tokjax.objectives.mixture import Mixture

V = 260


class TableModel:
  """Logits looked up from a fixed random table: deterministic, non-uniform."""

  table = jax.random.normal(jax.random.key(7), (V, V))

  def __call__(self, tokens, **unused):
    return self.table[tokens]


def _mixture(weights=(1.0, 3.0)):
  config = tiny_config("/unused", objective="mixture")
  config.mixture.weights = weights
  return make_objective(config, make_tokenizer(config))


def test_mixture_draws_components_by_weight_and_returns_their_exact_loss():
  mix = _mixture()
  tokens = jax.random.randint(jax.random.key(0), (4, 32), 0, 256)
  loss_fn = jax.jit(lambda rng: mix.loss(TableModel(), tokens, rng))
  picks = []
  for i in range(200):
    rng = jax.random.key(i)
    loss, metrics = loss_fn(rng)
    k = int(metrics["objective_index"])
    picks.append(k)
    if i < 4:  # The drawn component's own loss, with the same randomness.
      _, component_rng = jax.random.split(rng)
      expected, _ = mix.components[k].loss(TableModel(), tokens, component_rng)
      assert float(loss) == pytest.approx(float(expected), rel=1e-6)
  frac = np.mean(picks)  # P(component 1) = 3 / 4.
  assert abs(frac - 0.75) < 5 * np.sqrt(0.75 * 0.25 / 200)


def test_mixture_takes_the_first_components_kind_and_attention():
  mix = _mixture()
  assert [c.name for c in mix.components] == ["mlm", "maskgit"]
  assert mix.attention == "bidirectional" and mix.likelihood_kind == "pseudo_likelihood"


@pytest.mark.parametrize("objectives, weights, match", [
    (("causal", "md4"), (1.0, 1.0), "share an attention mode"),
    (("mlm", "mixture"), (1.0, 1.0), "nested"),
    (("mlm", "maskgit"), (1.0,), "equal length"),
    (("mlm", "maskgit"), (1.0, 0.0), "positive"),
])
def test_bad_mixtures_are_clear_errors(objectives, weights, match):
  config = tiny_config("/unused", objective="mixture")
  config.mixture.objectives = objectives
  config.mixture.weights = weights
  with pytest.raises(ValueError, match=match):
    Experiment.create(config)


def test_mixture_of_causal_family_unions_special_tokens():
  config = tiny_config("/unused", objective="mixture")
  config.mixture.objectives = ("causal", "fim", "cm3")
  config.mixture.weights = (1.0, 1.0, 1.0)
  tokenizer = make_tokenizer(config)
  assert "<fim_prefix>" in tokenizer.special_tokens and "<sentinel_0>" in tokenizer.special_tokens
  assert isinstance(make_objective(config, tokenizer), Mixture)
