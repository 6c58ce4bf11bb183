"""Backbone tests: KV-cache equivalence, attention masks, partition specs, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from tokjax.models import Transformer, TransformerConfig
from tokjax.models.attention import apply_rope, attention_mask, rope_tables

LOGICAL_AXES = {"vocab", "embed", "mlp", "heads", "kv"}


def tiny_config(**overrides):
  kwargs = dict(vocab_size=32, num_layers=2, d_model=32, num_heads=4, d_ff=64, max_seq_len=16)
  return TransformerConfig(**{**kwargs, **overrides})


def split_model(config, seed=0):
  return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))


def random_tokens(seed, shape, vocab=32):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab, dtype=jnp.int32)


def test_decode_prefill_and_steps_match_causal_forward():
  graphdef, params = split_model(tiny_config())
  tokens = random_tokens(1, (3, 9))
  prompt_len = 6

  @jax.jit
  def both(params, tokens):
    model = nnx.merge(graphdef, params)
    full = model(tokens, attention="causal")
    batch = tokens.shape[0]
    positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (batch, prompt_len))
    logits, cache = model.decode(tokens[:, :prompt_len], positions, model.init_cache(batch, 16))
    pieces = [logits]
    for i in range(prompt_len, tokens.shape[1]):
      logits, cache = model.decode(tokens[:, i : i + 1], jnp.full((batch, 1), i, jnp.int32), cache)
      pieces.append(logits)
    return full, jnp.concatenate(pieces, axis=1)

  full, cached = both(params, tokens)
  assert full.dtype == jnp.float32 and full.shape == (3, 9, 32)
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=2e-5)


def test_attention_modes_control_information_flow():
  graphdef, params = split_model(tiny_config())
  base = random_tokens(2, (2, 14))
  change_4 = base.at[:, 4].set((base[:, 4] + 1) % 32)
  change_10 = base.at[:, 10].set((base[:, 10] + 1) % 32)
  prefix_len = jnp.array([6, 12], jnp.int32)

  @jax.jit
  def all_modes(params, tokens):
    model = nnx.merge(graphdef, params)
    return {
        "causal": model(tokens),
        "bidirectional": model(tokens, attention="bidirectional"),
        "prefix": model(tokens, attention="prefix", prefix_len=prefix_len),
    }

  ref, out4, out10 = (all_modes(params, t) for t in (base, change_4, change_10))

  def same(a, b):
    return np.allclose(a, b, atol=1e-6)

  # causal: a change at position p affects exactly positions >= p.
  assert same(ref["causal"][:, :4], out4["causal"][:, :4])
  assert same(ref["causal"][:, :10], out10["causal"][:, :10])
  assert not same(ref["causal"][:, 10], out10["causal"][:, 10])
  # bidirectional: position 0 sees every later token.
  assert not same(ref["bidirectional"][:, 0], out4["bidirectional"][:, 0])
  assert not same(ref["bidirectional"][:, 0], out10["bidirectional"][:, 0])
  # prefix: position 0 sees later tokens inside its row's prefix, nothing beyond it.
  assert not same(ref["prefix"][0, 0], out4["prefix"][0, 0])    # 4 < prefix 6
  assert same(ref["prefix"][0, :10], out10["prefix"][0, :10])    # 10 >= prefix 6
  assert not same(ref["prefix"][1, 0], out10["prefix"][1, 0])    # 10 < prefix 12


def test_attention_mask_matches_definition():
  prefix_len = np.array([0, 3, 5])
  mask = np.asarray(attention_mask("prefix", 5, jnp.asarray(prefix_len)))
  i, j = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
  for b, p in enumerate(prefix_len):
    np.testing.assert_array_equal(mask[b, 0], (j <= i) | (j < p))
  np.testing.assert_array_equal(np.asarray(attention_mask("causal", 5, None))[0, 0], j <= i)
  assert np.asarray(attention_mask("bidirectional", 5, None)).all()


def test_rope_scores_depend_only_on_relative_position():
  q, k = jax.random.normal(jax.random.key(5), (2, 1, 6, 2, 8))
  positions = jnp.arange(6, dtype=jnp.int32)[None]

  def rope(shift):
    return rope_tables(positions + shift, 8, 10000.0)

  def scores(shift):
    return jnp.einsum("bqhd,bkhd->bhqk", apply_rope(q, rope(shift)), apply_rope(k, rope(shift)))

  np.testing.assert_allclose(scores(0), scores(37), atol=1e-4)
  np.testing.assert_allclose(
      jnp.linalg.norm(apply_rope(q, rope(3)), axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5)
  assert not np.allclose(apply_rope(q, rope(0)), q)


def test_time_conditioning_changes_logits():
  config = tiny_config(time_conditioning=True)
  graphdef, params = split_model(config)
  tokens = random_tokens(3, (2, 8))

  @jax.jit
  def at_times(params, t0, t1):
    model = nnx.merge(graphdef, params)
    return model(tokens, attention="bidirectional", time=t0), model(
        tokens, attention="bidirectional", time=t1
    )

  a, b = at_times(params, jnp.array([0.1, 0.9]), jnp.array([0.2, 0.9]))
  assert not np.allclose(a[0], b[0], atol=1e-6)
  np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  graphdef32, params32 = split_model(tiny_config())
  graphdef16, params16 = split_model(tiny_config(dtype="bfloat16"))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params16))
  tokens = random_tokens(4, (2, 8))

  @jax.jit
  def forward16(params):
    return nnx.merge(graphdef16, params)(tokens)

  logits16 = forward16(params16)
  logits32 = nnx.merge(graphdef32, params32)(tokens)
  assert logits16.dtype == jnp.float32
  np.testing.assert_allclose(logits16, logits32, atol=0.15, rtol=0.05)


@pytest.mark.parametrize("time_conditioning", [False, True])
def test_every_param_has_logical_partition_spec(time_conditioning):
  config = tiny_config(time_conditioning=time_conditioning)
  abstract = nnx.eval_shape(lambda: Transformer(config, rngs=nnx.Rngs(0)))
  state = nnx.state(abstract, nnx.Param)
  specs = nnx.get_partition_spec(state)
  shapes = dict(nnx.to_flat_state(state))
  flat_specs = dict(nnx.to_flat_state(specs))
  assert shapes.keys() == flat_specs.keys() and shapes
  for path, variable in shapes.items():
    spec = flat_specs[path].get_value()
    assert isinstance(spec, PartitionSpec), path
    assert len(spec) == variable.get_value().ndim, (path, spec)
    assert set(spec) <= LOGICAL_AXES, (path, spec)
  assert flat_specs[("embed",)].get_value() == PartitionSpec("vocab", "embed")
  assert flat_specs[("head",)].get_value() == PartitionSpec("embed", "vocab")
  wq = flat_specs[("blocks", 0, "attn", "wq")].get_value()
  assert wq == PartitionSpec("embed", "heads", "kv")


def test_bad_inputs_raise_naming_the_fix():
  model = Transformer(tiny_config(), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="max_seq_len"):
    model(jnp.zeros((1, 17), jnp.int32))
  with pytest.raises(ValueError, match="attention mode"):
    model(jnp.zeros((1, 4), jnp.int32), attention="sideways")
  with pytest.raises(ValueError, match="prefix_len"):
    model(jnp.zeros((1, 4), jnp.int32), attention="prefix")
  with pytest.raises(ValueError, match="time_conditioning"):
    model(jnp.zeros((1, 4), jnp.int32), time=jnp.zeros((1,)))
  with pytest.raises(ValueError, match="vocab_size"):
    model(jnp.full((1, 4), 32, jnp.int32))
  with pytest.raises(ValueError, match="max_seq_len"):
    model.init_cache(1, 17)
  with pytest.raises(ValueError, match="num_heads"):
    tiny_config(d_model=30, num_heads=4)
  with pytest.raises(ValueError, match="dtype"):
    tiny_config(dtype="float16")
  timed = Transformer(tiny_config(time_conditioning=True), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="time_conditioning"):
    timed(jnp.zeros((1, 4), jnp.int32), attention="bidirectional")
