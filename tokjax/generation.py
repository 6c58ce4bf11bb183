"""Turns a config's sampler settings into samples from a trained model."""
from __future__ import annotations

import jax
import numpy as np

from tokjax.samplers import get_sampler, model_fns


def sampler_name(exp) -> str:
  """The configured sampler, else the objective's default ('' if it has none)."""
  return exp.objective.pick_sampler(exp.config.sampler.name)


def _sampler_kwargs(exp, name: str, prompt_len: int) -> dict:
  c, tok = exp.config, exp.tokenizer
  settings = dict(c.sampler[name])
  if name == "ar":
    settings["max_new_tokens"] = min(settings["max_new_tokens"], c.seq_len - prompt_len)
    return dict(settings, eos_id=tok.eos_id, pad_id=tok.pad_id)
  spec = exp.objective.sampling_spec()
  return dict(
      settings, seq_len=c.seq_len, mask_id=spec.mask_id, forbidden_ids=spec.forbidden_ids,
      schedule=spec.noise_schedule, time_conditioning=spec.time_conditioning,
  )


def generate(exp, params, *, prompt: str, num_samples: int, seed: int) -> tuple[list[str], dict]:
  """Samples `num_samples` continuations of `prompt` (a BOS is prepended).

  Returns the decoded texts and a record of the sampler settings, including
  the categorical `precision`, to store beside the samples.

  Raises:
    ValueError: a prompt longer than the model's sequence length.
  """
  tok = exp.tokenizer
  ids = tok.encode(prompt, add_bos=True)
  if len(ids) >= exp.config.seq_len:
    raise ValueError(
        f"The prompt is {len(ids)} tokens but seq_len is {exp.config.seq_len}; shorten it."
    )
  name = sampler_name(exp)
  kwargs = _sampler_kwargs(exp, name, len(ids))
  prompt_batch = np.tile(ids[None], (num_samples, 1)).astype(np.int32)
  out = get_sampler(name)(
      model_fns(exp.graphdef, exp.model_config), params, prompt_batch, jax.random.key(seed),
      precision=exp.config.sampler.precision, **kwargs,
  )
  texts = [tok.decode(row) for row in np.asarray(jax.device_get(out))]
  record = dict(sampler=name, prompt=prompt, seed=seed, precision=exp.config.sampler.precision,
                **{k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))})
  return texts, record
