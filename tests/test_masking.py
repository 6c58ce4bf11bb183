"""Mask samplers and the BERT MLM objective against closed forms and NumPy references."""
import glob
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tokjax import masking
from tokjax.data import ByteTokenizer
from tokjax.objectives.mlm import MLM

TOK = ByteTokenizer()
PAD, MASK, V = TOK.pad_id, TOK.mask_id, TOK.vocab_size
CORPUS = os.path.join(os.path.dirname(__file__), "fixtures", "corpus")
RATIO = 0.15
BATCH, LENGTH, NUM_PAD = 512, 128, 32
OPTIONS = {"token": {}, "whole_word": {}, "span": dict(p=0.2, max_span=10), "ngram": dict(max_n=3)}


def _text_rows(seed=0):
  """int32[BATCH, LENGTH]: windows of the fixture text (BOS per file), PAD tail."""
  paths = sorted(glob.glob(os.path.join(CORPUS, "**", "*.txt"), recursive=True))
  ids = np.concatenate([TOK.encode(open(p, encoding="utf-8").read(), add_bos=True) for p in paths])
  real = LENGTH - NUM_PAD
  starts = np.random.default_rng(seed).integers(0, len(ids) - real, BATCH)
  rows = np.stack([ids[s:s + real] for s in starts])
  return np.pad(rows, ((0, 0), (0, NUM_PAD)), constant_values=PAD).astype(np.int32)


def _ratio_and_se(selected, eligible):
  """Ratio estimator sum(selected) / sum(eligible) and its row-level (CLT) standard error."""
  s, e = selected.sum(1).astype(float), eligible.sum(1).astype(float)
  ratio = s.sum() / e.sum()
  return ratio, math.sqrt(((s - ratio * e) ** 2).sum()) / e.sum()


def _reference_words(row):
  """NumPy/Python reference segmentation: lists of positions of each word in `row`."""
  words, current = [], []
  for i, t in enumerate(row):
    if t < 256 and chr(t) not in " \n\t\r":
      current.append(i)
    elif current:
      words, current = words + [current], []
  return words + ([current] if current else [])


@pytest.mark.parametrize("name", list(masking.MASKING_POLICIES))
def test_policy_hits_ratio_and_never_selects_pad_under_jit(name):
  policy = masking.get_policy(name)
  x = _text_rows()
  sample = jax.jit(lambda rng, t: policy(rng, t, RATIO, pad_id=PAD, **OPTIONS[name]))
  selected = np.asarray(sample(jax.random.key(1), jnp.asarray(x)))
  assert selected.shape == x.shape and selected.dtype == bool
  eligible = x != PAD
  assert not selected[~eligible].any()
  ratio, se = _ratio_and_se(selected, eligible)
  assert se < 0.01  # Enough samples for the bound to mean something.
  assert abs(ratio - RATIO) < 5 * se
  # The first positions of the window are covered as often as the rest.
  head, head_se = _ratio_and_se(selected[:, :12], eligible[:, :12])
  assert abs(head - RATIO) < 5 * head_se


def test_token_policy_fraction_within_binomial_bound():
  x = _text_rows()
  selected = np.asarray(masking.token_mask(jax.random.key(2), jnp.asarray(x), RATIO, pad_id=PAD))
  n = (x != PAD).sum()
  assert abs(selected.sum() / n - RATIO) < 5 * math.sqrt(RATIO * (1 - RATIO) / n)


