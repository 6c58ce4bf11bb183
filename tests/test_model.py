"""Backbone tests: KV-cache equivalence, attention masks, partition specs, scanned
layers, rematerialisation, dtypes, errors."""
import contextlib
import dataclasses
import io
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.ad_checkpoint import print_saved_residuals
from jax.sharding import PartitionSpec

from tokjax import sharding
from tokjax.config import base_config
from tokjax.data import ByteTokenizer
from tokjax.models import Transformer, TransformerConfig
from tokjax.models.attention import apply_rope, attention_mask, rope_tables
from tokjax.models.block import LAYERS, REMAT_POLICIES
from tokjax.objectives.electra import Electra
from tokjax.objectives.multi_token import MultiToken
from tokjax.samplers import autoregressive, model_fns

LOGICAL_AXES = {"vocab", "embed", "mlp", "heads", "kv"}


def tiny_config(**overrides):
  kwargs = dict(vocab_size=32, num_layers=2, d_model=32, num_heads=4, d_ff=64, max_seq_len=16)
  return TransformerConfig(**{**kwargs, **overrides})


def split_model(config, seed=0):
  return nnx.split(Transformer(config, rngs=nnx.Rngs(seed)))


def random_tokens(seed, shape, vocab=32):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab, dtype=jnp.int32)


def stack_blocks(params, scanned_params, num_layers):
  """The unscanned `params` in the layout of `scanned_params`: block i's
  parameters become slice i of the stacked ones."""
  flat = dict(nnx.to_flat_state(params))

  def value(path):
    if path[0] != "blocks":
      return flat[path].get_value()
    return jnp.stack([flat[("blocks", i, *path[1:])].get_value() for i in range(num_layers)])

  return nnx.from_flat_state(
      [(path, var.replace(value(path))) for path, var in nnx.to_flat_state(scanned_params)])


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("batch", [3, 1])  # One row decodes on `Block.decode_kernels`.
def test_decode_prefill_and_steps_match_causal_forward(scan_layers, batch):
  graphdef, params = split_model(tiny_config(scan_layers=scan_layers, kv_block_len=4))
  tokens = random_tokens(1, (batch, 9))
  prompt_len = 6

  @jax.jit
  def both(params, tokens):
    model = nnx.merge(graphdef, params)
    full = model(tokens, attention="causal")
    positions = jnp.broadcast_to(jnp.arange(prompt_len, dtype=jnp.int32), (batch, prompt_len))
    logits, cache = model.decode(tokens[:, :prompt_len], positions, model.init_cache(batch, 16))
    pieces = [logits]
    for i in range(prompt_len, tokens.shape[1]):
      logits, cache = model.decode(tokens[:, i : i + 1], jnp.full((batch, 1), i, jnp.int32), cache)
      pieces.append(logits)
    return full, jnp.concatenate(pieces, axis=1)

  full, cached = both(params, tokens)
  assert full.dtype == jnp.float32 and full.shape == (batch, 9, 32)
  np.testing.assert_allclose(cached, full, atol=2e-5, rtol=2e-5)


def compiled_decode_loop(config, batch=1):
  """(HLO text, abstract cache) of a jitted loop of greedy decode steps, the
  cache donated, as the AR sampler runs them."""
  graphdef, params = split_model(config)

  def loop(params, cache, token):
    def body(i, carry):
      cache, token = carry
      model = nnx.merge(graphdef, params)
      logits, cache = model.decode(token, jnp.full((batch, 1), 8 + i, jnp.int32), cache)
      return cache, jnp.argmax(logits[:, 0], -1).astype(jnp.int32)[:, None]
    return jax.lax.fori_loop(0, 4, body, (cache, token))

  model = nnx.merge(graphdef, params)
  cache = jax.eval_shape(lambda: model.init_cache(batch, 64))
  token = jax.ShapeDtypeStruct((batch, 1), jnp.int32)
  return jax.jit(loop, donate_argnums=1).lower(params, cache, token).compile().as_text(), cache


def test_decode_loop_updates_the_kv_cache_in_place():
  """The compiled decode loop copies no cache-sized buffer: each step's keys
  and values are written into the loop-carried cache in place (a copy per
  layer and step costs as much memory traffic as reading the cache). With the
  write before the attention read, XLA:CPU copied every layer's cache at batch 1."""
  hlo, cache = compiled_decode_loop(tiny_config(max_seq_len=64))
  layer_cache = jax.tree.leaves(cache)[0]
  shape = f"f32[{','.join(map(str, layer_cache.shape))}]"
  copies = [line for line in hlo.splitlines() if " copy(" in line and shape in line]
  assert not copies, f"{len(copies)} cache copies, e.g. {copies[0].strip()[:200]}"


