"""Speculative decoding: a cheap drafter proposes tokens, the target verifies them in one forward.

Exact acceptance ("Fast Inference from Transformers via Speculative
Decoding", Leviathan et al. 2023, Alg. 1; "Accelerating Large Language Model
Decoding with Speculative Sampling", Chen et al. 2023, Alg. 2): draft token x
drawn from q is accepted with probability min(1, p(x) / q(x)); at the first
rejection the token is drawn from the normalised residual max(0, p - q); if all
k drafts are accepted one more is drawn from p. The output is distributed
exactly as autoregressive sampling from p; at temperature 0 (p and q point
masses at their argmax) it is plain greedy decoding, token for token.
Temperature, top-k, top-p and the forbidden ids shape p and q alike.

Drafters (`draft`):
  'model': a smaller model of the same tokenizer (`draft_workdir`), with its
    own KV cache, drafting k tokens autoregressively from its q.
  'multi_token': the checkpoint's own multi-token heads ("Better & Faster
    Large Language Models via Multi-token Prediction", Gloeckle et al. 2024,
    Sec. 3.2): the hidden state at the last accepted position gives, through
    heads 2..k+1, q for the k tokens after the target's next one.
  'recycling': Token Recycling (Luo et al. 2024), a training-free tree of
    candidates from an adjacency matrix, verified with tree attention
    (`token_recycling`).

Everything runs as one `jax.lax.while_loop` (one compiled program per models
and settings). Rows accept different counts, so each row keeps its own
position `pos` (tokens before it are committed) and the caches are written at
per-row slots (`write_at=int32[batch]`). Cache invariant: slot == position,
and slots 0..pos-2 hold every committed token but the last, tokens[pos - 1],
which each round feeds first. Rolling a cache back is free: slots past a
row's position are hidden by the attention mask and overwritten later.
"""
from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from tokjax.models import kv_cache
from tokjax.samplers import token_recycling as tr
from tokjax.samplers.autoregressive import resolve_max_new_tokens
from tokjax.samplers.categorical import check_filters, filtered_logits
from tokjax.samplers.base import ModelFns, SampleOutput, forbid, model_fns, run_loop, run_sampler

# The user's settings, `config.sampler.speculative`; their defaults are `sample`'s.
SETTINGS = ("draft", "draft_workdir", "num_draft_tokens", "tree_width", "tree_depth",
            "max_new_tokens", "temperature", "top_k", "top_p", "min_p")
DRAFTERS = ("model", "multi_token", "recycling")


def bind(settings: dict, spec, tokenizer, *, seq_len: int, prompt_len: int) -> dict:
  """`sample`'s keyword arguments for a run: its settings plus what the run fixes.

  As `autoregressive.bind` (max_new_tokens 0 = up to seq_len; EOS, PAD and
  forbidden ids from the tokenizer and the objective's
  `SamplingSpec`); with draft='model' also draft_fns and draft_params, the
  draft run restored from settings['draft_workdir'].

  Raises:
    ValueError: a prefix LM, draft='model' without draft_workdir, a draft
      run whose tokenizer's vocab_size differs from the target's, or
      max_new_tokens that do not fit seq_len.
  """
  if spec.prefix_attention:
    raise ValueError("sampler.speculative drafts causally; for a prefix LM use --sampler.name=ar.")
  max_new_tokens = resolve_max_new_tokens(settings["max_new_tokens"], seq_len=seq_len,
                                          prompt_len=prompt_len, section="speculative")
  kwargs = dict(settings, max_new_tokens=max_new_tokens, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                forbidden_ids=tuple(spec.forbidden_ids))
  if settings["draft"] == "model":
    kwargs.update(load_draft(settings["draft_workdir"], tokenizer))
  return kwargs


