"""Byte-level BPE (HF `tokenizers`), trained on a dataset's training split.

`python -m tokjax.tokenize --config CONFIG` trains it (`train_file`) and
writes it to `trained_path(config.data)`:

  <data_dir>/tokjax_bpe/<dataset id>/<text_feature>_<V>/tokenizer.json

with the dataset's TFDS full name as its id (`datasets.dataset_id`, e.g.
shakespeare/1.0.0) and V = `data.bpe_vocab_size`. A run with `data.tokens='bpe'` reads that file
once and keeps a copy as WORKDIR/tokenizer.json (`tokenizer_for_run`), which
its later restarts, samples and evaluations read instead.

The vocabulary has the layout of `tokjax.data.tokenizer`, with S = V - 4 text
tokens::

  0 .. 255     the single bytes: id b is byte b, as in ByteTokenizer
  256 .. S-1   the merged tokens, in the order BPE learned them
  S .. S+3     <pad>, <bos>, <eos>, <mask> (in tokenizer.json too)
  S + 4 ..     the objective's extra specials (e.g. sentinels), added on load

Text is split GPT-2 style (`pre_tokenizers.ByteLevel`, no prefix space), so
every string encodes and decodes back exactly, and a special's name in plain
text encodes as ordinary text. Each text token stands for a fixed byte string:
`byte_lengths` gives its length, which bits per byte divides by.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable

import jax
import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from tokjax.data import datasets
from tokjax.data.tokenizer import BASE_SPECIALS, NUM_BYTES, SymbolTokenizer

FILE_NAME = "tokenizer.json"
MIN_VOCAB_SIZE = NUM_BYTES + len(BASE_SPECIALS) + 1  # The bytes, the specials, one merge.
TOKENIZE_COMMAND = "python -m tokjax.tokenize --config CONFIG"


def byte_chars() -> list[str]:
  """The character that stands for each byte 0..255 in a byte-level BPE vocabulary.

  GPT-2's reversible map: printable Latin-1 bytes ('!'..'~', '¡'..'¬',
  '®'..'ÿ') stand for themselves; the others, in byte order, for chr(256),
  chr(257), ...
  """
  printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
               *range(ord("®"), ord("ÿ") + 1)}
  chars, shifted = [], 0
  for b in range(NUM_BYTES):
    if b in printable:
      chars.append(chr(b))
    else:
      chars.append(chr(NUM_BYTES + shifted))
      shifted += 1
  return chars


def check_vocab_size(vocab_size: int) -> None:
  """Raises ValueError, naming the fix, when `vocab_size` cannot hold the 256
  bytes, the 4 base specials and at least one merge."""
  if isinstance(vocab_size, bool) or int(vocab_size) != vocab_size or vocab_size < MIN_VOCAB_SIZE:
    raise ValueError(
        f"data.bpe_vocab_size={vocab_size!r} is too small: it counts the {NUM_BYTES} byte "
        f"tokens and the {len(BASE_SPECIALS)} specials {', '.join(BASE_SPECIALS)}, plus at "
        f"least one merge. Use --config.data.bpe_vocab_size={MIN_VOCAB_SIZE} or more (e.g. "
        "4096), or --config.data.tokens=bytes.")


def _byte_level(model: models.Model) -> tokenizers.Tokenizer:
  tok = tokenizers.Tokenizer(model)
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  return tok


def train_bpe(texts: Iterable[str], vocab_size: int) -> tokenizers.Tokenizer:
  """Trains a byte-level BPE of `vocab_size` tokens (layout: module docstring).

  Deterministic: the same texts give the same merges and the same file.

  Raises:
    ValueError: a vocab_size below MIN_VOCAB_SIZE, or texts too short to learn
      vocab_size - 4 tokens.
  """
  check_vocab_size(vocab_size)
  num_text = vocab_size - len(BASE_SPECIALS)
  raw = _byte_level(models.BPE())
  raw.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=num_text, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  merges = [tuple(m.split(" ") if isinstance(m, str) else m)
            for m in json.loads(raw.to_str())["model"]["merges"]]
  vocab = {char: b for b, char in enumerate(byte_chars())}
  for left, right in merges:
    vocab.setdefault(left + right, len(vocab))
  if len(vocab) < num_text:
    raise ValueError(
        f"The training split holds too little text to learn {num_text} BPE tokens (it gave "
        f"{len(vocab)}); lower --config.data.bpe_vocab_size to at most "
        f"{len(vocab) + len(BASE_SPECIALS)}.")
  tok = _byte_level(models.BPE(vocab=vocab, merges=merges))
  tok.add_special_tokens(list(BASE_SPECIALS))
  return tok


class BPETokenizer(SymbolTokenizer):
  """Text as byte-level BPE ids; the specials as in `SymbolTokenizer`.

  Attributes (besides `SymbolTokenizer`'s; num_bytes = S, the text tokens,
  unit 'byte'):
    byte_lengths: tuple of vocab_size ints, the UTF-8 bytes each id stands
      for (0 for specials): bits per byte divides the nats by their sum.

  Raises:
    ValueError: a tokenizer whose vocabulary is not this module's layout.
  """

  unit = "byte"

  def __init__(self, tokenizer: tokenizers.Tokenizer, extra_special_tokens: tuple[str, ...] = ()):
    num_text = tokenizer.get_vocab_size(with_added_tokens=False)
    specials = tuple(tokenizer.id_to_token(num_text + i) for i in range(len(BASE_SPECIALS)))
    if num_text < NUM_BYTES or specials != BASE_SPECIALS:
      raise ValueError(
          f"This tokenizer ({num_text} text tokens, then {specials}) is not a tokjax BPE "
          f"(256 bytes first, then merges, then {BASE_SPECIALS}); train one with "
          f"{TOKENIZE_COMMAND}.")
    super().__init__(num_text, extra_special_tokens)
    tokenizer.encode_special_tokens = True  # '<bos>' in plain text is plain text.
    self._tokenizer = tokenizer
    lengths = [len(tokenizer.id_to_token(i)) for i in range(num_text)]  # One char per byte.
    self.byte_lengths = tuple(lengths) + (0,) * (self.vocab_size - num_text)

  @classmethod
  def from_file(cls, path: str, extra_special_tokens: tuple[str, ...] = (),
                vocab_size: int | None = None) -> "BPETokenizer":
    """Loads tokenizer.json at `path`; `vocab_size` (when given) is the V it must have.

    Raises:
      FileNotFoundError: no file at `path`, naming `python -m tokjax.tokenize`.
      ValueError: a file of another layout or vocabulary size.
    """
    if not os.path.isfile(path):
      raise FileNotFoundError(
          f"No BPE tokenizer at {path}. Train it on the training split first: "
          f"{TOKENIZE_COMMAND} (with the same --config.data.* flags as the run), then rerun.")
    tok = cls(tokenizers.Tokenizer.from_file(path), extra_special_tokens)
    trained = tok.num_bytes + len(BASE_SPECIALS)
    if vocab_size is not None and trained != vocab_size:
      raise ValueError(
          f"{path} holds a BPE of {trained} tokens, but data.bpe_vocab_size={vocab_size}; set "
          f"--config.data.bpe_vocab_size={trained}, or retrain with {TOKENIZE_COMMAND}.")
    return tok

  def save(self, path: str) -> None:
    """Writes tokenizer.json to `path` atomically: a reader never sees half a
    file, and processes of one run (each writes the same bytes) never clash."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    partial = f"{path}.tmp-{jax.process_index()}-{os.getpid()}"
    self._tokenizer.save(partial)
    os.replace(partial, path)

  def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> np.ndarray:
    """Returns int32[num_tokens]: the BPE ids of `text` (never a special), optionally framed.

    Raises UnicodeEncodeError for strings holding lone surrogates, which have
    no UTF-8 form.
    """
    text.encode("utf-8")  # The byte-level split would silently replace a lone surrogate.
    ids = np.asarray(self._tokenizer.encode(text, add_special_tokens=False).ids, np.int32)
    return self._framed(ids, add_bos, add_eos)

  def decode(self, ids) -> str:
    """Decodes int[num_tokens] to text, skipping specials.

    Byte runs that are not valid UTF-8 become U+FFFD.

    Raises:
      ValueError: not one 1-D sequence, or ids outside [0, vocab_size).
    """
    ids = self._checked_ids(ids)
    return self._tokenizer.decode(ids[ids < self.num_bytes].tolist())

  def token_bytes(self, ids) -> int:
    """UTF-8 bytes of text that int[...] ids stand for: bits per byte's denominator."""
    return int(np.asarray(self.byte_lengths)[np.asarray(ids)].sum())


