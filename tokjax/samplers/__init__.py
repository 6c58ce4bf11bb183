"""Samplers, one file per family, each a pure function of model closures.

`get_sampler(name)` returns `sample(fns, params, prompt, rng, **settings)`.
"""
from tokjax.samplers import autoregressive, first_hitting, maskgit, md4
from tokjax.samplers.base import ModelFns, SampleOutput, model_fns
from tokjax.samplers.categorical import precision_scope, sample_categorical

SAMPLERS = {
    "ar": autoregressive.sample, "first_hitting": first_hitting.sample, "maskgit": maskgit.sample,
    "md4": md4.sample,
}


def get_sampler(name: str):
  """The `sample` function registered under `name`.

  Raises:
    ValueError: an unknown name, listing the registered ones.
  """
  if name not in SAMPLERS:
    raise ValueError(f"Unknown sampler {name!r}; use one of {sorted(SAMPLERS)}.")
  return SAMPLERS[name]


__all__ = ["SAMPLERS", "ModelFns", "SampleOutput", "get_sampler", "model_fns", "precision_scope",
           "sample_categorical"]