def load_draft(workdir: str, tokenizer) -> dict:
  """{'draft_fns', 'draft_params'} of the draft run in `workdir` (`restore.load_run`).

  Raises:
    ValueError: no workdir, or a vocabulary other than `tokenizer`'s.
  """
  if not workdir:
    raise ValueError("sampler.speculative.draft='model' needs the draft model's run: set "
                     "--config.sampler.speculative.draft_workdir=<workdir of a smaller model "
                     "trained with the same tokenizer>, or use draft='recycling' (no model).")
  from tokjax import restore  # Late: restore imports the config, which imports the samplers.
  exp, params, _ = restore.load_run(workdir)
  if exp.tokenizer.vocab_size != tokenizer.vocab_size:
    raise ValueError(
        f"The draft run {workdir!r} has vocab_size={exp.tokenizer.vocab_size} but the target "
        f"has vocab_size={tokenizer.vocab_size}; train the draft with the target's tokenizer "
        "(the same config.data settings).")
  return dict(draft_fns=draft_model_fns(exp.graphdef, exp.model_config), draft_params=params)


@functools.cache
def draft_model_fns(graphdef, model_config) -> ModelFns:
  """One `ModelFns` per draft model, so compiled programs are reused across calls."""
  return model_fns(graphdef, model_config)


class Models(NamedTuple):
  """The static model closures of one program: the target, and the draft model or None."""

  target: ModelFns
  draft: ModelFns | None


class SpecSettings(NamedTuple):
  """Static settings of one `sample` call (see `sample` for meanings)."""

  draft: str
  num_draft_tokens: int
  tree_width: int
  tree_depth: int
  max_new_tokens: int
  eos_id: int
  pad_id: int
  temperature: float
  top_k: int
  top_p: float
  min_p: float
  precision: str
  forbidden_ids: tuple[int, ...]


@struct.dataclass
class SpecState:
  """Loop state.

  Attributes:
    tokens: int32[batch, total_len + span] output buffer, pad_id from `pos`
      on; the span past total_len takes a last round's overflow.
    pos: int32[batch] committed tokens per row (at most total_len).
    done: bool[batch] whether the row has emitted eos_id.
    rng: PRNG key.
    cache: the target's KV cache (slots 0..pos-2 valid per row).
    draft: the drafter's state: the draft model's KV cache ('model'), the
      next round's q logits float32[batch, k, vocab] ('multi_token'), or the
      adjacency matrix int32[vocab, tree_width] ('recycling').
    stats: int32[4] rounds, row rounds (active rows summed over rounds),
      accepted and proposed draft tokens (active rows).
  """

  tokens: jax.Array
  pos: jax.Array
  done: jax.Array
  rng: jax.Array
  cache: Any
  draft: Any
  stats: jax.Array


def sample(
    fns: ModelFns,
    params: Any,
    prompt: jax.Array,
    rng: jax.Array,
    *,
    eos_id: int,
    pad_id: int,
    draft: str = "recycling",
    draft_workdir: str = "",
    num_draft_tokens: int = 4,
    tree_width: int = 4,
    tree_depth: int = 4,
    max_new_tokens: int = 0,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    precision: str = "float32",
    forbidden_ids: tuple[int, ...] = (),
    draft_fns: ModelFns | None = None,
    draft_params: Any = None,
    debug: bool = False,
    on_step: Callable[[SpecState], None] | None = None,
) -> SampleOutput:
  """Samples continuations of `prompt` by speculative decoding.

  Args:
    fns: the target's closures; `decode` and `init_cache` are needed, and
      `decode_drafts` with draft='multi_token'.
    params: the target's parameters.
    prompt: int32[batch, prompt_len], prompt_len >= 1, kept verbatim.
    rng: PRNG key.
    eos_id: a row stops after emitting it; pad_id fills the rest of the row.
    draft: 'model' | 'multi_token' | 'recycling' (see the module docstring).
    draft_workdir: the draft run, read by `bind` (which passes draft_fns and
      draft_params); unused here.
    num_draft_tokens: k, draft tokens per round ('model', 'multi_token'; at
      most the number of extra heads with 'multi_token').
    tree_width, tree_depth: the 'recycling' tree (`token_recycling.draft_tree`).
    max_new_tokens: tokens to generate per row; 0 = up to the target's
      max_seq_len.
    temperature, top_k, top_p, min_p, precision: as `categorical.sample_categorical`,
      applied to the target's p and the drafter's q alike.
    forbidden_ids: ids drawn with probability 0.
    draft_fns, draft_params: the draft model's closures and parameters
      (draft='model').
    debug: a Python loop instead of `jax.lax.while_loop` in `jax.jit`.
    on_step: with debug=True, called with the `SpecState` after every round.

  Returns:
    SampleOutput: tokens int32[batch, prompt_len + max_new_tokens], and nfe,
    the target forward calls (rounds) in the loop. `sample_with_stats` also
    gives the acceptance statistics.

  Raises:
    ValueError: a bad prompt shape or setting, a model too short for the
      output, a drafter the models cannot serve (draft='model' without
      draft_fns; 'multi_token' without extra heads or with more draft tokens
      than extra heads), or on_step without debug.
  """
  return sample_with_stats(
      fns, params, prompt, rng, eos_id=eos_id, pad_id=pad_id, draft=draft,
      num_draft_tokens=num_draft_tokens, tree_width=tree_width, tree_depth=tree_depth,
      max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
      min_p=min_p, precision=precision, forbidden_ids=forbidden_ids, draft_fns=draft_fns,
      draft_params=draft_params, debug=debug, on_step=on_step, draft_workdir=draft_workdir)[0]


