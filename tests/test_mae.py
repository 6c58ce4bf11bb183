"""MAE: static-count masks, the masked-patch loss, settings' errors, pictures, a sharded step."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from tokjax import objectives, sharding
from tokjax.config import base_config
from tokjax.data import ByteTokenizer, PixelTokenizer
from tokjax.evaluation import make_eval_step, report
from tokjax.experiment import Experiment
from tokjax.models import TransformerConfig
from tokjax.models.vision import patchify, unpatchify
from tokjax.objectives.mae import MAE, patch_norm
from tokjax import probe
from tokjax.probe import encoder_features
from tokjax.probe import report as probe_report
from tokjax.trainer import make_train_step

TOK = PixelTokenizer(256, num_classes=10)
TINY = dict(num_layers=1, d_model=32, num_heads=2, d_ff=64)
DECODER = dict(decoder_layers=1, decoder_d_model=16, decoder_heads=2)
CONFIG = TransformerConfig(vocab_size=1, max_seq_len=785, **TINY)


def _mae(**settings):
  return MAE.from_config({**MAE.config_section(), **DECODER, **settings}, TOK)


def _windows(batch=4, num_pad_rows=1, seed=0):
  """int32[batch, 785]: class token + pixels, the last rows all PAD (as evaluation pads)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (batch, 28, 28), np.uint8)
  rows = [TOK.encode(image, add_bos=True, label=i % 10) for i, image in enumerate(images)]
  tokens = np.stack(rows)
  tokens[batch - num_pad_rows:] = TOK.pad_id
  return jnp.asarray(tokens)


def test_random_masks_have_a_static_count_per_image():
  """MAE's 75%; block masks' count: tests/test_masking.py."""
  ratio = 0.75
  obj = _mae(mask_ratio=ratio, masking_policy="random")
  mask = np.asarray(jax.jit(obj.mask, static_argnums=1)(jax.random.key(0), 64))
  assert mask.shape == (64, 49) and mask.dtype == bool
  assert (mask.sum(-1) == round(ratio * 49)).all()
  assert len({row.tobytes() for row in mask}) == 64  # Every image its own mask.
  visible = np.asarray(obj.visible_indices(jnp.asarray(mask)))
  assert visible.shape == (64, 49 - round(ratio * 49))
  assert (np.diff(visible, axis=1) > 0).all() and not np.take_along_axis(mask, visible, 1).any()


@pytest.mark.parametrize("settings, match", [
    (dict(patch_size=5), r"--config.mae.patch_size: patch_size=5 must divide .* \[1, 2, 4, 7"),
    (dict(patch_size=0), "--config.mae.patch_size=0 must be a positive"),
    (dict(mask_ratio=1.0), r"--config.mae.mask_ratio=1.0 must lie in \[0, 1\)"),
    (dict(mask_ratio=-0.1), "--config.mae.mask_ratio"),
    (dict(mask_ratio=0.995), "masks all 49 patches"),
    (dict(masking_policy="grid"), "masking_policy 'grid'; use one of random, block"),
    (dict(decoder_heads=3), "decoder_d_model.* not divisible by num_heads=3"),
])
def test_bad_settings_are_clear_errors(settings, match):
  with pytest.raises(ValueError, match=match):
    _mae(**settings)


def test_text_tokenizer_is_a_clear_error():
  obj = MAE.from_config(MAE.config_section(), ByteTokenizer())  # Built, as base_config does.
  with pytest.raises(ValueError, match="trains on images.*configs/fashion_mnist.py:objective=mae"):
    obj.build_model(CONFIG, nnx.Rngs(0))


class PerfectModel:
  """Predicts the targets exactly at masked patches and `visible_error` off at visible ones."""

  def __init__(self, obj, tokens, masked_error=0.0, visible_error=100.0):
    self.targets = obj.targets(patchify(obj.pixels(tokens), obj.patch_size))
    self.masked_error, self.visible_error = masked_error, visible_error

  def __call__(self, patches, visible):
    off = jnp.full(patches.shape[:2], self.masked_error)
    off = off.at[jnp.arange(patches.shape[0])[:, None], visible].set(self.visible_error)
    return self.targets + off[:, :, None]


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_scores_masked_patches_of_image_rows_only(norm_pix_loss):
  obj, tokens = _mae(norm_pix_loss=norm_pix_loss), _windows()
  model = PerfectModel(obj, tokens, masked_error=0.5)

  @jax.jit
  def run(tokens, rng):
    return obj.loss(model, tokens, rng), obj.likelihood(model, tokens, rng)

  (loss, metrics), sums = run(tokens, jax.random.key(2))
  assert float(loss) == pytest.approx(0.25)  # 0.5 ** 2 per masked pixel; visible errors ignored.
  assert float(metrics["tokens"]) == 3 * 37  # 3 image rows, 37 of 49 patches masked.
  np.testing.assert_allclose(sums["tokens"], [37, 37, 37, 0])
  np.testing.assert_allclose(sums["bytes"], [784, 784, 784, 0])
  totals = {k: np.asarray(v).sum() for k, v in sums.items()}
  r = report(obj, "validation", dict(totals, var=0.0), unit="dim")
  assert r["kind"] == "none" and "bits_per_dim" not in r
  assert r["mse"] == pytest.approx(0.25)
  if not norm_pix_loss:
    assert r["mse_pixels"] == pytest.approx(0.25)


