"""Objectives and schedules against closed forms."""
import math

import jax
import ml_collections
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.config import base_config
from tokjax.objectives import REGISTRY, make_objective, make_tokenizer
from tokjax.objectives.causal import Causal
from tokjax.objectives.images import ImageWindows
from tokjax.objectives.md4 import MD4, stratified_times
from tokjax.objectives.mixture import Mixture
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


def test_class_conditional_maskgit_keeps_and_drops_the_class_token():
  """With class tokens, position 0 is never masked nor scored; training swaps
  it for BOS (the null class) at rate class_dropout, evaluation never does,
  and the sampler gets BOS as the null id for guidance."""
  from tokjax.data import PixelTokenizer
  from tokjax.objectives.maskgit import MaskGIT
  tok = PixelTokenizer(16, num_classes=10, image_shape=(2, 3))
  obj = MaskGIT.from_config({"class_dropout": 0.25, "noise_schedule": "cosine"}, tok)
  labels = np.arange(4096) % 10
  x = jnp.asarray(np.stack([tok.encode(np.full((2, 3), 7 * i % 256, np.uint8), add_bos=True,
                                       label=c) for i, c in enumerate(labels)]))
  inputs, targets = obj.corrupt(x, jax.random.key(0))
  first = np.asarray(inputs.tokens[:, 0])
  dropped = first == tok.bos_id
  assert ((first == np.asarray(x[:, 0])) | dropped).all()
  assert abs(dropped.mean() - 0.25) < 5 * math.sqrt(0.25 * 0.75 / 4096)
  assert not np.asarray(targets.weights[:, 0]).any()
  assert (np.asarray(inputs.tokens[:, 1:] == tok.mask_id).sum(-1) >= 1).all()
  eval_inputs, _ = obj.corrupt_eval(x, jax.random.key(0))
  np.testing.assert_array_equal(eval_inputs.tokens[:, 0], x[:, 0])
  spec = obj.sampling_spec()
  assert spec.null_id == tok.bos_id and set(tok.class_ids) <= set(spec.forbidden_ids)
  assert MaskGIT.from_config({}, PixelTokenizer(16)).sampling_spec().null_id == -1
  with pytest.raises(ValueError, match="class_dropout"):
    MaskGIT.from_config({"class_dropout": 1.5}, tok)


# ------------------------------------------------ MD4's evaluation estimator

TOY_V, TOY_PAD, TOY_MASK = 8, 6, 7  # Tokens 0..5 are text.


class NeighbourModel:
  """Logits from the token itself and its two neighbours (MASK included), so a
  token's cross-entropy depends on which other tokens are masked."""

  tables = np.random.default_rng(3).normal(size=(3, TOY_V, TOY_V)).astype(np.float32) * 2

  def __call__(self, tokens, **unused):
    left = jnp.pad(tokens, ((0, 0), (1, 0)), constant_values=TOY_PAD)[:, :-1]
    right = jnp.pad(tokens, ((0, 0), (0, 1)), constant_values=TOY_PAD)[:, 1:]
    t = jnp.asarray(self.tables)
    return t[0][left] + t[1][tokens] + t[2][right]

  def numpy(self, z):
    left = np.concatenate([[TOY_PAD], z[:-1]])
    right = np.concatenate([z[1:], [TOY_PAD]])
    return self.tables[0][left] + self.tables[1][z] + self.tables[2][right]


def _exact_md4_nelbo(x: np.ndarray) -> float:
  """sum_k (1/k) E_{|M|=k}[sum_{n in M} -log p(x_n | x_not M)], enumerating every M (NumPy)."""
  import itertools
  length = len(x)
  total = 0.0
  for k in range(1, length + 1):
    subsets = list(itertools.combinations(range(length), k))
    mean = 0.0
    for m in subsets:
      z = x.copy()
      z[list(m)] = TOY_MASK
      logits = NeighbourModel().numpy(z).astype(np.float64)
      logits[:, [TOY_PAD, TOY_MASK]] = -np.inf
      logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - logits.max(-1, keepdims=True)
      mean += -sum(logp[n, x[n]] for n in m) / len(subsets)
    total += mean / k
  return total