def sample_with_stats(fns: ModelFns, params: Any, prompt: jax.Array, rng: jax.Array, *,
                      draft_fns: ModelFns | None = None, draft_params: Any = None,
                      debug: bool = False, on_step=None, draft_workdir: str = "",
                      **settings) -> tuple[SampleOutput, dict]:
  """`sample` (same arguments), plus its acceptance statistics.

  Returns:
    (SampleOutput, {'rounds': target forwards, 'row_rounds': rounds summed
    over the rows still generating, 'accepted_draft_tokens',
    'proposed_draft_tokens': draft tokens accepted / proposed in those rows
    (a 'recycling' round proposes its T - 1 tree nodes)}), int32[] each;
    `summarize` turns them into rates.
  """
  del draft_workdir  # Read by `bind`.
  prompt = jnp.asarray(prompt, jnp.int32)
  if not settings.get("max_new_tokens") and fns.max_seq_len is not None and prompt.ndim == 2:
    settings["max_new_tokens"] = fns.max_seq_len - prompt.shape[1]
  s = _settings(**settings)
  models = Models(fns, draft_fns if s.draft == "model" else None)
  _validate(models, prompt, s, draft_params)
  both = (params, draft_params if s.draft == "model" else None)
  out, stats = run_sampler(_generate, models, s, both, prompt, rng, debug=debug, on_step=on_step)
  names = ("rounds", "row_rounds", "accepted_draft_tokens", "proposed_draft_tokens")
  return out, dict(zip(names, stats))


def summarize(stats: dict) -> dict:
  """{'acceptance_rate': accepted / proposed draft tokens, 'tokens_per_round':
  mean tokens a row commits per target forward (accepted + 1)} as floats."""
  accepted, rows = int(stats["accepted_draft_tokens"]), max(int(stats["row_rounds"]), 1)
  return dict(acceptance_rate=accepted / max(int(stats["proposed_draft_tokens"]), 1),
              tokens_per_round=1 + accepted / rows)


def _settings(*, eos_id, pad_id, draft="recycling", num_draft_tokens=4, tree_width=4,
              tree_depth=4, max_new_tokens=0, temperature=1.0, top_k=0, top_p=1.0, min_p=0.0,
              precision="float32", forbidden_ids=()) -> SpecSettings:
  return SpecSettings(draft, num_draft_tokens, tree_width, tree_depth, max_new_tokens, eos_id,
                      pad_id, temperature, top_k, top_p, min_p, precision,
                      tuple(int(i) for i in forbidden_ids))


# ------------------------------------------------------------------ the loop


