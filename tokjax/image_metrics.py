"""Sample metrics for generated Fashion-MNIST images, on a project classifier's features.

FID-FMNIST is the Frechet distance between Gaussians fitted to the features
of real and generated images, as in FID (Heusel et al. 2017, "GANs Trained by
a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium", Sec. 3),
but the features come from a small Fashion-MNIST classifier that this project
trains itself, not from ImageNet's Inception-v3. Its values are therefore only
comparable with other FID-FMNIST values computed with the same classifier, and
never with published FID numbers: report it as "FID-FMNIST" (key
`fid_fmnist`), never as "FID".

NumPy only (float64 throughout); scipy is not needed.
"""
from __future__ import annotations

import numpy as np

METRIC_NAME = "FID-FMNIST"  # How to label the figure in reports and plots.
METRIC_KEY = "fid_fmnist"  # Its key in metrics.jsonl / eval reports (eval/fid_fmnist).


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and unbiased covariance of a set of feature vectors.

  Args:
    features: float[n, d], one row per image (n >= 2), e.g. the classifier's
      penultimate-layer activations.

  Returns:
    (mu float64[d], sigma float64[d, d]): the sample mean and the unbiased
    sample covariance (divisor n - 1; variables in columns, i.e. numpy's
    `np.cov(features, rowvar=False)`).
  """
  x = _as_features(features, "features")
  if x.shape[0] < 2:
    raise ValueError(f"feature_statistics needs at least 2 feature rows for an unbiased "
                     f"covariance, got features of shape {x.shape}; pass more samples.")
  mu = x.mean(axis=0)
  centered = x - mu
  sigma = centered.T @ centered / (x.shape[0] - 1)
  return mu, sigma


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet (2-Wasserstein squared) distance between N(mu1, S1) and N(mu2, S2).

    d^2 = ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2})

  (Heusel et al. 2017, Sec. 3, the FID formula; Dowson & Landau 1982.) The
  trace of the matrix square root is computed without scipy, from symmetric
  eigendecompositions only: S1 S2 has the same eigenvalues as the symmetric
  positive semi-definite S1^{1/2} S2 S1^{1/2}, so Tr((S1 S2)^{1/2}) is the sum
  of the square roots of that matrix's eigenvalues. Tiny negative eigenvalues
  from round-off are clipped to 0, so singular covariances (fewer samples than
  feature dimensions, constant features) are handled without the complex
  values or offset regularisation a general `sqrtm` needs.

  Args:
    mu1, mu2: float[d] means.
    sigma1, sigma2: float[d, d] symmetric positive semi-definite covariances.

  Returns:
    The distance in squared feature units, a Python float >= 0 (a round-off
    negative is returned as 0.0).
  """
  mu1, mu2 = _as_vector(mu1, "mu1"), _as_vector(mu2, "mu2")
  if mu1.shape != mu2.shape:
    raise ValueError(f"mu1 and mu2 must have the same shape [d], got {mu1.shape} and "
                     f"{mu2.shape}; compare features from the same classifier layer.")
  d = mu1.shape[0]
  sigma1, sigma2 = _as_covariance(sigma1, "sigma1", d), _as_covariance(sigma2, "sigma2", d)
  diff = mu1 - mu2
  value = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(
      sigma1, sigma2)
  return float(max(value, 0.0))


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
  """Tr((S1 S2)^{1/2}) for symmetric PSD float64[d, d] S1, S2, via numpy.linalg.eigh.

  Equal to the sum of sqrt(eigenvalues of S1^{1/2} S2 S1^{1/2}), round-off
  eigenvalues clipped to 0 (see `_clip_roundoff`).
  """
  sqrt1 = _psd_sqrt(sigma1)
  inner = sqrt1 @ sigma2 @ sqrt1
  eigenvalues = _clip_roundoff(np.linalg.eigvalsh((inner + inner.T) / 2.0))
  return float(np.sqrt(eigenvalues).sum())


