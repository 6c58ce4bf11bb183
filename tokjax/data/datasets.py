"""Dataset registry and `load_split`: a split of a TFDS builder as one token stream.

Builders write ArrayRecord files and are read back with `as_data_source`, so
TensorFlow is never needed. Add a dataset with one entry in `BUILDERS` (and,
for grey images, one in `IMAGE_SHAPES`).

Text datasets load as text tokens (`ByteTokenizer`'s bytes, or a
`bpe.BPETokenizer`'s ids), BOS + text + EOS per document. Any TFDS dataset
prepared (as ArrayRecord) in `data.data_dir` loads as text by name,
`data.name='tfds:NAME'` (NAME as `tfds.builder` takes it, e.g.
'wikipedia/20230601.en' or 'lm1b:1.1.0'), its text in feature
`data.text_feature`. Image datasets load as pixel tokens (`PixelTokenizer`), BOS + the
pixels in raster order per image, so that with seq_len = 1 + rows * cols
(`image_seq_len`) every packed window is exactly one image.
"""
from __future__ import annotations

import os
from typing import Callable, Iterator

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from tokjax.data import fashion_mnist
from tokjax.data.fashion_mnist import FashionMnist
from tokjax.data.shakespeare import Shakespeare
from tokjax.data.text_files import TextFiles, TextFilesConfig

DEFAULT_DATA_DIR = "~/.cache/tokjax/tensorflow_datasets"
FILE_FORMAT = "array_record"
TFDS_PREFIX = "tfds:"
DEFAULT_TEXT_FEATURE = "text"
TEXT_TOKENS = ("bytes", "bpe")  # config.data.tokens of a text dataset.


# config.data entries that change how batches are made, not which: a run may
# resume with other values.
RUNTIME_DATA_KEYS = ("worker_count", "log_example_ids")


def default_config() -> ml_collections.ConfigDict:
  """The `config.data` fields: dataset name, TFDS data_dir, text_files path,
  text tokens ('bytes' or 'bpe'), the BPE's vocabulary size (`bpe`), the
  feature holding a TFDS dataset's text, and the grain worker processes that
  build training batches (`worker_count`, 0: in the training process; the
  batches are the same for any count, `pipeline.train_iterator`), and
  `log_example_ids`: each process writes the windows it fed each step to
  WORKDIR/example_ids/process_<index>.jsonl (`TrainIterator.example_ids`).

  An image dataset's config adds `pixel_levels`, the grey levels per pixel
  (`PixelTokenizer`; DEFAULT_PIXEL_LEVELS when absent), and sets `tokens` to
  'pixels' or 'fsq', as configs/fashion_mnist.py does. A run saved before a
  field existed compares as if it had today's default (`data_signature`).
  """
  return ml_collections.ConfigDict(
      dict(name="shakespeare", data_dir=DEFAULT_DATA_DIR, path="", tokens="bytes",
           bpe_vocab_size=4096, text_feature=DEFAULT_TEXT_FEATURE, worker_count=0,
           log_example_ids=False)
  )


def data_signature(data: dict | None) -> dict:
  """A saved `config.data` dict completed with the defaults of the fields added
  since it was saved ('tokens' defaults to 'pixels' for image datasets), so
  that a checkpoint compares equal to today's config of the same run.
  Settings that change how batches are made, not which (RUNTIME_DATA_KEYS),
  are left out."""
  defaults = default_config().to_dict()
  if (data or {}).get("name") in IMAGE_SHAPES:
    defaults["tokens"] = "pixels"
  merged = {**defaults, **(data or {})}
  return {k: v for k, v in merged.items() if k not in RUNTIME_DATA_KEYS}


def _shakespeare(config_data, data_dir: str) -> tfds.core.DatasetBuilder:
  del config_data  # Nothing to configure.
  return Shakespeare(data_dir=data_dir, file_format=FILE_FORMAT)


def _text_files(config_data, data_dir: str) -> tfds.core.DatasetBuilder:
  config = TextFilesConfig.for_path(config_data.path)
  return TextFiles(config=config, data_dir=data_dir, file_format=FILE_FORMAT)


def _fashion_mnist(config_data, data_dir: str) -> tfds.core.DatasetBuilder:
  del config_data  # pixel_levels acts in the tokenizer, not in the stored data.
  return FashionMnist(data_dir=data_dir, file_format=FILE_FORMAT)


