"""Sampler tests: categorical draws, AR (cached == uncached, EOS), MD4 unmasking."""
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats
from tiny import OPTIMIZED

from tokjax.models import Transformer, TransformerConfig
from tokjax.samplers import (
    SAMPLERS, ModelFns, SamplingSpec, autoregressive, first_hitting, get_sampler, maskgit, md4,
    model_fns, precision_scope, sample_categorical,
)
from tokjax.samplers.categorical import gumbel_noise
from tokjax.schedules import get_schedule

PROBS = np.array([0.4, 0.3, 0.15, 0.1, 0.05])


def tiny_model(**overrides):
  kwargs = dict(vocab_size=32, num_layers=2, d_model=32, num_heads=4, d_ff=64, max_seq_len=16)
  config = TransformerConfig(**{**kwargs, **overrides})
  graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
  return model_fns(graphdef, config), params


def truncated(probs, keep):
  p = np.where(keep, probs, 0.0)
  return p / p.sum()


# ---------------------------------------------------------------- categorical


@pytest.mark.parametrize("precision", ["float32", "float64"])
def test_categorical_frequencies_pass_chi_square(precision):
  n = 20_000
  logits = jnp.broadcast_to(jnp.log(jnp.asarray(PROBS, jnp.float32)), (n, PROBS.size))

  def draws(rng, logits):  # logits as an argument: XLA would constant-fold the sorts
    keys = jax.random.split(rng, 5)
    return (
        sample_categorical(keys[0], logits, precision=precision),
        sample_categorical(keys[1], logits, temperature=2.0, precision=precision),
        sample_categorical(keys[2], logits, top_k=2, precision=precision),
        sample_categorical(keys[3], logits, top_p=0.8, precision=precision),
        sample_categorical(keys[4], logits, temperature=2.0, min_p=0.45, precision=precision),
    )

  with precision_scope(precision):
    plain, hot, top2, nucleus, min_p = jax.jit(draws)(jax.random.key(0), logits)
  expected = [
      PROBS,
      truncated(np.sqrt(PROBS), np.ones(5, bool)),
      truncated(PROBS, np.arange(5) < 2),
      truncated(PROBS, np.arange(5) < 3),   # 0.4 + 0.3 < 0.8 <= 0.4 + 0.3 + 0.15
      # min-p after temperature (Nguyen et al. 2024): p ~ sqrt(PROBS), whose
      # ratios to the largest are 1, .87, .61, .50, .35: 0.45 drops the last.
      truncated(np.sqrt(PROBS), np.sqrt(PROBS / PROBS[0]) >= 0.45),
  ]
  for sample, p in zip((plain, hot, top2, nucleus, min_p), expected):
    counts = np.bincount(np.asarray(sample), minlength=5)
    assert counts[p == 0].sum() == 0
    support = p > 0
    assert stats.chisquare(counts[support], n * p[support]).pvalue > 1e-3


def nucleus_reference(logits, top_k, top_p):
  """NumPy boolean[rows, vocab] of the tokens top-k then top-p filtering keeps."""
  keep = np.ones_like(logits, bool)
  if top_k:
    kth = np.sort(logits, axis=-1)[:, -top_k][:, None]
    keep &= logits >= kth
  filtered = np.where(keep, logits, -np.inf)
  order = np.argsort(-filtered, axis=-1)
  probs = np.take_along_axis(np.exp(filtered - filtered.max(-1, keepdims=True)), order, -1)
  probs /= probs.sum(-1, keepdims=True)
  mass_before = np.cumsum(probs, -1) - probs
  nucleus = np.zeros_like(keep)
  np.put_along_axis(nucleus, order, mass_before < top_p, -1)
  return keep & nucleus