def test_whole_word_selects_whole_words_at_the_ratio():
  x = _text_rows(seed=3)
  selected = np.asarray(masking.whole_word_mask(jax.random.key(3), jnp.asarray(x), RATIO, pad_id=PAD))
  picked, expected, variance = 0, 0.0, 0.0
  for row, sel in zip(x, selected):
    words = _reference_words(row)
    in_words = np.zeros(len(row), bool)
    for word in words:
      assert sel[word].all() or not sel[word].any(), "a word was split"
      in_words[word] = True
      picked += int(sel[word[0]])
    assert not sel[~in_words].any()  # Whitespace, BOS and PAD are never selected.
    # Each word is picked independently with q = RATIO * non-PAD tokens / word bytes.
    q = min(1.0, RATIO * (row != PAD).sum() / max(in_words.sum(), 1))
    expected += q * len(words)
    variance += q * (1 - q) * len(words)
  assert abs(picked - expected) < 5 * math.sqrt(variance)


@pytest.mark.parametrize(
    "probs, lengths",
    [
        # SpanBERT: Geometric(0.2) conditioned on L <= 10; the paper's mean is 3.8.
        (masking.span_length_probs(0.2, 10), 0.2 * 0.8 ** np.arange(10)),
        # ERNIE-Gram: P(n) proportional to 1/n, n = 1..3.
        (masking.ngram_length_probs(3), 1.0 / np.arange(1, 4)),
    ],
)
def test_sampled_lengths_have_the_closed_form_mean(probs, lengths):
  weights = lengths / lengths.sum()
  mean = (np.arange(1, len(weights) + 1) * weights).sum()
  draws = np.asarray(masking.sample_lengths(jax.random.key(4), probs, (200_000,)))
  assert draws.min() >= 1 and draws.max() <= len(weights)
  assert abs(draws.mean() - mean) < 5 * draws.std() / math.sqrt(draws.size)


def test_closed_form_means_match_the_papers():
  span_mean = (np.arange(1, 11) * masking.span_length_probs(0.2, 10)).sum()
  assert span_mean == pytest.approx(3.8, abs=0.01)  # SpanBERT Sec. 3.1.
  assert (np.arange(1, 4) * masking.ngram_length_probs(3)).sum() == pytest.approx(3 / (1 + 1 / 2 + 1 / 3))


def _mlm(**kwargs):
  return MLM(pad_id=PAD, num_bytes=TOK.num_bytes, mask_id=MASK, **kwargs)


def test_mlm_selects_15_percent_and_replaces_80_10_10():
  x = _text_rows(seed=5)
  inputs, targets = jax.jit(_mlm().corrupt)(jnp.asarray(x), jax.random.key(5))
  seen, selected = np.asarray(inputs.tokens), np.asarray(targets.weights) > 0
  np.testing.assert_array_equal(targets.targets, x)
  np.testing.assert_array_equal(targets.valid, targets.weights)
  np.testing.assert_array_equal(seen[~selected], x[~selected])
  n = (x != PAD).sum()
  assert not selected[x == PAD].any()
  assert abs(selected.sum() / n - RATIO) < 5 * math.sqrt(RATIO * (1 - RATIO) / n)
  masked = seen[selected] == MASK
  changed = ~masked & (seen[selected] != x[selected])
  assert (seen[selected][changed] < 256).all()  # Random replacements are bytes.
  # A random byte equals the original with probability 1/256 and then looks kept.
  m = selected.sum()
  for observed, p in [(masked, 0.8), (changed, 0.1 * 255 / 256), (~masked & ~changed, 0.1 + 0.1 / 256)]:
    assert abs(observed.sum() / m - p) < 5 * math.sqrt(p * (1 - p) / m)


def test_mlm_uniform_logits_give_log_of_real_vocab():
  obj = _mlm()
  x = jnp.asarray(_text_rows(seed=6))
  model = lambda tokens, **unused: jnp.zeros(tokens.shape + (V,))
  loss, metrics = obj.loss(model, x, jax.random.key(6))
  assert float(loss) == pytest.approx(math.log(V - 2), rel=1e-6)
  like = obj.likelihood(model, x, jax.random.key(6))
  np.testing.assert_allclose(like["nats"], like["tokens"] * math.log(V - 2), rtol=1e-5)
  assert float(metrics["tokens"]) == float(like["tokens"].sum())