def _toy_md4(**kw):
  return MD4(pad_id=TOY_PAD, num_bytes=6, mask_id=TOY_MASK, forbidden_ids=(TOY_PAD,), **kw)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_md4_eval_estimator_is_unbiased_against_exact_enumeration(schedule):
  """Rows of 5 and 3 tokens (then PAD): the mean of many draws matches the NELBO
  computed by enumerating every mask set, whatever the schedule."""
  x = np.array([[0, 3, 1, 5, 2], [4, 4, 0, TOY_PAD, TOY_PAD]])
  obj = _toy_md4(noise_schedule=get_schedule(schedule))
  draws = jax.jit(jax.vmap(lambda r: obj.likelihood(NeighbourModel(), jnp.asarray(x), r)["nats"]))(
      jax.random.split(jax.random.key(0), 20_000))
  draws = np.asarray(draws)
  for row in range(2):
    exact = _exact_md4_nelbo(x[row][x[row] != TOY_PAD])
    mean, se = draws[:, row].mean(), draws[:, row].std() / math.sqrt(len(draws))
    assert abs(mean - exact) < 4 * se, (row, mean, exact, se)


@pytest.mark.parametrize("schedule", ["linear", "cosine", "poly2"])
def test_md4_bound_over_t_equals_the_sum_over_mask_counts(schedule):
  """The training form int w(t) sum_k Bin(k; L, 1 - alpha_t) E_k dt equals the
  evaluation form sum_k E_k / k for any E_k (MD4 Eq. 5 rewritten; quadrature)."""
  from scipy import integrate, stats
  s, length = get_schedule(schedule), 6
  e = np.random.default_rng(0).uniform(1, 3, length + 1) * np.arange(length + 1)  # E_0 = 0.

  def integrand(t):
    u = 1 - float(s.alpha(np.float64(t)))
    return float(s.weight(np.float64(t))) * sum(
        stats.binom.pmf(k, length, u) * e[k] for k in range(1, length + 1))

  value, _ = integrate.quad(integrand, 0, 1, limit=200)
  assert value == pytest.approx(sum(e[k] / k for k in range(1, length + 1)), rel=1e-6)


def test_md4_eval_draw_masks_k_positions_weighted_length_over_k():
  obj = _toy_md4(time_conditioning=True)
  x = jnp.asarray(np.r_[np.zeros(20, int), np.full(12, TOY_PAD)][None].repeat(512, 0))
  inputs, targets = obj.corrupt_eval(x, jax.random.key(0))
  k = np.asarray((inputs.tokens == TOY_MASK).sum(-1))
  assert k.min() >= 1 and k.max() <= 20 and not np.asarray(inputs.tokens[:, 20:] == TOY_MASK).any()
  np.testing.assert_allclose(np.asarray(targets.weights).sum(-1), 20.0, rtol=1e-5)  # k * L / k.
  counts = np.bincount(k, minlength=21)[1:]  # k ~ U{1..20}: chi-square.
  from scipy import stats
  assert stats.chisquare(counts).pvalue > 1e-3
  # A time-conditioned network sees t with 1 - alpha_t ~ Beta(k, L - k + 1): E = k / (L + 1).
  u = 1 - np.asarray(obj.noise_schedule.alpha(inputs.time))
  np.testing.assert_allclose(u.mean(), (k / 21).mean(), atol=4 * u.std() / math.sqrt(512))


def test_schedule_time_at_inverts_alpha():
  t = jnp.linspace(0.01, 0.99, 99)
  for name in ("linear", "cosine", "poly3"):
    s = get_schedule(name)
    np.testing.assert_allclose(s.time_at(s.alpha(t)), t, atol=1e-4)  # float32 rounding.


def test_md4_gives_non_text_ids_probability_zero():
  """PAD, MASK and extra specials are never predicted, however the network scores them."""
  from tokjax.data import ByteTokenizer
  tok = ByteTokenizer(("<extra_0>", "<extra_1>"))
  obj = MD4.from_config(ml_collections.ConfigDict(dict(
      noise_schedule="linear", antithetic=True, time_conditioning=False, eval_samples=2)), tok)
  assert set(obj.forbidden_ids) == {tok.pad_id, tok.mask_id, 260, 261}
  logits = obj.mask_logits(jnp.zeros((1, 1, tok.vocab_size)))
  allowed = np.isfinite(np.asarray(logits[0, 0]))
  assert allowed.sum() == 256 + 2 and allowed[tok.bos_id] and allowed[tok.eos_id]