@pytest.mark.parametrize("top_k,top_p", [(3, 1.0), (0, 0.6), (5, 0.5)])
def test_top_k_top_p_stay_inside_the_allowed_set(top_k, top_p):
  rows, repeats, vocab = 64, 32, 16
  logits = np.asarray(jax.random.normal(jax.random.key(1), (rows, vocab))) * 2.0
  allowed = nucleus_reference(logits, top_k, top_p)
  tiled = jnp.asarray(np.repeat(logits, repeats, axis=0), jnp.float32)
  draws = sample_categorical(jax.random.key(2), tiled, top_k=top_k, top_p=top_p)
  draws = np.asarray(draws).reshape(rows, repeats)
  assert np.take_along_axis(allowed, draws, axis=1).all()
  assert max(len(set(row)) for row in draws) > 1  # really sampling, not argmax


def test_greedy_and_bad_settings():
  logits = jnp.array([[0.0, 3.0, 1.0], [2.0, -1.0, 0.5]])
  assert sample_categorical(None, logits, temperature=0.0).tolist() == [1, 0]
  with pytest.raises(ValueError, match="precision"):
    sample_categorical(jax.random.key(0), logits, precision="float16")
  with pytest.raises(ValueError, match="precision_scope"):
    sample_categorical(jax.random.key(0), logits, precision="float64")
  with pytest.raises(ValueError, match="top_p"):
    sample_categorical(jax.random.key(0), logits, top_p=0.0)


def test_float64_precision_really_draws_in_float64():
  with precision_scope("float64"):
    noise = np.asarray(gumbel_noise(jax.random.key(0), (4096,), "float64"))
    jaxpr = jax.make_jaxpr(lambda k, l: sample_categorical(k, l, precision="float64"))(
        jax.random.key(0), jnp.zeros((4, 8), jnp.float32)
    )
  assert noise.dtype == np.float64
  assert np.mean(noise != noise.astype(np.float32)) > 0.99  # not float32 values in disguise
  argmax = [e for e in jaxpr.jaxpr.eqns if e.primitive.name == "argmax"]
  assert [str(e.invars[0].aval.dtype) for e in argmax] == ["float64"]


def test_float32_gumbel_under_samples_a_far_tail_and_float64_does_not():
  """One token at logit 0 and 20,000 at -17 (tail mass 8.3e-4), 40,000 draws:
  float32 Gumbel noise cannot exceed ~16 (its uniforms stop 2^-24 short of 1),
  so it rarely reaches the tail; float64 draws it at its probability (Zheng et
  al. 2024, Sec. 4). Poisson bounds with a false-failure rate below 1e-3."""
  vocab, tail, rows = 20_000, -17.0, 4_000
  logits = jnp.concatenate([jnp.zeros(1), jnp.full(vocab, tail)])
  expected = 10 * rows * vocab * math.exp(tail) / (1 + vocab * math.exp(tail))  # ~33
  counts = {}
  for precision in ("float32", "float64"):
    with precision_scope(precision):
      count = jax.jit(lambda k, p=precision: (sample_categorical(
          k, jnp.broadcast_to(logits, (rows, vocab + 1)), precision=p) > 0).sum(),
                      compiler_options=OPTIMIZED)
      counts[precision] = sum(int(count(jax.random.key(i))) for i in range(10))
  assert abs(counts["float64"] - expected) < 4 * math.sqrt(expected)
  assert counts["float32"] < expected / 3


def test_model_stays_in_its_dtype_under_float64_sampling():
  fns, params = tiny_model()
  with precision_scope("float64"):
    jaxpr = str(jax.make_jaxpr(fns.forward)(params, jnp.zeros((2, 8), jnp.int32)))
  assert not re.search(r"[fiu]64\[", jaxpr)


# ---------------------------------------------------------------- autoregressive


def test_ar_cached_equals_uncached_greedy_and_keeps_prompt():
  fns, params = tiny_model()
  prompt = jax.random.randint(jax.random.key(3), (3, 4), 0, 32, dtype=jnp.int32)
  kwargs = dict(max_new_tokens=10, eos_id=31, pad_id=0, temperature=0.0)
  cached, nfe = get_sampler("ar")(fns, params, prompt, jax.random.key(0), **kwargs)
  uncached = get_sampler("ar")(fns, params, prompt, jax.random.key(0), use_kv_cache=False,
                               **kwargs).tokens
  assert cached.shape == (3, 14) and cached.dtype == jnp.int32 and int(nfe) == 10
  np.testing.assert_array_equal(cached, uncached)
  np.testing.assert_array_equal(cached[:, :4], prompt)
  with pytest.raises(ValueError, match="max_seq_len"):
    get_sampler("ar")(fns, params, prompt, jax.random.key(0), **{**kwargs, "max_new_tokens": 13})


