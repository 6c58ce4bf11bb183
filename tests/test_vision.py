"""Vision models: patches, the encoder's cost and positions, MAE and classifier shapes, sharding."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tokjax import sharding
from tokjax.models import TransformerConfig
from tokjax.models.vision import (ClassifierModel, MAEModel, PatchEncoder, decoder_config,
                                  patchify, unpatchify)

CONFIG = TransformerConfig(vocab_size=1, num_layers=1, d_model=32, num_heads=2, d_ff=64,
                           max_seq_len=64)
DECODER = decoder_config(CONFIG, num_layers=1, d_model=16, num_heads=2, num_patches=49)
PATCH, N = 4, 49


def _images(batch=2, shape=(28, 28), seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((batch, *shape)), jnp.float32)


def test_patchify_is_raster_order_and_unpatchify_its_exact_inverse():
  images = _images()
  patches = patchify(images, PATCH)
  assert patches.shape == (2, N, PATCH * PATCH)
  np.testing.assert_array_equal(patches[1, 1], images[1, 0:4, 4:8].reshape(-1))
  np.testing.assert_array_equal(patches[1, 7], images[1, 4:8, 0:4].reshape(-1))
  np.testing.assert_array_equal(unpatchify(patches, PATCH), images)
  wide = _images(shape=(8, 12))
  np.testing.assert_array_equal(unpatchify(patchify(wide, 4), 4, (8, 12)), wide)


def test_bad_patch_size_is_a_clear_error():
  with pytest.raises(ValueError, match=r"patch_size=5 must divide .* \[1, 2, 4, 7, 14, 28\]"):
    patchify(_images(), 5)
  with pytest.raises(ValueError, match="do not tile"):
    unpatchify(jnp.zeros((1, 48, 16)), 4, (28, 28))


def _abstract(build):
  """(graphdef, abstract params) of the module `build(rngs)` makes, without running its init."""
  return nnx.split(nnx.eval_shape(lambda: build(nnx.Rngs(0))))


def _shape_of(build, *args, method="__call__"):
  """The output shapes of build(rngs).method(*args), traced but never compiled or run."""
  graphdef, params = _abstract(build)
  return jax.eval_shape(lambda p, *a: getattr(nnx.merge(graphdef, p), method)(*a), params, *args)


def _jit(build, method="__call__"):
  """build(rngs).method as one jitted function that also initialises the module
  (eager initialisation compiles op by op, slowly on CPU)."""
  return jax.jit(lambda *args: getattr(build(nnx.Rngs(1)), method)(*args))


def _encoder_flops(n_visible):
  graphdef, params = _abstract(lambda rngs: PatchEncoder(CONFIG, PATCH * PATCH, N, rngs=rngs))
  encode = jax.jit(lambda p, x, pos: nnx.merge(graphdef, p)(x, pos))
  args = (jnp.zeros((2, n_visible, PATCH * PATCH)), jnp.zeros((2, n_visible), jnp.int32))
  # XLA's cost analysis of the lowered program (the compiled one's counts the
  # same matmuls; this skips compiling).
  cost = encode.lower(params, *args).cost_analysis()
  return (cost[0] if isinstance(cost, list) else cost)["flops"]


def test_encoder_cost_scales_with_the_visible_count():
  flops = {n: _encoder_flops(n) for n in (12, 49)}  # MAE's 75% mask, and none.
  # Between linear (projections, MLP) and quadratic (attention) in n: 12 of 49
  # patches cost less than 12 / 49 of all of them.
  assert (12 / 49) ** 2 < flops[12] / flops[49] < 12 / 49


def test_encoder_is_order_free_and_positions_are_raster_indices():
  encoder = _jit(lambda rngs: PatchEncoder(CONFIG, PATCH * PATCH, N, rngs=rngs))
  patches = patchify(_images(1), PATCH)[:, :10]
  positions = jnp.asarray([[0, 3, 5, 9, 12, 20, 21, 30, 40, 48]], jnp.int32)
  out = encoder(patches, positions)
  perm = np.random.default_rng(0).permutation(10)
  np.testing.assert_allclose(encoder(patches[:, perm], positions[:, perm]), out[:, perm],
                             atol=1e-5)
  assert not np.allclose(encoder(patches, positions[:, ::-1]), out, atol=1e-2)


def test_mae_encoder_sees_only_visible_patches_and_decodes_every_patch(monkeypatch):
  seen = []
  call = PatchEncoder.__call__
  monkeypatch.setattr(PatchEncoder, "__call__",
                      lambda self, x, pos: seen.append(x.shape) or call(self, x, pos))
  build = lambda rngs: MAEModel(CONFIG, DECODER, PATCH * PATCH, N, rngs=rngs)  # noqa: E731
  patches = patchify(_images(), PATCH)
  visible = jnp.asarray(np.sort(np.random.default_rng(0).permutation(N)[:12]))[None].repeat(2, 0)
  out = _shape_of(build, patches, visible)
  assert out.shape == (2, N, PATCH * PATCH) and out.dtype == jnp.float32
  everything = jnp.broadcast_to(jnp.arange(N), (2, N))  # mask_ratio = 0.
  out = _shape_of(lambda rngs: Reconstruct(build(rngs)), patches, everything)
  assert seen == [(2, 12, 16), (2, N, 16)]
  assert out.shape == (2, 28, 28)


class Reconstruct(nnx.Module):
  """An MAEModel's predictions as images."""

  def __init__(self, model):
    self.model = model

  def __call__(self, patches, visible):
    return unpatchify(self.model(patches, visible), PATCH)