def trained_path(config_data) -> str:
  """Where `python -m tokjax.tokenize` writes the BPE of `config_data` (module docstring).

  Raises:
    ValueError, FileNotFoundError: as `datasets.dataset_id`.
  """
  data_dir = os.path.expanduser(config_data.data_dir)
  feature = config_data.get("text_feature", datasets.DEFAULT_TEXT_FEATURE)
  return os.path.join(data_dir, "tokjax_bpe", datasets.dataset_id(config_data),
                      f"{feature}_{config_data.bpe_vocab_size}", FILE_NAME)


def train_file(config_data) -> str:
  """Trains the BPE of `config_data` on its training split, writes it to
  `trained_path`, and returns that path.

  Raises:
    ValueError: as `train_bpe`, or a dataset that is not text.
  """
  tok = train_bpe(datasets.iter_texts(config_data, "train"), config_data.bpe_vocab_size)
  path = trained_path(config_data)
  BPETokenizer(tok).save(path)
  return path


def tokenizer_for_run(config_data, workdir: str, extra_special_tokens: tuple[str, ...] = ()):
  """The BPETokenizer of a run: WORKDIR/tokenizer.json when the run has one;
  else the trained file (`trained_path`), which is then copied there (when
  `workdir` is given) so the run keeps the tokenizer it started with.

  Raises:
    FileNotFoundError: neither file exists, naming `python -m tokjax.tokenize`.
    ValueError: a file whose size is not data.bpe_vocab_size.
  """
  check_vocab_size(config_data.bpe_vocab_size)
  run_file = os.path.join(workdir, FILE_NAME) if workdir else ""
  if run_file and os.path.isfile(run_file):
    return BPETokenizer.from_file(run_file, extra_special_tokens, config_data.bpe_vocab_size)
  tok = BPETokenizer.from_file(trained_path(config_data), extra_special_tokens,
                               config_data.bpe_vocab_size)
  if run_file:
    tok.save(run_file)
  return tok
