"""The blocked KV cache (`tokjax.models.kv_cache`): writes, slot moves and beam
reordering across blocks against a NumPy model of one flat cache, and which
blocks decode attention reads."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from tokjax.models import Transformer, TransformerConfig, kv_cache

BATCH, HEADS, KV, LAYERS, SLOTS = 2, 2, 4, 2, 8


def config(scan_layers=False, kv_block_len=3):
  return TransformerConfig(vocab_size=32, num_layers=LAYERS, d_model=HEADS * KV, num_heads=HEADS,
                           d_ff=16, max_seq_len=16, scan_layers=scan_layers,
                           kv_block_len=kv_block_len)


def flat(cache, name) -> np.ndarray:
  """float[layers, batch, heads, slots, kv]: the key or value blocks joined
  along slots (keys are stored [..., kv, slots])."""
  layers = cache[name]
  axis = kv_cache.SLOT_AXIS[name]
  if isinstance(layers[0], tuple):
    joined = np.stack([np.concatenate(blocks, axis=axis) for blocks in layers])
  else:
    joined = np.concatenate(layers, axis=axis)
  return np.swapaxes(joined, -1, -2) if name == "k" else joined


def test_blocks_hold_consecutive_slots_the_last_one_shorter_or_extended():
  cache = kv_cache.init_cache(config(), BATCH, SLOTS)
  assert [[b.shape for b in layer] for layer in cache["v"]] == [
      [(BATCH, HEADS, 3, KV), (BATCH, HEADS, 3, KV), (BATCH, HEADS, 2, KV)]] * LAYERS
  assert [[b.shape for b in layer] for layer in cache["k"]] == [  # Keys transposed.
      [(BATCH, HEADS, KV, 3), (BATCH, HEADS, KV, 3), (BATCH, HEADS, KV, 2)]] * LAYERS
  stacked = kv_cache.init_cache(config(scan_layers=True), BATCH, SLOTS)
  assert [b.shape for b in stacked["v"]] == [(LAYERS, BATCH, HEADS, n, KV) for n in (3, 3, 2)]
  assert [b.shape for b in stacked["k"]] == [(LAYERS, BATCH, HEADS, KV, n) for n in (3, 3, 2)]
  assert kv_cache.cache_len(cache) == kv_cache.cache_len(stacked) == SLOTS
  longer, stacked = kv_cache.extend(cache, 3), kv_cache.extend(stacked, 3)
  assert [[b.shape[2] for b in layer] for layer in longer["v"]] == [[3, 3, 5]] * LAYERS
  assert [[b.shape[3] for b in layer] for layer in longer["k"]] == [[3, 3, 5]] * LAYERS
  assert [b.shape[3] for b in stacked["v"]] == [3, 3, 5] and kv_cache.cache_len(longer) == 11
  assert [b.shape[4] for b in stacked["k"]] == [3, 3, 5]


@pytest.mark.parametrize("batch,d_model,dtype", [(32, 512, "float32"), (1, 512, "float32"),
                                                  (3, 256, "bfloat16"), (4096, 512, "float32")])
def test_automatic_block_len_is_the_smallest_power_of_two_of_enough_bytes(batch, d_model, dtype):
  """kv_block_len 0: a block has >= AUTO_BLOCK_SLOTS slots and one layer's keys
  in it hold >= AUTO_BLOCK_BYTES; half of it would break one of the two; a
  cache shorter than that is one block."""
  model = TransformerConfig(vocab_size=32, d_model=d_model, num_heads=8, max_seq_len=8192,
                            dtype=dtype, kv_block_len=0)
  slot_bytes = batch * d_model * np.dtype(jnp.dtype(dtype)).itemsize
  n = kv_cache.block_len(model, batch, 8192)
  assert n & (n - 1) == 0 and n >= kv_cache.AUTO_BLOCK_SLOTS
  assert n * slot_bytes >= kv_cache.AUTO_BLOCK_BYTES
  assert n // 2 < kv_cache.AUTO_BLOCK_SLOTS or n // 2 * slot_bytes < kv_cache.AUTO_BLOCK_BYTES
  short = kv_cache.init_cache(model, batch, n - 1)
  assert [b.shape[2] for b in short["v"][0]] == [n - 1]
  assert kv_cache.block_len(dataclasses.replace(model, kv_block_len=5), batch, 8192) == 5


@pytest.mark.parametrize("scan_layers", [False, True])
def test_writes_and_slot_moves_across_blocks_match_a_flat_cache(scan_layers):
  """Writes that straddle blocks, per-row slots, a slot clamped at the end,
  and `move_slots` with shared and per-row destinations: every slot as NumPy
  puts it in one flat [slots] array."""
  rng = np.random.default_rng(0)
  cache = kv_cache.init_cache(config(scan_layers), BATCH, SLOTS)
  want = {name: flat(cache, name).copy() for name in ("k", "v")}
  writes = [(0, 4, np.int32(2)), (1, 2, np.array([0, 5], np.int32)), (0, 3, np.int32(7))]
  for layer, q_len, slot in writes:
    new = {name: rng.normal(size=(BATCH, q_len, HEADS, KV)).astype(np.float32)
           for name in ("k", "v")}
    k, v, slot_ = jnp.asarray(new["k"]), jnp.asarray(new["v"]), jnp.asarray(slot)
    if scan_layers:
      cache["k"], cache["v"] = kv_cache.write(cache["k"], cache["v"], k, v, slot_, layer)
    else:
      keys, values = list(cache["k"]), list(cache["v"])
      keys[layer], values[layer] = kv_cache.write(keys[layer], values[layer], k, v, slot_)
      cache = {"k": tuple(keys), "v": tuple(values)}
    for b in range(BATCH):
      first = min(int(np.broadcast_to(slot, (BATCH,))[b]), SLOTS - q_len)  # Clamped.
      for name in ("k", "v"):
        want[name][layer, b, :, first:first + q_len] = new[name][b].transpose(1, 0, 2)
  for name in ("k", "v"):
    np.testing.assert_array_equal(flat(cache, name), want[name])

  src = np.array([[7, 1, 4], [2, 6, 0]], np.int32)
  for dst in (np.int32(1), np.array([5, 0], np.int32)):
    cache = kv_cache.move_slots(cache, jnp.asarray(src), jnp.asarray(dst))
    for name in ("k", "v"):
      for b in range(BATCH):
        first = min(int(np.broadcast_to(dst, (BATCH,))[b]), SLOTS - src.shape[1])
        want[name][:, b, :, first:first + src.shape[1]] = want[name][:, b][:, :, src[b]]
      np.testing.assert_array_equal(flat(cache, name), want[name])


@pytest.mark.parametrize("stacked", [False, True])
def test_select_beams_picks_within_each_group_and_stays_on_its_devices(stacked):
  """Row b * n + j of the result is row b * m + beams[b, j] (NumPy reference),
  in either cache layout and every block; with the rows sharded over 2
  devices the compiled gather moves nothing between them (no all-gather or
  collective-permute)."""
  batch, m, n = 4, 3, 2
  rng = np.random.default_rng(0)
  lead = (2,) if stacked else ()
  blocks = tuple(rng.normal(size=(*lead, batch * m, 1, size, 2)).astype(np.float32)
                 for size in (3, 2))
  cache = {"k": tuple(map(jnp.asarray, blocks)) if stacked
           else (tuple(map(jnp.asarray, blocks)),)}
  beams = rng.integers(0, m, (batch, n)).astype(np.int32)
  rows = (np.arange(batch)[:, None] * m + beams).reshape(-1)
  got = kv_cache.select_beams(cache, jnp.asarray(beams))["k"]
  for block, picked in zip(blocks, got if stacked else got[0]):
    np.testing.assert_array_equal(picked, block[:, rows] if stacked else block[rows])
  mesh = jax.make_mesh((2,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  spec = PartitionSpec(None, "data") if stacked else PartitionSpec("data")
  sharded = jax.tree.map(lambda a: jax.device_put(a, jax.NamedSharding(mesh, spec)), cache)
  beams_sharded = jax.device_put(beams, jax.NamedSharding(mesh, PartitionSpec("data")))
  hlo = jax.jit(kv_cache.select_beams).lower(sharded, beams_sharded).compile().as_text()
  assert "all-gather" not in hlo and "collective-permute" not in hlo and "all-to-all" not in hlo


def test_blocks_seen():
  cache = kv_cache.init_cache(config(), BATCH, SLOTS)
  mask = np.zeros((BATCH, 1, 1, SLOTS), bool)
  mask[0, 0, 0, 1], mask[1, 0, 0, 7] = True, True
  np.testing.assert_array_equal(kv_cache.blocks_seen(jnp.asarray(mask), cache),
                                [True, False, True])
  assert kv_cache.blocks_seen(jnp.asarray(mask), kv_cache.init_cache(config(kv_block_len=8),
                                                                      BATCH, SLOTS)) is None


def test_a_decode_step_reads_only_the_blocks_it_can_see():
  """Slots 6.. (blocks 2 and 3 of a 12-slot cache) are poisoned with NaN. A
  step at slot 5 with filled_len 6, or with a mask hiding them, reads
  neither: its logits are those of the clean cache. Showing one poisoned
  slot makes the NaN reach the logits, so the poison would be seen if read."""
  model = Transformer(config(), rngs=nnx.Rngs(0))
  tokens = jax.random.randint(jax.random.key(1), (BATCH, 6), 0, 32, jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(6, dtype=jnp.int32), (BATCH, 6))
  prefill = jax.jit(lambda cache: model.decode(tokens[:, :5], positions[:, :5], cache)[1])
  clean = prefill(kv_cache.init_cache(model.config, BATCH, 12))
  poisoned = {name: tuple(blocks[:2] + tuple(jnp.full_like(b, jnp.nan) for b in blocks[2:])
                          for blocks in layers) for name, layers in clean.items()}
  step = jax.jit(lambda cache, **kw: model.decode(tokens[:, 5:], positions[:, 5:], cache, **kw)[0])
  want = step(clean)
  np.testing.assert_array_equal(step(poisoned, filled_len=jnp.int32(6)), want)
  np.testing.assert_array_equal(step(poisoned), want)
  shows_slot_7 = jnp.zeros((BATCH, 1, 12), bool).at[:, :, :6].set(True).at[:, :, 7].set(True)
  assert np.isnan(step(poisoned, kv_mask=shows_slot_7, write_at=jnp.int32(5))).all()
