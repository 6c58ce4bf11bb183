"""TFDS builder for Fashion-MNIST: 70,000 28x28 grayscale images of clothing.

Source: Xiao, Rasul & Vollgraf (2017), "Fashion-MNIST: a Novel Image Dataset
for Benchmarking Machine Learning Algorithms", arXiv:1708.07747; released by
Zalando Research under the MIT licence
(https://github.com/zalandoresearch/fashion-mnist). The data are four gzipped
IDX files, the format of LeCun et al.'s MNIST:

  train-images-idx3-ubyte.gz  train-labels-idx1-ubyte.gz   (60,000 examples)
  t10k-images-idx3-ubyte.gz   t10k-labels-idx1-ubyte.gz    (10,000 examples)

Splits, each in the order of the IDX files (example i has key i):
  * train: the first 55,000 of the 60,000 training images;
  * validation: the last 5,000 of the 60,000 training images;
  * test: the standard 10,000 test images.

The files are cached in `<data_dir>/downloads/fashion_mnist/`, gzipped or not.
`fetch_idx_files` fills that folder from the first source that works:
  1. the canonical URLs under `URL`;
  2. an installed copy in `INSTALLED_DIR`, e.g. from
     `apt-get install dataset-fashion-mnist` (Debian, Ubuntu);
  3. that Debian package fetched with `apt-get download dataset-fashion-mnist`
     (no root needed) and unpacked with `dpkg-deb -x`.
Offline, place the four files in that folder yourself.

Examples are `{'image': uint8[28, 28], 'label': int}`; `load_images` reads a
whole split back as numpy arrays, with no TensorFlow.
"""
from __future__ import annotations

import glob
import gzip
import os
import shutil
import subprocess
import tempfile
import urllib.request

import numpy as np
import tensorflow_datasets as tfds

URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
URL_TIMEOUT_S = 10.0
INSTALLED_DIR = "/usr/share/datasets/fashion-mnist"
DEB_PACKAGE = "dataset-fashion-mnist"
# Where the .deb keeps the files, relative to the root it unpacks into.
DEB_DIR = "usr/share/datasets/fashion-mnist"
APT_GET = "apt-get"
DPKG_DEB = "dpkg-deb"
CACHE_SUBDIR = "fashion_mnist"

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)

IMAGES_MAGIC = 2051  # IDX: unsigned bytes, 3 dimensions.
LABELS_MAGIC = 2049  # IDX: unsigned bytes, 1 dimension.
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10  # T-shirt/top, trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot.

CLASS_NAMES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


def _find_files(folder: str) -> tuple[dict[str, str], list[str]]:
  """({file name: path} found in `folder`, names missing), gzipped or not."""
  found, missing = {}, []
  for name in FILES:
    for candidate in (name, name[:-len(".gz")]):
      path = os.path.join(folder, candidate)
      if os.path.isfile(path):
        found[name] = path
        break
    else:
      missing.append(name)
  return found, missing


def _copy_into(src: str, cache_dir: str) -> None:
  """Copies the IDX files in `src` (gzipped or not) to `cache_dir`.

  Raises:
    FileNotFoundError: some of them are not in `src`.
  """
  found, missing = _find_files(src)
  if missing:
    raise FileNotFoundError(f"{src} lacks {', '.join(missing)}")
  for path in found.values():
    _atomic_copy(path, os.path.join(cache_dir, os.path.basename(path)))


def _atomic_copy(src: str, dst: str) -> None:
  """Copies through a temporary name, so `dst` is never left half written."""
  tmp = dst + ".incomplete"
  shutil.copyfile(src, tmp)
  os.replace(tmp, dst)


def _from_url(cache_dir: str) -> None:
  """Downloads the four files from `URL`, giving up at the first failure."""
  for name in _find_files(cache_dir)[1]:
    dst = os.path.join(cache_dir, name)
    tmp = dst + ".incomplete"
    try:
      with urllib.request.urlopen(URL + name, timeout=URL_TIMEOUT_S) as response:
        with open(tmp, "wb") as f:
          shutil.copyfileobj(response, f)
      os.replace(tmp, dst)
    finally:
      if os.path.exists(tmp):
        os.remove(tmp)


