"""Speculative decoding (tokjax/samplers/speculative.py): exact distribution
against enumeration, greedy == plain greedy AR, perfect drafts, errors.

One target serves every drafter: a tiny `MultiTokenModel` (its trunk is the
target's next-token model, its extra heads the 'multi_token' drafter); the
'model' drafter is the same network with other weights (the same closures,
so the draft's parameters are only traced inputs of the same program).
"""
import inspect
import itertools
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from scipy import stats

from tokjax.models import Transformer, TransformerConfig
from tokjax.models.multi_token import MultiTokenModel
from tokjax.samplers import ModelFns, SamplingSpec, autoregressive, model_fns, speculative
from tokjax.samplers.token_recycling import draft_tree


def multi_token_model(vocab, seed, max_seq_len=16):
  """A tiny MultiTokenModel with 2 extra heads: (graphdef, config, params).
  Its KV caches come in blocks of 4 slots.

  Parameters from NumPy (N(0, 1 / fan_in) matrices, unit norm scales), not
  the model's initialisers: their eager compiles would cost seconds.
  """
  config = TransformerConfig(vocab_size=vocab, num_layers=1, d_model=16, num_heads=2, d_ff=32,
                             max_seq_len=max_seq_len, kv_block_len=4)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: MultiTokenModel(config, 3,
                                                                        rngs=nnx.Rngs(0))))
  rng = np.random.default_rng(seed)
  fill = lambda x: (np.ones(x.shape) if x.ndim == 1
                    else rng.normal(size=x.shape) / np.sqrt(x.shape[0])).astype(x.dtype)
  return graphdef, config, jax.tree.map(fill, abstract)


def blend(params, other, weight):
  """(1 - weight) * params + weight * other: a draft model near the target."""
  return jax.tree.map(lambda x, y: (1 - weight) * x + weight * y, params, other)


# ------------------------------------------- distributions against enumeration

VOCAB, EOS, PAD, NEW, ROWS = 5, 4, 0, 3, 8192
DIST_GRAPHDEF, DIST_CONFIG, DIST_PARAMS = multi_token_model(VOCAB, seed=0)
DIST_OTHER = multi_token_model(VOCAB, seed=1)[2]
DIST_FNS = model_fns(DIST_GRAPHDEF, DIST_CONFIG)
DIST_PROMPT = (1, 2)


