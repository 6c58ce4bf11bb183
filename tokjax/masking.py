"""Reusable mask samplers: which positions of a batch an objective corrupts.

Every policy maps `(rng, tokens int32[batch, seq_len], mask_ratio, *, pad_id,
...)` to `bool[batch, seq_len]` (True = selected). All are jittable with static
shapes (`mask_ratio` and the options are Python numbers, fixed at trace time),
never select PAD, and select `mask_ratio` of the eligible tokens in
expectation:

- `token`: each non-PAD token independently (BERT, Devlin et al. 2019, Sec. 3.1).
- `whole_word`: each word independently, all its bytes at once (the BERT
  repository's whole-word masking); eligible tokens are word bytes.
- `span`: spans with truncated-geometric lengths ("SpanBERT: Improving
  Pre-training by Representing and Predicting Spans", Joshi et al. 2020,
  Sec. 3.1).
- `ngram`: n-grams with P(n) proportional to 1/n ("ERNIE-Gram: Pre-Training with
  Explicitly N-Gram Masked Language Modeling", Xiao et al. 2021, Sec. 3).

Static-shape span placement (span and ngram). The papers draw spans one after
another until the budget of mask_ratio * seq_len tokens is spent. Here every
position j (including max_len - 1 virtual positions before the window, so the
first tokens are not under-covered) starts a span with probability q and
draws its own length L_j; position i is covered iff some start j <= i has
j + L_j > i. So, exactly,

  P(i covered) = 1 - prod_{k=0}^{max_len-1} (1 - q P(L > k)),

and q is solved from P(i covered) = mask_ratio by bisection. The selected
fraction therefore equals mask_ratio in expectation at every position, but,
unlike the papers, (a) the count per row is random rather than fixed, and
(b) overlapping or touching spans merge, so covered runs are longer on
average than the sampled lengths (the sampled lengths follow the paper's law).
Spans may run over PAD positions, which are then left unselected.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Byte ids of ' ', '\n', '\t', '\r': the separators between words.
WHITESPACE_BYTES = (32, 10, 9, 13)


def check_mask_ratio(mask_ratio: float) -> None:
  """Raises ValueError unless 0 < mask_ratio < 1."""
  if not 0.0 < mask_ratio < 1.0:
    raise ValueError(
        f"mask_ratio={mask_ratio} must lie strictly between 0 and 1, e.g. 0.15 (BERT)."
    )


def token_mask(rng, tokens, mask_ratio, *, pad_id):
  """Selects each non-PAD token independently with probability mask_ratio.

  Args:
    rng: a PRNG key.
    tokens: int32[batch, seq_len].
    mask_ratio: float in (0, 1), the expected selected fraction of non-PAD tokens.
    pad_id: the PAD id, never selected.

  Returns:
    bool[batch, seq_len], True = selected.
  """
  check_mask_ratio(mask_ratio)
  return jax.random.bernoulli(rng, mask_ratio, tokens.shape) & (tokens != pad_id)


def count_mask(rng, valid, count):
  """bool[batch, seq_len]: exactly count[b] positions of row b, uniformly among its valid ones.

  Args:
    valid: bool[batch, seq_len] the positions that may be chosen.
    count: int32[batch] how many to choose, at most valid.sum(-1).
  """
  scores = jnp.where(valid, jax.random.uniform(rng, valid.shape), 2.0)  # Invalid sort last.
  return lowest(scores, count) & valid


def lowest(scores, count):
  """bool[batch, seq_len]: the count[b] lowest of row b's float[batch, seq_len] scores."""
  rank = jnp.argsort(jnp.argsort(scores, axis=-1), axis=-1)
  return rank < count[:, None]


def word_bytes(tokens, *, num_bytes=256):
  """bool[batch, seq_len]: True at byte ids that are not whitespace.

  Specials (ids >= num_bytes: PAD, BOS, EOS, ...) are not word bytes.
  """
  is_space = jnp.isin(tokens, jnp.asarray(WHITESPACE_BYTES))
  return (tokens < num_bytes) & ~is_space