def test_classifier_logits_and_features():
  logits, features = _shape_of(lambda rngs: ClassifierModel(CONFIG, PATCH, (28, 28), 10,
                                                             rngs=rngs),
                               _images(3), method="logits_and_features")
  assert logits.shape == (3, 10) and features.shape == (3, 32)
  assert logits.dtype == features.dtype == jnp.float32
  with pytest.raises(ValueError, match="patch_size=3"):
    ClassifierModel(CONFIG, 3, (28, 28), 10, rngs=nnx.Rngs(3))
  with pytest.raises(ValueError, match="196 patches > max_seq_len=64"):
    ClassifierModel(CONFIG, 2, (28, 28), 10, rngs=nnx.Rngs(3))


def test_bfloat16_models_return_float32():
  bf16 = dataclasses.replace(CONFIG, dtype="bfloat16", param_dtype="bfloat16")
  dec = decoder_config(bf16, num_layers=1, d_model=16, num_heads=2, num_patches=N)
  patches = patchify(_images(), PATCH)
  out = _shape_of(lambda rngs: MAEModel(bf16, dec, PATCH * PATCH, N, rngs=rngs), patches,
                  jnp.broadcast_to(jnp.arange(12), (2, 12)))
  logits, features = _shape_of(lambda rngs: ClassifierModel(bf16, PATCH, (28, 28), 10, rngs=rngs),
                               _images(), method="logits_and_features")
  assert out.dtype == logits.dtype == features.dtype == jnp.float32
  params = _abstract(lambda rngs: MAEModel(bf16, dec, PATCH * PATCH, N, rngs=rngs))[1]
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("build", [
    lambda rngs: MAEModel(CONFIG, DECODER, PATCH * PATCH, N, rngs=rngs),
    lambda rngs: ClassifierModel(CONFIG, PATCH, (28, 28), 10, rngs=rngs),
], ids=["mae", "classifier"])
def test_models_shard_on_a_2x2x2_mesh(build):
  abstract = nnx.state(nnx.eval_shape(lambda: build(nnx.Rngs(0))), nnx.Param)
  preset = sharding.preset("fsdp_tp")
  mesh = sharding.make_mesh((2, 2, 2))
  shardings = sharding.state_shardings(abstract, mesh, preset["rules"])
  specs = [str(s.spec) for s in jax.tree.leaves(shardings)]
  assert any("tensor" in s for s in specs) and any("fsdp" in s for s in specs)
  assert sharding.fsdp_report(abstract, shardings) > 0.8
