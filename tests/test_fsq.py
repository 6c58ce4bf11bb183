"""FSQ: the quantizer against closed forms, the fsq objective, and FSQTokenizer from a run."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from tokjax import sharding
from tokjax.checkpoint import Checkpointer
from tokjax.config import base_config
from tokjax.data import ByteTokenizer, PixelTokenizer, train_iterator
from tokjax.experiment import Experiment
from tokjax.fsq_tokenizer import FSQTokenizer
from tokjax.models.fsq import (BOUND_EPS, bound, codebook_size, codes_to_indices,
                               indices_to_codes, quantize)
from tokjax.objectives.fsq import FSQ

LEVELS = (8, 5, 5, 5)
ODD_LEVELS = (2, 3, 4, 7)  # L = 2 and an even L > 2 besides the paper's.


def _objective(tokenizer=None, **settings) -> FSQ:
  tokenizer = tokenizer or PixelTokenizer()
  section = ml_collections.ConfigDict(dict(FSQ.config_section(), **settings))
  return FSQ.from_config(section, tokenizer)


def _windows(images: np.ndarray, pad_rows: int = 0) -> jnp.ndarray:
  """int32[n + pad_rows, 785]: BOS + pixels per image, then all-PAD rows."""
  tok = PixelTokenizer()
  rows = [tok.encode(image, add_bos=True) for image in images]
  rows += [np.full(785, tok.pad_id, np.int32)] * pad_rows
  return jnp.asarray(np.stack(rows))


def _images(n: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, 256, (n, 28, 28), np.uint8)


@pytest.mark.parametrize("levels", [LEVELS, ODD_LEVELS])
def test_rounding_takes_exactly_levels_values_and_keeps_grid_points(levels):
  z = jnp.linspace(-12.0, 12.0, 20001)[:, None] * jnp.ones(len(levels))
  q = np.asarray(quantize(z, levels))
  half = np.asarray([level // 2 for level in levels], np.float32)
  for i, level in enumerate(levels):
    values = np.unique(q[:, i])
    assert len(values) == level
    # Integers k / (L // 2) in [-1, 1]: -(L-1)/2 .. (L-1)/2 for odd L, -L/2 .. L/2 - 1 for even L.
    np.testing.assert_array_equal(values * half[i], np.arange(level) - level // 2)
  assert q.min() >= -1.0 and q.max() <= 1.0
  # A latent that `bound` puts on a grid point quantizes to that point. The
  # outermost points lie just outside bound's open interval (h_i - o_i, ...),
  # so those latents land a quarter step inside it instead.
  codes = np.asarray(indices_to_codes(jnp.arange(codebook_size(levels)), levels))
  h = np.asarray([(level - 1) * (1 - BOUND_EPS) / 2 for level in levels])
  offset = np.asarray([0.5 * (level % 2 == 0) for level in levels])
  shift = np.arctanh(np.where(offset < h, offset / h, 0.0))
  target = np.clip(codes * half, -h - offset + 0.25, h - offset - 0.25)
  z_on_grid = jnp.asarray(np.arctanh((target + offset) / h) - shift, jnp.float32)
  np.testing.assert_allclose(bound(z_on_grid, levels), target, atol=1e-4)
  np.testing.assert_array_equal(quantize(z_on_grid, levels), codes)
  # z = 0 is the code 0 wherever 0 is inside the bounded interval (L >= 3).
  zero = np.asarray(quantize(jnp.zeros(len(levels)), levels))
  assert all(zero[i] == 0 for i, level in enumerate(levels) if level >= 3)


@pytest.mark.parametrize("levels", [LEVELS, ODD_LEVELS])
def test_codes_and_indices_are_a_bijection(levels):
  k = codebook_size(levels)
  indices = jnp.arange(k)
  codes = np.asarray(indices_to_codes(indices, levels))
  assert codes.shape == (k, len(levels))
  assert len(np.unique(codes, axis=0)) == k  # Every index its own grid point.
  np.testing.assert_array_equal(codes_to_indices(jnp.asarray(codes), levels), indices)
  # And every quantized latent is one of them.
  z = jax.random.normal(jax.random.key(0), (4096, len(levels))) * 3
  got = np.asarray(codes_to_indices(quantize(z, levels), levels))
  assert got.min() >= 0 and got.max() < k
  np.testing.assert_array_equal(indices_to_codes(jnp.asarray(got), levels), quantize(z, levels))


def test_straight_through_gradient_reaches_the_encoder():
  obj = _objective(channels=8)
  model = obj.build_model(None, nnx.Rngs(0))
  graphdef, params = nnx.split(model, nnx.Param)
  tokens = _windows(_images(2), pad_rows=1)
  grads = jax.jit(jax.grad(
      lambda p: obj.loss(nnx.merge(graphdef, p), tokens, jax.random.key(0))[0]))(params)
  for name in ("enc1", "enc2", "enc3", "enc_out"):
    assert float(jnp.abs(grads[name]["kernel"][...]).max()) > 0, name
  # The rounding itself passes gradients as the identity on bound(z) / (L // 2).
  z = jnp.linspace(-1.0, 1.0, 8)[:, None] * jnp.ones(4)
  half = jnp.asarray([level // 2 for level in LEVELS], jnp.float32)
  np.testing.assert_allclose(jax.grad(lambda z: quantize(z, LEVELS).sum())(z),
                             jax.grad(lambda z: (bound(z, LEVELS) / half).sum())(z), rtol=1e-6)


class HalfGrey:
  """A fake autoencoder: every reconstruction is 0.5, every code index 3."""

  def __call__(self, pixels):
    return jnp.full(pixels.shape, 0.5), jnp.full((pixels.shape[0], 7, 7), 3, jnp.int32)


def test_mse_psnr_and_report_in_closed_form():
  """Black images (pixel 0) against a 0.5 reconstruction: MSE 1/4, PSNR
  10 log10(4) = 6.02 dB; the all-PAD row counts for nothing."""
  obj = _objective()
  tokens = _windows(np.zeros((3, 28, 28), np.uint8), pad_rows=1)
  loss, metrics = obj.loss(HalfGrey(), tokens, jax.random.key(0))
  assert float(loss) == float(metrics["mse"]) == pytest.approx(0.25)
  assert float(metrics["psnr"]) == pytest.approx(10 * math.log10(4), rel=1e-6)
  assert float(metrics["tokens"]) == 3 * 784
  rows = obj.likelihood(HalfGrey(), tokens, jax.random.key(0))
  np.testing.assert_allclose(rows["sq_err"], [196.0, 196.0, 196.0, 0.0])
  np.testing.assert_array_equal(rows["nats"], 0.0)
  np.testing.assert_array_equal(rows["tokens"], [784, 784, 784, 0])
  assert rows["code_counts"].shape == (4, 1000)
  np.testing.assert_array_equal(rows["code_counts"][:, 3], [49, 49, 49, 0])
  assert float(rows["code_counts"].sum()) == 3 * 49
  report = obj.eval_report({k: np.asarray(v).sum(0) for k, v in rows.items()})
  assert report["mse"] == pytest.approx(0.25)
  assert report["psnr"] == pytest.approx(10 * math.log10(4), rel=1e-6)
  assert report["codebook_perplexity"] == pytest.approx(1.0)  # One code used.
  assert report["codebook_usage"] == pytest.approx(1 / 1000)
  pixels, reconstruction, _, _ = obj.reconstruct(HalfGrey(), tokens)
  original, reconstructed = obj.to_uint8(pixels), obj.to_uint8(reconstruction)
  assert original.max() == 0 and (reconstructed == 128).all()


def test_codebook_perplexity_is_exp_entropy():
  obj = _objective()
  counts = np.zeros(1000)
  counts[[0, 5, 17, 999]] = [10, 1, 4, 5]
  p = counts[counts > 0] / counts.sum()
  report = obj.eval_report(dict(sq_err=np.float32(2.0), tokens=np.float32(784.0),
                                code_counts=counts))
  assert report["codebook_perplexity"] == pytest.approx(math.exp(-(p * np.log(p)).sum()))
  assert report["codebook_usage"] == pytest.approx(4 / 1000)
  assert report["mse"] == pytest.approx(2 / 784)
  uniform = obj.eval_report(dict(sq_err=0.0, tokens=784.0, code_counts=np.full(1000, 7.0)))
  assert uniform["codebook_perplexity"] == pytest.approx(1000)
  assert uniform["codebook_usage"] == 1.0
  assert uniform["psnr"] == pytest.approx(100.0)  # A perfect reconstruction, capped.


def test_bad_settings_and_a_text_tokenizer_are_clear_errors():
  for levels in [(8, 1, 5), (8.5, 5), (), (2**9, 2**9)]:
    with pytest.raises(ValueError, match=r"--config\.fsq\.code_levels"):
      _objective(code_levels=levels)
  with pytest.raises(ValueError, match=r"--config\.fsq\.channels"):
    _objective(channels=0)
  with pytest.raises(ValueError, match=r"configs/fashion_mnist\.py:objective=fsq"):
    _objective(ByteTokenizer())
  assert _objective(code_levels=[4, 4]).code_levels == (4, 4)  # A config list becomes a tuple.


def test_params_name_axes_that_shard_on_a_2x2x2_mesh():
  obj = _objective(channels=8)
  abstract = nnx.state(nnx.eval_shape(lambda: obj.build_model(None, nnx.Rngs(0))), nnx.Param)
  mesh = sharding.make_mesh((2, 2, 2))
  shardings = sharding.state_shardings(abstract, mesh, sharding.preset("fsdp_tp")["rules"])
  assert shardings["enc2"]["kernel"].spec == jax.sharding.PartitionSpec(
      None, None, "fsdp", "tensor")


@pytest.fixture(scope="module")
def fsq_run(tmp_path_factory):
  """A tiny fsq run's workdir with one checkpoint (random weights), its Experiment and params."""
  return _save_runs(tmp_path_factory.mktemp("runs"))