def _generate(models: Models, s: SpecSettings, params, prompt, rng, *, debug=False, on_step=None):
  total_len = prompt.shape[1] + s.max_new_tokens
  state = _init_state(models, s, params, prompt, rng)
  if s.draft == "recycling":
    step = _tree_round(models.target, s, params[0], total_len)
  else:
    step = _chain_round(models, s, params, total_len)
  state = run_loop(lambda st: jnp.any(_active(st, total_len)), step, state, debug=debug,
                   on_step=on_step)
  return SampleOutput(state.tokens[:, :total_len], state.stats[0]), state.stats


def _span(s: SpecSettings) -> int:
  """Tokens the target reads per round: the last committed one plus the drafts."""
  if s.draft == "recycling":
    return tr.draft_tree(s.tree_width, s.tree_depth).size
  return s.num_draft_tokens + 1


def _init_state(models: Models, s: SpecSettings, params, prompt, rng) -> SpecState:
  """The output buffer, the caches prefilled with prompt[:, :-1], and the drafter's state."""
  batch, prompt_len = prompt.shape
  total_len = prompt_len + s.max_new_tokens
  commit_span = s.tree_depth + 1 if s.draft == "recycling" else s.num_draft_tokens + 1
  tokens = jnp.full((batch, total_len + commit_span), s.pad_id, jnp.int32)
  tokens = tokens.at[:, :prompt_len].set(prompt)
  cache_len = total_len + _span(s) - 1  # The last round's window may reach past total_len.
  cache = _new_cache(models.target, batch, cache_len)
  prefix, positions = prompt[:, :-1], _arange(batch, 0, prompt_len - 1)
  if s.draft == "multi_token":
    draft = _init_heads(models.target, s, params[0], prefix, positions, cache)
    if prompt_len > 1:
      _, heads, cache = models.target.decode_drafts(params[0], prefix, positions, cache)
      draft = _next_q(heads, jnp.full((batch,), prompt_len - 2, jnp.int32), s.num_draft_tokens)
  else:
    logits = None
    if prompt_len > 1:
      logits, cache = models.target.decode(params[0], prefix, positions, cache)
    if s.draft == "model":
      draft = _new_cache(models.draft, batch, cache_len)
      if prompt_len > 1:
        _, draft = models.draft.decode(params[1], prefix, positions, draft)
    else:
      draft = _init_adjacency(models.target, s, params[0], prefix, logits)
  return SpecState(tokens, jnp.full((batch,), prompt_len, jnp.int32), jnp.zeros((batch,), bool),
                   rng, cache, draft, jnp.zeros((4,), jnp.int32))


def _init_heads(fns, s, params, prefix, positions, cache) -> jax.Array:
  """Uniform q float32[batch, k, vocab] (any q not looking ahead keeps acceptance exact);
  raises unless the model has at least k extra heads."""
  one = jnp.zeros((prefix.shape[0], 1), jnp.int32)
  heads = jax.eval_shape(lambda p, c: fns.decode_drafts(p, one, one, c)[1], params, cache)
  if heads.shape[0] < s.num_draft_tokens:
    raise ValueError(
        f"num_draft_tokens={s.num_draft_tokens} but the model has {heads.shape[0]} extra heads "
        f"(objective=multi_token with num_predict={heads.shape[0] + 1}); draft='multi_token' "
        f"proposes at most num_predict - 1 tokens per round.")
  return jnp.zeros((prefix.shape[0], s.num_draft_tokens, heads.shape[-1]), jnp.float32)


def _init_adjacency(fns, s, params, prefix, logits) -> jax.Array:
  """int32[vocab, tree_width], refreshed from the prefill's logits if any."""
  vocab = _vocab(fns, params)
  if s.tree_width > vocab:
    raise ValueError(f"tree_width={s.tree_width} exceeds the vocabulary ({vocab} tokens).")
  adjacency = tr.init_adjacency(vocab, s.tree_width)
  if logits is None:
    return adjacency
  return tr.update_adjacency(adjacency, prefix, forbid(logits, s.forbidden_ids))