def test_ar_with_prefix_attention_matches_the_prefix_lm_forward():
  """Cached and uncached prefix decoding give the greedy tokens of a reference
  loop over the full forward with attention='prefix', prefix_len = prompt_len."""
  fns, params = tiny_model()
  prompt = jax.random.randint(jax.random.key(3), (3, 5), 0, 32, dtype=jnp.int32)
  kwargs = dict(max_new_tokens=6, eos_id=31, pad_id=0, temperature=0.0, prefix_attention=True)
  cached = get_sampler("ar")(fns, params, prompt, jax.random.key(0), **kwargs).tokens
  uncached = get_sampler("ar")(fns, params, prompt, jax.random.key(0), use_kv_cache=False,
                               **kwargs).tokens
  tokens = np.asarray(prompt)
  for _ in range(6):
    logits = fns.forward(params, jnp.asarray(tokens), attention="prefix",
                         prefix_len=jnp.full((3,), 5, jnp.int32))
    tokens = np.concatenate([tokens, np.argmax(logits[:, -1], -1)[:, None]], axis=1)
  np.testing.assert_array_equal(cached, tokens)
  np.testing.assert_array_equal(uncached, tokens)
  # The prefill's logits are the prefix forward's, which differ from causal ones.
  prefix_len = jnp.full((3,), 5, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(5), (3, 5))
  prefill, _ = fns.decode(params, prompt, positions, fns.init_cache(3, 11), prefix_len=prefix_len)
  want = fns.forward(params, prompt, attention="prefix", prefix_len=prefix_len)
  np.testing.assert_allclose(prefill, want, atol=1e-5)
  assert np.abs(want - fns.forward(params, prompt, attention="causal")).max() > 1e-2


def counting_fns(vocab):
  """Toy model: the next token is always (current token + 1) mod vocab."""

  def forward(params, tokens, **kwargs):
    assert kwargs.get("attention", "causal") == "causal"
    return 30.0 * jax.nn.one_hot((tokens + 1) % vocab, vocab)

  def decode(params, tokens, positions, cache, **kwargs):  # write_at, kv_mask: one cache slot
    return forward(params, tokens), cache

  return ModelFns(forward, decode, lambda batch, length: jnp.zeros(()), None)


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_ar_stops_at_eos_and_pads_after_it(use_kv_cache):
  fns = counting_fns(vocab=8)
  prompt = jnp.array([[4, 5], [0, 1]], jnp.int32)
  kwargs = dict(max_new_tokens=8, eos_id=7, pad_id=0, use_kv_cache=use_kv_cache)
  expected = [[4, 5, 6, 7, 0, 0, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7, 0, 0]]
  out, nfe = autoregressive.sample(fns, None, prompt, jax.random.key(0), **kwargs)
  assert out.tolist() == expected and int(nfe) == 6  # Stops when the last row emits EOS.
  steps = []
  out = autoregressive.sample(fns, None, prompt, jax.random.key(0), debug=True,
                              on_step=steps.append, **kwargs).tokens
  assert out.tolist() == expected
  assert len(steps) == 6  # the loop ends when the last row emits EOS
  assert steps[0].tokens[:, 2].tolist() == [6, 2]


def test_ar_never_draws_forbidden_ids():
  """forbidden_ids (e.g. every special, for an image model) get probability 0,
  even where the network puts all its mass on one of them."""
  fns = counting_fns(vocab=8)
  prompt = jnp.array([[4]], jnp.int32)
  kwargs = dict(max_new_tokens=4, eos_id=7, pad_id=0, temperature=0.0, debug=True)
  out = autoregressive.sample(fns, None, prompt, jax.random.key(0), forbidden_ids=(6, 7), **kwargs)
  assert out.tokens.tolist() == [[4, 5, 0, 1, 2]]  # After 5 the best allowed id is 0.
  with pytest.raises(ValueError, match=r"forbidden_ids \(8,\) must lie in .*\[0, 8\)"):
    autoregressive.sample(fns, None, prompt, jax.random.key(0), forbidden_ids=(8,), **kwargs)