def _from_installed(cache_dir: str) -> None:
  if not os.path.isdir(INSTALLED_DIR):
    raise FileNotFoundError(f"{INSTALLED_DIR} does not exist")
  _copy_into(INSTALLED_DIR, cache_dir)


def _run(cmd: list[str], cwd: str) -> None:
  """Runs `cmd`; raises RuntimeError with its stderr's tail if it fails."""
  try:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                            check=False)
  except OSError as e:  # Not installed, not executable.
    raise RuntimeError(f"`{' '.join(cmd)}` could not start: {e}") from e
  if result.returncode:
    raise RuntimeError(f"`{' '.join(cmd)}` exited {result.returncode}: "
                       f"{result.stderr.strip()[-1000:]}")


def _from_debian_package(cache_dir: str) -> None:
  """apt-get download DEB_PACKAGE, dpkg-deb -x it, copy its files out."""
  with tempfile.TemporaryDirectory(dir=cache_dir, prefix="deb-") as tmp:
    _run([APT_GET, "download", DEB_PACKAGE], cwd=tmp)
    debs = glob.glob(os.path.join(tmp, "*.deb"))
    if len(debs) != 1:
      raise RuntimeError(f"`{APT_GET} download {DEB_PACKAGE}` left "
                         f"{len(debs)} .deb files in {tmp}, not one")
    root = os.path.join(tmp, "root")
    _run([DPKG_DEB, "-x", debs[0], root], cwd=tmp)
    _copy_into(os.path.join(root, DEB_DIR), cache_dir)


def fetch_idx_files(download_dir: str) -> dict[str, str]:
  """Returns {file name in FILES: path} of the four IDX files, fetching them.

  They are cached in `<download_dir>/fashion_mnist/` (for a builder,
  `<data_dir>/downloads/fashion_mnist/`), where each may also be stored
  un-gzipped (`train-images-idx3-ubyte`). Whatever that folder already holds
  is used as it is, before any source is tried.

  Raises:
    RuntimeError: every source failed; says why each did, and where to place
      the files by hand.
  """
  cache_dir = os.path.join(download_dir, CACHE_SUBDIR)
  os.makedirs(cache_dir, exist_ok=True)
  found, missing = _find_files(cache_dir)
  if not missing:
    return found
  sources = (
      (f"download from {URL} (timeout {URL_TIMEOUT_S:g} s)", _from_url),
      (f"installed copy in {INSTALLED_DIR}", _from_installed),
      (f"Debian package via `{APT_GET} download {DEB_PACKAGE}` + "
       f"`{DPKG_DEB} -x`", _from_debian_package),
  )
  failures = []
  for description, fetch in sources:
    try:
      fetch(cache_dir)
    except Exception as e:  # pylint: disable=broad-except
      failures.append(f"  {len(failures) + 1}. {description}: "
                      f"{type(e).__name__}: {e}")
      continue
    found, missing = _find_files(cache_dir)
    if not missing:
      return found
    failures.append(f"  {len(failures) + 1}. {description}: still missing "
                    f"{', '.join(missing)}")
  raise RuntimeError(
      f"Could not fetch Fashion-MNIST (missing {', '.join(missing)}). Sources "
      "tried, in order:\n" + "\n".join(failures) + "\n"
      f"Place the four files {', '.join(FILES)} (gzipped or not) in "
      f"{cache_dir} by hand: download them from {URL}, or run "
      f"`apt-get install {DEB_PACKAGE}` and copy them from {INSTALLED_DIR} "
      f"(if apt cannot locate {DEB_PACKAGE}, run `apt-get update` first)."
  )