@pytest.mark.parametrize("levels", [256, 16])
def test_uniform_pixel_model_scores_log2_levels_bits_per_dim(levels):
  """Closed forms for images (windows of BOS + 784 pixels, one all-PAD row as
  evaluation's last batch has). Zero logits over the whole vocabulary: causal
  gives specials probability 0 (every scored target is a pixel), so the NLL
  is exactly log2(levels) bits/dim; md4 draws masked tokens from the pixels
  and BOS, so each of the 785 tokens costs log(levels + 1) whatever the mask
  count, i.e. 785 / 784 * log2(levels + 1) bits/dim, with no MC noise."""
  from tokjax.data import PixelTokenizer
  from tokjax.evaluation import report
  tok = PixelTokenizer(levels)
  images = np.random.default_rng(0).integers(0, 256, (2, 28, 28), np.uint8)
  tokens = np.stack([tok.encode(image, add_bos=True) for image in images]
                    + [np.full(785, tok.pad_id)]).astype(np.int32)
  config = base_config()
  config.data.name = "fashion_mnist"
  config.data.pixel_levels = levels
  expected = {"causal": math.log2(levels), "md4": 785 / 784 * math.log2(levels + 1)}
  for name, bits in expected.items():
    config.objective = name
    obj = make_objective(config, make_tokenizer(config))
    model = lambda x, **unused: jnp.zeros(x.shape + (tok.vocab_size,))
    sums = jax.tree.map(lambda v: np.asarray(v).sum(),
                        obj.likelihood(model, jnp.asarray(tokens), jax.random.key(0)))
    r = report(obj, "validation", dict(sums, var=0.0), unit=tok.unit)
    assert r["bytes"] == 2 * 784 and r["unit"] == "dim"
    assert r["bits_per_dim"] == r["bits_per_byte"] == pytest.approx(bits, rel=1e-6), name


def _built_from_defaults(cls, config, tokenizer):
  """`cls` with its dataclass defaults for every setting; a mixture of such components."""
  if cls is Mixture:
    components = [_built_from_defaults(REGISTRY[n], config, tokenizer)
                  for n in config.mixture.objectives]
    return Mixture(pad_id=tokenizer.pad_id, num_bytes=tokenizer.num_bytes,
                   components=tuple(components), weights=tuple(config.mixture.weights))
  return cls(**cls.tokenizer_fields(tokenizer, config[cls.name]))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_config_section_round_trips_the_dataclass_defaults(name):
  config = base_config()
  config.objective = name
  if issubclass(REGISTRY[name], ImageWindows):  # Pixel-value objectives need image data.
    config.data.name, config.data.class_token = "fashion_mnist", True
  tokenizer = make_tokenizer(config)
  expected = _built_from_defaults(REGISTRY[name], config, tokenizer)
  assert make_objective(config, tokenizer) == expected


def test_config_settings_reach_the_objective():
  config = base_config()
  config.md4.noise_schedule = "poly2"
  config.span_corruption.num_sentinels = 6
  config.multi_token.head_weights = [1.0, 0.5, 0.25, 0.0]  # A list, as a saved config has it.
  built = {}
  for name in ("md4", "span_corruption", "multi_token"):
    config.objective = name
    built[name] = make_objective(config, make_tokenizer(config))
  assert built["md4"].noise_schedule == MaskingSchedule("poly", 2.0)
  assert len(built["span_corruption"].sentinel_ids) == 6
  assert built["multi_token"].head_weights == (1.0, 0.5, 0.25, 0.0)


@pytest.mark.parametrize("schedule", [MaskingSchedule("linear"), MaskingSchedule("cosine"),
                                      MaskingSchedule("poly", 2.0), MaskingSchedule("poly", 0.3)])
def test_schedule_name_parses_back(schedule):
  assert get_schedule(schedule.name) == schedule
