"""Objective registry: `make_objective(config, tokenizer)` builds one by name.

Adding an objective means one new file and one entry in `REGISTRY`.
"""
from __future__ import annotations

from tokjax.objectives.base import ModelInputs, Objective, Targets
from tokjax.objectives.causal import Causal
from tokjax.objectives.md4 import MD4
from tokjax.objectives.mlm import MLM
from tokjax.objectives.prefix_lm import PrefixLM

REGISTRY: dict[str, type[Objective]] = {
    "causal": Causal, "md4": MD4, "mlm": MLM, "prefix_lm": PrefixLM,
}


def make_objective(config, tokenizer) -> Objective:
  """Builds `config.objective`, reading its settings from `config.<objective>`.

  Raises:
    ValueError: an unknown objective name, listing the registered ones.
  """
  name = config.objective
  if name not in REGISTRY:
    raise ValueError(
        f"Unknown objective {name!r}. Registered objectives: {', '.join(REGISTRY)}."
        " Pick one with configs/shakespeare.py:objective=NAME."
    )
  return REGISTRY[name].from_config(config.get(name), tokenizer)


__all__ = ["ModelInputs", "Objective", "Targets", "REGISTRY", "make_objective"]