def read_idx(path: str, magic: int) -> np.ndarray:
  """Returns the uint8 array in an IDX file, gzipped or not.

  IDX (http://yann.lecun.com/exdb/mnist/): a big-endian int32 magic number,
  0x08 << 8 | num_dims for unsigned bytes (2051 for images, 2049 for labels),
  then num_dims big-endian int32 sizes, then the data.

  Returns:
    uint8[num_images, rows, cols] for magic 2051, uint8[num_labels] for 2049.

  Raises:
    ValueError: the magic number is not `magic`, or the file is truncated.
  """
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b":
    raw = gzip.decompress(raw)
  found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
  if found != magic:
    raise ValueError(
        f"{path} has IDX magic number {found}, not {magic} (2051: images, "
        "2049: labels); is it the right Fashion-MNIST file, and whole?"
    )
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">i4"))
  size = int(np.prod(shape))
  if len(raw) - header != size:
    raise ValueError(f"{path} holds {len(raw) - header} bytes of data; its "
                     f"header {shape} says {size}. Is it truncated?")
  return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def read_split_arrays(
    paths: dict[str, str], images_name: str, labels_name: str
) -> tuple[np.ndarray, np.ndarray]:
  """(uint8[n, 28, 28] images, uint8[n] labels) from two of the IDX files.

  Raises:
    ValueError: bad magic numbers, image shapes, label values, or counts.
  """
  images = read_idx(paths[images_name], IMAGES_MAGIC)
  labels = read_idx(paths[labels_name], LABELS_MAGIC)
  if images.shape[1:] != IMAGE_SHAPE:
    raise ValueError(f"{paths[images_name]} holds images of shape "
                     f"{images.shape[1:]}, not {IMAGE_SHAPE}.")
  if len(images) != len(labels):
    raise ValueError(f"{paths[images_name]} holds {len(images)} images but "
                     f"{paths[labels_name]} {len(labels)} labels.")
  if labels.size and labels.max() >= len(CLASS_NAMES):
    raise ValueError(f"{paths[labels_name]} holds label {labels.max()}; "
                     f"Fashion-MNIST has {len(CLASS_NAMES)} classes.")
  return images, labels


class FashionMnist(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST, one `{'image': uint8[28, 28], 'label': int}` per image."""

  VERSION = tfds.core.Version("1.0.0")
  # No checksums file sits next to this module (see TextBuilder).
  code_path = None
  # How many of the 60,000 training images, the last ones, form validation.
  # Tests with tiny files lower it; a data_dir built with one value keeps it.
  NUM_VALIDATION = 5_000

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=list(CLASS_NAMES)),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
        citation=(
            "@article{xiao2017fashion,\n"
            "  title={Fashion-MNIST: a Novel Image Dataset for Benchmarking "
            "Machine Learning Algorithms},\n"
            "  author={Xiao, Han and Rasul, Kashif and Vollgraf, Roland},\n"
            "  journal={arXiv preprint arXiv:1708.07747},\n"
            "  year={2017}\n}"
        ),
        # Integer keys, written in key order: splits read back in IDX order.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    paths = fetch_idx_files(os.fspath(dl_manager.download_dir))
    train_images, train_labels = read_split_arrays(
        paths, TRAIN_IMAGES, TRAIN_LABELS)
    test_images, test_labels = read_split_arrays(paths, TEST_IMAGES, TEST_LABELS)
    num_val = self.NUM_VALIDATION
    if not 0 < num_val < len(train_images):
      raise ValueError(
          f"FashionMnist.NUM_VALIDATION is {num_val}, but the training files "
          f"hold {len(train_images)} images; it must be between 1 and "
          f"{len(train_images) - 1}."
      )
    cut = len(train_images) - num_val
    return {
        "train": self._generate_examples(train_images[:cut], train_labels[:cut]),
        "validation": self._generate_examples(train_images[cut:],
                                              train_labels[cut:]),
        "test": self._generate_examples(test_images, test_labels),
    }

  def _generate_examples(self, images, labels):
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": image, "label": int(label)}


def load_images(
    builder: tfds.core.DatasetBuilder, split: str, batch_size: int = 4096
) -> tuple[np.ndarray, np.ndarray]:
  """Returns (uint8[n, 28, 28] images, int32[n] labels) of a prepared split.

  Read with `builder.as_data_source`, so no TensorFlow; in split order, which
  is the IDX files' (validation's first image is training image 55,000).
  `split` may be a TFDS slice such as "train[:1000]".
  """
  source = builder.as_data_source(split=split)
  n = len(source)
  images = np.empty((n,) + IMAGE_SHAPE, dtype=np.uint8)
  labels = np.empty((n,), dtype=np.int32)
  for start in range(0, n, batch_size):
    stop = min(start + batch_size, n)
    for i, example in enumerate(source.__getitems__(range(start, stop)),
                                start):
      images[i] = example["image"]
      labels[i] = example["label"]
  return images, labels
