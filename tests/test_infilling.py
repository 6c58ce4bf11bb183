"""Infilling objectives (FIM, CM3, T5 span corruption): invertibility and laws."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tokjax.data.tokenizer import ByteTokenizer
from tokjax.objectives.cm3 import CM3
from tokjax.objectives.fim import FIM, PLAIN, PSM, SPM
from tokjax.objectives.span_corruption import SpanCorruption

PAD, EOS = 256, 258
FIM_CONFIG = dict(fim_rate=0.5, fim_spm_rate=0.3)
CM3_CONFIG = dict(max_spans=3)
T5_CONFIG = dict(noise_density=0.15, mean_noise_span_length=3.0, num_sentinels=4)


def build(cls, **config):
  config = ml_collections.ConfigDict(config)
  tokenizer = ByteTokenizer(cls.extra_special_tokens(config))
  return cls.from_config(config, tokenizer), tokenizer


def windows(batch, length, seed=0):
  """Random bytes; every 4th row ends in a PAD tail of random length (maybe all PAD)."""
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (batch, length))
  for row in range(0, batch, 4):
    x[row, rng.integers(0, length + 1):] = PAD
  return x.astype(np.int32)


class UniformModel:
  """A backbone whose logits are all zero: uniform over its vocab_size outputs."""

  def __init__(self, vocab_size):
    self.vocab_size = vocab_size

  def __call__(self, tokens, **unused):
    return jnp.zeros(tokens.shape + (self.vocab_size,))


def padded(tokens, length):
  return np.concatenate([tokens, np.full(length - len(tokens), PAD)]).astype(np.int32)


def binomial_close(count, n, p):
  return abs(count - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


# FIM ---------------------------------------------------------------------------------


def fim_inverse(row, mode, ids, clean_len):
  """NumPy: the clean window back from a PLAIN, PSM or SPM row."""
  if mode == PLAIN:
    return row[:clean_len]
  pre, suf, mid = ids
  assert row[0] == pre
  i_suf, i_mid = list(row).index(suf), list(row).index(mid)
  i_eos = i_mid + list(row[i_mid:]).index(EOS)
  assert (row[i_eos + 1:] == PAD).all()
  if mode == PSM:
    doc = [row[1:i_suf], row[i_mid + 1:i_eos], row[i_suf + 1:i_mid]]
  else:
    assert i_suf == 1
    doc = [row[i_mid + 1:i_eos], row[2:i_mid]]
  return padded(np.concatenate(doc), clean_len)


def test_fim_inverts_and_follows_its_rates():
  obj, tokenizer = build(FIM, **FIM_CONFIG)
  x = windows(2000, 24)
  rng = jax.random.key(0)
  inputs, targets = jax.jit(obj.corrupt)(jnp.asarray(x), rng)
  length = (x[:, :20] != PAD).sum(1)
  mode = np.asarray(obj.plan(rng, jnp.asarray(length))[0])
  tokens = np.asarray(inputs.tokens)
  ids = (obj.prefix_id, obj.suffix_id, obj.middle_id)
  for row in range(len(x)):
    np.testing.assert_array_equal(fim_inverse(tokens[row], mode[row], ids, 20), x[row, :20])
  fim = mode != PLAIN
  assert binomial_close(fim.sum(), len(x), FIM_CONFIG["fim_rate"])
  assert binomial_close((mode == SPM).sum(), fim.sum(), FIM_CONFIG["fim_spm_rate"])
  # Scored: every position whose next token is real (N + 4 rearranged, N plain).
  total = length + 4 * fim
  np.testing.assert_array_equal(targets.weights, np.arange(24) + 1 < total[:, None])
  assert len(FIM.extra_special_tokens(None)) % 2 == 0 and tokenizer.vocab_size == 264


# CM3 ---------------------------------------------------------------------------------


def cm3_inverse(row, sentinels, clean_len):
  """NumPy: (the clean window, span count) back from a CM3 row."""
  row = list(row)
  if EOS not in row:
    return np.asarray(row[:clean_len]), 0
  moved_at = row.index(sentinels[0], row.index(sentinels[0]) + 1)
  inline, moved = row[:moved_at], row[moved_at:row.index(EOS)]
  n = sum(t in sentinels for t in inline)
  assert [t for t in inline if t in sentinels] == list(sentinels[:n])  # Distinct, in order.
  cuts = [moved.index(s) for s in sentinels[:n]] + [len(moved)]
  spans = [moved[a + 1:b] for a, b in zip(cuts, cuts[1:])]
  assert all(spans)  # Non-empty.
  doc = []
  for t in inline:
    doc += spans[sentinels.index(t)] if t in sentinels else [t]
  return padded(np.asarray(doc), clean_len), n


def test_cm3_inverts_and_span_count_is_clipped_poisson():
  obj, tokenizer = build(CM3, **CM3_CONFIG)
  x = windows(3000, 24)
  inputs, targets = jax.jit(obj.corrupt)(jnp.asarray(x), jax.random.key(1))
  tokens, clean_len = np.asarray(inputs.tokens), 24 - 7
  counts = []
  for row in range(len(x)):
    clean, n = cm3_inverse(tokens[row], obj.sentinel_ids, clean_len)
    np.testing.assert_array_equal(clean, x[row, :clean_len])
    total = (tokens[row] != PAD).sum()
    np.testing.assert_array_equal(targets.weights[row], np.arange(24) + 1 < total)
    if (x[row, :clean_len] != PAD).all():
      counts.append(n)
  counts = np.asarray(counts)
  p1 = 2 * math.exp(-1)
  p2 = math.exp(-1) / 2
  for k, p in [(1, p1), (2, p2), (3, 1 - p1 - p2)]:
    assert binomial_close((counts == k).sum(), len(counts), p)
  assert tokenizer.vocab_size == 264  # 3 sentinels rounded up to 4.


# T5 span corruption ----------------------------------------------------------------------


def test_span_corruption_counts_inverse_and_loss_mask():
  obj, _ = build(SpanCorruption, **T5_CONFIG)
  layout = obj.layout(64)
  assert (layout.clean_len, layout.num_noise, layout.num_spans) == (58, 9, 3)
  x = windows(2000, 64)
  inputs, targets = jax.jit(obj.corrupt)(jnp.asarray(x), jax.random.key(2))
  tokens, p, total = np.asarray(inputs.tokens), layout.prefix_len, layout.total
  np.testing.assert_array_equal(inputs.prefix_len, p)
  sentinels = list(obj.sentinel_ids[:3])
  first_span = []
  for row in range(len(x)):
    source, target = tokens[row, :p], tokens[row, p:total]
    assert [t for t in source if t in sentinels] == sentinels
    cuts = [list(target).index(s) for s in sentinels] + [len(target)]
    assert cuts[0] == 0
    spans = [target[a + 1:b] for a, b in zip(cuts, cuts[1:])]
    assert all(len(s) >= 1 for s in spans) and sum(map(len, spans)) == layout.num_noise
    first_span.append(len(spans[0]))
    doc = np.concatenate([spans[sentinels.index(t)] if t in sentinels else [t] for t in source])
    np.testing.assert_array_equal(doc, x[row, :58])
    scored = (np.arange(64) >= p - 1) & (np.arange(64) < total - 1)
    next_real = np.append(tokens[row, 1:], PAD) != PAD
    np.testing.assert_array_equal(targets.weights[row], scored & next_real)
  # Uniform compositions: each span has mean length num_noise / num_spans = 3.
  assert abs(np.mean(first_span) - 3.0) < 5 * np.std(first_span) / math.sqrt(len(x))


# Shared --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls, config", [(FIM, FIM_CONFIG), (CM3, CM3_CONFIG),
                                         (SpanCorruption, T5_CONFIG)])
def test_uniform_logits_give_log_vocab(cls, config):
  obj, tokenizer = build(cls, **config)
  x = jnp.asarray(windows(16, 32))
  model = UniformModel(tokenizer.vocab_size)
  loss, _ = obj.loss(model, x, jax.random.key(3))
  assert float(loss) == pytest.approx(math.log(tokenizer.vocab_size), rel=1e-5)
  figures = obj.likelihood(model, x, jax.random.key(3))
  assert float(figures["nats"].sum() / figures["tokens"].sum()) == pytest.approx(
      math.log(tokenizer.vocab_size), rel=1e-5)


class TableModel:
  """Non-uniform logits looked up from a fixed random table of the input token."""

  def __init__(self, vocab_size):
    self.table = jax.random.normal(jax.random.key(1), (vocab_size, vocab_size))

  def __call__(self, tokens, **unused):
    return self.table[tokens]


@pytest.mark.parametrize("cls, config", [
    (FIM, dict(fim_rate=0.0, fim_spm_rate=0.5)), (FIM, dict(fim_rate=0.5, fim_spm_rate=0.5)),
    (FIM, dict(fim_rate=1.0, fim_spm_rate=0.0)), (CM3, dict(max_spans=1)), (CM3, CM3_CONFIG)])
def test_fim_and_cm3_evaluate_the_exact_nll_of_the_plain_text(cls, config):
  """Their figure is causal LM's on the same text, whatever the corruption settings."""
  from tokjax.objectives.causal import Causal
  obj, tokenizer = build(cls, **config)
  model, x = TableModel(tokenizer.vocab_size), jnp.asarray(windows(16, 32))
  ours = obj.likelihood(model, x, jax.random.key(3))
  causal = Causal(pad_id=PAD, num_bytes=256).likelihood(model, x, jax.random.key(4))
  for key in ("nats", "tokens", "bytes"):
    np.testing.assert_allclose(ours[key], causal[key], rtol=1e-6)


