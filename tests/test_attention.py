"""Attention kernels against a NumPy reference."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.models.attention import dot_product_attention


def numpy_probs(q, k, causal):
  """softmax(q k^T / sqrt(d) + log mask) in NumPy: q, k [batch, len, heads, kv]
  -> [batch, heads, q_len, k_len]."""
  scores = np.where(causal, np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(q.shape[-1]), -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  return probs / probs.sum(-1, keepdims=True)


@pytest.mark.parametrize("implementation", ["matmul", "xla"])
@pytest.mark.parametrize("length", [8, 96, 100])
def test_attention_kernels_match_a_numpy_reference(implementation, length):
  """Every kernel, with and without the causal block skipping (lengths with
  1, 3 and 2 blocks), equals softmax(q k^T / sqrt(d) + log mask) v in NumPy."""
  q, k, v = np.random.default_rng(length).normal(size=(3, 2, length, 2, 8)).astype(np.float32)
  causal = np.tril(np.ones((length, length), bool))
  expected = np.einsum("bhqk,bkhd->bqhd", numpy_probs(q, k, causal), v)
  mask = jnp.asarray(causal)[None, None]
  for is_causal in (False, True):
    out = dot_product_attention(q, k, v, mask, implementation, is_causal=is_causal)
    np.testing.assert_allclose(out, expected, atol=2e-5)


def numpy_attention_vjp(q, k, v, causal, d_out):
  """Gradients of softmax(q k^T / sqrt(d) + log mask) v with respect to q, k
  and v for the cotangent d_out (all [batch, len, heads, kv]), in NumPy."""
  scale = 1 / np.sqrt(q.shape[-1])
  probs = numpy_probs(q, k, causal)
  d_v = np.einsum("bhqk,bqhd->bkhd", probs, d_out)
  d_probs = np.einsum("bqhd,bkhd->bhqk", d_out, v)
  d_scores = probs * (d_probs - (d_probs * probs).sum(-1, keepdims=True)) * scale
  return (np.einsum("bhqk,bkhd->bqhd", d_scores, k), np.einsum("bhqk,bqhd->bkhd", d_scores, q),
          d_v)


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("bfloat16", 0.02)])
def test_attention_gradients_match_a_numpy_reference(dtype, tolerance):
  """The 'matmul' kernel's backward pass (causal query blocks whose key and
  value gradients are summed in float32, each block's matmuls in the compute
  dtype) equals the attention's gradients in NumPy: to float32 rounding, and
  within bfloat16's in bfloat16 (relative to the largest gradient)."""
  length = 192  # Three causal blocks of 64.
  q, k, v, d_out = np.random.default_rng(0).normal(size=(4, 2, length, 2, 8)).astype(np.float32)
  causal = np.tril(np.ones((length, length), bool))
  mask = jnp.asarray(causal)[None, None]

  def attention(q, k, v):
    return dot_product_attention(q, k, v, mask, "matmul", is_causal=True)

  low = [jnp.asarray(x, dtype) for x in (q, k, v)]
  _, vjp = jax.vjp(attention, *low)
  ours = vjp(jnp.asarray(d_out, dtype))
  as_run = [np.asarray(x, np.float32) for x in (*low, jnp.asarray(d_out, dtype))]
  for got, want in zip(ours, numpy_attention_vjp(*as_run[:3], causal, as_run[3])):
    assert got.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(np.asarray(got, np.float32), want,
                               atol=tolerance * np.abs(want).max())
