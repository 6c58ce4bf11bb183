"""Objectives and schedules against closed forms."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.objectives.causal import Causal
from tokjax.objectives.md4 import MD4, stratified_times
from tokjax.schedules import MaskingSchedule, get_schedule

PAD, MASK, V = 256, 259, 260


class UniformModel:
  """A backbone whose logits are all zero: uniform over its V outputs."""

  def __call__(self, tokens, **unused):
    return jnp.zeros(tokens.shape + (V,))


def _tokens(batch, length, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (batch, length)), jnp.int32)


def test_schedule_weights_match_closed_forms():
  t = jnp.linspace(0.1, 0.9, 50)  # Away from 0, where 1 - alpha loses float32 digits.
  for name in ("linear", "cosine", "poly3"):
    s = get_schedule(name)
    # w(t) = -alpha'(t) / (1 - alpha(t)) against the closed form in `weight`.
    np.testing.assert_allclose(s.weight(t), -s.dalpha(t) / (1 - s.alpha(t)), rtol=1e-4)
    # alpha' against a finite difference of alpha.
    h = 1e-3
    fd = (s.alpha(t + h) - s.alpha(t - h)) / (2 * h)
    np.testing.assert_allclose(s.dalpha(t), fd, rtol=1e-3, atol=1e-4)
    assert float(s.alpha(0.0)) == pytest.approx(1.0) and float(s.alpha(1.0)) == pytest.approx(0.0)
  np.testing.assert_allclose(get_schedule("linear").weight(t), 1.0 / t, rtol=1e-6)
  np.testing.assert_allclose(get_schedule("poly2").weight(t), 2.0 / t, rtol=1e-6)
  np.testing.assert_allclose(
      get_schedule("cosine").weight(t), math.pi / 2 * np.tan(math.pi / 2 * (1 - t)), rtol=1e-4
  )


def test_unknown_schedule_is_a_clear_error():
  with pytest.raises(ValueError, match="noise_schedule"):
    get_schedule("sigmoid")


def test_causal_uniform_logits_give_log_vocab():
  obj = Causal(pad_id=PAD, num_bytes=256)
  loss, _ = obj.loss(UniformModel(), _tokens(4, 32), jax.random.key(0))
  assert float(loss) == pytest.approx(math.log(V), rel=1e-5)


def test_causal_targets_are_next_tokens_and_skip_pad():
  obj = Causal(pad_id=PAD, num_bytes=256)
  x = jnp.array([[5, 6, 7, PAD, PAD]])
  _, targets = obj.corrupt(x, jax.random.key(0))
  np.testing.assert_array_equal(targets.targets[0, :3], [6, 7, PAD])
  np.testing.assert_array_equal(targets.weights[0], [1, 1, 0, 0, 0])


@pytest.mark.parametrize("schedule", ["linear", "cosine", "poly2"])
def test_md4_masked_fraction_and_uniform_elbo_at_fixed_t(schedule):
  """At each t: E[masked fraction] = 1 - alpha_t, and uniform logits over the
  V - 1 real tokens give w(t) (1 - alpha_t) log(V - 1) = ... nats per token,
  whose integral over t is exactly log(V - 1)."""
  obj = MD4(pad_id=PAD, num_bytes=256, mask_id=MASK, noise_schedule=get_schedule(schedule))
  batch, length = 512, 64
  x = _tokens(batch, length)
  for i, t0 in enumerate([0.1, 0.5, 0.9]):
    t = jnp.full((batch,), t0)
    inputs, targets = obj.corrupt_at(x, t, jax.random.key(i))
    frac = float((inputs.tokens == MASK).mean())
    p = 1 - float(obj.noise_schedule.alpha(t0))
    n = batch * length
    assert abs(frac - p) < 5 * math.sqrt(p * (1 - p) / n)
    nats = obj.token_nats(jnp.zeros((batch, length, V)), targets)
    expect = float(obj.noise_schedule.weight(t0)) * p * math.log(V - 1)
    assert float(nats.mean()) == pytest.approx(expect, rel=5 * math.sqrt((1 - p) / (p * n)))
  # Integrating the per-t expectation over t gives exactly log(V - 1) per token.
  s = obj.noise_schedule
  t = np.linspace(0, 1, 200_001)[1:]
  integrand = np.asarray(s.weight(t) * (1 - s.alpha(t)))
  assert np.trapezoid(integrand, t) == pytest.approx(1.0, abs=2e-3)


def test_md4_elbo_of_uniform_model_is_log_v_over_t():
  """The full Monte-Carlo ELBO (random t, stratified) of a uniform model."""
  obj = MD4(pad_id=PAD, num_bytes=256, mask_id=MASK)
  x = _tokens(256, 64)
  draws = [float(obj.loss(UniformModel(), x, jax.random.key(i))[0]) for i in range(40)]
  mean, se = np.mean(draws), np.std(draws) / math.sqrt(len(draws))
  assert abs(mean - math.log(V - 1)) < 4 * se + 1e-3


def test_md4_never_masks_pad_and_copies_unmasked():
  obj = MD4(pad_id=PAD, num_bytes=256, mask_id=MASK)
  x = jnp.concatenate([_tokens(8, 16), jnp.full((8, 16), PAD)], axis=1)
  inputs, targets = obj.corrupt_at(x, jnp.full((8,), 0.999), jax.random.key(0))
  assert bool((inputs.tokens[:, 16:] == PAD).all())
  assert bool((targets.weights[:, 16:] == 0).all())
  unmasked = inputs.tokens != MASK
  np.testing.assert_array_equal(inputs.tokens[unmasked], x[unmasked])


def test_stratified_times_cover_unit_interval():
  t = np.sort(np.asarray(stratified_times(jax.random.key(3), 100, antithetic=True)))
  assert t.min() > 0 and t.max() <= 1
  # One time in each of the 100 strata.
  assert len(np.unique(np.floor(t * 100 - 1e-6))) == 100


def test_prefix_lm_scores_only_targets_outside_the_prefix():
  from tokjax.objectives.prefix_lm import PrefixLM
  obj = PrefixLM(pad_id=PAD, num_bytes=256)
  x = _tokens(256, 16)
  inputs, targets = obj.corrupt(x, jax.random.key(0))
  p = np.asarray(inputs.prefix_len)
  assert p.min() >= 1 and p.max() <= 15 and len(np.unique(p)) == 15  # U{1..15}
  w = np.asarray(targets.weights)
  for row in range(8):  # NumPy reference: positions n with P - 1 <= n < L - 1.
    expect = (np.arange(16) >= p[row] - 1) & (np.arange(16) < 15)
    np.testing.assert_array_equal(w[row], expect)
  np.testing.assert_array_equal(targets.targets[:, :-1], x[:, 1:])
  loss, _ = obj.loss(UniformModel(), x, jax.random.key(1))
  assert float(loss) == pytest.approx(math.log(V), rel=1e-5)


def test_meap_masks_inputs_but_scores_clean_next_tokens():
  from tokjax.objectives.meap import MEAP
  obj = MEAP(pad_id=PAD, num_bytes=256, mask_id=MASK, mask_ratio=0.15)
  x = jnp.concatenate([_tokens(256, 60), jnp.full((256, 4), PAD)], axis=1)
  inputs, targets = obj.corrupt(x, jax.random.key(0))
  masked = np.asarray(inputs.tokens == MASK)
  n = int((x != PAD).sum())
  assert abs(masked.sum() / n - 0.15) < 5 * math.sqrt(0.15 * 0.85 / n)
  assert not masked[:, 60:].any()
  np.testing.assert_array_equal(np.asarray(inputs.tokens)[~masked], np.asarray(x)[~masked])
  np.testing.assert_array_equal(targets.targets[:, :-1], x[:, 1:])  # Clean targets.
  clean_inputs, _ = obj.corrupt_eval(x, jax.random.key(0))  # Evaluation sees no MASK.
  np.testing.assert_array_equal(clean_inputs.tokens, x)


@pytest.mark.parametrize("schedule", ["cosine", "linear"])
def test_maskgit_masks_exactly_the_scheduled_count(schedule):
  from tokjax.objectives.maskgit import MaskGIT
  obj = MaskGIT(pad_id=PAD, num_bytes=256, mask_id=MASK, noise_schedule=get_schedule(schedule))
  x = jnp.concatenate([_tokens(512, 24), jnp.full((512, 8), PAD)], axis=1)
  inputs, targets = obj.corrupt(x, jax.random.key(0))
  counts = np.asarray((inputs.tokens == MASK).sum(-1))
  assert not np.asarray(inputs.tokens[:, 24:] == MASK).any()
  np.testing.assert_array_equal(np.asarray(targets.weights).sum(-1), counts)
  # counts = ceil(gamma(r) * 24) with r ~ U(0, 1): P(count <= k) = P(gamma(r) <= k / 24).
  gamma_inv = {"cosine": lambda g: 2 / math.pi * np.arccos(g), "linear": lambda g: 1 - g}[schedule]
  for k in (6, 12, 18):
    expected = 1 - gamma_inv(k / 24)  # P(r >= gamma^-1(k/24)).
    assert abs((counts <= k).mean() - expected) < 5 * math.sqrt(expected * (1 - expected) / 512)
  assert counts.min() >= 1 and counts.max() <= 24
  nats = obj.token_nats(jnp.zeros(x.shape + (V,)), targets)
  assert float(nats.sum() / targets.weights.sum()) == pytest.approx(math.log(V - 2), rel=1e-5)
