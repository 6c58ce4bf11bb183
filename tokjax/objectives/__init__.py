"""Objective registry: `make_objective(config, tokenizer)` builds one by name.

Adding an objective means one new file and one entry in `REGISTRY`; its config
section `config.<name>` is built from its dataclass defaults
(`Objective.config_section`).
"""
from __future__ import annotations

from tokjax.data import (DEFAULT_PIXEL_LEVELS, IMAGE_CLASSES, IMAGE_SHAPES, BPETokenizer,
                         ByteTokenizer, PixelTokenizer, bpe)
from tokjax.objectives.base import ModelInputs, Objective, Targets
from tokjax.objectives.causal import Causal
from tokjax.objectives.classifier import Classifier
from tokjax.objectives.cm3 import CM3
from tokjax.objectives.electra import Electra
from tokjax.objectives.fim import FIM
from tokjax.objectives.fsq import FSQ
from tokjax.objectives.mae import MAE
from tokjax.objectives.maskgit import MaskGIT
from tokjax.objectives.md4 import MD4
from tokjax.objectives.meap import MEAP
from tokjax.objectives.mixture import Mixture
from tokjax.objectives.mlm import MLM
from tokjax.objectives.multi_token import MultiToken
from tokjax.objectives.prefix_lm import PrefixLM
from tokjax.objectives.span_corruption import SpanCorruption

REGISTRY: dict[str, type[Objective]] = {
    "causal": Causal, "classifier": Classifier, "cm3": CM3, "electra": Electra, "fim": FIM,
    "fsq": FSQ, "mae": MAE, "maskgit": MaskGIT, "md4": MD4, "meap": MEAP, "mixture": Mixture,
    "mlm": MLM, "multi_token": MultiToken, "prefix_lm": PrefixLM,
    "span_corruption": SpanCorruption,
}


def objective_class(config) -> type[Objective]:
  """The registered class of `config.objective`.

  Raises:
    ValueError: an unknown objective name, listing the registered ones.
  """
  if config.objective not in REGISTRY:
    raise ValueError(
        f"Unknown objective {config.objective!r}. Registered objectives: "
        f"{', '.join(REGISTRY)}. Pick one with configs/shakespeare.py:objective=NAME."
    )
  return REGISTRY[config.objective]


def make_tokenizer(config, workdir: str = "") -> ByteTokenizer | BPETokenizer | PixelTokenizer:
  """The dataset's tokenizer plus the special tokens (e.g. sentinels) the objective needs.

  For an image dataset (`tokjax.data.IMAGE_SHAPES`): a PixelTokenizer with
  `config.data.pixel_levels` grey levels (default 256), or with
  `config.data.tokens='fsq'` the FSQTokenizer of the FSQ run in
  `config.data.tokenizer_workdir`; either with the dataset's class tokens when
  `config.data.class_token` is set. For text: the ByteTokenizer, or with
  `config.data.tokens='bpe'` the BPETokenizer of `config.data.bpe_vocab_size`
  tokens trained by `python -m tokjax.tokenize`, as the run in `workdir`
  keeps it (`tokjax.data.bpe.tokenizer_for_run`: a run without its own copy
  reads the trained file and, given a workdir, saves a copy there).

  Raises:
    ValueError: an unknown objective name, pixel_levels outside [2, 256],
      tokens='fsq' without a tokenizer_workdir, or a bad bpe_vocab_size.
    FileNotFoundError: a tokenizer_workdir without an FSQ checkpoint, or no
      trained BPE (naming `python -m tokjax.tokenize`).
  """
  cls = objective_class(config)
  extra = cls.extra_special_tokens(_section(cls, config))
  shape = IMAGE_SHAPES.get(config.data.name)
  if shape is None:
    if config.data.get("tokens", "bytes") == "bpe":
      return bpe.tokenizer_for_run(config.data, workdir, extra)
    return ByteTokenizer(extra)
  classes = IMAGE_CLASSES[config.data.name] if config.data.get("class_token", False) else 0
  if config.data.get("tokens", "pixels") == "fsq":
    if not config.data.get("tokenizer_workdir", ""):
      raise ValueError(
          "data.tokens='fsq' reads the codes of a trained FSQ tokenizer: set "
          "--config.data.tokenizer_workdir=DIR, the workdir of a "
          "configs/fashion_mnist.py:objective=fsq run.")
    from tokjax.fsq_tokenizer import FSQTokenizer  # Restores a run: imported only here.
    return FSQTokenizer.from_workdir(config.data.tokenizer_workdir, extra, classes)
  levels = config.data.get("pixel_levels", DEFAULT_PIXEL_LEVELS)
  return PixelTokenizer(levels, extra, image_shape=shape, num_classes=classes)


def make_objective(config, tokenizer) -> Objective:
  """Builds `config.objective`, reading its settings from `config.<objective>`.

  Raises:
    ValueError: an unknown objective name, listing the registered ones.
  """
  cls = objective_class(config)
  return cls.from_config(_section(cls, config), tokenizer)


def _section(cls: type[Objective], config):
  """An objective's own config section; a composite one reads the whole config."""
  return config if getattr(cls, "composite", False) else config.get(config.objective)


__all__ = ["ModelInputs", "Objective", "Targets", "REGISTRY", "make_objective",
           "make_tokenizer", "objective_class"]