def filtered_probs(logits, temperature, top_k, top_p):
  """NumPy float64[..., vocab]: `categorical.sample_categorical`'s distribution."""
  x = np.asarray(logits, np.float64) / temperature
  if top_k:
    x = np.where(x < np.sort(x, axis=-1)[..., [-top_k]], -np.inf, x)
  p = np.exp(x - x.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  order = np.argsort(-p, axis=-1)
  sorted_p = np.take_along_axis(p, order, -1)
  keep = np.zeros(p.shape, bool)
  np.put_along_axis(keep, order, np.cumsum(sorted_p, -1) - sorted_p < top_p, -1)
  p = np.where(keep, p, 0.0)
  return p / p.sum(-1, keepdims=True)


def exact_distribution(temperature, top_k, top_p) -> dict:
  """{output tuple: probability}: every NEW-token continuation of DIST_PROMPT
  under the target (its full causal forward), tokens after EOS replaced by PAD."""
  continuations = np.array(list(itertools.product(range(VOCAB), repeat=NEW)))
  tokens = np.concatenate([np.tile(DIST_PROMPT, (len(continuations), 1)), continuations], 1)
  logits = np.asarray(DIST_FNS.forward(DIST_PARAMS, jnp.asarray(tokens, jnp.int32)))
  start = len(DIST_PROMPT)
  probs = filtered_probs(logits[:, start - 1:-1], temperature, top_k, top_p)
  seq_probs = np.take_along_axis(probs, continuations[..., None], -1)[..., 0].prod(-1)
  exact = {}
  for row, prob in zip(continuations, seq_probs):
    out = canonical(row)
    exact[out] = exact.get(out, 0.0) + prob
  return exact


def canonical(row) -> tuple:
  row = list(row)
  if EOS in row:
    end = row.index(EOS) + 1
    row = row[:end] + [PAD] * (len(row) - end)
  return tuple(int(t) for t in row)


def chi_square_pvalue(samples: np.ndarray, exact: dict) -> float:
  """Chi-square over the outputs, those expected fewer than 5 times pooled in one bin."""
  counts = {}
  for row in map(tuple, samples.tolist()):
    counts[row] = counts.get(row, 0) + 1
  assert set(counts) <= {k for k, v in exact.items() if v > 0}, set(counts) - set(exact)
  observed, expected, pooled = [], [], [0.0, 0.0]
  for out, prob in exact.items():
    if prob * len(samples) >= 5:
      observed.append(counts.get(out, 0))
      expected.append(prob * len(samples))
    else:
      pooled[0] += counts.get(out, 0)
      pooled[1] += prob * len(samples)
  if pooled[1] > 0:
    observed.append(pooled[0])
    expected.append(pooled[1])
  expected = np.array(expected) * len(samples) / np.sum(expected)
  return stats.chisquare(observed, expected).pvalue


DIST_CASES = {
    "model": dict(draft_fns=DIST_FNS, draft_params=blend(DIST_PARAMS, DIST_OTHER, 0.5),
                  num_draft_tokens=2, precision="float64", temperature=1.0, top_k=0, top_p=1.0),
    "multi_token": dict(num_draft_tokens=2, temperature=0.8, top_k=3, top_p=1.0),
    "recycling": dict(tree_width=3, tree_depth=3, temperature=1.3, top_k=0, top_p=0.9),
}


@pytest.mark.parametrize("draft", list(DIST_CASES))
def test_sequences_follow_the_target_distribution(draft):
  """8,192 rows of 3 tokens (vocab 5, EOS included so rows stop at different
  rounds) against the target's enumerated distribution under the same
  temperature / top-k / top-p: chi-square, false-failure rate 1e-3 per
  drafter. Every drafter proposes from a q unlike p (blended weights,
  untrained heads, a matrix of recent candidates), so rejections and residual
  draws occur; their exactness is what is tested."""
  kwargs = DIST_CASES[draft]
  prompt = jnp.tile(jnp.asarray(DIST_PROMPT, jnp.int32)[None], (ROWS, 1))
  with_stats = speculative.sample_with_stats(
      DIST_FNS, DIST_PARAMS, prompt, jax.random.key(7), draft=draft, eos_id=EOS, pad_id=PAD,
      max_new_tokens=NEW, **kwargs)
  out, counts = with_stats
  tokens = np.asarray(out.tokens)
  assert tokens.shape == (ROWS, len(DIST_PROMPT) + NEW) and (tokens[:, :2] == DIST_PROMPT).all()
  accepted, proposed = int(counts["accepted_draft_tokens"]), int(counts["proposed_draft_tokens"])
  assert 0 < accepted < proposed  # Both acceptances and rejections happened.
  exact = exact_distribution(kwargs["temperature"], kwargs["top_k"], kwargs["top_p"])
  assert chi_square_pvalue(tokens[:, 2:], exact) > 1e-3


# ------------------------------------------------------------- greedy == AR

GRAPHDEF, CONFIG, PARAMS = multi_token_model(32, seed=0)
OTHER = multi_token_model(32, seed=1)[2]
FNS = model_fns(GRAPHDEF, CONFIG)
PROMPT = np.random.default_rng(3).integers(0, 32, (3, 4)).astype(np.int32)
GREEDY = dict(max_new_tokens=12, eos_id=31, pad_id=0, temperature=0.0)  # 4 + 12 = max_seq_len
GREEDY_CASES = {
    "model": dict(draft_fns=FNS, draft_params=blend(PARAMS, OTHER, 0.1),
                  num_draft_tokens=3),
    "multi_token": dict(num_draft_tokens=2),
    "recycling": dict(tree_width=3, tree_depth=3),
}


@pytest.fixture(scope="module")
def greedy_ar():
  return np.asarray(autoregressive.sample(FNS, PARAMS, PROMPT, jax.random.key(0), **GREEDY).tokens)


@pytest.mark.parametrize("draft", list(GREEDY_CASES))
def test_temperature_zero_is_greedy_ar_token_for_token(draft, greedy_ar):
  """12 tokens in 3 rows that accept different counts per round; the caches
  reach past max_seq_len (zero-padded slots for the last round's drafts)."""
  out, counts = speculative.sample_with_stats(FNS, PARAMS, PROMPT, jax.random.key(0),
                                              draft=draft, **GREEDY, **GREEDY_CASES[draft])
  np.testing.assert_array_equal(out.tokens, greedy_ar)
  assert int(out.nfe) == int(counts["rounds"]) <= 12
  assert int(counts["accepted_draft_tokens"]) > 0


def test_a_perfect_draft_is_always_accepted(greedy_ar):
  """Draft = target: every proposal accepted, k + 1 tokens per target forward."""
  kwargs = dict(GREEDY_CASES["model"], draft_params=PARAMS)  # The same program as above.
  out, counts = speculative.sample_with_stats(FNS, PARAMS, PROMPT, jax.random.key(0),
                                              draft="model", **GREEDY, **kwargs)
  np.testing.assert_array_equal(out.tokens, greedy_ar)
  assert int(counts["accepted_draft_tokens"]) == int(counts["proposed_draft_tokens"]) == 3 * 3 * 3
  assert int(out.nfe) == 3  # 12 tokens, 4 per round.
  assert speculative.summarize(counts) == dict(acceptance_rate=1.0, tokens_per_round=4.0)


def counting_fns(vocab, step=1):
  """Toy model with no real cache: the next token is (current + step) mod vocab."""

  def forward(params, tokens, **kwargs):
    return 30.0 * jax.nn.one_hot((tokens + step) % vocab, vocab)

  def decode(params, tokens, positions, cache, prefix_len=None, **kwargs):
    return forward(params, tokens), cache

  return ModelFns(forward, decode, lambda batch, length: jnp.zeros(()), None)


def test_debug_loop_stops_rows_at_eos_and_pads_after_it():
  """debug=True runs the rounds in Python (op by op, so greedy: fewer ops to
  compile), `on_step` seeing each. The draft proposes t + 1 (right) or t + 2
  (always rejected) and the target picks t + 1, so with k = 2 the right draft
  commits 3 tokens a round and the wrong one 1."""
  target = counting_fns(8)
  prompt = jnp.array([[4, 5], [0, 1]], jnp.int32)
  expected = [[4, 5, 6, 7, 0, 0, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7, 0, 0]]
  for draft, rounds in ((target, 2), (counting_fns(8, step=2), 6)):
    states = []
    out, counts = speculative.sample_with_stats(
        target, None, prompt, jax.random.key(0), draft="model", draft_fns=draft, draft_params=(),
        num_draft_tokens=2, max_new_tokens=8, eos_id=7, pad_id=0, temperature=0.0, debug=True,
        on_step=states.append)
    assert out.tokens.tolist() == expected
    assert len(states) == int(out.nfe) == int(counts["rounds"]) == rounds
    assert states[0].pos.tolist() == ([5, 5] if rounds == 2 else [3, 3])  # Past the padding.
    row_rounds = 1 + rounds if rounds == 2 else 2 + rounds  # Row 0 stops after 1 or 2 rounds.
    assert int(counts["row_rounds"]) == row_rounds
    assert int(counts["accepted_draft_tokens"]) == (2 * row_rounds if rounds == 2 else 0)


# ------------------------------------------------------------------ errors


def test_settings_are_sample_defaults_and_simple():
  parameters = inspect.signature(speculative.sample).parameters
  defaults = {name: parameters[name].default for name in speculative.SETTINGS}
  assert all(isinstance(v, (int, float, str)) for v in defaults.values())
  assert defaults["draft"] in speculative.DRAFTERS and defaults["num_draft_tokens"] == 4
  assert draft_tree(4, 4).size == 24


def test_bad_drafters_raise():
  graphdef = nnx.graphdef(nnx.eval_shape(lambda: Transformer(CONFIG, rngs=nnx.Rngs(0))))
  plain = model_fns(graphdef, CONFIG)  # No extra heads. Raises before reading parameters:
  kwargs = dict(GREEDY, max_new_tokens=4)
  with pytest.raises(ValueError, match="objective=multi_token"):
    speculative.sample(plain, None, PROMPT, jax.random.key(0), draft="multi_token", **kwargs)
  with pytest.raises(ValueError, match=r"num_draft_tokens=3 .* 2 extra heads"):
    speculative.sample(FNS, PARAMS, PROMPT, jax.random.key(0), draft="multi_token",
                       num_draft_tokens=3, **kwargs)
  with pytest.raises(ValueError, match="draft_fns"):
    speculative.sample(FNS, PARAMS, PROMPT, jax.random.key(0), draft="model", **kwargs)
  with pytest.raises(ValueError, match="Unknown draft"):
    speculative.sample(FNS, PARAMS, PROMPT, jax.random.key(0), draft="ngram", **kwargs)
  with pytest.raises(ValueError, match="max_seq_len"):
    speculative.sample(FNS, PARAMS, PROMPT, jax.random.key(0), draft="recycling", tree_width=4,
                       tree_depth=4, **kwargs)  # 24 tree nodes in one forward > 16.


def fake_run(vocab_size):
  tokenizer = types.SimpleNamespace(vocab_size=vocab_size)
  return types.SimpleNamespace(tokenizer=tokenizer, graphdef=GRAPHDEF, model_config=CONFIG)


def test_bind_loads_the_draft_run(monkeypatch):
  from tokjax import restore
  tokenizer = types.SimpleNamespace(vocab_size=32, eos_id=31, pad_id=30)
  settings = speculative.sample.__kwdefaults__
  settings = {name: settings[name] for name in speculative.SETTINGS}
  spec = SamplingSpec(forbidden_ids=(29,))
  bind = lambda **s: speculative.bind(dict(settings, **s), spec, tokenizer, seq_len=16,
                                      prompt_len=4)
  with pytest.raises(ValueError, match="draft_workdir"):
    bind(draft="model")
  loaded = []
  monkeypatch.setattr(restore, "load_run", lambda workdir: loaded.append(workdir) or (
      fake_run(vocab_size=40 if workdir == "other" else 32), PARAMS, 7))
  with pytest.raises(ValueError, match="vocab_size=40 but the target has vocab_size=32"):
    bind(draft="model", draft_workdir="other")
  first, second = bind(draft="model", draft_workdir="w"), bind(draft="model", draft_workdir="w")
  assert first["draft_fns"] is second["draft_fns"] and first["draft_params"] is PARAMS
  assert (first["max_new_tokens"], first["eos_id"], first["pad_id"]) == (12, 31, 30)
  assert first["forbidden_ids"] == (29,) and loaded == ["other", "w", "w"]
  assert "draft_fns" not in bind(draft="recycling")
  with pytest.raises(ValueError, match="prefix"):
    speculative.bind(settings, SamplingSpec(prefix_attention=True), tokenizer, seq_len=16,
                     prompt_len=4)