def _chain_round(models: Models, s: SpecSettings, params, total_len: int):
  """One round of 'model' / 'multi_token': k drafts, one target forward over
  the last token and the drafts (q_len = k + 1), Leviathan acceptance."""
  k = s.num_draft_tokens

  def step(state: SpecState) -> SpecState:
    batch, vocab = state.tokens.shape[0], _vocab(models.target, params[0])
    rng, (draft_u, accept_u, final_u) = _uniforms(state.rng, s, (k, batch, vocab), (batch, k),
                                                  (batch, vocab))
    drafts, q_logits, draft = _propose(models, s, params, state, draft_u)
    logits, heads, cache = _score_chain(models.target, s, params[0], state, drafts)
    new, accepted = _verify_chain(logits, q_logits, drafts, accept_u, final_u, s)
    if s.draft == "multi_token":
      draft = _next_q(heads, accepted, k)
    state = state.replace(rng=rng, cache=cache, draft=draft)
    return _commit(state, new, accepted, s, total_len, proposed=k)

  return step


def _propose(models: Models, s: SpecSettings, params, state: SpecState, uniforms):
  """(drafts int32[batch, k], their q logits float32[batch, k, vocab], the
  draft model's cache or None); uniforms float[k, batch, vocab] or None."""
  if s.draft == "model":
    return _propose_with_model(models.draft, s, params[1], state, uniforms)
  u = None if uniforms is None else uniforms.transpose(1, 0, 2)
  return _draw(_scores(state.draft, s), u, s), state.draft, None


def _score_chain(fns: ModelFns, s: SpecSettings, params, state: SpecState, drafts):
  """The target on the last committed token and the drafts, written at slots
  pos - 1 .. pos + k - 1: (logits float32[batch, k + 1, vocab], the extra
  heads' logits float32[n - 1, batch, k + 1, vocab] or None, cache)."""
  last = _take(state.tokens, state.pos - 1)
  window = jnp.concatenate([last[:, None], drafts], axis=1)
  positions = _arange(window.shape[0], state.pos - 1, window.shape[1])
  if s.draft == "multi_token":
    return fns.decode_drafts(params, window, positions, state.cache, write_at=state.pos - 1)
  logits, cache = fns.decode(params, window, positions, state.cache, write_at=state.pos - 1)
  return logits, None, cache


def _propose_with_model(fns: ModelFns, s: SpecSettings, params, state: SpecState, uniforms):
  """k draft tokens from the draft model's q, and its cache.

  The draft cache holds every committed token but the last one or two (the
  last, if the previous round rejected a draft; else also the final draft,
  never fed): one q_len=2 decode of tokens[pos-2 : pos] catches up and gives
  q_1, then k - 1 q_len=1 decodes of d_1 .. d_{k-1} give q_2 .. q_k.

  uniforms: float[k, batch, vocab] for the draws (None with temperature 0).

  Returns:
    (drafts int32[batch, k], q logits float32[batch, k, vocab], draft cache).
  """
  k, pos = s.num_draft_tokens, state.pos
  start = jnp.maximum(pos - 2, 0)  # With one committed token, slot 1 gets junk, overwritten below.
  window = _take(state.tokens, start[:, None] + jnp.arange(2, dtype=jnp.int32))
  logits, cache = fns.decode(params, window, _arange(pos.shape[0], start, 2), state.draft,
                             write_at=start)
  first = _take(logits, pos - 1 - start)
  if uniforms is None:
    uniforms = jnp.zeros((k, 0))  # Scanned over but unused.

  def draft_one(carry, xs):
    cache, logits = carry
    u, i = xs
    token = _draw(_scores(logits, s), u if s.temperature else None, s)
    logits_next, cache = fns.decode(params, token[:, None], (pos + i)[:, None], cache,
                                    write_at=pos + i)
    return (cache, logits_next[:, 0]), (token, logits)

  (cache, last), (tokens, q) = jax.lax.scan(draft_one, (cache, first),
                                            (uniforms[:-1], jnp.arange(k - 1, dtype=jnp.int32)))
  final = _draw(_scores(last, s), uniforms[-1] if s.temperature else None, s)
  drafts = jnp.concatenate([tokens.T, final[:, None]], axis=1)
  return drafts, jnp.concatenate([q.transpose(1, 0, 2), last[:, None]], axis=1), cache