def hlo_computations(hlo: str) -> dict[str, list[str]]:
  """Each computation's name in `hlo` -> its instruction lines."""
  computations, name = {}, None
  for line in hlo.splitlines():
    header = re.match(r"(?:ENTRY )?%([\w.\-]+) .*\{$", line)
    if header:
      name = header.group(1)
      computations[name] = []
    elif name:
      computations[name].append(line)
  return computations


def while_bodies(hlo: str) -> list[str]:
  """The instruction lines of every while-loop body computation in `hlo`."""
  computations = hlo_computations(hlo)
  return [line for body in set(re.findall(r"body=%([\w.\-]+)", hlo)) for line in computations[body]]


def test_one_token_decode_attention_runs_in_ynnpack():
  """At batch > 1, every matmul of a one-token decode step is a YNNPACK fusion,
  the two over each cache block included: XLA:CPU runs the dots it keeps
  itself on one core, and decode attention read the cache at 16 GB/s that way
  against 22 in YNNPACK (8 x 512, batch 32). Keys stored [slots, kv], or a
  query not doubled, leave those dots to XLA and fail this."""
  config = tiny_config(max_seq_len=64, kv_block_len=16)
  hlo, _ = compiled_decode_loop(config, batch=2)
  ynn = {call for line in hlo.splitlines() if "__ynn_fusion" in line
         for call in re.findall(r"kind=kCustom, calls=%([\w.\-]+)", line)}
  outside = [line for name, lines in hlo_computations(hlo).items() if name not in ynn
             for line in lines if " dot(" in line]
  assert not outside, outside[0]
  cache_dots = [line for line in hlo.splitlines()
                if "__ynn_fusion" in line and ("bhqd,bhdk->bhqk" in line or "bhqk,bhkd->bhqd" in line)]
  assert len(cache_dots) >= 2 * config.num_layers * (64 // 16)  # Both matmuls, every block.


@pytest.mark.parametrize("scan_layers", [False, True])
def test_decode_kernels_are_built_once_before_the_decode_loop(scan_layers):
  """`Block.decode_kernels` (the q/k/v kernels as one, w_out transposed) are
  computed before a sampler's decode loop, not in each step: built in the
  loop, they cost a copy of those weights per layer and token (built inside
  the layers' scan, generation at 8 x 512, batch 1, ran 3.7x slower)."""
  config = tiny_config(max_seq_len=64, scan_layers=scan_layers)
  hlo, _ = compiled_decode_loop(config)
  lead = (config.num_layers,) if scan_layers else ()
  heads, kv = config.num_heads, config.d_model // config.num_heads
  kernels = {"qkv": [(config.d_model, heads, 3, kv), (config.d_model, 3 * heads * kv)],
             "w_out_t": [(config.d_model, config.d_ff)]}

  def builds(line, kernel):
    return any(re.search(rf"= f32\[{','.join(map(str, lead + shape))}\]\S* "
                         r"(fusion|concatenate|transpose|copy)\(", line)
               for shape in kernels[kernel])

  lines, in_loop = hlo.splitlines(), while_bodies(hlo)
  for kernel in kernels:
    assert any(builds(line, kernel) for line in lines), f"{kernel} is not built at all"
    assert not [line for line in in_loop if builds(line, kernel)], f"{kernel} is built in the loop"


@pytest.mark.parametrize("prefix", [False, True])
def test_decode_long_prefill_chunk_and_steps_match_forward(prefix):
  """Each path of `decode_attention`: a prefill into the empty cache long
  enough for causal blocks (with a bidirectional prefix: full attention), a
  chunk over the filled cache, then single steps."""
  graphdef, params = split_model(tiny_config(max_seq_len=160))
  batch, prompt_len, chunk, length = 2, 130, 12, 145
  tokens = random_tokens(2, (batch, length))
  prefix_len = jnp.array([40, 129], jnp.int32) if prefix else None

  @jax.jit
  def both(params, tokens):
    model = nnx.merge(graphdef, params)
    full = model(tokens, attention="prefix" if prefix else "causal", prefix_len=prefix_len)
    cache, pieces = model.init_cache(batch, 160), []
    for start, stop in ((0, prompt_len), (prompt_len, prompt_len + chunk),
                        *((i, i + 1) for i in range(prompt_len + chunk, length))):
      positions = jnp.broadcast_to(jnp.arange(start, stop, dtype=jnp.int32), (batch, stop - start))
      logits, cache = model.decode(tokens[:, start:stop], positions, cache, prefix_len)
      pieces.append(logits)
    return full, jnp.concatenate(pieces, axis=1)

  full, cached = both(params, tokens)
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


@pytest.mark.parametrize("time_conditioning,scan_layers", [(False, False), (True, False),
                                                            (True, True)])
def test_every_param_has_logical_partition_spec(time_conditioning, scan_layers):
  config = tiny_config(time_conditioning=time_conditioning, scan_layers=scan_layers)
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
    assert set(spec) <= LOGICAL_AXES | {LAYERS}, (path, spec)
    assert (spec[0] == LAYERS) == (scan_layers and path[0] == "blocks"), (path, spec)
  assert flat_specs[("embed",)].get_value() == PartitionSpec("vocab", "embed")
  assert flat_specs[("head",)].get_value() == PartitionSpec("embed", "vocab")
  if not scan_layers:
    wq = flat_specs[("blocks", 0, "attn", "wq")].get_value()
    assert wq == PartitionSpec("embed", "heads", "kv")
    return
  assert flat_specs[("blocks", "attn", "wq")].get_value() == PartitionSpec(
      LAYERS, "embed", "heads", "kv")
  assert shapes[("blocks", "attn", "wq")].get_value().shape == (2, 32, 4, 8)
  # The rules name no mesh axis for 'layers': stacked parameters are replicated
  # along it and sharded as usual along the others.
  mesh = sharding.make_mesh((1, -1, 1))
  shardings = sharding.state_shardings(state, mesh, sharding.preset("fsdp")["rules"])
  assert shardings["blocks"]["attn"]["wq"].get_value().spec == PartitionSpec(
      None, "fsdp", None, None)


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
  with pytest.raises(ValueError, match="param_dtype"):
    tiny_config(param_dtype="float16")
  with pytest.raises(ValueError, match="dots_saveable"):
    tiny_config(remat="dots")
  timed = Transformer(tiny_config(time_conditioning=True), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="time_conditioning"):
    timed(jnp.zeros((1, 4), jnp.int32), attention="bidirectional")


def test_scanned_layers_match_unscanned_with_the_same_weights():
  """Stacking an unscanned model's block parameters gives the scanned model the
  same logits (every attention mode, time conditioning) and the same greedy
  AR samples, with and without the stacked KV cache."""
  config = tiny_config(num_layers=3, time_conditioning=True)
  scanned_config = dataclasses.replace(config, scan_layers=True)
  graphdef, params = split_model(config)
  scanned_graphdef, scanned_params = split_model(scanned_config, seed=1)
  scanned_params = stack_blocks(params, scanned_params, config.num_layers)
  tokens = random_tokens(6, (2, 12))
  kwargs = dict(time=jnp.array([0.3, 0.8]), prefix_len=jnp.array([4, 9], jnp.int32),
                attention="prefix")

  @jax.jit
  def forward(params, scanned_params):
    return (nnx.merge(graphdef, params)(tokens, **kwargs),
            nnx.merge(scanned_graphdef, scanned_params)(tokens, **kwargs))

  want, got = forward(params, scanned_params)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

  config, scanned_config = (dataclasses.replace(c, time_conditioning=False)
                            for c in (config, scanned_config))
  graphdef, params = split_model(config)
  scanned_graphdef, scanned_params = split_model(scanned_config)
  scanned_params = stack_blocks(params, scanned_params, config.num_layers)
  prompt = random_tokens(7, (3, 4))
  ar = dict(max_new_tokens=10, eos_id=31, pad_id=0, temperature=0.0)
  want = autoregressive.sample(model_fns(graphdef, config), params, prompt, jax.random.key(0),
                               **ar).tokens
  scanned_fns = model_fns(scanned_graphdef, scanned_config)
  cache = scanned_fns.init_cache(3, 14)
  assert [b.shape for b in cache["k"]] == [(3, 3, 4, 8, 14)]  # Keys transposed.
  assert [b.shape for b in cache["v"]] == [(3, 3, 4, 14, 8)]
  for use_kv_cache in (True, False):
    got = autoregressive.sample(scanned_fns, scanned_params, prompt, jax.random.key(0),
                                use_kv_cache=use_kv_cache, **ar).tokens
    np.testing.assert_array_equal(got, want)


POLICY_ORDER = ("none", "dots_saveable", "dots_with_no_batch_dims_saveable", "full")


def remat_loss(remat, **overrides):
  """(loss of params, params) of a tiny model with this remat policy."""
  tokens = random_tokens(8, (2, 10))
  graphdef, params = split_model(tiny_config(remat=remat, **overrides))

  def loss(params):
    logits = nnx.merge(graphdef, params)(tokens[:, :-1])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1))

  return loss, params