def whole_word_mask(rng, tokens, mask_ratio, *, pad_id, num_bytes=256):
  """Selects whole words, mask_ratio of the non-PAD tokens in expectation.

  A word is a maximal run of word bytes (`word_bytes`) inside one row; a word
  cut by the window edge counts as a word of its own. Whitespace and specials
  are never selected, so each word of row b is selected with probability
  q_b = min(1, mask_ratio * N_b / W_b), N_b the row's non-PAD tokens and W_b
  its word bytes: the expected selected fraction of the N_b tokens is then
  mask_ratio whenever q_b <= 1 (always for ordinary text, where W_b ~ 0.8 N_b).

  Args:
    rng: a PRNG key.
    tokens: int32[batch, seq_len].
    mask_ratio: float in (0, 1).
    pad_id: the PAD id (never selected: it is not a word byte).
    num_bytes: ids below this are bytes.

  Returns:
    bool[batch, seq_len], True = selected.
  """
  check_mask_ratio(mask_ratio)
  in_word = word_bytes(tokens, num_bytes=num_bytes)
  prev = jnp.pad(in_word[:, :-1], ((0, 0), (1, 0)))
  positions = jnp.arange(tokens.shape[1])
  word_start = jax.lax.cummax(jnp.where(in_word & ~prev, positions, 0), axis=1)
  word_prob = mask_ratio * (tokens != pad_id).sum(1) / jnp.maximum(in_word.sum(1), 1)
  draw = jax.random.uniform(rng, tokens.shape) < jnp.minimum(word_prob, 1.0)[:, None]
  return in_word & jnp.take_along_axis(draw, word_start, axis=1)


def span_length_probs(p: float = 0.2, max_span: int = 10) -> np.ndarray:
  """float64[max_span]: P(L = l) for l = 1..max_span, SpanBERT Sec. 3.1.

  L ~ Geometric(p) on {1, 2, ...}, conditioned on L <= max_span. This is the
  law behind SpanBERT's stated mean of 3.8 for p = 0.2, max_span = 10 (capping
  L at max_span instead would give 4.46).
  """
  if not 0.0 < p <= 1.0:
    raise ValueError(f"span_p={p} must be in (0, 1], e.g. 0.2 (SpanBERT).")
  if max_span < 1:
    raise ValueError(f"max_span={max_span} must be >= 1, e.g. 10 (SpanBERT).")
  probs = p * (1.0 - p) ** np.arange(max_span)
  return probs / probs.sum()


def ngram_length_probs(max_n: int = 3) -> np.ndarray:
  """float64[max_n]: P(n) proportional to 1/n for n = 1..max_n (ERNIE-Gram Sec. 3)."""
  if max_n < 1:
    raise ValueError(f"max_ngram={max_n} must be >= 1, e.g. 3 (ERNIE-Gram).")
  probs = 1.0 / np.arange(1, max_n + 1)
  return probs / probs.sum()


def sample_lengths(rng, probs: np.ndarray, shape) -> jax.Array:
  """int32[*shape] lengths in 1..len(probs), P(L = l) = probs[l - 1]."""
  logits = jnp.log(jnp.asarray(probs, jnp.float32))
  return jax.random.categorical(rng, logits, shape=shape).astype(jnp.int32) + 1


def start_probability(mask_ratio: float, probs: np.ndarray) -> float:
  """q with 1 - prod_k (1 - q P(L > k)) = mask_ratio (see the module docstring)."""
  survival = 1.0 - np.concatenate([[0.0], np.cumsum(probs)[:-1]])  # P(L > k).

  def covered(q):
    return 1.0 - np.prod(1.0 - q * survival)

  lo, hi = 0.0, 1.0
  for _ in range(60):  # covered(q) increases from 0 to 1; halve the bracket.
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if covered(mid) < mask_ratio else (lo, mid)
  return 0.5 * (lo + hi)


def spans_mask(rng, tokens, mask_ratio, probs: np.ndarray, *, pad_id):
  """Covers mask_ratio of the non-PAD tokens with spans of law `probs`.

  Shared by `span_mask` and `ngram_mask`; see the module docstring.
  tokens: int32[batch, seq_len] -> bool[batch, seq_len].
  """
  check_mask_ratio(mask_ratio)
  batch, seq_len = tokens.shape
  lead = len(probs) - 1  # Virtual positions before the window.
  start_rng, length_rng = jax.random.split(rng)
  shape = (batch, lead + seq_len)
  starts = jax.random.bernoulli(start_rng, start_probability(mask_ratio, probs), shape)
  ends = jnp.arange(lead + seq_len) + sample_lengths(length_rng, probs, shape)
  reach = jax.lax.cummax(jnp.where(starts, ends, 0), axis=1)[:, lead:]
  covered = reach > jnp.arange(lead, lead + seq_len)
  return covered & (tokens != pad_id)