def _save_runs(tmp_path):
  """Saves an fsq run in tmp_path/fsq and its state as a 'causal' run in tmp_path/causal."""
  config = base_config()
  config.objective = "fsq"
  config.data.name, config.data.tokens = "fashion_mnist", "pixels"
  config.seq_len = 785
  config.batch_size = 8
  config.fsq.channels = 8
  exp = Experiment.create(config)
  state = exp.init_state()
  data = train_iterator(np.concatenate(np.asarray(_windows(_images(8)))), seq_len=785,
                        batch_size=8, seed=0)
  ckpt = Checkpointer(str(tmp_path / "fsq"))
  ckpt.save(1, state, data, config.to_dict())
  ckpt.wait()
  ckpt.close()
  other = Checkpointer(str(tmp_path / "causal"))  # A run of another objective.
  other.save(1, state, data, dict(config.to_dict(), objective="causal"))
  other.wait()
  other.close()
  return tmp_path, exp, state["params"]


def test_tokenizer_from_workdir_codes_and_decodes_as_the_autoencoder(fsq_run):
  workdir, exp, params = fsq_run
  tok = FSQTokenizer.from_workdir(str(workdir / "fsq"), extra_special_tokens=("<x>",),
                                  num_classes=10)
  assert (tok.codebook_size, tok.num_bytes, tok.unit) == (1000, 1000, "code")
  assert tok.image_shape == (28, 28) and tok.latent_shape == (7, 7) and tok.tokens_per_image == 49
  assert (tok.pad_id, tok.bos_id, tok.mask_id) == (1000, 1001, 1003)
  assert tok.class_ids == tuple(range(1005, 1015)) and tok.vocab_size == 1015
  assert set(tok.non_text_ids) == {1000, 1002, 1003, 1004}  # BOS and class tokens frame images.
  assert tok.non_target_ids == tuple(range(1000, 1015))

  images, labels = _images(5, seed=1), np.array([0, 9, 3, 3, 1])
  rows = tok.encode_images(images, labels)
  assert rows.dtype == np.int32 and rows.shape == (5, 50)
  np.testing.assert_array_equal(rows[:, 0], np.asarray(tok.class_ids)[labels])
  np.testing.assert_array_equal(tok.encode_images(images)[:, 0], tok.bos_id)
  np.testing.assert_array_equal(tok.encode(images[2], add_bos=True, label=3), rows[2])

  model = exp.model(params)
  reconstruction, indices = jax.jit(model)(exp.objective.pixels(_windows(images)))
  np.testing.assert_array_equal(rows[:, 1:], np.asarray(indices).reshape(5, 49))
  decoded = tok.decode_batch(rows)
  assert decoded.dtype == np.uint8 and decoded.shape == (5, 28, 28)
  expected = exp.objective.to_uint8(reconstruction)
  assert np.abs(decoded.astype(int) - expected).max() <= 1  # Float rounding at .5 only.
  np.testing.assert_array_equal(tok.decode(rows[3]), decoded[3])
  panels = exp.objective.pictures(model, _windows(images), jax.random.key(0))
  assert list(panels) == ["original", "reconstructed"]
  np.testing.assert_array_equal(panels["original"], images)
  assert np.abs(panels["reconstructed"].astype(int) - decoded).max() <= 1
  # Specials are dropped and a short row is completed with code 0.
  short = np.concatenate([[tok.bos_id], rows[3, 1:11], [tok.pad_id]])
  np.testing.assert_array_equal(tok.codes(short[None])[0], np.r_[rows[3, 1:11], np.zeros(39)])
  with pytest.raises(ValueError, match="label=10 is outside"):
    tok.encode_images(images, [0, 1, 2, 3, 10])
  with pytest.raises(ValueError, match=r"uint8\[n, 28, 28\]"):
    tok.encode_images(images.astype(np.float32))


def test_tokenizer_from_a_missing_or_other_run_names_the_fix(fsq_run):
  workdir, _, _ = fsq_run
  for missing in (workdir / "nowhere", workdir):  # No workdir; a workdir without checkpoints.
    with pytest.raises(FileNotFoundError, match=r"objective=fsq --workdir") as e:
      FSQTokenizer.from_workdir(str(missing))
    assert str(missing) in str(e.value)
  with pytest.raises(ValueError, match=r"tokenizer_workdir must be the workdir of a "
                     r"configs/fashion_mnist.py:objective=fsq run"):
    FSQTokenizer.from_workdir(str(workdir / "causal"))
