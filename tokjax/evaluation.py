"""The likelihood report: nats per token and bits per byte (or per dim) on a data split.

Text counts bytes; images (a PixelTokenizer, unit 'dim') count pixels, and
the report then also gives `bits_per_dim` (the same figure as `bits_per_byte`,
under its name in the image-modelling literature, e.g. "Pixel Recurrent
Neural Networks", van den Oord et al. 2016) and prints bits/dim.

The figure's kind comes from the objective: `exact` NLL of the text (causal),
`exact_conditional` NLL of part of it given the rest (prefix_lm), an
`elbo_upper_bound` estimated by Monte Carlo (md4, with the number of samples
and, from 2 samples on, the standard error), or a `pseudo_likelihood`, never
mixed.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from tokjax.data import eval_batches, to_global


def likelihood_sums(objective, model, batch: jax.Array, rng: jax.Array) -> dict:
  """Scores each sequence of batch int32[batch, seq_len] `objective.eval_samples` times.

  The draws use independent randomness. Returns float32 scalars summed over
  the batch: `nats` (of per-sequence means over the draws), `var` (of the
  variance of those means, ddof=1; 0 with one draw), and every other entry of
  `objective.likelihood` from its first draw (`tokens`, `bytes`, ...).
  """
  num = objective.eval_samples
  draws = jax.lax.map(lambda r: objective.likelihood(model, batch, r), jax.random.split(rng, num))
  nats = draws["nats"]  # [samples, batch]
  var = nats.var(0, ddof=1) / num if num > 1 else jnp.zeros_like(nats[0])
  sums = {k: v[0].sum(0) for k, v in draws.items()}
  return dict(sums, nats=nats.mean(0).sum(), var=var.sum())


def make_eval_step(exp):
  """Jitted (params, batch int32[batch, seq_len], rng) -> `likelihood_sums`."""

  def step(params, batch, rng):
    with exp.activation_sharding():
      return likelihood_sums(exp.objective, exp.model(params), batch, rng)

  params_sharding = exp.state_shardings["params"]
  return jax.jit(step, in_shardings=(params_sharding, exp.batch_sharding, None))


def evaluate(exp, eval_step, params, tokens: np.ndarray, *, max_batches: int, split: str, seed: int) -> dict:
  """Scores up to `max_batches` batches (-1: all) of a token stream.

  Args:
    tokens: int32[num_tokens] the split's packed token stream.

  Returns:
    The report (see `report`): split, kind, unit, nats_per_token,
    bits_per_byte (and for bounds mc_samples, plus bits_per_byte_stderr when
    mc_samples >= 2), tokens, bytes; for pixels bits_per_dim too.
  """
  c = exp.config
  batches = eval_batches(
      tokens, seq_len=c.seq_len, batch_size=c.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      pad_id=exp.tokenizer.pad_id,
  )
  rng = jax.random.key(seed)
  totals = None
  for i, batch in enumerate(batches):
    if i == max_batches:
      break
    out = eval_step(params, to_global(batch, exp.batch_sharding), jax.random.fold_in(rng, i))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  return report(exp.objective, split, jax.tree.map(np.asarray, jax.device_get(totals)),
                unit=exp.tokenizer.unit)


def report(objective, split: str, totals: dict, unit: str = "byte") -> dict:
  """Turns summed nats/tokens/bytes into the labelled likelihood report.

  `bytes` counts the data units, named by `unit` (the tokenizer's): 'byte'
  for text, 'dim' for pixels. bits_per_byte = nats / (ln 2 * bytes); with
  unit 'dim' the report repeats it (and its standard error) as bits_per_dim
  (and bits_per_dim_stderr). An objective whose kind is 'none' reports no
  likelihood, only its own figures from `objective.eval_report(totals)`.
  """
  tokens, nbytes = max(float(totals["tokens"]), 1.0), max(float(totals["bytes"]), 1.0)
  out = {
      "split": split,
      "objective": objective.name,
      "kind": objective.likelihood_kind,
      "unit": unit,
      "tokens": int(totals["tokens"]),
      "bytes": int(totals["bytes"]),
  }
  if objective.likelihood_kind != "none":
    out["nats_per_token"] = float(totals["nats"]) / tokens
    out["bits_per_byte"] = float(totals["nats"]) / (math.log(2) * nbytes)
  if objective.likelihood_kind == "elbo_upper_bound":
    out["mc_samples"] = objective.eval_samples
    if objective.eval_samples >= 2:  # One draw per sequence cannot estimate its own spread.
      out["bits_per_byte_stderr"] = math.sqrt(float(totals["var"])) / (math.log(2) * nbytes)
  if unit != "byte":
    out.update({f"bits_per_{unit}{suffix}": out[f"bits_per_byte{suffix}"]
                for suffix in ("", "_stderr") if f"bits_per_byte{suffix}" in out})
  return dict(out, **objective.eval_report(totals))


def format_report(r: dict) -> str:
  """One human-readable line, labelled with the figure's kind."""
  if r["kind"] == "none":
    extra = ", ".join(f"{k} = {v:.4f}" for k, v in r.items() if isinstance(v, float))
    return f"[{r['split']}] {r['objective']}: no likelihood; {extra} over {r['tokens']} tokens"
  unit = r.get("unit", "byte")
  line = (
      f"[{r['split']}] {r['objective']}: {r['kind']} = {r['nats_per_token']:.4f} nats/token, "
      f"{r[f'bits_per_{unit}']:.4f} bits/{unit}"
  )
  if f"bits_per_{unit}_stderr" in r:
    line += (f" ± {r[f'bits_per_{unit}_stderr']:.4f} (MC s.e., {r['mc_samples']} samples "
             "per sequence)")
  elif "mc_samples" in r:
    line += " (no error bar from 1 MC sample per sequence; use >= 2)"
  return line + f" over {r['tokens']} tokens"
