"""ELECTRA: replaced-token labels, gradient isolation, the loss, AUC, a sharded step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from flax import nnx

from tokjax.data import ByteTokenizer
from tokjax.models import TransformerConfig
from tokjax.objectives.electra import Electra, auc_from_histograms, score_histogram

TOK = ByteTokenizer()
PAD, MASK, V = TOK.pad_id, TOK.mask_id, TOK.vocab_size
CONFIG = TransformerConfig(vocab_size=V, num_layers=1, d_model=32, num_heads=2, d_ff=64,
                           max_seq_len=32)
OBJ = Electra(pad_id=PAD, num_bytes=256, mask_id=MASK, mask_ratio=0.3)
SECTION = dict(mask_ratio=0.15, disc_weight=50.0, generator_scale=0.25, masking_policy="token")


def _tokens(batch=8, length=32, num_pad=4, seed=0):
  x = np.random.default_rng(seed).integers(0, 8, (batch, length))  # Few ids: many collisions.
  x[:, length - num_pad:] = PAD
  return jnp.asarray(x, jnp.int32)


@pytest.fixture(scope="module")
def model():
  return OBJ.build_model(CONFIG, nnx.Rngs(0))


class ConstantGenerator:
  """A generator that always samples token 3, and a discriminator with logit 0."""

  def __call__(self, tokens, **unused):
    return jnp.zeros(tokens.shape + (V,)).at[..., 3].set(100.0)

  def discriminate(self, tokens):
    return jnp.zeros(tokens.shape)


def test_labels_are_x_corrupt_differs_and_reproduced_tokens_are_original():
  x = _tokens()
  r = OBJ.replace(ConstantGenerator(), x, jax.random.key(1))
  selected = np.asarray(r.selected) > 0
  x_corrupt, labels = np.asarray(r.x_corrupt), np.asarray(r.labels)
  np.testing.assert_array_equal(x_corrupt, np.where(selected, 3, x))
  np.testing.assert_array_equal(labels, x_corrupt != np.asarray(x))
  reproduced = selected & (np.asarray(x) == 3)
  assert reproduced.any() and (labels[reproduced] == 0).all()
  assert not selected[np.asarray(x) == PAD].any()
  _, metrics = OBJ.loss(ConstantGenerator(), x, jax.random.key(1))
  valid = np.asarray(x) != PAD
  assert float(metrics["replaced_fraction"]) == pytest.approx(labels[valid].mean())
  assert float(metrics["disc_loss"]) == pytest.approx(np.log(2.0), rel=1e-5)  # Logit 0 everywhere.


def test_real_draws_label_and_exclude_specials(model):
  x = _tokens(seed=2)
  r = OBJ.replace(model, x, jax.random.key(2))
  selected = np.asarray(r.selected) > 0
  x_corrupt = np.asarray(r.x_corrupt)
  np.testing.assert_array_equal(np.asarray(r.labels), x_corrupt != np.asarray(x))
  np.testing.assert_array_equal(x_corrupt[~selected], np.asarray(x)[~selected])
  assert not np.isin(x_corrupt[selected], [MASK, PAD]).any()


def test_no_gradient_through_sampling_and_embeddings_are_shared(model):
  graphdef, params = nnx.split(model)
  x, rng = _tokens(seed=3), jax.random.key(3)

  def terms(p):
    _, metrics = OBJ.loss(nnx.merge(graphdef, p), x, rng)
    return jnp.stack([metrics["gen_loss"], metrics["disc_loss"]])

  grads = jax.jit(jax.jacrev(terms))(params)
  flat = {jax.tree_util.keystr(k): np.asarray(v) for k, v in
          jax.tree_util.tree_flatten_with_path(grads)[0]}
  embed = [k for k in flat if "embed" in k and flat[k].shape[1:] == (V, CONFIG.d_model)]
  assert embed == ["['discriminator']['embed'].value"]  # One table, shared by reference.
  assert model.generator.embed.table is model.discriminator.embed
  assert np.abs(flat[embed[0]]).reshape(2, -1).max(-1).all()  # Reached from G and from D.
  for key, g in flat.items():
    if key.startswith("['generator']"):
      assert not g[1].any(), key  # D's loss does not reach G.
      assert g[0].any(), key
    elif key != embed[0]:
      assert not g[0].any(), key  # G's loss does not reach D (but for the shared table).


def test_loss_is_gen_plus_weighted_disc(model):
  x, rng = _tokens(seed=4), jax.random.key(4)
  loss, metrics = OBJ.loss(model, x, rng)
  r = OBJ.replace(model, x, rng)
  p = np.asarray(jax.nn.sigmoid(model.discriminate(r.x_corrupt)), np.float64)
  y, valid = np.asarray(r.labels), np.asarray(r.valid) > 0
  bce = -(y * np.log(p) + (1 - y) * np.log1p(-p))[valid].mean()
  gen = np.asarray(r.gen_nats).sum() / np.asarray(r.selected).sum()
  assert float(metrics["disc_loss"]) == pytest.approx(bce, rel=1e-5)
  assert float(metrics["gen_loss"]) == pytest.approx(gen, rel=1e-5)
  assert float(loss) == pytest.approx(gen + 50.0 * bce, rel=1e-5)
  assert float(metrics["tokens"]) == valid.sum()
  correct = ((p > 0.5) == (y > 0))[valid].mean()
  assert float(metrics["disc_accuracy"]) == pytest.approx(correct)


def test_likelihood_sums_feed_the_report(model):
  x = _tokens(seed=5)
  out = OBJ.likelihood(model, x, jax.random.key(5))
  np.testing.assert_array_equal(out["nats"], 0.0)
  np.testing.assert_array_equal(out["tokens"], (np.asarray(x) != PAD).sum(-1))
  assert out["hist_replaced"].shape == (8, OBJ.eval_bins)
  np.testing.assert_allclose(out["hist_replaced"].sum(-1) + out["hist_original"].sum(-1),
                             out["tokens"])
  report = OBJ.eval_report({k: np.asarray(v).sum(0) for k, v in out.items()})
  assert 0.0 <= report["disc_accuracy"] <= 1.0 and 0.0 <= report["disc_auc"] <= 1.0


def _exact_auc(pos, neg):
  """Mann-Whitney U / (n+ n-), ties counted half."""
  return scipy.stats.mannwhitneyu(pos, neg).statistic / (len(pos) * len(neg))


def _histogram_auc(pos, neg, bins=64):
  hist = lambda s: score_histogram(jnp.asarray(s)[None], jnp.ones((1, len(s))), bins)[0]
  return auc_from_histograms(hist(pos), hist(neg))


def test_auc_from_histograms_matches_mann_whitney():
  rng = np.random.default_rng(0)
  bins = 64
  # Scores at bin centres: the histogram AUC is exact, ties included.
  pos, neg = (rng.integers(20, 64, 500) + 0.5) / bins, (rng.integers(0, 44, 700) + 0.5) / bins
  assert _histogram_auc(pos, neg) == pytest.approx(_exact_auc(pos, neg), abs=1e-6)
  # Continuous scores: off by at most half the fraction of pairs sharing a bin.
  pos, neg = rng.beta(3, 2, 500), rng.beta(2, 3, 700)
  same_bin = (np.floor(pos * bins)[:, None] == np.floor(neg * bins)[None]).mean()
  assert abs(_histogram_auc(pos, neg) - _exact_auc(pos, neg)) <= same_bin / 2 + 1e-6
  # A perfect discriminator.
  assert _histogram_auc(rng.uniform(0.9, 1.0, 50), rng.uniform(0.0, 0.1, 80)) == 1.0
  assert np.isnan(auc_from_histograms(np.zeros(4), np.ones(4)))


@pytest.mark.parametrize("kwargs, match", [
    (dict(disc_weight=-1.0), "disc_weight"), (dict(mask_ratio=1.5), "mask_ratio"),
    (dict(generator_scale=0.3), "generator_scale"), (dict(generator_scale=0.0), "generator_scale"),
])
def test_bad_settings_are_clear_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    Electra(pad_id=PAD, num_bytes=256, mask_id=MASK, **kwargs).build_model(CONFIG, nnx.Rngs(0))