def test_norm_pix_targets_and_their_inverse():
  obj, tokens = _mae(), _windows(num_pad_rows=0)
  patches = patchify(obj.pixels(tokens), 4)
  targets = obj.targets(patches)
  np.testing.assert_allclose(targets.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(targets.std(-1, ddof=1), 1.0, atol=1e-3)  # Random pixels vary.
  np.testing.assert_allclose(obj.to_pixels(targets, patches), patches, atol=1e-5)
  mean, std = patch_norm(jnp.zeros((1, 16)))  # A flat patch: std = sqrt(eps), no NaN.
  assert float(std[0, 0]) == pytest.approx(1e-3)


def test_pictures_original_masked_reconstructed(trained):
  exp, state, _ = trained
  obj, tokens = exp.objective, _windows(batch=2, num_pad_rows=0)
  pictures = obj.pictures(exp.model(state["params"]), tokens, jax.random.key(3))
  assert list(pictures) == ["original", "masked", "reconstructed"]
  original, masked, rebuilt = pictures.values()
  for panel in (original, masked, rebuilt):
    assert panel.shape == (2, 28, 28) and panel.dtype == np.uint8
  np.testing.assert_array_equal(original, np.asarray(tokens[:, 1:]).reshape(2, 28, 28))
  mask = np.asarray(obj.mask(jax.random.key(3), 2))  # The same draw as `pictures`.
  patch_mask = jnp.repeat(jnp.asarray(mask, jnp.float32)[:, :, None], 16, -1)
  pixel_mask = np.asarray(unpatchify(patch_mask, 4)) > 0
  assert pixel_mask.sum() == 2 * 37 * 16
  assert (masked[pixel_mask] == 128).all()
  np.testing.assert_array_equal(masked[~pixel_mask], original[~pixel_mask])
  np.testing.assert_array_equal(rebuilt[~pixel_mask], original[~pixel_mask])


def experiment(objective, mesh_shape, rules, **settings):
  """A tiny in-process Experiment on Fashion-MNIST-shaped windows (class tokens on)."""
  with pytest.MonkeyPatch.context() as patch:  # Until the registry lists the objective.
    patch.setitem(objectives.REGISTRY, objective.name, type(objective))
    config = base_config()
    config.objective = objective.name
    config[objective.name] = ml_collections.ConfigDict(
        {**type(objective).config_section(), **settings})
    config.data.name, config.data.tokens = "fashion_mnist", "pixels"
    config.data.class_token = True
    config.seq_len = 785
    config.batch_size = 8
    config.model.update(TINY)
    config.mesh.shape = mesh_shape
    config.logical_axis_rules = rules
    return Experiment.create(config)


@pytest.fixture(scope="module")
def trained():
  """(Experiment, state after 3 train steps, initial params) on a (2, 2, 2) fsdp + tensor mesh."""
  exp = experiment(_mae(), (2, 2, 2), sharding.preset("fsdp_tp")["rules"], **DECODER)
  state = exp.init_state()
  init_params = jax.tree.map(jnp.copy, state["params"])  # The step donates the state.
  tokens = jax.device_put(_windows(batch=8, num_pad_rows=0), exp.batch_sharding)
  step = make_train_step(exp)
  losses = []
  for _ in range(3):
    state, metrics = step(state, tokens)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all() and float(metrics["tokens"]) == 8 * 37
  return exp, state, init_params


def test_sharded_train_and_eval_step(trained):
  """The one trainer's step on a (2, 2, 2) fsdp + tensor mesh, and the evaluator."""
  exp, state, _ = trained
  assert isinstance(exp.objective, MAE) and exp.objective.class_ids == TOK.class_ids
  specs = [str(s.spec) for s in jax.tree.leaves(exp.state_shardings["params"])]
  assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)
  tokens = jax.device_put(_windows(batch=8, num_pad_rows=2), exp.batch_sharding)
  sums = make_eval_step(exp)(state["params"], tokens, jax.random.key(0))
  r = report(exp.objective, "validation", jax.device_get(sums), unit="dim")
  assert r["tokens"] == 6 * 37 and r["bytes"] == 6 * 784
  assert np.isfinite(r["mse"]) and r["mse_pixels"] > 0


def test_linear_probe_report_of_the_encoder(trained):
  """tokjax.probe on this run: the three accuracies, on separable toy classes (dim vs bright)."""
  exp, state, init_params = trained
  rng = np.random.default_rng(4)
  labels = np.tile([0, 1], 24)
  images = (rng.integers(0, 100, (48, 28, 28)) + 120 * labels[:, None, None]).astype(np.uint8)
  features = encoder_features(exp, state["params"], images[:5], chunk=4)  # A padded last chunk.
  assert features.shape == (5, 32) and features.dtype == np.float32
  np.testing.assert_allclose(features, encoder_features(exp, state["params"], images[:5]),
                             atol=1e-5)  # The default chunk (512), as `probe_report` runs it.
  r = probe_report(exp, state["params"], images[:32], labels[:32], images[32:], labels[32:],
                   init_params=init_params, steps=50)
  assert r["probe_train_images"] == 32 and r["probe_test_images"] == 16
  for key in ("probe_accuracy", "probe_accuracy_random_init", "probe_accuracy_pixels"):
    assert r[key] == 1.0, key
  assert "(32 train, 16 test images): encoder 1.0000" in probe.format_report(r)