def span_mask(rng, tokens, mask_ratio, *, pad_id, p=0.2, max_span=10):
  """SpanBERT span masking (Sec. 3.1) with static shapes.

  Args:
    rng: a PRNG key.
    tokens: int32[batch, seq_len].
    mask_ratio: float in (0, 1), the expected selected fraction of non-PAD tokens.
    pad_id: the PAD id, never selected.
    p: geometric parameter of the span length, in (0, 1].
    max_span: longest span, in tokens.

  Returns:
    bool[batch, seq_len], True = selected.
  """
  return spans_mask(rng, tokens, mask_ratio, span_length_probs(p, max_span), pad_id=pad_id)


def ngram_mask(rng, tokens, mask_ratio, *, pad_id, max_n=3):
  """ERNIE-Gram n-gram masking (Sec. 3), P(n) proportional to 1/n, static shapes.

  Args:
    rng: a PRNG key.
    tokens: int32[batch, seq_len].
    mask_ratio: float in (0, 1), the expected selected fraction of non-PAD tokens.
    pad_id: the PAD id, never selected.
    max_n: longest n-gram, in tokens.

  Returns:
    bool[batch, seq_len], True = selected.
  """
  return spans_mask(rng, tokens, mask_ratio, ngram_length_probs(max_n), pad_id=pad_id)


MASKING_POLICIES: dict[str, Callable[..., jax.Array]] = {
    "token": token_mask,
    "whole_word": whole_word_mask,
    "span": span_mask,
    "ngram": ngram_mask,
}


def get_policy(name: str) -> Callable[..., jax.Array]:
  """Returns the mask sampler called `name`.

  Raises:
    ValueError: an unknown name, listing the known ones.
  """
  return _named(MASKING_POLICIES, name, "masking_policy")


def _named(policies: dict, name: str, what: str, example: str = ""):
  """policies[name], or a ValueError naming `what` and listing the known names."""
  if name not in policies:
    raise ValueError(f"Unknown {what} {name!r}; use one of {', '.join(policies)}{example}.")
  return policies[name]


# Patch masking for images (MAE and friends). These policies pick patches of a
# rows x cols grid rather than tokens of a window, so they have their own
# signature, `(rng, batch_size, grid, num_masked) -> bool[batch, rows * cols]`
# (raster order, True = masked), and mask exactly `num_masked` patches per
# image, so the visible count is static.


def check_patch_count(num_masked: int, num_patches: int) -> None:
  """Raises ValueError unless 0 <= num_masked <= num_patches."""
  if not 0 <= num_masked <= num_patches:
    raise ValueError(f"num_masked={num_masked} must lie in [0, {num_patches}] (the patches).")


def random_patch_mask(rng, batch_size: int, grid: tuple[int, int], num_masked: int) -> jax.Array:
  """Masks num_masked patches per image uniformly at random (MAE, He et al. 2022, Sec. 3,
  "Masking": the lowest num_masked of per-patch uniform noise, as in its reference code).

  Args:
    rng: a PRNG key.
    batch_size: images.
    grid: (rows, cols) of patches.
    num_masked: patches masked in every image, in [0, rows * cols].

  Returns:
    bool[batch_size, rows * cols], True = masked, exactly num_masked per row.
  """
  num_patches = grid[0] * grid[1]
  check_patch_count(num_masked, num_patches)
  noise = jax.random.uniform(rng, (batch_size, num_patches))
  return lowest(noise, jnp.full((batch_size,), num_masked, jnp.int32))