@pytest.mark.parametrize("policy", ["whole_word", "span", "ngram"])
def test_mlm_policies_never_select_pad(policy):
  x = _text_rows(seed=7)[:16]
  _, targets = _mlm(masking_policy=policy).corrupt(jnp.asarray(x), jax.random.key(7))
  weights = np.asarray(targets.weights)
  assert weights.sum() > 0 and not weights[x == PAD].any()


def test_mlm_from_config_reads_its_section():
  section = ml_collections.ConfigDict(dict(
      mask_ratio=0.2, masking_policy="span", replace_mask=0.7, replace_random=0.2,
      span_p=0.3, max_span=5, max_ngram=4,
  ))
  obj = MLM.from_config(section, TOK)
  assert (obj.mask_id, obj.pad_id, obj.num_bytes) == (MASK, PAD, 256)
  assert (obj.mask_ratio, obj.masking_policy, obj.max_span) == (0.2, "span", 5)
  assert (obj.name, obj.attention, obj.likelihood_kind, obj.samplers) == (
      "mlm", "bidirectional", "pseudo_likelihood", ("maskgit",))


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5])
def test_mask_ratio_outside_unit_interval_is_an_error(ratio):
  x = jnp.asarray(_text_rows()[:2])
  for name, policy in masking.MASKING_POLICIES.items():
    with pytest.raises(ValueError, match="mask_ratio"):
      policy(jax.random.key(0), x, ratio, pad_id=PAD)
  with pytest.raises(ValueError, match="mask_ratio"):
    _mlm(mask_ratio=ratio)


def test_bad_policy_and_options_are_clear_errors():
  with pytest.raises(ValueError, match="token, whole_word, span, ngram"):
    masking.get_policy("bogus")
  with pytest.raises(ValueError, match="masking_policy"):
    _mlm(masking_policy="bogus")
  with pytest.raises(ValueError, match="replace_mask"):
    _mlm(replace_mask=0.9, replace_random=0.2)
  with pytest.raises(ValueError, match="span_p"):
    _mlm(span_p=0.0)
  with pytest.raises(ValueError, match="max_ngram"):
    _mlm(max_ngram=0)
  with pytest.raises(ValueError, match="mask_id"):
    MLM(pad_id=PAD, num_bytes=256)


def _adjacent_pairs(mask):
  """Mean count of masked horizontal or vertical neighbour pairs per 7 x 7 grid."""
  grid = mask.reshape(-1, 7, 7)
  return ((grid[:, 1:] & grid[:, :-1]).sum() + (grid[:, :, 1:] & grid[:, :, :-1]).sum()) / len(grid)


def test_patch_masks_have_a_static_count_and_block_masks_are_blocks():
  """BEiT's block-wise masking (at its 40%) masks as many patches as random
  masking, with far more masked neighbour pairs; neither ever varies the count."""
  rng = jax.random.key(1)
  block = np.asarray(jax.jit(masking.block_patch_mask, static_argnums=(1, 2, 3))(
      rng, 256, (7, 7), 20))
  uniform = np.asarray(masking.random_patch_mask(rng, 256, (7, 7), 20))
  assert block.shape == uniform.shape == (256, 49)
  assert (block.sum(-1) == 20).all() and (uniform.sum(-1) == 20).all()
  assert len({row.tobytes() for row in block}) > 200  # One 4 x 5 block may recur.
  assert _adjacent_pairs(block) > 1.5 * _adjacent_pairs(uniform)
  assert not np.asarray(masking.random_patch_mask(rng, 4, (7, 7), 0)).any()
  with pytest.raises(ValueError, match=r"num_masked=50 must lie in \[0, 49\]"):
    masking.block_patch_mask(rng, 4, (7, 7), 50)
  with pytest.raises(ValueError, match="Unknown patch masking_policy 'grid'"):
    masking.get_patch_policy("grid")