# ---------------------------------------------------------------- MD4


def constant_fns(logits, expect_time):
  """Toy denoiser whose logits ignore the input."""

  def forward(params, tokens, **kwargs):
    assert kwargs.pop("attention") == "bidirectional"
    assert ("time" in kwargs) == expect_time
    return jnp.broadcast_to(params, tokens.shape + params.shape)

  return ModelFns(forward), jnp.asarray(logits, jnp.float32)


def test_md4_unmasks_on_schedule_and_never_remasks():
  vocab, mask_id, pad_id, num_steps = 8, 7, 6, 6
  schedule = get_schedule("cosine")
  logits = np.zeros(vocab)
  logits[mask_id] = logits[pad_id] = 50.0  # excluded however likely the model says
  fns, params = constant_fns(logits, expect_time=True)
  prompt = jnp.tile(jnp.array([[1, 2, 3]], jnp.int32), (32, 1))
  kwargs = dict(seq_len=32, num_steps=num_steps,
                spec=SamplingSpec(mask_id, (pad_id,), schedule, time_conditioning=True))
  states = []
  out = md4.sample(fns, params, prompt, jax.random.key(5), debug=True, on_step=states.append,
                   **kwargs).tokens
  np.testing.assert_array_equal(
      out, md4.sample(fns, params, prompt, jax.random.key(5), **kwargs).tokens)
  assert len(states) == num_steps
  out = np.asarray(out)
  assert not (out == mask_id).any() and not (out == pad_id).any()
  np.testing.assert_array_equal(out[:, :3], prompt)
  previous = np.full(out.shape, mask_id).copy()
  previous[:, :3] = prompt
  for i, state in enumerate(states):
    z = np.asarray(state.z)
    was_clean = previous != mask_id
    np.testing.assert_array_equal(z[was_clean], previous[was_clean])  # never changes/re-masks
    n = int((~was_clean).sum())
    newly = int(((z != mask_id) & ~was_clean).sum())
    t, s = (num_steps - i) / num_steps, (num_steps - i - 1) / num_steps
    p = float(schedule.unmask_probability(jnp.float32(s), jnp.float32(t)))
    if i == num_steps - 1:
      assert newly == n
    else:
      assert abs(newly - n * p) <= 5 * np.sqrt(n * p * (1 - p)) + 1, (i, newly, n, p)
    previous = z


def test_md4_cached_gives_the_uncached_tokens_with_fewer_calls():
  """On a 64-step grid over 6 masked tokens most steps unmask nothing: cached
  mode calls the network only after steps that changed z, with the same tokens."""
  fns = ModelFns(lambda params, z, **kw: toy_logits(z))
  kwargs = dict(seq_len=6, num_steps=64, spec=toy_spec("linear"), top_k=2, top_p=0.9)
  prompt = jnp.zeros((4, 0), jnp.int32)
  plain = md4.sample(fns, None, prompt, jax.random.key(2), **kwargs)
  states = []
  cached = md4.sample(fns, None, prompt, jax.random.key(2), cached=True, debug=True,
                      on_step=states.append, **kwargs)
  np.testing.assert_array_equal(cached.tokens, plain.tokens)
  assert int(plain.nfe) == 64
  changed = [bool(s.stale) for s in states[:-1]]  # Did step k change z (so k+1 must call)?
  assert int(cached.nfe) == 1 + sum(changed) < 64
  with pytest.raises(ValueError, match="time_conditioning"):
    md4.sample(fns, None, prompt, jax.random.key(2), cached=True,
               **dict(kwargs, spec=SamplingSpec(TOY_MASK, (TOY_PAD,), get_schedule("linear"), True)))


