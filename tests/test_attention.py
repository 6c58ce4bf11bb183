"""Attention kernels against a NumPy reference."""
import jax.numpy as jnp
import numpy as np
import pytest

from tokjax.models.attention import dot_product_attention


@pytest.mark.parametrize("implementation", ["matmul", "xla"])
@pytest.mark.parametrize("length", [8, 96, 100])
def test_attention_kernels_match_a_numpy_reference(implementation, length):
  """Every kernel, with and without the causal block skipping (lengths with
  1, 3 and 2 blocks), equals softmax(q k^T / sqrt(d) + log mask) v in NumPy."""
  q, k, v = np.random.default_rng(length).normal(size=(3, 2, length, 2, 8)).astype(np.float32)
  causal = np.tril(np.ones((length, length), bool))
  scores = np.einsum("bqhd,bkhd->bhqk", q, k) / np.sqrt(8)
  scores = np.where(causal, scores, -np.inf)
  probs = np.exp(scores - scores.max(-1, keepdims=True))
  expected = np.einsum("bhqk,bkhd->bqhd", probs / probs.sum(-1, keepdims=True), v)
  mask = jnp.asarray(causal)[None, None]
  for is_causal in (False, True):
    out = dot_product_attention(q, k, v, mask, implementation, is_causal=is_causal)
    np.testing.assert_allclose(out, expected, atol=2e-5)
