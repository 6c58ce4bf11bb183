"""Samplers, one file per family, each a pure function of model closures.

A sampler module has `sample(fns, params, prompt, rng, **kwargs) -> SampleOutput`,
`SETTINGS` (the names of the user's settings, `config.sampler.<name>`, whose
defaults are `sample`'s own), and `bind(settings, spec, tokenizer, seq_len=,
prompt_len=)`, which adds what a run fixes (ids, schedule) from the objective's
`SamplingSpec` (masked samplers take it whole, as `spec`).
"""
import inspect

from tokjax.samplers import autoregressive, beam, first_hitting, maskgit, md4, speculative
from tokjax.samplers.base import ModelFns, SampleOutput, SamplingSpec, model_fns
from tokjax.samplers.categorical import precision_scope, sample_categorical

SAMPLERS = {"ar": autoregressive, "beam": beam, "first_hitting": first_hitting, "maskgit": maskgit,
            "md4": md4, "speculative": speculative}


def sampler_module(name: str):
  """The sampler module registered under `name`.

  Raises:
    ValueError: an unknown name, listing the registered ones.
  """
  if name not in SAMPLERS:
    raise ValueError(f"Unknown sampler {name!r}; use one of {sorted(SAMPLERS)}.")
  return SAMPLERS[name]


def get_sampler(name: str):
  """The `sample` function registered under `name` (raises as `sampler_module`)."""
  return sampler_module(name).sample


def default_settings(name: str) -> dict:
  """{setting: default} of sampler `name`: its config section, read off `sample`."""
  module = sampler_module(name)
  parameters = inspect.signature(module.sample).parameters
  return {key: parameters[key].default for key in module.SETTINGS}


__all__ = ["SAMPLERS", "ModelFns", "SampleOutput", "SamplingSpec", "default_settings", "get_sampler", "model_fns",
           "precision_scope", "sample_categorical", "sampler_module"]