@pytest.mark.parametrize("name", ["md4", "maskgit", "first_hitting"])
def test_semi_autoregressive_generates_past_the_window(name):
  """20 tokens with an 8-token window, 3 new per round: the prompt is kept, no
  MASK is left, every call sees at most 8 tokens, and NFE adds up over rounds."""
  from tokjax.samplers.denoise import semi_autoregressive
  seen = []

  def forward(params, z, **kw):
    seen.append(z.shape[1])
    return toy_logits(z % 3)

  kwargs = dict(spec=toy_spec("cosine"))
  if name != "first_hitting":
    kwargs["num_steps"] = 4
  prompt = jnp.array([[1, 2]] * 3, jnp.int32)
  out = semi_autoregressive(get_sampler(name), ModelFns(forward, max_seq_len=8), None, prompt,
                            jax.random.key(0), length=20, block_len=3, seq_len=8, **kwargs)
  tokens = np.asarray(out.tokens)
  assert tokens.shape == (3, 20) and (tokens[:, :2] == [1, 2]).all()
  assert not np.isin(tokens, [TOY_MASK, TOY_PAD]).any() and max(seen) <= 8
  rounds = 1 + 4  # The first fills the window (6 tokens), then ceil(12 / 3).
  assert int(out.nfe) == (rounds * 4 if name != "first_hitting" else 18)


def test_md4_with_a_real_model_fills_every_mask():
  fns, params = tiny_model(time_conditioning=True)
  prompt = jnp.array([[5, 6], [7, 8]], jnp.int32)
  spec = SamplingSpec(31, (), get_schedule("linear"), time_conditioning=True)
  out = get_sampler("md4")(fns, params, prompt, jax.random.key(0), seq_len=16, num_steps=4,
                           spec=spec, precision="float64").tokens
  assert out.shape == (2, 16) and out.dtype == jnp.int32
  assert not (np.asarray(out) == 31).any()
  np.testing.assert_array_equal(out[:, :2], prompt)


# ------------------------------------------- distributions against enumeration

TOY_TABLES = np.random.default_rng(4).normal(size=(3, 5, 5)).astype(np.float32) * 1.5
TOY_MASK, TOY_PAD = 4, 3  # Tokens 0, 1, 2 are real.


def toy_spec(schedule: str) -> SamplingSpec:
  return SamplingSpec(TOY_MASK, (TOY_PAD,), get_schedule(schedule))


def toy_logits(z):
  """float[..., 3, 5]: logits from each position's own token and its neighbours (NumPy or jax)."""
  xp = jnp if isinstance(z, jax.Array) else np
  left = xp.concatenate([xp.full_like(z[..., :1], TOY_PAD), z[..., :-1]], axis=-1)
  right = xp.concatenate([z[..., 1:], xp.full_like(z[..., :1], TOY_PAD)], axis=-1)
  t = xp.asarray(TOY_TABLES)
  return t[0][left] + t[1][z] + t[2][right]


def exact_any_order_distribution(start=(TOY_MASK,) * 3) -> np.ndarray:
  """P(x) over the 27 sequences: the masked positions of `start` unmask in a
  uniformly random order, each drawn from the model given the tokens so far;
  known positions are clamped (NumPy)."""
  import itertools
  holes = [n for n in range(3) if start[n] == TOY_MASK]
  probs = np.zeros(27)
  for x in itertools.product(range(3), repeat=3):
    if any(x[n] != start[n] for n in range(3) if n not in holes):
      continue
    for order in itertools.permutations(holes):
      z, p = np.array(start), 1.0
      for n in order:
        logits = toy_logits(z)[n].astype(np.float64)
        logits[[TOY_PAD, TOY_MASK]] = -np.inf
        q = np.exp(logits - logits.max())
        p *= q[x[n]] / q.sum()
        z[n] = x[n]
      probs[np.ravel_multi_index(x, (3, 3, 3))] += p / math.factorial(len(holes))
  return probs


