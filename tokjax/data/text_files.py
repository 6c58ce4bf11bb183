"""TFDS builder over your own text: a file, a directory, or a glob.

Files:
  * a directory means every `*.txt` and `*.jsonl` file below it, recursively;
  * anything else is a glob (`~` expanded, `**` allowed) or a single file.

Documents: a `.jsonl` file holds one document per non-empty line, in its
`text` field; any other file is one document, read as raw bytes. If that leaves
a single document (say, one text file), it is cut at line boundaries into
`NUM_PIECES` contiguous pieces of about equal size, so it can still be split.

Splits: documents are ranked by the SHA-256 of their key (relative path, plus
`:line` for JSONL records or `#piece` for pieces); the first
`k = max(1, round(HELD_OUT_FRACTION * n))` go to validation, the next k to
test, the rest (at least one) to train. The rule is deterministic and
independent of file order.

The builder config's name is a hash of the path and of every file's name,
size and modification time: two paths never share prepared data, and editing
a file gives a fresh build.
"""
from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import os

import tensorflow_datasets as tfds

from tokjax.data.text_builder import TextBuilder

HELD_OUT_FRACTION = 0.05
NUM_PIECES = 20
DIRECTORY_SUFFIXES = (".txt", ".jsonl")


def find_files(path: str) -> list[str]:
  """Returns the sorted files that `path` (directory, glob or file) names.

  Raises:
    FileNotFoundError: empty path or nothing found, saying what to pass.
  """
  if not path:
    raise FileNotFoundError(
        "data.name='text_files' needs your text: pass "
        "--config.data.path=DIR_OR_GLOB (a directory of .txt/.jsonl files, a "
        "glob such as 'corpus/**/*.txt', or one file)."
    )
  path = os.path.expanduser(path)
  if os.path.isdir(path):
    pattern = os.path.join(path, "**", "*")
    files = [f for f in glob.glob(pattern, recursive=True)
             if f.endswith(DIRECTORY_SUFFIXES)]
  else:
    files = glob.glob(path, recursive=True)
  files = sorted(f for f in files if os.path.isfile(f))
  if not files:
    raise FileNotFoundError(
        f"No text files found at data.path={path!r}. Pass "
        "--config.data.path=DIR_OR_GLOB naming existing .txt/.jsonl files."
    )
  return files


def _root(files: list[str]) -> str:
  """The directory that keys are relative to."""
  if len(files) == 1:
    return os.path.dirname(files[0])
  return os.path.commonpath(files)


def corpus_hash(path: str, files: list[str]) -> str:
  """Hex digest of the path and each file's name, size and mtime."""
  h = hashlib.sha256(os.path.abspath(os.path.expanduser(path)).encode())
  for f in files:
    stat = os.stat(f)
    h.update(f"\0{os.path.abspath(f)}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
  return h.hexdigest()[:16]


def _file_documents(file: str, key: str) -> list[tuple[str, bytes]]:
  """(key, bytes) for each document in one file."""
  with open(file, "rb") as f:
    data = f.read()
  if not file.endswith(".jsonl"):
    return [(key, data)]
  docs = []
  for line_no, line in enumerate(data.splitlines(), start=1):
    if not line.strip():
      continue
    docs.append((f"{key}:{line_no}", _jsonl_text(line, f"{file}:{line_no}")))
  return docs


def _jsonl_text(line: bytes, where: str) -> bytes:
  """The utf-8 bytes of one JSONL record's `text` field."""
  try:
    record = json.loads(line)
  except json.JSONDecodeError as e:
    raise ValueError(f"{where} is not valid JSON ({e}).") from e
  if not isinstance(record, dict) or not isinstance(record.get("text"), str):
    raise ValueError(f"{where} must be a JSON object with a string 'text' field.")
  return record["text"].encode("utf-8")


def _pieces(key: str, data: bytes) -> list[tuple[str, bytes]]:
  """Cuts one document at line ends into about NUM_PIECES equal pieces."""
  pieces: dict[int, list[bytes]] = {}
  offset = 0
  for line in data.splitlines(keepends=True):
    pieces.setdefault(offset * NUM_PIECES // len(data), []).append(line)
    offset += len(line)
  return [(f"{key}#{i:02d}", b"".join(lines)) for i, lines in pieces.items()]


def read_documents(files: list[str]) -> list[tuple[str, bytes]]:
  """(key, bytes) for every document, in file order."""
  root = _root(files)
  docs = []
  for f in files:
    docs.extend(_file_documents(f, os.path.relpath(f, root)))
  if len(docs) == 1:
    docs = _pieces(*docs[0])
  return docs


def assign_splits(keys: list[str]) -> dict[str, list[str]]:
  """Split name -> document keys, by the hash rule in the module docstring.

  Raises:
    ValueError: fewer than 3 documents.
  """
  if len(keys) < 3:
    raise ValueError(
        f"text_files needs at least 3 documents for train/validation/test; "
        f"found {len(keys)}. Add files (or lines) under data.path."
    )
  ranked = sorted(keys, key=lambda k: hashlib.sha256(k.encode()).hexdigest())
  k = max(1, round(HELD_OUT_FRACTION * len(keys)))
  return {"train": ranked[2 * k:], "validation": ranked[:k],
          "test": ranked[k:2 * k]}


@dataclasses.dataclass(eq=False)
class TextFilesConfig(tfds.core.BuilderConfig):
  """Builder config holding the user's path; name it with `for_path`."""

  path: str = ""

  @classmethod
  def for_path(cls, path: str) -> TextFilesConfig:
    files = find_files(path)
    return cls(name=f"corpus_{corpus_hash(path, files)}", path=path,
               description=f"Text files at {path}")


class TextFiles(TextBuilder):
  """Your own text files; build with `TextFiles(config=TextFilesConfig.for_path(p))`."""

  def split_documents(self, dl_manager):
    del dl_manager  # The files are local.
    docs = dict(read_documents(find_files(self.builder_config.path)))
    return {split: [(key, docs[key]) for key in keys]
            for split, keys in assign_splits(list(docs)).items()}
