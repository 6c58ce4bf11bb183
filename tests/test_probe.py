"""Linear probe: separable features, agreement with a SciPy fit of the same loss, bad input."""
import numpy as np
import pytest
import scipy.optimize
import scipy.special

from tokjax.data.tokenizer import pixel_values
from tokjax.probe import fit_linear_probe, probe_accuracy, standardisation

L2 = 1e-2


def _blobs(n, d=8, k=3, spread=0.3, seed=0):
  """Features float32[n, d] around k well-separated centres, labels int[n]."""
  rng = np.random.default_rng(seed)
  centres = 3.0 * rng.normal(size=(k, d))
  labels = rng.integers(0, k, n)
  # Off-centre, as real features are.
  features = centres[labels] + spread * rng.normal(size=(n, d)) + 5.0
  return features.astype(np.float32), labels


def test_separable_features_are_classified_perfectly():
  x, y = _blobs(300)
  w, b = fit_linear_probe(x[:200], y[:200], 3, l2=L2)
  assert w.shape == (8, 3) and b.shape == (3,) and w.dtype == np.float32
  assert probe_accuracy(x[:200], y[:200], w, b) == 1.0
  assert probe_accuracy(x[200:], y[200:], w, b) == 1.0


def _scipy_fit(z, y, k, l2):
  """The same regularised loss minimised by SciPy's L-BFGS-B in float64."""
  n, d = z.shape
  onehot = np.eye(k)[y]

  def loss_and_grad(theta):
    w, b = theta[:d * k].reshape(d, k), theta[d * k:]
    logits = z @ w + b
    log_probs = logits - scipy.special.logsumexp(logits, axis=1, keepdims=True)
    loss = -(onehot * log_probs).sum() / n + 0.5 * l2 * (w * w).sum()
    g = (np.exp(log_probs) - onehot) / n
    return loss, np.concatenate([(z.T @ g + l2 * w).ravel(), g.sum(0)])

  result = scipy.optimize.minimize(loss_and_grad, np.zeros(d * k + k), jac=True,
                                   method="L-BFGS-B", options=dict(gtol=1e-10, maxiter=2000))
  return result.x[:d * k].reshape(d, k), result.x[d * k:], result.fun


def test_matches_scipy_on_the_same_regularised_loss():
  x, y = _blobs(200, spread=2.0, seed=1)  # Overlapping classes: a loss well above 0.
  mean, std = standardisation(x)
  z = (x.astype(np.float64) - mean) / std
  w_ref, b_ref, loss_ref = _scipy_fit(z, y, 3, L2)
  w, b = fit_linear_probe(x, y, 3, l2=L2)
  w_std = w * std[:, None]  # Back to the standardised features the loss is written in.
  b_std = b + mean @ w
  np.testing.assert_allclose(w_std, w_ref, atol=2e-3)
  # The bias is defined up to a constant shift (softmax is shift-invariant).
  np.testing.assert_allclose(b_std - b_std.mean(), b_ref - b_ref.mean(), atol=2e-3)
  logits = z @ w_std + b_std
  loss = (-(logits[np.arange(len(y)), y] - scipy.special.logsumexp(logits, axis=1)).mean()
          + 0.5 * L2 * (w_std ** 2).sum())
  assert loss == pytest.approx(loss_ref, rel=1e-5)


def test_constant_features_and_bad_input():
  x, y = _blobs(200)  # The shapes of the tests above: no new compile.
  x[:, 0] = 7.0  # A dead feature is centred, not divided by 0.
  w, b = fit_linear_probe(x, y, 3, l2=L2)
  assert np.isfinite(w).all() and probe_accuracy(x, y, w, b) == 1.0
  with pytest.raises(ValueError, match="outside"):
    fit_linear_probe(x, y + 1, 3)
  with pytest.raises(ValueError, match=r"float\[n, d\]"):
    fit_linear_probe(x[:, 0], y, 3)


def test_image_pixels_quantise_as_the_tokenizer():
  images = np.array([[[0, 127, 255]]], np.uint8)
  np.testing.assert_allclose(pixel_values(images, 256), [[[0, 127 / 255, 1]]])
  np.testing.assert_allclose(pixel_values(images, 2), [[[0, 0, 1]]])
