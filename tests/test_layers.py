"""layers: mixed-precision einsum gradients and the 2-D dense contraction."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.compile import dot_types
from tokjax.models.layers import dense, mixed_einsum

SPECS = [("mk,kn->mn", (6, 4), (4, 5)), ("bqhd,bkhd->bhqk", (2, 3, 2, 4), (2, 5, 2, 4)),
         ("bhqk,bkhd->bqhd", (2, 2, 3, 5), (2, 5, 2, 4))]


@pytest.mark.parametrize("spec, x_shape, w_shape", SPECS)
def test_mixed_einsum_gradients_are_the_einsums(spec, x_shape, w_shape):
  """float32: value and both gradients equal plain einsum's (the custom VJP's
  index bookkeeping is right for every spec the backbone uses)."""
  x, w = (jax.random.normal(jax.random.key(i), s) for i, s in enumerate((x_shape, w_shape)))
  probe = jax.random.normal(jax.random.key(9), jnp.einsum(spec, x, w).shape)

  def loss(f):
    return lambda x, w: (f(spec, x, w) * probe).sum()

  ours = jax.grad(loss(mixed_einsum), argnums=(0, 1))(x, w)
  reference = jax.grad(loss(jnp.einsum), argnums=(0, 1))(x, w)
  np.testing.assert_allclose(mixed_einsum(spec, x, w), jnp.einsum(spec, x, w), rtol=1e-6)
  for a, b in zip(ours, reference):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_backward_matmuls_stay_bfloat16():
  """With bfloat16 operands all three dots (forward, input and weight
  gradients) run on bfloat16 inputs in the program XLA compiles (JAX's own
  rule would upcast the backward to float32, and so would XLA:CPU for a weight
  gradient whose tokens operand keeps the transposed layout), accumulate in
  float32, and the gradients come back in the operands' dtype, close to the
  float32 ones."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 16))
  w = jax.random.normal(jax.random.key(1), (16, 4, 8)) / 4

  def loss(x, w):
    return (dense(x.astype(jnp.bfloat16), w, out_dtype=jnp.float32) ** 2).sum()

  grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
  operands = [types for types, _ in dot_types(grad.lower(x, w).compile().as_text())]
  assert operands == [("bf16", "bf16")] * 3
  dx, dw = grad(x, w)
  fx, fw = jax.grad(lambda x, w: (dense(x, w) ** 2).sum(), argnums=(0, 1))(x, w)
  assert dx.dtype == dw.dtype == jnp.float32  # Cast back to the parameters' dtype.
  np.testing.assert_allclose(dw, fw, rtol=0.05, atol=0.05 * float(jnp.abs(fw).max()))
  np.testing.assert_allclose(dx, fx, rtol=0.05, atol=0.05 * float(jnp.abs(fx).max()))


def test_a_float32_weight_gets_its_gradient_unrounded():
  """A float32 weight in a bfloat16 `dense` gets the float32 result of the
  bfloat16 matmul x^T g as its gradient: equal to that product of the same
  bfloat16 values in float64, to float32 accuracy. Casting the weight before
  the matmul (autocast's way) would round it to bfloat16 first, a relative
  error up to 2^-9."""
  x = jax.random.normal(jax.random.key(0), (64, 32)).astype(jnp.bfloat16)
  w = jax.random.normal(jax.random.key(1), (32, 16)) / 4
  g = jax.random.normal(jax.random.key(2), (64, 16))
  _, vjp = jax.vjp(lambda w: dense(x, w, out_dtype=jnp.float32), w)
  (dw,) = vjp(g)
  want = np.asarray(x, np.float64).T @ np.asarray(g.astype(jnp.bfloat16), np.float64)
  assert dw.dtype == jnp.float32
  np.testing.assert_allclose(dw, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())
