"""Turns a config's sampler settings into samples from a trained model.

The one place sampling happens: the trainer (after training) and the
`tokjax.sample` CLI both call `write_samples`.
"""
from __future__ import annotations

import functools
import json
import os

import jax
import numpy as np

from tokjax.samplers import get_sampler, model_fns


@functools.cache
def _model_fns(graphdef, model_config):
  """One `ModelFns` per model, so the samplers' compiled programs are reused across calls."""
  return model_fns(graphdef, model_config)


def sampler_name(exp) -> str:
  """The configured sampler, else the objective's default ('' if it has none)."""
  return exp.objective.pick_sampler(exp.config.sampler.name)


def _sampler_kwargs(exp, name: str, prompt_len: int) -> dict:
  c, tok = exp.config, exp.tokenizer
  settings, spec = dict(c.sampler[name]), exp.objective.sampling_spec()
  if name == "ar":
    settings["max_new_tokens"] = min(settings["max_new_tokens"], c.seq_len - prompt_len)
    return dict(settings, eos_id=tok.eos_id, pad_id=tok.pad_id,
                prefix_attention=spec.prefix_attention)
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
      _model_fns(exp.graphdef, exp.model_config), params, prompt_batch, jax.random.key(seed),
      precision=exp.config.sampler.precision, **kwargs,
  )
  texts = [tok.decode(row) for row in np.asarray(jax.device_get(out.tokens))]
  record = dict(sampler=name, prompt=prompt, seed=seed, precision=exp.config.sampler.precision,
                nfe=int(out.nfe),
                **{k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))})
  return texts, record


def write_samples(exp, params, workdir: str, step: int,
                  filename: str = "samples.json") -> list[str]:
  """Prints samples from the config's sampler and writes them to WORKDIR/filename."""
  s = exp.config.sampler
  if not sampler_name(exp):
    print(f"No sampler for objective {exp.objective.name!r} yet.")
    return []
  texts, record = generate(
      exp, params, prompt=s.prompt, num_samples=s.num_samples, seed=s.seed
  )
  if jax.process_index() == 0:
    with open(os.path.join(workdir, filename), "w") as f:
      json.dump(dict(record, step=step, samples=texts), f, indent=1)
    for i, text in enumerate(texts):
      print(f"--- sample {i} ({record['sampler']}, precision={record['precision']}) ---\n{text}")
  return texts