BUILDERS: dict[str, Callable[..., tfds.core.DatasetBuilder]] = {
    "fashion_mnist": _fashion_mnist,
    "shakespeare": _shakespeare,
    "text_files": _text_files,
}

# The image datasets among BUILDERS: name -> (rows, cols) of their grey
# images, stored as {'image': uint8[rows, cols], ...} examples. The rest hold text.
IMAGE_SHAPES: dict[str, tuple[int, int]] = {
    "fashion_mnist": fashion_mnist.IMAGE_SHAPE,
}
# Their label counts: with `config.data.class_token` each window starts with
# its image's class token instead of BOS.
IMAGE_CLASSES: dict[str, int] = {
    "fashion_mnist": fashion_mnist.NUM_CLASSES,
}


def image_seq_len(name: str) -> int | None:
  """The seq_len whose windows hold one image each, 1 + rows * cols (BOS and
  the pixels; 785 for fashion_mnist); None for a text dataset."""
  shape = IMAGE_SHAPES.get(name)
  return None if shape is None else 1 + shape[0] * shape[1]


def prepare(config_data) -> tfds.core.DatasetBuilder:
  """Returns the builder named by `config_data.name`, prepared on disk.

  In a multi-process run, process 0 prepares first while the others wait, and
  then the others prepare too: a no-op on a shared disk (where writing at once
  would race on TFDS's final rename), the real thing on hosts with their own.

  A 'tfds:NAME' dataset is only opened: it must be prepared already.

  Raises:
    ValueError: an unknown name, listing the registered ones, or a tfds:NAME
      not stored as ArrayRecord.
    FileNotFoundError: tfds:NAME not prepared in data_dir, naming how to prepare it.
  """
  if config_data.name not in BUILDERS and not config_data.name.startswith(TFDS_PREFIX):
    raise ValueError(
        f"Unknown data.name {config_data.name!r}; use one of "
        f"{', '.join(BUILDERS)} (e.g. --config.data.name=text_files), or "
        f"{TFDS_PREFIX}NAME for a TFDS dataset prepared in data.data_dir."
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
  if config_data.name.startswith(TFDS_PREFIX):
    return _tfds_builder(config_data.name[len(TFDS_PREFIX):], data_dir)
  builder = BUILDERS[config_data.name](config_data, data_dir)
  builder.download_and_prepare()
  return builder


def _tfds_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
  """The read-only builder of TFDS dataset `name` as prepared in `data_dir`
  (no dataset code is needed, so nothing is downloaded)."""
  prepare_hint = (
      f"Prepare it there as ArrayRecord, e.g. `tfds build {name} --data_dir={data_dir} "
      f"--file_format={FILE_FORMAT}` (or tfds.builder({name!r}, data_dir={data_dir!r}, "
      f"file_format={FILE_FORMAT!r}).download_and_prepare()), or point "
      "--config.data.data_dir at the directory where it is prepared.")
  # A missing directory is checked first: TFDS's own search for it imports its
  # whole catalog, which clashes with our fashion_mnist builder.
  if not os.path.isdir(os.path.join(data_dir, name.split("/")[0].split(":")[0])):
    raise FileNotFoundError(f"data.name='{TFDS_PREFIX}{name}' is not prepared in "
                            f"data.data_dir={data_dir}. {prepare_hint}")
  try:
    builder = tfds.core.read_only_builder.builder_from_files(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise FileNotFoundError(f"data.name='{TFDS_PREFIX}{name}' is not prepared in "
                            f"data.data_dir={data_dir} ({e}). {prepare_hint}") from e
  if builder.info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
    raise ValueError(
        f"{TFDS_PREFIX}{name} in {data_dir} is stored as {builder.info.file_format.value}; "
        f"TFDS data sources read ArrayRecord only. {prepare_hint}")
  return builder


def dataset_id(config_data) -> str:
  """The prepared dataset's TFDS full name, e.g. 'shakespeare/1.0.0' or
  'text_files/corpus_<hash>/1.0.0': it names the data a BPE is trained on.

  Raises:
    as `prepare`.
  """
  return prepare(config_data).info.full_name


def load_split(config_data, split: str, tokenizer) -> np.ndarray:
  """Returns int32[num_tokens]: every document of `split` as one token stream.

  Text: each document as BOS + its text tokens + EOS (`iter_texts`). Images:
  each image as BOS + its rows * cols pixel ids in raster order (a
  PixelTokenizer's), so num_tokens = num_images * (1 + rows * cols); a
  tokenizer with class tokens puts the image's class token in BOS's place.

  Documents come in the order TFDS stored them, fixed by their keys, so the
  stream is the same on every call and every host.

  Raises:
    ValueError: an unknown dataset, split or text feature, or a tokenizer that
      does not fit the dataset (pixels for images, text tokens for text).
    FileNotFoundError: a tfds:NAME dataset not prepared in data_dir.
  """
  check_tokenizer(config_data.name, tokenizer)
  if config_data.name not in IMAGE_SHAPES:
    return np.concatenate([tokenizer.encode(text, add_bos=True, add_eos=True)
                           for text in iter_texts(config_data, split)], dtype=np.int32)
  images, labels = fashion_mnist.load_images(_split_builder(config_data, split), split)
  if hasattr(tokenizer, "encode_images"):  # FSQ codes: one batched encoder pass.
    return tokenizer.encode_images(images, labels if tokenizer.num_classes else None).reshape(-1)
  if not tokenizer.num_classes:
    labels = [None] * len(images)
  return np.concatenate([tokenizer.encode(image, add_bos=True, label=label)
                         for image, label in zip(images, labels)], dtype=np.int32)


def iter_texts(config_data, split: str) -> Iterator[str]:
  """Each document of a text dataset's `split`, in stored order: feature
  `config_data.text_feature` ('text' when absent). Stored bytes that are not
  valid UTF-8 decode to U+FFFD.

  Raises (at the call, before the first document):
    ValueError: an image dataset, an unknown split, or a missing feature,
      listing the ones there are.
    FileNotFoundError: a tfds:NAME dataset not prepared in data_dir.
  """
  if config_data.name in IMAGE_SHAPES:
    raise ValueError(f"data.name={config_data.name!r} holds images, not text; text tokens "
                     "(and python -m tokjax.tokenize) are for text datasets.")
  builder = _split_builder(config_data, split)
  feature = config_data.get("text_feature", DEFAULT_TEXT_FEATURE)
  features = builder.info.features.keys()
  if feature not in features:
    raise ValueError(
        f"{config_data.name} has no feature {feature!r}; it has {', '.join(features)}. "
        "Name the one holding the text with --config.data.text_feature=NAME.")
  source = builder.as_data_source(split=split)
  return (_as_text(source[i][feature]) for i in range(len(source)))


def _as_text(value) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _split_builder(config_data, split: str) -> tfds.core.DatasetBuilder:
  """The prepared builder, checked to have `split`."""
  builder = prepare(config_data)
  if split not in builder.info.splits:
    raise ValueError(
        f"{config_data.name} has no split {split!r}; it has "
        f"{', '.join(builder.info.splits)}."
    )
  return builder


def check_tokenizer(name: str, tokenizer) -> None:
  """Checks that `tokenizer` fits dataset `name`: a PixelTokenizer of the
  dataset's image shape for an image dataset, a text tokenizer (bytes or
  BPE) for text.

  Raises:
    ValueError: a mismatch, naming the fix.
  """
  pixels = getattr(tokenizer, "unit", "byte") in ("dim", "code")  # Pixels or FSQ codes.
  shape = IMAGE_SHAPES.get(name)
  if shape is None and pixels:
    raise ValueError(
        f"data.name={name!r} holds text, but the tokenizer is a {type(tokenizer).__name__}, "
        f"which encodes images ({', '.join(IMAGE_SHAPES)}); use a ByteTokenizer or BPETokenizer "
        "(make_tokenizer(config) picks the right one), e.g. configs/shakespeare.py.")
  if shape is not None and not pixels:
    raise ValueError(
        f"data.name={name!r} holds images, which load as pixel tokens, but the tokenizer "
        f"is a {type(tokenizer).__name__}; use a PixelTokenizer (make_tokenizer(config) "
        "picks the right one), e.g. configs/fashion_mnist.py.")
  if shape is not None and tuple(tokenizer.image_shape) != tuple(shape):
    raise ValueError(
        f"data.name={name!r} holds {shape[0]}x{shape[1]} images, but the {type(tokenizer).__name__} "
        f"encodes {tokenizer.image_shape}; build it with image_shape={shape}.")
