"""Image classifier: labels from class tokens, the loss and accuracy, clear errors, learning."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from tokjax.data import ByteTokenizer, PixelTokenizer
from tokjax.evaluation import report
from tokjax.models import TransformerConfig
from tokjax.objectives.classifier import Classifier

TOK = PixelTokenizer(256, num_classes=10)
CONFIG = TransformerConfig(vocab_size=1, num_layers=1, d_model=32, num_heads=2, d_ff=64,
                           max_seq_len=785)
OBJ = Classifier.from_config(Classifier.config_section(), TOK)


def _windows(labels, images=None, seed=0):
  """int32[batch, 785]: class token (None: BOS; -1: an all-PAD row) + pixels."""
  if images is None:
    images = np.random.default_rng(seed).integers(0, 256, (len(labels), 28, 28), np.uint8)
  rows = [np.full(785, TOK.pad_id, np.int32) if y == -1 else
          TOK.encode(image, add_bos=True, label=y) for y, image in zip(labels, images)]
  return jnp.asarray(np.stack(rows))


class FixedLogits:
  """A model whose logits are given: row b gets logits[b]."""

  def __init__(self, logits):
    self.logits = jnp.asarray(logits, jnp.float32)

  def __call__(self, pixels):
    assert pixels.shape[1:] == (28, 28) and float(pixels.max()) <= 1.0
    return self.logits[:pixels.shape[0]]


def test_loss_is_cross_entropy_over_labelled_image_rows():
  labels = [3, 1, None, -1]  # Two labelled images, an unlabelled one (BOS), a PAD row.
  tokens = _windows(labels)
  logits = np.random.default_rng(1).normal(size=(4, 10))
  logits[0, 3] = 10.0  # Row 0 right, row 1 wrong.
  logits[1, 1] = -10.0
  model = FixedLogits(logits)
  loss, metrics = OBJ.loss(model, tokens, None)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -(log_probs[0, 3] + log_probs[1, 1]) / 2
  assert float(loss) == pytest.approx(expected, rel=1e-5)
  assert float(metrics["accuracy"]) == 0.5 and float(metrics["tokens"]) == 2
  sums = OBJ.likelihood(model, tokens, None)
  np.testing.assert_array_equal(sums["correct"], [1, 0, 0, 0])
  np.testing.assert_array_equal(sums["tokens"], [1, 1, 0, 0])
  np.testing.assert_array_equal(sums["bytes"], [784, 784, 0, 0])
  totals = {k: np.asarray(v).sum() for k, v in sums.items()}
  r = report(OBJ, "test", dict(totals, var=0.0), unit="dim")
  assert r["kind"] == "none" and "bits_per_dim" not in r and r["tokens"] == 2
  assert r["accuracy"] == 0.5 and r["cross_entropy"] == pytest.approx(expected, rel=1e-5)


def test_labels_come_from_class_tokens():
  np.testing.assert_array_equal(OBJ.labels(_windows([7, 0, 9, None])), [7, 0, 9, -1])


def test_unlabelled_windows_and_text_are_clear_errors():
  unlabelled = Classifier.from_config(Classifier.config_section(), PixelTokenizer(256))
  message = ("objective=classifier needs labelled windows: set --config.data.class_token=True "
             r"\(configs/fashion_mnist.py:objective=classifier does\)")
  with pytest.raises(ValueError, match=message):
    unlabelled.build_model(CONFIG, nnx.Rngs(0))
  with pytest.raises(ValueError, match=message):
    unlabelled.loss(FixedLogits(np.zeros((1, 10))), _windows([None]), None)
  text = Classifier.from_config(Classifier.config_section(), ByteTokenizer())
  with pytest.raises(ValueError, match="trains on images"):
    text.build_model(CONFIG, nnx.Rngs(0))
  with pytest.raises(ValueError, match=r"--config.classifier.patch_size: patch_size=5"):
    Classifier.from_config({"patch_size": 5}, TOK)


def test_the_model_learns_to_tell_dark_from_bright_images():
  """Adam on the real ClassifierModel: two classes of images, each dim or bright
  with noise, are told apart after a few full-batch steps."""
  rng = np.random.default_rng(2)
  labels = np.tile([0, 1], 8)
  images = (rng.integers(0, 100, (16, 28, 28)) + 120 * labels[:, None, None]).astype(np.uint8)
  tokens = _windows(labels.tolist(), images)
  build = lambda: OBJ.build_model(CONFIG, nnx.Rngs(0))  # noqa: E731
  graphdef = nnx.graphdef(nnx.eval_shape(build))
  tx = optax.adam(3e-3)

  @jax.jit
  def train():  # Initialises inside the one compiled program (eager init is slow on CPU).
    params = nnx.state(build(), nnx.Param)

    def step(carry, _):
      params, opt_state = carry
      (loss, metrics), grads = jax.value_and_grad(
          lambda p: OBJ.loss(nnx.merge(graphdef, p), tokens, None), has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), (loss, metrics["accuracy"])
    return jax.lax.scan(step, (params, tx.init(params)), None, length=30)[1]

  losses, accuracy = train()
  assert float(losses[-1]) < 0.2 * float(losses[0]) and float(accuracy[-1]) == 1.0