def fid(features_a, features_b) -> float:
  """FID-FMNIST: the Frechet distance between Gaussians fitted to two feature sets.

  Args:
    features_a: float[n_a, d] features of one image set (e.g. real test images).
    features_b: float[n_b, d] features of the other (e.g. generated samples),
      from the same classifier layer; n_a, n_b >= 2.

  Returns:
    The distance (float >= 0, squared feature units); 0 for identical sets.
    Symmetric in its arguments. The estimate is biased upwards for small
    samples (roughly by O(d / n)), so compare values at equal sample sizes.
  """
  a, b = _as_features(features_a, "features_a"), _as_features(features_b, "features_b")
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"features_a and features_b must have the same feature dimension, got "
                     f"{a.shape} and {b.shape}; use the same classifier layer for both.")
  return frechet_distance(*feature_statistics(a), *feature_statistics(b))


def class_accuracy(logits, requested) -> float:
  """The fraction of samples the classifier assigns to the class they were generated for.

  Args:
    logits: float[n, classes] the classifier's scores for each generated image.
    requested: int[n] the class each image was conditioned on, in [0, classes).

  Returns:
    mean(argmax(logits, -1) == requested), a Python float in [0, 1].
  """
  logits = np.asarray(logits)
  requested = np.asarray(requested)
  if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
    raise ValueError(f"logits must be float[n, classes] with n, classes >= 1, got shape "
                     f"{logits.shape}.")
  if requested.shape != (logits.shape[0],):
    raise ValueError(f"requested must be int[n] with n = {logits.shape[0]} (one class per row "
                     f"of logits), got shape {requested.shape}.")
  if not np.issubdtype(requested.dtype, np.integer):
    raise ValueError(f"requested must hold integer class ids, got dtype {requested.dtype}.")
  classes = logits.shape[1]
  if requested.min() < 0 or requested.max() >= classes:
    raise ValueError(f"requested class ids must lie in [0, {classes}), got values from "
                     f"{requested.min()} to {requested.max()}.")
  return float(np.mean(np.argmax(logits, axis=-1) == requested))


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
  """The symmetric PSD square root of a symmetric PSD matrix (round-off eigenvalues -> 0)."""
  eigenvalues, vectors = np.linalg.eigh(sigma)
  return (vectors * np.sqrt(_clip_roundoff(eigenvalues))) @ vectors.T


def _clip_roundoff(eigenvalues: np.ndarray) -> np.ndarray:
  """Eigenvalues of a PSD matrix with those at round-off level set to 0.

  eigh's absolute error is about d * eps * max|lambda|; below that an
  eigenvalue is noise (possibly negative), and its square root, which is far
  larger than it (sqrt(1e-16) = 1e-8), would otherwise bias the trace and break
  the symmetry of the distance for singular covariances.
  """
  tolerance = eigenvalues.shape[0] * np.finfo(np.float64).eps * np.abs(eigenvalues).max(
      initial=0.0)
  return np.where(eigenvalues > tolerance, eigenvalues, 0.0)


def _as_features(features, name: str) -> np.ndarray:
  x = np.asarray(features, dtype=np.float64)
  if x.ndim != 2 or x.shape[1] == 0:
    raise ValueError(f"{name} must be float[n, d] (one feature row per image), got shape "
                     f"{x.shape}; reshape to [n, d].")
  _check_finite(x, name)
  return x


def _as_vector(mu, name: str) -> np.ndarray:
  mu = np.asarray(mu, dtype=np.float64)
  if mu.ndim != 1 or mu.shape[0] == 0:
    raise ValueError(f"{name} must be a float[d] mean vector, got shape {mu.shape}.")
  _check_finite(mu, name)
  return mu


def _as_covariance(sigma, name: str, d: int) -> np.ndarray:
  sigma = np.asarray(sigma, dtype=np.float64)
  if sigma.shape != (d, d):
    raise ValueError(f"{name} must be a float[{d}, {d}] covariance matching the means' "
                     f"dimension {d}, got shape {sigma.shape}.")
  _check_finite(sigma, name)
  return (sigma + sigma.T) / 2.0  # Exact symmetry for eigh; a no-op for a true covariance.


def _check_finite(x: np.ndarray, name: str) -> None:
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains NaN or inf; check the classifier's features.")