def _next_q(heads: jax.Array, accepted: jax.Array, k: int) -> jax.Array:
  """float32[batch, k, vocab]: heads 2..k+1 (heads float32[n-1, batch, q_len,
  vocab]) at window index `accepted` int32[batch], the last accepted token's
  position: q for the k tokens after the one the target draws there."""
  at = jnp.take_along_axis(heads[:k], accepted[None, :, None, None], axis=2)[:, :, 0]
  return at.transpose(1, 0, 2)


def _verify_chain(p_logits, q_logits, drafts, accept_u, final_u, s: SpecSettings):
  """Leviathan et al. 2023, Alg. 1, per row.

  Args:
    p_logits: float32[batch, k + 1, vocab] the target's logits at the last
      token and each draft.
    q_logits: float32[batch, k, vocab] the drafter's logits for each draft.
    drafts: int32[batch, k].
    accept_u: float[batch, k], final_u: float[batch, vocab] U(0, 1) draws
      (None with temperature 0).

  Returns:
    (new int32[batch, k + 1]: the accepted drafts, then the drawn token, then
    pad_id; accepted int32[batch]: the number of accepted drafts).
  """
  k = drafts.shape[1]
  p, q = _scores(p_logits, s), _scores(q_logits, s)
  if s.temperature == 0:
    best = jnp.argmax(p, axis=-1).astype(jnp.int32)
    accepted = _leading(drafts == best[:, :k])
    token = _take(best, accepted)
  else:
    p_draft = jnp.take_along_axis(p[:, :k], drafts[..., None], axis=-1)[..., 0]
    q_draft = jnp.take_along_axis(q, drafts[..., None], axis=-1)[..., 0]
    accepted = _leading(accept_u * q_draft < p_draft)
    p_at = _take(p, accepted)
    residual = jnp.maximum(p_at - _take(q, jnp.minimum(accepted, k - 1)), 0)
    use_residual = (accepted < k) & (jnp.sum(residual, axis=-1) > 0)
    token = _draw(jnp.where(use_residual[:, None], residual, p_at), final_u, s)
  index = jnp.arange(k + 1, dtype=jnp.int32)
  padded = jnp.pad(drafts, ((0, 0), (0, 1)), constant_values=s.pad_id)
  new = jnp.where(index < accepted[:, None], padded,
                  jnp.where(index == accepted[:, None], token[:, None], s.pad_id))
  return new, accepted


def _tree_round(fns: ModelFns, s: SpecSettings, params, total_len: int):
  """One Token Recycling round: fill the tree from the adjacency matrix,
  verify it in one tree-attention forward, pack the accepted path's keys and
  values to consecutive slots (`token_recycling.pack_path`), refresh the
  matrix from every node's logits."""
  tree = tr.draft_tree(s.tree_width, s.tree_depth)
  depths = jnp.asarray(tree.depths, jnp.int32)

  def step(state: SpecState) -> SpecState:
    batch, vocab = state.tokens.shape[0], state.draft.shape[0]
    rng, (uniforms, final_u) = _uniforms(state.rng, s, (tree.depth, tree.width, batch),
                                         (batch, vocab))
    start = state.pos - 1  # The root: the last committed token, at its position.
    tokens = tr.fill_tree(tree, state.draft, _take(state.tokens, start))
    mask = tr.tree_kv_mask(tree, start, kv_cache.cache_len(state.cache))
    logits, cache = fns.decode(params, tokens, start[:, None] + depths, state.cache,
                               write_at=start, kv_mask=mask)
    path, accepted, residual = tr.walk_tree(tree, tokens, _scores(logits, s), uniforms,
                                            s.temperature == 0)
    new = _path_tokens(tokens, path, accepted, _draw(residual, final_u, s), s.pad_id)
    state = state.replace(rng=rng, cache=tr.pack_path(cache, path, accepted, state.pos),
                          draft=tr.update_adjacency(state.draft, tokens,
                                                    forbid(logits, s.forbidden_ids)))
    return _commit(state, new, accepted, s, total_len, proposed=tree.size - 1)

  return step


