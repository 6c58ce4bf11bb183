"""Fill-in-the-middle: causal LM on documents rearranged to put the middle last.

"Efficient Training of Language Models to Fill in the Middle" (Bavarian et al.,
2022), Sec. 3: with probability fim_rate a document is cut at two uniformly
random points into (prefix, middle, suffix) and rearranged, then trained with
the ordinary causal LM loss. Two orders, chosen per row (SPM with probability
fim_spm_rate; Sec. 3, "SPM mode", in the variant the paper trains with,
which keeps <fim_prefix> first and prefix + middle contiguous):

  PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle> middle <eos>
  SPM: <fim_prefix> <fim_suffix> suffix <fim_middle> prefix middle <eos>

`<eos>` is the paper's end-of-text token after the middle, so an infilling
sampler knows where to stop. Rows that are not transformed are plain causal LM
on the same clean tokens. This is FIM applied to each packed window ("context-
level" FIM); a window holding several documents is cut as one.

Layout: only the first L_clean = seq_len - 4 tokens of a window are used, so
the N + 4 rearranged tokens (N = the row's non-PAD length; PAD is assumed to
sit only at the end) always fit; the rest of the row is PAD (weight 0). The
training loss scores every position with a real next token, specials included.
Evaluation scores the text in its plain left-to-right order (fim_rate = 0), so
the reported figure is the exact NLL of the text, comparable with `causal` and
independent of fim_rate. A fourth special, '<fim_pad>' (as in
StarCoder's tokenizer), is never emitted: it keeps the number of added
specials even, since the vocabulary is sharded over a tensor axis of size 2.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.objectives.base import CAUSAL_LM_SAMPLERS, ModelInputs, Objective, Targets, from_tokenizer
from tokjax.objectives.causal import PlainOrderEvaluation
from tokjax.objectives.cm3 import arrange, causal_targets, real_length

FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>", "<fim_pad>")
PLAIN, PSM, SPM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class FIM(PlainOrderEvaluation, Objective):
  """Fill-in-the-middle (see module docstring).

  Attributes:
    prefix_id, suffix_id, middle_id: ids of '<fim_prefix>', '<fim_suffix>',
      '<fim_middle>' in the tokenizer.
    eos_id: the id that ends the middle (tokenizer.eos_id).
    fim_rate: fraction of rows rearranged, in [0, 1] (the paper's 0.5 default).
    fim_spm_rate: fraction of rearranged rows in SPM order, in [0, 1].
  """

  prefix_id: int = from_tokenizer(default=-1)
  suffix_id: int = from_tokenizer(default=-1)
  middle_id: int = from_tokenizer(default=-1)
  eos_id: int = from_tokenizer("eos_id", -1)
  fim_rate: float = 0.5
  fim_spm_rate: float = 0.5

  name: str = dataclasses.field(default="fim", init=False)
  attention: str = dataclasses.field(default="causal", init=False)
  likelihood_kind: str = dataclasses.field(default="exact", init=False)
  samplers: tuple[str, ...] = dataclasses.field(default=CAUSAL_LM_SAMPLERS, init=False)

  def __post_init__(self):
    for key in ("fim_rate", "fim_spm_rate"):
      if not 0.0 <= getattr(self, key) <= 1.0:
        raise ValueError(f"fim.{key}={getattr(self, key)} must lie in [0, 1], e.g. 0.5.")
    if min(self.prefix_id, self.suffix_id, self.middle_id, self.eos_id) < 0:
      raise ValueError(
          "FIM needs the ids of its special tokens; build it with FIM.from_config(config, "
          "tokenizer) on a tokenizer made with FIM.extra_special_tokens."
      )

  @classmethod
  def extra_special_tokens(cls, config) -> tuple[str, ...]:
    """'<fim_prefix>', '<fim_suffix>', '<fim_middle>' and the unused '<fim_pad>'."""
    del config
    return FIM_TOKENS

  @classmethod
  def tokenizer_fields(cls, tokenizer, section) -> dict:
    """Adds prefix_id, suffix_id, middle_id: the tokenizer's ids of the FIM specials."""
    ids = [tokenizer.special_tokens[n] for n in FIM_TOKENS[:3]]
    fields = dict(zip(("prefix_id", "suffix_id", "middle_id"), ids))
    return dict(super().tokenizer_fields(tokenizer, section), **fields)

  def infill_prompt(self, pieces, hole_len):
    """PSM: <fim_prefix> prefix <fim_suffix> suffix <fim_middle>; the middle is generated.

    Raises:
      ValueError: not exactly one hole.
    """
    del hole_len  # The middle ends at <eos>.
    if len(pieces) != 2:
      raise ValueError(f"FIM fills exactly one hole; the text has {len(pieces) - 1}.")
    prefix, suffix = pieces
    return np.concatenate([[self.prefix_id], prefix, [self.suffix_id], suffix,
                           [self.middle_id]]).astype(np.int32)

  def infill_result(self, pieces, prompt, generated):
    """prefix + the generated middle up to <eos> + suffix."""
    middle = generated[len(prompt):]
    ends = np.flatnonzero((middle == self.eos_id) | (middle == self.pad_id))
    middle = middle[: ends[0]] if len(ends) else middle
    return np.concatenate([pieces[0], middle, pieces[1]]).astype(np.int32)

  @staticmethod
  def clean_len(seq_len: int) -> int:
    """L_clean = seq_len - 4 tokens of each window are used.

    Raises:
      ValueError: seq_len < 5.
    """
    if seq_len < 5:
      raise ValueError(f"seq_len={seq_len} is too short for FIM: it needs seq_len >= 5.")
    return seq_len - 4

  def plan(self, rng: jax.Array, length: jax.Array):
    """Per-row choices for rows of int32[batch] non-PAD lengths N.

    Returns:
      (mode int32[batch] in {PLAIN, PSM, SPM}, cut_a, cut_b int32[batch]) with
      0 <= cut_a <= cut_b <= N: prefix = x[:a], middle = x[a:b], suffix = x[b:N].
    """
    fim_rng, spm_rng, cut_rng = jax.random.split(rng, 3)
    fim = jax.random.bernoulli(fim_rng, self.fim_rate, length.shape)
    spm = jax.random.bernoulli(spm_rng, self.fim_spm_rate, length.shape)
    mode = jnp.where(fim, jnp.where(spm, SPM, PSM), PLAIN).astype(jnp.int32)
    cuts = jax.random.randint(cut_rng, length.shape + (2,), 0, length[:, None] + 1)
    cuts = jnp.sort(cuts, axis=1).astype(jnp.int32)
    return mode, cuts[:, 0], cuts[:, 1]

  def segments(self, mode, a, b, length):
    """The (start, length, id) list laying out PLAIN, PSM or SPM rows."""
    plain, psm, spm = mode == PLAIN, mode == PSM, mode == SPM
    fim = (~plain).astype(jnp.int32)
    first = jnp.where(plain, length, jnp.where(psm, a, 0))
    last_start = jnp.where(spm, 0, a)
    last_len = jnp.where(psm, b - a, jnp.where(spm, b, 0))
    return [
        (0, fim, self.prefix_id), (0, first, -1),
        (0, fim, self.suffix_id), (b, fim * (length - b), -1),
        (0, fim, self.middle_id), (last_start, last_len, -1),
        (0, fim, self.eos_id),
    ]

  def corrupt(self, tokens: jax.Array, rng: jax.Array) -> tuple[ModelInputs, Targets]:
    """tokens: int32[batch, seq_len] -> (rearranged tokens, causal Targets).

    Raises:
      ValueError: seq_len < 5 (see `clean_len`).
    """
    seq_len = tokens.shape[1]
    clean = tokens[:, : self.clean_len(seq_len)]
    length = real_length(clean, self.pad_id)
    mode, a, b = self.plan(rng, length)
    arranged, total = arrange(
        clean, self.segments(mode, a, b, length), pad_id=self.pad_id, out_len=seq_len
    )
    return ModelInputs(arranged), causal_targets(arranged, total)
