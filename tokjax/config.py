"""The shared experiment config, variant parsing, and early validation.

Experiment files under `configs/` start from `base_config()` and set what
differs. Each objective's own settings live in `config.<objective>`, with the
defaults of its dataclass (`Objective.config_section`); each sampler's in
`config.sampler.<sampler>`, with the defaults of its `sample`.
"""
from __future__ import annotations

import importlib.util
import os

import ml_collections

from tokjax import sharding
from tokjax.data import TEXT_TOKENS, bpe
from tokjax.data import default_config as default_data_config
from tokjax.data import image_seq_len
from tokjax.models import TransformerConfig
from tokjax.nonfinite import NAN_POLICIES
from tokjax.objectives import REGISTRY, objective_class
from tokjax.samplers import SAMPLERS, default_settings, sampler_module
from tokjax.schedules import get_schedule

IMAGE_TOKENS = ("pixels", "fsq")  # config.data.tokens of an image dataset.


def sampler_config() -> ml_collections.ConfigDict:
  """Sampling settings; `name` '' means the objective's default sampler."""
  return ml_collections.ConfigDict(
      dict(
          name="",
          num_samples=4,
          prompt="",
          seed=0,
          # Masked samplers: tokens per sample (0: seq_len); past seq_len they
          # go on semi-autoregressively, block_len new tokens per round.
          length=0,
          block_len=32,
          precision="float64",  # Gumbel precision for categorical draws.
          **{name: default_settings(name) for name in SAMPLERS},
      )
  )


def base_config() -> ml_collections.ConfigDict:
  """Defaults shared by every experiment (a small byte-level model)."""
  c = ml_collections.ConfigDict()
  c.objective = "causal"
  for name, cls in REGISTRY.items():
    c[name] = ml_collections.ConfigDict(cls.config_section())
  # The backbone's settings, with TransformerConfig's defaults (the run sets
  # vocab_size, max_seq_len and time_conditioning).
  c.model = TransformerConfig.config_section()
  c.data = default_data_config()
  c.seq_len = 256
  c.batch_size = 16  # Global, across all hosts.
  c.num_train_steps = 1000
  c.log_every_steps = 10
  c.eval_every_steps = 250
  c.eval_steps = 8  # Batches per periodic eval; the final eval covers the split.
  c.final_eval_steps = -1  # -1: the whole validation split.
  c.checkpoint_every_steps = 250
  c.max_checkpoints_to_keep = 3
  c.nan_policy = "stop"  # Or 'skip': see tokjax.nonfinite.
  c.seed = 0
  c.optimizer = dict(
      learning_rate=1e-3, warmup_steps=100, min_lr_ratio=0.1,
      weight_decay=0.1, b1=0.9, b2=0.99, grad_clip_norm=1.0,
  )
  c.mesh = dict(shape=sharding.preset("dp")["shape"], axes=sharding.MESH_AXES)
  c.logical_axis_rules = sharding.preset("dp")["rules"]
  c.sampler = sampler_config()
  c.progress_bar = True
  return c


def parse_variant(arg: str | None) -> dict[str, str]:
  """'objective=md4,mesh=fsdp' -> {'objective': 'md4', 'mesh': 'fsdp'}.

  Raises:
    ValueError: an item without '='.
  """
  if not arg:
    return {}
  out = {}
  for item in arg.split(","):
    if "=" not in item:
      raise ValueError(f"Config variant {item!r} must look like key=value, e.g. objective=md4.")
    key, value = item.split("=", 1)
    out[key.strip()] = value.strip()
  return out


def apply_mesh_preset(config: ml_collections.ConfigDict, name: str) -> None:
  """Sets `config.mesh.shape` and `config.logical_axis_rules` from a preset."""
  p = sharding.preset(name)
  config.mesh.shape = p["shape"]
  config.logical_axis_rules = p["rules"]


def apply_size_and_mesh(config: ml_collections.ConfigDict, variant: dict, sizes: dict,
                        keys: str) -> None:
  """Applies a config file's `size=` (a key of `sizes`, default 'quickstart')
  and `mesh=` (a sharding preset, default 'dp') variants, popped from `variant`.

  Raises:
    ValueError: an unknown size, or variant keys left over (listing `keys`,
      the keys the config file takes).
  """
  size = variant.pop("size", "quickstart")
  if size not in sizes:
    raise ValueError(f"Unknown size {size!r}; use one of {sorted(sizes)}.")
  config.model.update(sizes[size])
  apply_mesh_preset(config, variant.pop("mesh", "dp"))
  if variant:
    raise ValueError(f"Unknown config variant keys {sorted(variant)}; use {keys}.")


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails early, with the fix, on settings that cannot work.

  Raises:
    ValueError: unknown objective/sampler/schedule/nan_policy, impossible sizes,
      data.tokens that do not fit the dataset, or a BPE vocabulary too small
      for the bytes and specials.
  """
  objective_class(config)  # Raises on an unknown name.
  if config.sampler.name:
    sampler_module(config.sampler.name)  # Raises on an unknown name, listing the known ones.
  get_schedule(config.md4.noise_schedule)
  if config.nan_policy not in NAN_POLICIES:
    raise ValueError(f"Unknown nan_policy {config.nan_policy!r}; use one of {NAN_POLICIES}.")
  m = config.model
  if m.d_model % m.num_heads:
    raise ValueError(f"model.d_model={m.d_model} must be divisible by model.num_heads={m.num_heads}.")
  for key in ("seq_len", "batch_size", "num_train_steps", "eval_every_steps", "checkpoint_every_steps"):
    if config[key] <= 0:
      raise ValueError(f"{key} must be positive, got {config[key]}.")
  image_len = image_seq_len(config.data.name)
  if image_len is not None and config.data.get("tokens", "pixels") not in IMAGE_TOKENS:
    raise ValueError(f"data.name={config.data.name!r} holds images: data.tokens="
                     f"{config.data.tokens!r}; use one of {IMAGE_TOKENS} (configs/fashion_mnist.py "
                     "sets it).")
  tokens = config.data.get("tokens", "bytes")
  if image_len is None and tokens not in TEXT_TOKENS:
    raise ValueError(f"data.name={config.data.name!r} holds text: data.tokens={tokens!r}; use "
                     f"one of {TEXT_TOKENS}.")
  if image_len is None and tokens == "bpe":
    bpe.check_vocab_size(config.data.bpe_vocab_size)


def check_image_windows(config: ml_collections.ConfigDict, tokenizer) -> None:
  """Checks that each window holds one image: seq_len = 1 + the tokenizer's
  tokens per image (BOS or a class token, then 784 pixels or 49 FSQ codes).

  Raises:
    ValueError: another seq_len, naming the one to set.
  """
  per_image = getattr(tokenizer, "tokens_per_image", None)
  if per_image is not None and config.seq_len != 1 + per_image:
    what = "pixels" if tokenizer.unit == "dim" else f"{tokenizer.unit}s"
    raise ValueError(
        f"data.name={config.data.name!r} is an image dataset: each window holds one image, "
        f"BOS + {per_image} {what}, so set seq_len={1 + per_image} (configs/"
        f"{config.data.name}.py does), not {config.seq_len}.")


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """Loads `path` (a configs/*.py file) with variant `arg`, as --config=PATH:ARG does.

  Raises:
    FileNotFoundError: no such config file.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"No config file {path!r}; pass e.g. configs/shakespeare.py.")
  spec = importlib.util.spec_from_file_location("tokjax_experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