def _path_tokens(tokens, path, accepted, token, pad_id: int) -> jax.Array:
  """int32[batch, D + 1]: the accepted path's tokens (tokens int32[batch, T]
  at nodes path int32[batch, D], the first accepted int32[batch]), then
  `token` int32[batch], then pad_id."""
  kept = jnp.arange(path.shape[1])[None, :] < accepted[:, None]
  new = jnp.concatenate([jnp.where(kept, _take(tokens, path), pad_id),
                         jnp.full_like(token[:, None], pad_id)], axis=1)
  return new.at[jnp.arange(new.shape[0]), accepted].set(token)


def _commit(state: SpecState, new, accepted, s: SpecSettings, total_len: int, *,
            proposed: int) -> SpecState:
  """Writes new[:, :accepted + 1] (int32[batch, span]) at each active row's
  pos, pads after an eos_id, advances pos (capped at total_len) and the stats."""
  active = _active(state, total_len)
  index = jnp.arange(new.shape[1], dtype=jnp.int32)
  new = jnp.where(active[:, None] & (index <= accepted[:, None]), new, s.pad_id)
  eos = (new == s.eos_id) & (index <= accepted[:, None]) & active[:, None]
  hit = jnp.any(eos, axis=1)
  new = jnp.where(hit[:, None] & (index > jnp.argmax(eos, axis=1)[:, None]), s.pad_id, new)
  tokens = jax.vmap(lambda row, row_new, at: jax.lax.dynamic_update_slice(row, row_new, (at,)))(
      state.tokens, new, state.pos)
  pos = jnp.where(active, jnp.minimum(state.pos + accepted + 1, total_len), state.pos)
  count = jnp.sum(active, dtype=jnp.int32)
  stats = state.stats + jnp.stack([
      jnp.int32(1), count, jnp.sum(jnp.where(active, accepted, 0), dtype=jnp.int32),
      count * proposed]).astype(jnp.int32)
  return state.replace(tokens=tokens, pos=pos.astype(jnp.int32), done=state.done | hit,
                       stats=stats)


# ------------------------------------------------------------------ helpers


def _active(state: SpecState, total_len: int) -> jax.Array:
  """bool[batch]: rows still generating."""
  return ~state.done & (state.pos < total_len)


def _scores(logits: jax.Array, s: SpecSettings) -> jax.Array:
  """float[..., vocab]: with temperature 0 the logits (forbidden ids at
  -inf), else the probabilities after temperature, min-p, top-k and top-p, in
  the precision's dtype (`categorical.filtered_logits`)."""
  logits = forbid(logits, s.forbidden_ids)
  if s.temperature == 0:
    return logits
  return jax.nn.softmax(filtered_logits(logits, temperature=s.temperature, top_k=s.top_k,
                                        top_p=s.top_p, min_p=s.min_p, precision=s.precision),
                        axis=-1)


def _draw(scores: jax.Array, uniforms: jax.Array | None, s: SpecSettings) -> jax.Array:
  """int32[...]: argmax of `scores` (temperature 0), else a draw from the
  unnormalised probabilities `scores` float[..., vocab] by the Gumbel-max
  trick, the noise -log(-log(u)) from `uniforms` float[..., vocab]."""
  if s.temperature == 0:
    return jnp.argmax(scores, axis=-1).astype(jnp.int32)
  return jnp.argmax(jnp.log(scores) - jnp.log(-jnp.log(uniforms)), axis=-1).astype(jnp.int32)


def _uniforms(rng, s: SpecSettings, *shapes) -> tuple[jax.Array, list]:
  """(next key, one float[shape] of U(0, 1) draws per shape), in the
  precision's dtype, from one `jax.random.uniform` call: each random call
  site adds seconds to the XLA compile. Temperature 0: (rng, Nones)."""
  if s.temperature == 0:
    return rng, [None] * len(shapes)
  rng, key = jax.random.split(rng)
  dtype = jnp.float64 if s.precision == "float64" else jnp.float32
  sizes = [math.prod(shape) for shape in shapes]
  flat = jax.random.uniform(key, (sum(sizes),), dtype, minval=jnp.finfo(dtype).tiny)
  parts = jnp.split(flat, np.cumsum(sizes)[:-1])
  return rng, [part.reshape(shape) for part, shape in zip(parts, shapes)]