def assert_policies_save_fewer_in_order(**overrides):
  """Each policy of POLICY_ORDER saves fewer residuals for the backward pass
  than the one before it."""
  def count(remat):
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
      print_saved_residuals(*remat_loss(remat, **overrides))
    return sum("from the argument" not in line for line in printed.getvalue().splitlines())

  counts = [count(remat) for remat in POLICY_ORDER]
  assert counts == sorted(counts, reverse=True) and len(set(counts)) == 4, counts


@pytest.mark.parametrize("scan_layers", [False, True])
def test_remat_policies_keep_loss_and_gradients(scan_layers):
  """Every policy gives 'none''s loss and gradients, and each saves fewer
  residuals for the backward pass than the one before it in
  none > dots_saveable > dots_with_no_batch_dims_saveable > full (the dot
  policies see the matmuls behind `mixed_einsum`'s custom VJP)."""
  assert_policies_save_fewer_in_order(scan_layers=scan_layers)

  def loss_and_grads(remat):
    loss, params = remat_loss(remat, scan_layers=scan_layers)
    return jax.jit(jax.value_and_grad(loss))(params)

  want_loss, want_grads = loss_and_grads("none")
  for remat in REMAT_POLICIES:
    got_loss, got_grads = loss_and_grads(remat)
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6, err_msg=remat)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, atol=1e-6, rtol=1e-5,
                                                        err_msg=remat), got_grads, want_grads)


