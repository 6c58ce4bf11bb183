"""AR decoding: ragged prompts, stop sequences, the rolling KV cache with
attention sinks (StreamingLLM), and what `bind` makes of the settings."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tokjax.data.tokenizer import ByteTokenizer
from tokjax.models import Transformer, TransformerConfig
from tokjax.samplers import ModelFns, SamplingSpec, autoregressive, model_fns

PAD, EOS = 30, 31  # Of the tiny models' 32 ids.


@functools.cache
def tiny_model(num_layers=2, kv_block_len=4):
  """Its KV caches come in blocks of kv_block_len slots (several per cache)."""
  config = TransformerConfig(vocab_size=32, num_layers=num_layers, d_model=32, num_heads=4,
                             d_ff=64, max_seq_len=16, kv_block_len=kv_block_len)
  graphdef, params = nnx.split(Transformer(config, rngs=nnx.Rngs(0)))
  return model_fns(graphdef, config), params


@functools.cache
def jitted_forward(fns):
  return jax.jit(fns.forward, static_argnames="attention")


def left_aligned(prompts, length):
  """int32[len(prompts), length]: each prompt at columns 0.., PAD after."""
  rows = np.full((len(prompts), length), PAD, np.int32)
  for b, p in enumerate(prompts):
    rows[b, :len(p)] = p
  return rows


def left_padded(prompts):
  """int32[len(prompts), longest]: each prompt right-aligned after PAD."""
  return left_aligned([p[::-1] for p in prompts], max(map(len, prompts)))[:, ::-1].copy()


def greedy_alone(fns, params, prompts, steps, prefix=False):
  """Each prompt decoded greedily on its own (EOS excluded) by full forwards
  over left-aligned rows, positions 0.. (causal: the tail is irrelevant)."""
  rows = left_aligned(prompts, max(map(len, prompts)) + steps)
  ends = np.array([len(p) for p in prompts])
  kwargs = dict(attention="prefix", prefix_len=jnp.asarray(ends.copy())) if prefix else {}
  for _ in range(steps):
    logits = np.asarray(jitted_forward(fns)(params, jnp.asarray(rows), **kwargs))
    logits = logits[np.arange(len(prompts)), ends - 1]
    logits[:, EOS] = -np.inf
    rows[np.arange(len(prompts)), ends] = logits.argmax(-1)
    ends += 1
  return np.stack([rows[b, len(p):len(p) + steps] for b, p in enumerate(prompts)])


PROMPTS = [[1, 2, 3, 4, 5], [7, 8, 9], [4, 5], [6]]


@pytest.mark.parametrize("mode", ["cache", "no_cache", "rolling", "prefix", "prefix_no_cache"])
def test_ragged_rows_decode_as_each_prompt_alone(mode):
  """Left-padded prompts of lengths 5, 3, 2, 1 give, row by row, the greedy
  tokens of each prompt decoded alone, with or without the KV cache, with a
  rolling cache whose sinks + window hold every token (then nothing is
  evicted: the plain cache's tokens), and as a prefix LM."""
  fns, params = tiny_model()
  steps = 8
  kwargs = dict(max_new_tokens=steps, eos_id=EOS, pad_id=PAD, temperature=0.0,
                forbidden_ids=(EOS,), use_kv_cache="no_cache" not in mode,
                prefix_attention=mode.startswith("prefix"))
  if mode == "rolling":
    kwargs.update(sinks=4, window=5 + steps - 4)
  prompt = left_padded(PROMPTS)
  out = autoregressive.sample(fns, params, prompt, jax.random.key(0), **kwargs)
  np.testing.assert_array_equal(out.tokens[:, :5], prompt)
  alone = greedy_alone(fns, params, PROMPTS, steps, prefix=kwargs["prefix_attention"])
  np.testing.assert_array_equal(out.tokens[:, 5:], alone)
  assert int(out.nfe) == steps


def counting_fns(vocab):
  """Toy model: the next token is always (current token + 1) mod vocab."""

  def forward(params, tokens, **kwargs):
    return 30.0 * jax.nn.one_hot((tokens + 1) % vocab, vocab)

  def decode(params, tokens, positions, cache, **kwargs):
    return forward(params, tokens), cache

  return ModelFns(forward, decode, lambda batch, length: jnp.zeros(()), None)


@pytest.mark.parametrize("use_kv_cache", [True, False])
def test_stop_sequences_end_rows_and_only_generated_tokens_count(use_kv_cache):
  """Rows stop once their generated tokens end with (3, 4) or (7,); the stop
  sequence stays, PAD follows. Row 0's prompt ends with 3 and its first new
  token is 4: no stop, as the 3 is not generated."""
  prompt = jnp.array([[2, 3], [5, 6], [0, 1]], jnp.int32)
  out = autoregressive.sample(counting_fns(10), None, prompt, jax.random.key(0), eos_id=8,
                              pad_id=9, max_new_tokens=6, stop_ids=((3, 4), (7,)),
                              use_kv_cache=use_kv_cache)
  assert out.tokens.tolist() == [[2, 3, 4, 5, 6, 7, 9, 9], [5, 6, 7, 9, 9, 9, 9, 9],
                                 [0, 1, 2, 3, 4, 9, 9, 9]]
  assert int(out.nfe) == 4


def ring_decode_logits(fns, params, tokens, sinks, window):
  """float32[len, batch, vocab]: decoding tokens int32[batch, len] one by one
  through a rolling cache of sinks + window slots (`autoregressive.ring_slots`)."""

  @jax.jit
  def decode(params, token, t, cache):
    positions, kwargs = autoregressive.ring_slots(jnp.full(token.shape[:1], t), sinks, window)
    logits, cache = fns.decode(params, token, positions, cache, **kwargs)
    return logits[:, 0], cache

  cache, out = fns.init_cache(tokens.shape[0], sinks + window), []
  for t in range(tokens.shape[1]):
    logits, cache = decode(params, jnp.asarray(tokens[:, t:t + 1]), t, cache)
    out.append(np.asarray(logits))
  return np.stack(out)


def streaming_logits(fns, params, tokens, sinks, window):
  """The StreamingLLM definition (Xiao et al. 2024, Sec. 3.2): after token t,
  a full forward over the sinks and the last `window` tokens at positions
  0..n-1 (n <= sinks + window), its last logits; float32[len, batch, vocab]."""
  size, (batch, length) = sinks + window, tokens.shape
  contexts = np.full((length, batch, size), PAD, np.int32)
  last = np.zeros(length, int)
  for t in range(length):
    kept = np.concatenate([tokens[:, :min(sinks, t + 1)],
                           tokens[:, max(sinks, t + 1 - window):t + 1]], axis=1)
    contexts[t, :, :kept.shape[1]], last[t] = kept, kept.shape[1] - 1
  logits = jitted_forward(fns)(params, jnp.asarray(contexts.reshape(-1, size)))
  logits = np.asarray(logits).reshape(length, batch, size, -1)
  return logits[np.arange(length), :, last]


def test_rolling_cache_is_streaming_llm_attention():
  """One layer (keys are then functions of the token and its position alone):
  every step of the rolling cache (sinks 2, window 5; 3 prompt + 30 new
  tokens, so the ring wraps 4 times) gives the logits of a full forward over
  [sinks + last window tokens] at positions 0..S-1, and the sampler's greedy
  tokens are their argmax. Cache blocks of one slot: the sinks span two."""
  fns, params = tiny_model(num_layers=1, kv_block_len=1)
  sinks, window = 2, 5
  prompt = jnp.array([[1, 2, 3], [PAD, 4, 5]], jnp.int32)  # Row 1: a 2-token prompt.
  out = autoregressive.sample(fns, params, prompt, jax.random.key(0), max_new_tokens=30,
                              eos_id=EOS, pad_id=PAD, temperature=0.0, forbidden_ids=(EOS,),
                              sinks=sinks, window=window)
  tokens = np.asarray(out.tokens)
  rows = np.stack([tokens[0, :-1], tokens[1, 1:]])  # Each row from its own first token.
  rolled = ring_decode_logits(fns, params, rows, sinks, window)
  want = streaming_logits(fns, params, rows, sinks, window)
  np.testing.assert_allclose(rolled, want, atol=2e-4, rtol=1e-4)
  want[..., EOS] = -np.inf
  for b, start in enumerate([2, 1]):  # Logits after the last prompt token, and on.
    np.testing.assert_array_equal(want[start:-1, b].argmax(-1), rows[b, start + 1:])


def test_long_generation_with_a_rolling_cache():
  """48 sampled tokens, 3x the model's max_seq_len of 16, through a cache of
  sinks + window = 10 slots: every row runs to the end with ids in range."""
  fns, params = tiny_model()
  prompt = jnp.array([[1, 2, 3], [PAD, PAD, 4]], jnp.int32)
  kwargs = dict(eos_id=EOS, pad_id=PAD, forbidden_ids=(EOS,), sinks=2, window=8,
                max_new_tokens=48)
  out = autoregressive.sample(fns, params, prompt, jax.random.key(1), **kwargs)
  tokens = np.asarray(out.tokens)
  assert tokens.shape == (2, 51) and int(out.nfe) == 48
  assert ((tokens >= 0) & (tokens < 32) & (tokens != EOS)).all()
  np.testing.assert_array_equal(tokens[:, :3], prompt)
  settings = autoregressive.ARSettings(
      **kwargs, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, precision="float32",
      use_kv_cache=True, prefix_attention=False, stop_ids=())
  state = jax.eval_shape(lambda p: autoregressive.init_state(fns, settings, p, prompt,
                                                             jax.random.key(0)), params)
  slots = [[b.shape[2] for b in layer] for layer in state.cache["v"]]  # [batch, heads, slots, kv]
  assert slots == [[4, 4, 2]] * 2


def test_bad_lengths_and_windows_raise_with_the_fix():
  fns, params = tiny_model()
  prompt = jnp.ones((1, 4), jnp.int32)
  kwargs = dict(eos_id=EOS, pad_id=PAD)
  with pytest.raises(ValueError, match=r"max_seq_len=16.*--sampler\.ar\.window="):
    autoregressive.sample(fns, params, prompt, None, max_new_tokens=13, **kwargs)
  with pytest.raises(ValueError, match="use_kv_cache"):
    autoregressive.sample(fns, params, prompt, None, window=8, use_kv_cache=False, **kwargs)
  with pytest.raises(ValueError, match="sinks \\+ window = 18 > the model's max_seq_len"):
    autoregressive.sample(fns, params, prompt, None, window=14, **kwargs)
  with pytest.raises(ValueError, match="must fit the rolling cache"):
    autoregressive.sample(fns, params, prompt, None, window=1, sinks=2, **kwargs)
  with pytest.raises(ValueError, match="stop_ids"):
    autoregressive.sample(fns, params, prompt, None, stop_sequences=("x",), **kwargs)


def test_bind_resolves_lengths_and_encodes_stop_sequences():
  tok, spec = ByteTokenizer(), SamplingSpec()
  settings = dict(max_new_tokens=0, temperature=1.0, top_k=0, top_p=1.0, min_p=0.1,
                  use_kv_cache=True, stop_sequences=("\n\n", "END"), window=0, sinks=4)
  kwargs = autoregressive.bind(settings, spec, tok, seq_len=32, prompt_len=5)
  assert kwargs["max_new_tokens"] == 27 and "stop_sequences" not in kwargs
  assert kwargs["stop_ids"] == ((10, 10), (69, 78, 68)) and kwargs["min_p"] == 0.1
  assert (kwargs["eos_id"], kwargs["pad_id"]) == (tok.eos_id, tok.pad_id)
  explicit = dict(settings, max_new_tokens=40)
  with pytest.raises(ValueError, match=r"5 \+ 40 > seq_len=32.*--sampler\.ar\.window="):
    autoregressive.bind(explicit, spec, tok, seq_len=32, prompt_len=5)
  rolling = autoregressive.bind(dict(explicit, window=16), spec, tok, seq_len=32, prompt_len=5)
  assert rolling["max_new_tokens"] == 40 and rolling["window"] == 16
  with pytest.raises(ValueError, match="empty string"):
    autoregressive.bind(dict(settings, stop_sequences=("",)), spec, tok, seq_len=32, prompt_len=5)