@pytest.mark.parametrize("name, steps", [("first_hitting", None), ("md4", 1000)])
@pytest.mark.parametrize("start", [(TOY_MASK,) * 3, (TOY_MASK, 1, TOY_MASK)])
def test_masked_samplers_match_the_enumerated_distribution(name, steps, start):
  """20,000 sequences of 3 tokens, from all-MASK and infilling around a clamped
  middle token, against the exact distribution: chi-square, false-failure rate
  1e-3. md4 on a 1,000-step grid unmasks two tokens in one step with
  probability ~0.3%, far below what 20,000 draws resolve."""
  fns = ModelFns(lambda params, z, **kw: toy_logits(z))
  kwargs = dict(seq_len=3, spec=toy_spec("linear"), precision="float64")
  if steps:
    kwargs["num_steps"] = steps
  prompt = jnp.tile(jnp.asarray(start, jnp.int32)[None], (20_000, 1))
  draw = lambda key: get_sampler(name)(fns, None, prompt, key, **kwargs).tokens
  with precision_scope("float64"):  # As the sampler enters it, for the jit around it.
    out = np.asarray(jax.jit(draw, compiler_options=OPTIMIZED)(jax.random.key(0)))
  expected = exact_any_order_distribution(start) * len(out)
  counts = np.bincount(np.ravel_multi_index(out.T, (3, 3, 3)), minlength=27)
  assert counts[expected == 0].sum() == 0  # Clamped tokens never change.
  support = expected > 0
  assert stats.chisquare(counts[support], expected[support]).pvalue > 1e-3


def test_first_hitting_makes_one_call_per_masked_token():
  fns = ModelFns(lambda params, z, **kw: toy_logits(z))
  states = []
  prompt = jnp.array([[1, TOY_MASK], [TOY_MASK, TOY_MASK]], jnp.int32)  # 1 and 2 holes + 1 tail.
  out, nfe = first_hitting.sample(fns, None, prompt, jax.random.key(0), seq_len=3,
                                  spec=toy_spec("cosine"), debug=True, on_step=states.append)
  assert len(states) == 3 and int(nfe) == 3 and out[0, 0] == 1
  assert not (np.asarray(out) == TOY_MASK).any()
  t = np.array([np.asarray(s.t) for s in states])
  assert (np.diff(t, axis=0) <= 0).all() and (t > 0).all()  # Time only runs backwards.


# ---------------------------------------------------------------- MaskGIT


@pytest.mark.parametrize("schedule, num_steps", [("cosine", 5), ("linear", 3)])
def test_maskgit_commits_exactly_the_scheduled_count(schedule, num_steps):
  """Each step leaves floor(gamma((k+1)/K) N_0) masked (clipped to commit >= 1),
  never changes prompt or committed tokens, and leaves no MASK at the end."""
  vocab, mask_id, pad_id = 8, 7, 6
  logits = np.random.default_rng(0).normal(size=vocab)
  logits[mask_id] = logits[pad_id] = 50.0
  fns, params = constant_fns(logits, expect_time=False)
  prompt = np.tile(np.array([[1, mask_id, 3]], np.int32), (4, 1))  # One hole in the prompt.
  kwargs = dict(seq_len=20, num_steps=num_steps,
                spec=SamplingSpec(mask_id, (pad_id,), get_schedule(schedule)))
  states = []
  out = maskgit.sample(fns, params, prompt, jax.random.key(1), debug=True, on_step=states.append,
                       **kwargs).tokens
  np.testing.assert_array_equal(
      out, maskgit.sample(fns, params, prompt, jax.random.key(1), **kwargs).tokens)
  out, n0 = np.asarray(out), 18
  assert not np.isin(out, [mask_id, pad_id]).any() and (out[:, [0, 2]] == [1, 3]).all()
  previous = np.asarray(maskgit.masked_canvas(jnp.asarray(prompt), 20, mask_id))
  gamma = lambda r: 1 - float(get_schedule(schedule).alpha(1 - r))
  for k, state in enumerate(states):
    z = np.asarray(state.z)
    known = previous != mask_id
    np.testing.assert_array_equal(z[known], previous[known])
    left = int((previous[0] == mask_id).sum())
    expect = 0 if k == num_steps - 1 else min(max(int(np.floor(gamma((k + 1) / num_steps) * n0)), 0), left - 1)
    assert ((z == mask_id).sum(-1) == expect).all(), (k, expect)
    previous = z


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_config_sections_are_the_samplers_own_defaults(name):
  import inspect
  from tokjax.config import sampler_config
  from tokjax.samplers import default_settings
  parameters = inspect.signature(get_sampler(name)).parameters
  settings = default_settings(name)
  assert settings and all(v is not inspect.Parameter.empty for v in settings.values())
  assert all(parameters[k].kind == inspect.Parameter.KEYWORD_ONLY for k in settings)
  assert sampler_config()[name].to_dict() == settings


