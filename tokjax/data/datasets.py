"""Dataset registry and `load_split`: a split of a TFDS builder as one token stream.

Builders write ArrayRecord files and are read back with `as_data_source`, so
TensorFlow is never needed. Add a dataset with one entry in `BUILDERS`.
"""
from __future__ import annotations

import os
from typing import Callable

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from tokjax.data.shakespeare import Shakespeare
from tokjax.data.text_files import TextFiles, TextFilesConfig

DEFAULT_DATA_DIR = "~/.cache/tokjax/tensorflow_datasets"
FILE_FORMAT = "array_record"


def default_config() -> ml_collections.ConfigDict:
  """The `config.data` fields: dataset name, TFDS data_dir, and text_files path."""
  return ml_collections.ConfigDict(
      dict(name="shakespeare", data_dir=DEFAULT_DATA_DIR, path="")
  )


def _shakespeare(config_data, data_dir: str) -> tfds.core.DatasetBuilder:
  del config_data  # Nothing to configure.
  return Shakespeare(data_dir=data_dir, file_format=FILE_FORMAT)


def _text_files(config_data, data_dir: str) -> tfds.core.DatasetBuilder:
  config = TextFilesConfig.for_path(config_data.path)
  return TextFiles(config=config, data_dir=data_dir, file_format=FILE_FORMAT)


BUILDERS: dict[str, Callable[..., tfds.core.DatasetBuilder]] = {
    "shakespeare": _shakespeare,
    "text_files": _text_files,
}


def prepare(config_data) -> tfds.core.DatasetBuilder:
  """Returns the builder named by `config_data.name`, prepared on disk.

  In a multi-process run, process 0 prepares first while the others wait, and
  then the others prepare too: a no-op on a shared disk (where writing at once
  would race on TFDS's final rename), the real thing on hosts with their own.

  Raises:
    ValueError: an unknown name, listing the registered ones.
  """
  if config_data.name not in BUILDERS:
    raise ValueError(
        f"Unknown data.name {config_data.name!r}; use one of "
        f"{', '.join(BUILDERS)} (e.g. --config.data.name=text_files)."
    )
  data_dir = os.path.expanduser(config_data.data_dir)
  first = jax.process_index() == 0
  if first:
    builder = _prepared(config_data, data_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"tokjax: {config_data.name} prepared by process 0")
  if not first:  # Built only now, so it sees what process 0 wrote.
    builder = _prepared(config_data, data_dir)
  return builder


def _prepared(config_data, data_dir: str) -> tfds.core.DatasetBuilder:
  builder = BUILDERS[config_data.name](config_data, data_dir)
  builder.download_and_prepare()
  return builder


def load_split(config_data, split: str, tokenizer) -> np.ndarray:
  """Returns int32[num_tokens]: every document of `split` as BOS + text + EOS.

  Documents come in the order TFDS stored them, fixed by their keys, so the
  stream is the same on every call and every host. Stored bytes that are not
  valid UTF-8 decode to U+FFFD.

  Raises:
    ValueError: an unknown dataset or split name.
  """
  builder = prepare(config_data)
  if split not in builder.info.splits:
    raise ValueError(
        f"{config_data.name} has no split {split!r}; it has "
        f"{', '.join(builder.info.splits)}."
    )
  source = builder.as_data_source(split=split)
  docs = [
      tokenizer.encode(source[i]["text"].decode("utf-8", errors="replace"),
                       add_bos=True, add_eos=True)
      for i in range(len(source))
  ]
  return np.concatenate(docs, dtype=np.int32)