def block_patch_mask(rng, batch_size: int, grid: tuple[int, int], num_masked: int, *,
                     min_patches: int | None = None, min_aspect: float = 0.3,
                     attempts: int | None = None) -> jax.Array:
  """BEiT's block-wise masking with a static count ("BEiT: BERT Pre-Training of
  Image Transformers", Bao et al. 2022, Sec. 2.3, Algorithm 1).

  Per image, as Algorithm 1 and BEiT's code: repeatedly draw a block size s
  ~ U(min_patches, remaining) (remaining = num_masked - masked so far), an
  aspect ratio r log-uniform in [min_aspect, 1 / min_aspect], a block of
  round(sqrt(s r)) x round(sqrt(s / r)) patches (smaller than the grid on
  both sides) at a uniform position, and add it when it masks between 1 and
  `remaining` new patches. Here the draws are a fixed number of `attempts`
  (a scan, so shapes are static); then, unlike the paper, where the count
  may end below its target, the mask is topped up to exactly num_masked with
  random unmasked patches that touch the mask (4-neighbours) first, then any
  others, so every image has the same visible count.

  Args:
    rng: a PRNG key.
    batch_size: images.
    grid: (rows, cols) of patches.
    num_masked: patches masked in every image, in [0, rows * cols].
    min_patches: smallest block, in patches; default 16 / 196 of the grid
      (BEiT's 16 on its 14 x 14 grid), at least 1.
    min_aspect: smallest aspect ratio, in (0, 1] (BEiT: 0.3).
    attempts: block draws per image; default 10 per block of min_patches
      needed (BEiT retries a failed draw up to 10 times).

  Returns:
    bool[batch_size, rows * cols], True = masked, exactly num_masked per row.

  Raises:
    ValueError: num_masked outside [0, rows * cols], min_patches < 1 or
      min_aspect outside (0, 1].
  """
  rows, cols = grid
  num_patches = rows * cols
  check_patch_count(num_masked, num_patches)
  if min_patches is None:
    min_patches = max(1, round(16 * num_patches / 196))
  if min_patches < 1:
    raise ValueError(f"min_patches={min_patches} must be >= 1 (BEiT: 16 of 196 patches).")
  if not 0.0 < min_aspect <= 1.0:
    raise ValueError(f"min_aspect={min_aspect} must lie in (0, 1] (BEiT: 0.3).")
  if attempts is None:
    attempts = 10 * max(1, -(-num_masked // min_patches))
  block_rng, fill_rng = jax.random.split(rng)
  draws = jax.random.uniform(block_rng, (batch_size, attempts, 4))
  blocks = jax.vmap(lambda u: _draw_blocks(u, rows, cols, num_masked, min_patches,
                                           min_aspect))(draws)
  return _top_up(fill_rng, blocks, num_masked, rows, cols)


def _draw_blocks(draws, rows, cols, num_masked, min_patches, min_aspect):
  """bool[rows * cols]: one image's blocks from float32[attempts, 4] uniforms
  (size, aspect, top, left per attempt); see `block_patch_mask`."""
  r, c = jnp.arange(rows)[:, None], jnp.arange(cols)[None, :]
  log_lo, log_hi = np.log(min_aspect), -np.log(min_aspect)

  def attempt(mask, u):
    remaining = num_masked - mask.sum()
    # U(min_patches, remaining), in either order, as BEiT's code draws it.
    area = min_patches + u[0] * (remaining - min_patches)
    aspect = jnp.exp(log_lo + u[1] * (log_hi - log_lo))
    h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)
    w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
    top = jnp.floor(u[2] * (rows - h + 1)).astype(jnp.int32)
    left = jnp.floor(u[3] * (cols - w + 1)).astype(jnp.int32)
    block = (r >= top) & (r < top + h) & (c >= left) & (c < left + w)
    new = (block & ~mask).sum()
    fits = (h >= 1) & (w >= 1) & (h < rows) & (w < cols)
    accept = fits & (new > 0) & (new <= remaining)
    return jnp.where(accept, mask | block, mask), None

  mask, _ = jax.lax.scan(attempt, jnp.zeros((rows, cols), bool), draws)
  return mask.reshape(-1)


def _top_up(rng, mask, num_masked, rows, cols):
  """bool[batch, rows * cols]: `mask` (at most num_masked per row) plus random
  unmasked patches, those with a masked 4-neighbour first, up to exactly
  num_masked per row."""
  near = _neighbours(mask, rows, cols)
  scores = jax.random.uniform(rng, mask.shape) + jnp.where(near, 0.0, 1.0)
  scores = jnp.where(mask, 3.0, scores)  # Masked patches sort last: never chosen again.
  missing = num_masked - mask.sum(-1)
  return mask | lowest(scores, missing)


def _neighbours(mask, rows, cols):
  """bool[batch, rows * cols]: patches with a masked 4-neighbour."""
  grid = mask.reshape(-1, rows, cols)
  pad = jnp.pad(grid, ((0, 0), (1, 1), (1, 1)))
  near = pad[:, :-2, 1:-1] | pad[:, 2:, 1:-1] | pad[:, 1:-1, :-2] | pad[:, 1:-1, 2:]
  return near.reshape(mask.shape)


PATCH_MASKING_POLICIES: dict[str, Callable[..., jax.Array]] = {
    "random": random_patch_mask,
    "block": block_patch_mask,
}


def get_patch_policy(name: str) -> Callable[..., jax.Array]:
  """Returns the patch mask sampler called `name` ('random' or 'block').

  Raises:
    ValueError: an unknown name, listing the known ones.
  """
  return _named(PATCH_MASKING_POLICIES, name, "patch masking_policy",
                " (e.g. --config.mae.masking_policy=block)")