def test_registry_model_fns_and_debug_errors():
  assert {"ar", "beam", "first_hitting", "maskgit", "md4"} <= set(SAMPLERS)
  with pytest.raises(ValueError, match="'ar'"):
    get_sampler("nucleus")
  config = TransformerConfig(vocab_size=8, num_layers=3, d_model=8, num_heads=2, d_ff=8,
                             max_seq_len=12)
  fns = model_fns(nnx.graphdef(Transformer(config, rngs=nnx.Rngs(0))), config)
  assert fns.max_seq_len == 12
  cache = fns.init_cache(2, 5)
  assert [[b.shape for b in layer] for layer in cache["v"]] == [[(2, 2, 5, 4)]] * 3  # [batch, heads, slots, kv]
  fns, params = constant_fns(np.zeros(8), expect_time=False)
  with pytest.raises(ValueError, match="debug=True"):
    md4.sample(fns, params, jnp.zeros((1, 2), jnp.int32), jax.random.key(0), seq_len=4,
               num_steps=2, spec=SamplingSpec(7, (), get_schedule("linear")), on_step=print)


def test_maskgit_guidance_draws_from_the_guided_distribution():
  """With one masked position and one step, MaskGIT with guidance w draws from
  softmax(l_c + w (l_c - l_u)): l_c given the class token, l_u given BOS (the
  null class); chi-square over 4,000 draws (false-failure rate 1e-3)."""
  vocab, mask_id, pad_id, bos_id, class_id = 8, 7, 6, 5, 4
  rng = np.random.default_rng(3)
  l_c, l_u = rng.normal(size=vocab).astype(np.float32), rng.normal(size=vocab).astype(np.float32)

  def forward(params, tokens, **kwargs):
    del params, kwargs
    cond = (tokens[:, :1] == class_id)[..., None]
    return jnp.where(cond, l_c, l_u) * jnp.ones(tokens.shape + (vocab,), jnp.float32)

  spec = SamplingSpec(mask_id, (pad_id, bos_id, class_id), get_schedule("cosine"), null_id=bos_id)
  prompt = np.full((4000, 1), class_id, np.int32)
  w = 1.5
  out = maskgit.sample(ModelFns(forward), None, prompt, jax.random.key(0), spec=spec, seq_len=2,
                       num_steps=1, guidance_scale=w, precision="float64").tokens
  guided = l_c.astype(np.float64) + w * (l_c - l_u.astype(np.float64))
  guided[[mask_id, pad_id, bos_id, class_id]] = -np.inf
  p = np.exp(guided - guided.max())
  p /= p.sum()
  counts = np.bincount(np.asarray(out[:, 1]), minlength=vocab)
  allowed = p > 0
  assert counts[~allowed].sum() == 0
  assert stats.chisquare(counts[allowed], 4000 * p[allowed]).pvalue > 1e-3
  plain = maskgit.sample(ModelFns(forward), None, prompt[:8], jax.random.key(0), spec=spec,
                         seq_len=2, num_steps=1)  # w = 0: no extra forward, l_c alone.
  assert plain.tokens.shape == (8, 2)
  no_null = SamplingSpec(mask_id, (pad_id,), get_schedule("cosine"))
  with pytest.raises(ValueError, match="class dropout"):
    maskgit.sample(ModelFns(forward), None, prompt[:8], jax.random.key(0), spec=no_null,
                   seq_len=2, num_steps=1, guidance_scale=w)
