"""Beam search: one beam is greedy; a wide beam finds the enumerated optimum
of log P (alpha = 0) and of the GNMT length-normalised score (alpha > 0)."""
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tokjax.data.tokenizer import ByteTokenizer
from tokjax.models import Transformer, TransformerConfig
from tokjax.samplers import ModelFns, SamplingSpec, autoregressive, beam, model_fns

PAD, EOS = 30, 31


def test_one_beam_is_greedy_decoding():
  """num_beams=1, alpha=0 gives greedy AR's tokens on ragged prompts, EOS
  (not forbidden: rows may end early) and PAD after it included; KV caches in
  blocks of 4 slots."""
  config = TransformerConfig(vocab_size=32, num_layers=2, d_model=32, num_heads=4, d_ff=64,
                             max_seq_len=16, kv_block_len=4)
  graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
  fns = model_fns(graphdef, config)
  prompt = jnp.array([[1, 2, 3, 4], [PAD, PAD, 7, 8], [PAD, PAD, PAD, 5]], jnp.int32)
  kwargs = dict(max_new_tokens=10, eos_id=EOS, pad_id=PAD)
  greedy = autoregressive.sample(fns, params, prompt, jax.random.key(0), temperature=0.0, **kwargs)
  out = beam.sample(fns, params, prompt, jax.random.key(0), num_beams=1, length_penalty=0.0,
                    **kwargs)
  np.testing.assert_array_equal(out.tokens, greedy.tokens)
  assert int(out.nfe) <= 10


# A toy model over ids 0, 1, 2 (EOS = 3, PAD = 4, never drawn) whose logits
# are a random function of the whole history, read from its "KV cache".
V, TOY_EOS, TOY_PAD, BASE = 5, 3, 4, 6
TABLE = (np.random.default_rng(1).normal(size=(BASE ** 4, V)) * 1.5).astype(np.float32)


def history_fns():
  """ModelFns whose cache holds each slot's token + 1 (0: empty) in
  {'k': ((float32[batch, 1, slots, 1],),), 'v': same} (one layer of one
  `kv_cache` block); the logits are
  TABLE[sum over visible slots s of (token_s + 1) * 6^s]."""

  def decode(params, tokens, positions, cache, write_at, kv_mask, **kwargs):
    slots = cache["k"][0][0]
    new = (tokens + 1).astype(jnp.float32)[:, None, :, None]
    zero = jnp.zeros((), jnp.int32)  # int32 indices also in 64-bit mode
    slots = jax.lax.dynamic_update_slice(slots, new, (zero, zero, write_at, zero))
    ids = jnp.where(kv_mask[:, -1], slots[:, 0, :, 0], 0).astype(jnp.int32)
    code = (ids * BASE ** jnp.arange(ids.shape[1])).sum(-1)
    logits = jnp.asarray(TABLE)[code][:, None]
    return jnp.broadcast_to(logits, (*tokens.shape, V)), {"k": ((slots,),), "v": ((slots,),)}

  def init_cache(batch, length):
    return {name: ((jnp.zeros((batch, 1, length, 1), jnp.float32),),) for name in ("k", "v")}

  return ModelFns(lambda *a, **k: None, decode, init_cache, 4)


def log_p_next(history):
  """float64[V] log-probabilities of the toy model after `history` (PAD excluded)."""
  logits = TABLE[sum((t + 1) * BASE ** i for i, t in enumerate(history))].astype(np.float64)
  logits[TOY_PAD] = -np.inf
  return logits - np.logaddexp.reduce(logits)


def enumerate_hypotheses(prompt, max_new):
  """{Y: log P(Y)} over every hypothesis: ended by EOS, or max_new tokens long."""
  out = {}

  def extend(history, log_p):
    new = history[len(prompt):]
    if len(new) == max_new or (new and new[-1] == TOY_EOS):
      out[tuple(new)] = log_p
      return
    step = log_p_next(history)
    for t in (0, 1, 2, TOY_EOS):
      extend(history + [t], log_p + step[t])

  extend(list(prompt), 0.0)
  return out


def best_by_enumeration(prompt, max_new, alpha):
  """The hypothesis maximising log P(Y) / lp(Y), lp = ((5 + |Y|) / 6)^alpha
  (Wu et al. 2016, Eq. 14), and its margin over the runner-up."""
  scores = {y: lp / ((5 + len(y)) / 6) ** alpha
            for y, lp in enumerate_hypotheses(prompt, max_new).items()}
  ranked = sorted(scores, key=scores.get, reverse=True)
  return ranked[0], scores[ranked[0]] - scores[ranked[1]]


def greedy_by_enumeration(prompt, max_new):
  history = list(prompt)
  while len(history) - len(prompt) < max_new and history[-1] != TOY_EOS:
    history.append(int(np.argmax(log_p_next(history))))
  return tuple(history[len(prompt):])


@pytest.mark.parametrize("alpha", [0.0, 2.0])
def test_a_wide_beam_finds_the_enumerated_optimum(alpha):
  """12 beams keep every hypothesis of up to 3 tokens (at most 12 candidates
  per step), so beam search returns the best of all of them by log P / lp."""
  prompts, max_new = [[0], [1], [2]], 3
  best = [best_by_enumeration(p, max_new, alpha) for p in prompts]
  assert min(margin for _, margin in best) > 1e-3  # No near-ties.
  out = beam.sample(history_fns(), None, jnp.asarray(prompts, jnp.int32), jax.random.key(0),
                    num_beams=12, length_penalty=alpha, max_new_tokens=max_new, eos_id=TOY_EOS,
                    pad_id=TOY_PAD, forbidden_ids=(TOY_PAD,), precision="float64")
  for row, (y, _) in zip(np.asarray(out.tokens), best):
    assert tuple(row[1:1 + len(y)]) == y and (row[1 + len(y):] == TOY_PAD).all()
  # The test can tell: greedy misses the log P optimum, and alpha changes it.
  plain = [best_by_enumeration(p, max_new, 0.0)[0] for p in prompts]
  assert any(greedy_by_enumeration(p, max_new) != y for p, y in zip(prompts, plain))
  assert plain != [best_by_enumeration(p, max_new, 2.0)[0] for p in prompts]


def test_bind_settings_and_errors():
  parameters = inspect.signature(beam.sample).parameters
  assert {k: parameters[k].default for k in beam.SETTINGS} == dict(
      num_beams=4, length_penalty=0.6, max_new_tokens=0)
  tok = ByteTokenizer()
  settings = dict(num_beams=4, length_penalty=0.6, max_new_tokens=0)
  kwargs = beam.bind(settings, SamplingSpec(), tok, seq_len=32, prompt_len=5)
  assert kwargs["max_new_tokens"] == 27 and kwargs["eos_id"] == tok.eos_id
  with pytest.raises(ValueError, match=r"lower sampler\.beam\.max_new_tokens"):
    beam.bind(dict(settings, max_new_tokens=28), SamplingSpec(), tok, seq_len=32, prompt_len=5)
  with pytest.raises(ValueError, match="num_beams"):
    beam.sample(history_fns(), None, jnp.zeros((1, 1), jnp.int32), None, num_beams=0,
                eos_id=TOY_EOS, pad_id=TOY_PAD)
  with pytest.raises(ValueError, match="KV cache"):
    beam.sample(ModelFns(lambda *a, **k: None), None, jnp.zeros((1, 1), jnp.int32), None,
                eos_id=TOY_EOS, pad_id=TOY_PAD, max_new_tokens=2)
