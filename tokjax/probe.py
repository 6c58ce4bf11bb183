"""Linear probing: how linearly separable frozen features make the classes.

The MAE paper's main measure of a representation besides fine-tuning ("Masked
Autoencoders Are Scalable Vision Learners", He et al. 2022, Sec. 4 and
Appendix A.2): a linear classifier trained on the frozen encoder's features
(mean-pooled over patches), its accuracy on the test split. `report` gives it
for the trained encoder beside two baselines, the same encoder at its
initial parameters and the raw pixels, so a figure says how much training
added.

The probe is multinomial logistic regression on standardised features
(each dimension centred and scaled by its train-split mean and standard
deviation), fitted full-batch by L-BFGS (optax) on

  L(W, b) = mean_i CE(softmax(z_i W + b), y_i) + l2 / 2 * ||W||_F^2,

z_i the standardised features; the bias is not regularised.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from tokjax.data.tokenizer import pixel_values
from tokjax.models.vision import patchify

STD_FLOOR = 1e-6  # A feature whose train std is below this is only centred.


def standardisation(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(mean, std), each float32[d], of train features float[n, d]; std is 1
  where it is below STD_FLOOR (a constant feature)."""
  features = np.asarray(features, np.float64)
  mean, std = features.mean(0), features.std(0)
  return mean.astype(np.float32), np.where(std < STD_FLOOR, 1.0, std).astype(np.float32)


def probe_loss(params: tuple[jax.Array, jax.Array], z: jax.Array, labels: jax.Array,
               l2: float) -> jax.Array:
  """The probe's objective (module docstring), a float32 scalar in nats.

  Args:
    params: (W float32[d, classes], b float32[classes]).
    z: float32[n, d] standardised features.
    labels: int32[n] in [0, classes).
    l2: the weights' L2 penalty.
  """
  w, b = params
  ce = optax.softmax_cross_entropy_with_integer_labels(z @ w + b, labels).mean()
  return ce + 0.5 * l2 * jnp.sum(w * w)


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _lbfgs(z, labels, l2, tol, *, num_classes: int, steps: int):
  """((W, b), iterations) minimising `probe_loss` from zeros by L-BFGS."""
  params = (jnp.zeros((z.shape[1], num_classes), jnp.float32),
            jnp.zeros((num_classes,), jnp.float32))
  loss = functools.partial(probe_loss, z=z, labels=labels, l2=l2)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def body(carry):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(p, updates), state

  def keep_going(carry):
    _, state = carry
    count = optax.tree.get(state, "count")
    grad_norm = optax.tree.norm(optax.tree.get(state, "grad"))
    return (count == 0) | ((count < steps) & (grad_norm >= tol))

  params, state = jax.lax.while_loop(keep_going, body, (params, opt.init(params)))
  return params, optax.tree.get(state, "count")


def fit_linear_probe(train_features, train_labels, num_classes: int, *, l2: float = 1e-4,
                     steps: int = 500, tol: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
  """Fits the linear probe (module docstring) on train features.

  Args:
    train_features: float[n, d].
    train_labels: int[n] in [0, num_classes).
    num_classes: classes.
    l2: L2 penalty on the weights of the standardised features (> 0 keeps the
      optimum finite on separable data).
    steps: most L-BFGS iterations.
    tol: stop once the gradient's global norm falls below this.

  Returns:
    (weights float32[d, num_classes], bias float32[num_classes]) acting on
    the raw features (the standardisation folded in): logits = x W + b.

  Raises:
    ValueError: shapes that do not match, labels outside [0, num_classes), or l2 < 0.
  """
  x = np.asarray(train_features, np.float32)
  y = np.asarray(train_labels)
  if x.ndim != 2 or y.shape != x.shape[:1]:
    raise ValueError(f"train_features must be float[n, d] and train_labels int[n]; got "
                     f"{x.shape} and {y.shape}.")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"train_labels span [{y.min()}, {y.max()}], outside [0, {num_classes}).")
  if l2 < 0:
    raise ValueError(f"l2={l2} must be >= 0.")
  mean, std = standardisation(x)
  (w, b), _ = _lbfgs(jnp.asarray((x - mean) / std), jnp.asarray(y, jnp.int32),
                     jnp.float32(l2), jnp.float32(tol), num_classes=num_classes, steps=steps)
  w = np.asarray(w) / std[:, None]
  return w.astype(np.float32), (np.asarray(b) - mean @ w).astype(np.float32)