def test_fim_infill_prompt_and_splice():
  obj, tok = build(FIM, **FIM_CONFIG)
  pieces = [np.array([1, 2]), np.array([3])]
  prompt = obj.infill_prompt(pieces, hole_len=(4,))
  np.testing.assert_array_equal(prompt, [obj.prefix_id, 1, 2, obj.suffix_id, 3, obj.middle_id])
  generated = np.concatenate([prompt, [7, 8, EOS, 9]])
  np.testing.assert_array_equal(obj.infill_result(pieces, prompt, generated), [1, 2, 7, 8, 3])
  with pytest.raises(ValueError, match="one hole"):
    obj.infill_prompt(pieces + [np.array([4])], hole_len=(4,))


def test_cm3_and_span_corruption_infill_prompts_and_splices():
  pieces = [np.array([1, 2]), np.array([3]), np.array([4])]
  cm3, _ = build(CM3, **CM3_CONFIG)
  s0, s1 = cm3.sentinel_ids[:2]
  prompt = cm3.infill_prompt(pieces, hole_len=(4,))
  np.testing.assert_array_equal(prompt, [1, 2, s0, 3, s1, 4, s0])
  generated = np.concatenate([prompt, [7, 8, s1, 9, EOS, 5]])
  np.testing.assert_array_equal(cm3.infill_result(pieces, prompt, generated), [1, 2, 7, 8, 3, 9, 4])
  t5, _ = build(SpanCorruption, **T5_CONFIG)
  s0, s1 = t5.sentinel_ids[:2]
  prompt = t5.infill_prompt(pieces, hole_len=(4,))
  np.testing.assert_array_equal(prompt, [1, 2, s0, 3, s1, 4])
  generated = np.concatenate([prompt, [s0, 7, s1, 9, 9, PAD]])  # PAD ends it.
  np.testing.assert_array_equal(t5.infill_result(pieces, prompt, generated), [1, 2, 7, 3, 9, 9, 4])
  with pytest.raises(ValueError, match="sentinels"):
    cm3.infill_prompt([np.array([1])] * 5, hole_len=(4,))  # 4 holes, max_spans = 3.


def test_bad_settings_are_clear_errors():
  with pytest.raises(ValueError, match="noise_density"):
    build(SpanCorruption, **dict(T5_CONFIG, noise_density=1.0))
  with pytest.raises(ValueError, match="noise_density"):
    build(SpanCorruption, **dict(T5_CONFIG, noise_density=0.0))
  obj, _ = build(SpanCorruption, **T5_CONFIG)
  with pytest.raises(ValueError, match="too short"):
    obj.corrupt(jnp.zeros((1, 3), jnp.int32), jax.random.key(0))
  with pytest.raises(ValueError, match="num_sentinels"):
    obj.corrupt(jnp.zeros((1, 128), jnp.int32), jax.random.key(0))
  with pytest.raises(ValueError, match="fim_rate"):
    build(FIM, **dict(FIM_CONFIG, fim_rate=1.5))
  with pytest.raises(ValueError, match="too short"):
    build(FIM, **FIM_CONFIG)[0].corrupt(jnp.zeros((1, 4), jnp.int32), jax.random.key(0))
  with pytest.raises(ValueError, match="too short"):
    build(CM3, **CM3_CONFIG)[0].corrupt(jnp.zeros((1, 9), jnp.int32), jax.random.key(0))
