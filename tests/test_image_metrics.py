"""FID-FMNIST and class accuracy (tokjax.image_metrics) against NumPy/SciPy references."""
import numpy as np
import pytest
import scipy.linalg

from tokjax import image_metrics as im


def _random_spd(rng, d):
  a = rng.standard_normal((d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def _reference_frechet(mu1, sigma1, mu2, sigma2):
  """The textbook formula with scipy's general matrix square root."""
  covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2)
               - 2.0 * np.trace(covmean).real)


def _closed_form_diagonal(mu1, s1, mu2, s2):
  """Frechet distance of N(mu1, diag(s1)) and N(mu2, diag(s2))."""
  return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2))


def test_feature_statistics_matches_numpy():
  x = np.random.default_rng(0).standard_normal((50, 6)).astype(np.float32)
  mu, sigma = im.feature_statistics(x)
  assert mu.dtype == sigma.dtype == np.float64 and sigma.shape == (6, 6)
  np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_matches_scipy_sqrtm(seed):
  rng = np.random.default_rng(seed)
  d = 16
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
  got = im.frechet_distance(mu1, s1, mu2, s2)
  np.testing.assert_allclose(got, _reference_frechet(mu1, s1, mu2, s2), rtol=1e-7)
  # Symmetric in its two Gaussians.
  np.testing.assert_allclose(im.frechet_distance(mu2, s2, mu1, s1), got, rtol=1e-10)


def test_frechet_distance_closed_form_for_commuting_covariances():
  rng = np.random.default_rng(3)
  d = 16
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  s1, s2 = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  expected = _closed_form_diagonal(mu1, s1, mu2, s2)
  np.testing.assert_allclose(im.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)),
                             expected, rtol=1e-10)
  # Commuting but not diagonal: the same spectra in a shared rotated basis.
  q, _ = np.linalg.qr(rng.standard_normal((d, d)))
  np.testing.assert_allclose(
      im.frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T),
      expected, rtol=1e-8)


def test_frechet_distance_singular_covariances():
  mu1, mu2 = np.zeros(4), np.array([1.0, 0.0, 0.0, 2.0])
  s1, s2 = np.array([1.0, 1.0, 0.0, 0.0]), np.array([0.0, 4.0, 1.0, 1.0])
  np.testing.assert_allclose(im.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)),
                             _closed_form_diagonal(mu1, s1, mu2, s2), rtol=1e-10)
  # A point mass against a Gaussian: ||dmu||^2 + Tr(S2).
  np.testing.assert_allclose(im.frechet_distance(mu1, np.zeros((4, 4)), mu2, np.diag(s2)),
                             5.0 + 6.0, rtol=1e-12)


def test_fid_of_a_sample_with_itself_is_zero_even_when_n_below_d():
  rng = np.random.default_rng(4)
  for n, d in [(200, 16), (5, 16)]:  # The second has a rank-4 covariance.
    x = rng.standard_normal((n, d)) * 3.0 + 1.0
    assert abs(im.fid(x, x)) < 1e-8
  a, b = rng.standard_normal((5, 16)), rng.standard_normal((6, 16)) + 1.0
  value = im.fid(a, b)
  assert np.isfinite(value) and value > 0
  np.testing.assert_allclose(im.fid(b, a), value, rtol=1e-10)


def test_fid_of_large_samples_approaches_closed_form():
  rng = np.random.default_rng(5)
  n, mu1, mu2 = 20_000, np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.5, 1.0, 1.5, 3.0])
  s1, s2 = np.array([1.0, 2.0, 0.5, 1.0]), np.array([2.0, 1.0, 0.5, 3.0])
  a = mu1 + np.sqrt(s1) * rng.standard_normal((n, 4))
  b = mu2 + np.sqrt(s2) * rng.standard_normal((n, 4))
  expected = _closed_form_diagonal(mu1, s1, mu2, s2)  # 1.379
  # Over seeds the estimate's error has a standard deviation of about 0.02 at
  # this n; 0.1 is about 5 of them.
  assert abs(im.fid(a, b) - expected) < 0.1


def test_class_accuracy_hand_case():
  logits = np.array([[3.0, 1.0, 0.0],   # -> 0
                     [0.0, 2.0, 1.0],   # -> 1
                     [0.0, 0.0, 5.0],   # -> 2
                     [1.0, 0.5, 0.0]])  # -> 0
  assert im.class_accuracy(logits, np.array([0, 1, 1, 0])) == 0.75
  assert im.class_accuracy(logits, [0, 1, 2, 0]) == 1.0
  assert im.class_accuracy(logits, [1, 0, 0, 2]) == 0.0


@pytest.mark.parametrize("call, match", [
    (lambda: im.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4)), "same shape"),
    (lambda: im.frechet_distance(np.zeros(3), np.eye(4), np.zeros(3), np.eye(3)), r"sigma1.*\[3, 3\]"),
    (lambda: im.frechet_distance(np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3)), "mu1"),
    (lambda: im.frechet_distance(np.zeros(2), np.eye(2), np.array([0, np.nan]), np.eye(2)),
     "NaN"),
    (lambda: im.fid(np.zeros((5, 3)), np.zeros((5, 4))), "same feature dimension"),
    (lambda: im.fid(np.zeros(5), np.zeros((5, 4))), r"float\[n, d\]"),
    (lambda: im.feature_statistics(np.zeros((1, 4))), "at least 2"),
    (lambda: im.class_accuracy(np.zeros((3, 2)), [0, 1]), "int\\[n\\] with n = 3"),
    (lambda: im.class_accuracy(np.zeros((2, 2)), [0, 2]), r"\[0, 2\)"),
    (lambda: im.class_accuracy(np.zeros((2, 2)), [0.0, 1.0]), "integer"),
    (lambda: im.class_accuracy(np.zeros(4), [0]), r"float\[n, classes\]"),
])
def test_errors(call, match):
  with pytest.raises(ValueError, match=match):
    call()