def probe_accuracy(features, labels, weights: np.ndarray, bias: np.ndarray) -> float:
  """Fraction of rows of features float[n, d] whose arg-max logit
  (x W + b) is their label int[n]."""
  logits = np.asarray(features, np.float32) @ weights + bias
  return float((logits.argmax(-1) == np.asarray(labels)).mean())


def fit_and_score(train_features, train_labels, test_features, test_labels, num_classes: int,
                  **options) -> float:
  """Test accuracy of the probe fitted on the train features (options as `fit_linear_probe`)."""
  w, b = fit_linear_probe(train_features, train_labels, num_classes, **options)
  return probe_accuracy(test_features, test_labels, w, b)


@functools.lru_cache(maxsize=8)
def _features_fn(graphdef, patch_size: int):
  def features(params, pixels):
    return nnx.merge(graphdef, params).features(patchify(pixels, patch_size))
  return jax.jit(features)


def encoder_features(exp, params, images: np.ndarray, *, chunk: int = 512) -> np.ndarray:
  """The frozen encoder's features of `images`: its mean output over ALL
  patches (no masking).

  Args:
    exp: an `Experiment` whose model has `features(patches)` (mae, classifier)
      and whose objective has `patch_size` and `levels`.
    params: its parameters (trained, or `exp.init_state()['params']`).
    images: uint8[n, rows, cols].
    chunk: images per jitted call (the last chunk is padded, so one program).

  Returns:
    float32[n, embed].

  Raises:
    ValueError: a model without encoder features.
  """
  if not hasattr(exp.model(params), "features"):
    raise ValueError(f"objective={exp.objective.name!r} has no encoder features to probe; "
                     "use a mae or classifier run.")
  fn = _features_fn(exp.graphdef, exp.objective.patch_size)
  pixels = pixel_values(images, exp.objective.levels)
  out = []
  for start in range(0, len(pixels), chunk):
    part = pixels[start:start + chunk]
    padded = np.pad(part, ((0, chunk - len(part)), (0, 0), (0, 0)))
    out.append(np.asarray(fn(params, padded))[:len(part)])
  if not out:
    return np.zeros((0, exp.model_config.d_model), np.float32)
  return np.concatenate(out).astype(np.float32)


def report(exp, params, train_images, train_labels, test_images, test_labels, *,
           init_params=None, num_classes: int | None = None, **options) -> dict:
  """Linear-probe test accuracies of three feature sets.

  Args:
    exp, params: a trained mae or classifier run (`tokjax.restore.load_run`).
    train_images, test_images: uint8[n, rows, cols].
    train_labels, test_labels: int[n].
    init_params: the run's initial parameters; default `exp.init_state()['params']`
      (the same seed, so the same values; pass them to skip compiling the init).
    num_classes: default 1 + the largest label seen.
    options: `fit_linear_probe`'s (l2, steps, tol).

  Returns:
    {'probe_accuracy': the trained encoder's features,
     'probe_accuracy_random_init': the same encoder at its initial parameters
       (`exp.init_state()['params']`),
     'probe_accuracy_pixels': the raw pixels (in [0, 1]),
     'probe_train_images', 'probe_test_images': the counts}.
  """
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  if num_classes is None:
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1

  def score(train_x, test_x):
    return fit_and_score(train_x, train_labels, test_x, test_labels, num_classes, **options)

  def encoder_score(p):
    return score(encoder_features(exp, p, train_images), encoder_features(exp, p, test_images))

  levels = exp.objective.levels
  flat = lambda images: pixel_values(images, levels).reshape(len(images), -1)  # noqa: E731
  return {
      "probe_accuracy": encoder_score(params),
      "probe_accuracy_random_init": encoder_score(
          exp.init_state()["params"] if init_params is None else init_params),
      "probe_accuracy_pixels": score(flat(train_images), flat(test_images)),
      "probe_train_images": int(len(train_images)),
      "probe_test_images": int(len(test_images)),
  }


def format_report(r: dict) -> str:
  """One line from `report`'s dict (plus the optional 'split' and 'step' the CLI adds)."""
  where = f"[{r.get('split', 'test')}{', step ' + str(r['step']) if 'step' in r else ''}]"
  return (f"{where} linear probe ({r['probe_train_images']} train, {r['probe_test_images']} "
          f"test images): encoder {r['probe_accuracy']:.4f}, encoder at init "
          f"{r['probe_accuracy_random_init']:.4f}, raw pixels {r['probe_accuracy_pixels']:.4f}")