def test_dot_policies_see_the_bfloat16_matmuls():
  """In bfloat16 compute with float32 parameters each matmul casts its weight
  inside `mixed_einsum`; the dot policies still see the matmul behind the
  cast, so they save fewer residuals than 'none' and more than 'full'."""
  assert_policies_save_fewer_in_order(dtype="bfloat16")


def test_bfloat16_params_hold_the_model_and_its_optimizer_state():
  graphdef, params = split_model(tiny_config(param_dtype="bfloat16", scan_layers=True))
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  logits = jax.jit(lambda p, t: nnx.merge(graphdef, p)(t))(params, random_tokens(9, (2, 8)))
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
  config = base_config()
  config.model.update(num_layers=2, d_model=32, num_heads=2, d_ff=64, param_dtype="bfloat16")
  config.mesh.shape = (1,)
  from tokjax.experiment import Experiment  # Imported here: it pulls in the data pipeline.
  state = Experiment.create(config).abstract_state
  assert {x.dtype for x in jax.tree.leaves(state["params"])} == {jnp.dtype(jnp.bfloat16)}
  moments = [x for x in jax.tree.leaves(state["opt_state"]) if x.ndim]
  assert moments and {x.dtype for x in moments} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize("objective", ["electra", "multi_token"])
def test_models_wrapping_the_backbone_train_with_scanned_layers(objective):
  """ElectraModel (a shared, projected embedding) and MultiTokenModel (the
  trunk's `hidden`) build and differentiate on scanned, rematerialised,
  bfloat16-parameter backbones; the multi-token extra heads follow param_dtype."""
  tok = ByteTokenizer()
  obj = (Electra(pad_id=tok.pad_id, num_bytes=256, mask_id=tok.mask_id, mask_ratio=0.3)
         if objective == "electra" else
         MultiToken(pad_id=tok.pad_id, num_bytes=256, num_predict=2, head_weights=(1.0, 0.5)))
  config = TransformerConfig(vocab_size=tok.vocab_size, num_layers=2, d_model=32, num_heads=2,
                             d_ff=64, max_seq_len=16, scan_layers=True, remat="full",
                             param_dtype="bfloat16")
  graphdef, params = nnx.split(obj.build_model(config, nnx.Rngs(0)))
  if objective == "multi_token":
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
  tokens = random_tokens(10, (4, 16), vocab=200)

  @jax.jit
  def loss_and_grads(params):
    return jax.value_and_grad(
        lambda p: obj.loss(nnx.merge(graphdef, p), tokens, jax.random.key(0))[0])(params)

  loss, grads = loss_and_grads(params)
  assert np.isfinite(loss)
  assert all(np.isfinite(np.asarray(g, np.float32)).all() for g in jax.tree.leaves(grads))
  assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_model_config_section_is_every_user_setting_with_its_default():
  section = base_config().model.to_dict()
  fields = {f.name: f.default for f in dataclasses.fields(TransformerConfig)}
  assert section == {k: v for k, v in fields.items()
                     if k not in ("vocab_size", "max_seq_len", "time_conditioning")}
  assert TransformerConfig(vocab_size=8, **section) == TransformerConfig(vocab_size=8)