def _vocab(fns: ModelFns, params) -> int:
  """The model's vocabulary size (from the shape of its logits)."""
  one = jnp.zeros((1, 1), jnp.int32)
  return jax.eval_shape(lambda p: fns.forward(p, one), params).shape[-1]


def _leading(ok: jax.Array) -> jax.Array:
  """int32[batch]: the number of leading True of ok bool[batch, k]."""
  return jnp.sum(jnp.cumprod(ok.astype(jnp.int32), axis=1), axis=1, dtype=jnp.int32)


def _take(x: jax.Array, index: jax.Array) -> jax.Array:
  """x[b, index[b]] for x [batch, n, ...] and index int32[batch] (or int32[batch, m])."""
  index = index.astype(jnp.int32)
  extra = (1,) * (x.ndim - 2)
  if index.ndim == 1:
    return jnp.take_along_axis(x, index.reshape(-1, 1, *extra), axis=1)[:, 0]
  return jnp.take_along_axis(x, index.reshape(*index.shape, *extra), axis=1)


def _arange(batch: int, start, length: int) -> jax.Array:
  """int32[batch, length]: start, start + 1, ... per row (start int or int32[batch])."""
  start = jnp.broadcast_to(jnp.asarray(start, jnp.int32), (batch,))
  return start[:, None] + jnp.arange(length, dtype=jnp.int32)


def _new_cache(fns: ModelFns, batch: int, length: int):
  """`fns.init_cache(batch, length)`; past fns.max_seq_len, that cache
  with zero slots appended (`kv_cache.extend`). Those slots only ever hold
  draft tokens past the output's end, never committed."""
  limit = fns.max_seq_len
  if limit is None or length <= limit:
    return fns.init_cache(batch, length)
  return kv_cache.extend(fns.init_cache(batch, limit), length - limit)


def _validate(models: Models, prompt, s: SpecSettings, draft_params) -> None:
  if prompt.ndim != 2 or prompt.shape[1] < 1:
    raise ValueError(f"prompt must be int32[batch, prompt_len >= 1], got shape {prompt.shape}.")
  if s.draft not in DRAFTERS:
    raise ValueError(f"Unknown draft {s.draft!r}; use one of {DRAFTERS}.")
  for name in ("max_new_tokens", "num_draft_tokens", "tree_width", "tree_depth"):
    if getattr(s, name) < 1:
      raise ValueError(f"{name} must be >= 1, got {getattr(s, name)}.")
  check_filters(s.temperature, s.top_k, s.top_p, s.min_p)
  total_len = prompt.shape[1] + s.max_new_tokens
  named = [("target", models.target)] + ([("draft", models.draft)] if s.draft == "model" else [])
  for name, fns in named:
    if fns is None or fns.decode is None or fns.init_cache is None:
      raise ValueError(f"Speculative decoding needs the {name} model's decode and init_cache"
                       + ("; draft='model' takes draft_fns and draft_params (bind loads them "
                          "from draft_workdir)." if name == "draft" else "."))
    if fns.max_seq_len is not None and total_len > fns.max_seq_len:
      raise ValueError(f"prompt_len + max_new_tokens = {total_len} > the {name} model's "
                       f"max_seq_len={fns.max_seq_len}; lower max_new_tokens.")
    if fns.max_seq_len is not None and _span(s) > fns.max_seq_len:
      raise ValueError(f"A round reads {_span(s)} tokens at once, more than the {name} model's "
                       f"max_seq_len={fns.max_seq_len}; lower num_draft_tokens or the tree.")
  if s.draft == "model" and draft_params is None:
    raise ValueError("draft='model' needs draft_params (bind loads them from draft_workdir).")
  if s.draft == "multi_token" and models.target.decode_drafts is None:
    raise ValueError("draft='multi_token' needs a model with multi-token heads "
                     "(trained with objective=multi_token); use draft='recycling' or 'model'.")
