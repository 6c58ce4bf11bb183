"""Tests for tokjax.data.fashion_mnist on tiny fake IDX files: no network, no apt."""
from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess

import numpy as np
import pytest

from tokjax.data import fashion_mnist as fm
from tokjax.data.fashion_mnist import FashionMnist, fetch_idx_files, load_images

NUM_TRAIN, NUM_TEST, NUM_VALIDATION = 12, 4, 4
UNREACHABLE_URL = "http://127.0.0.1:9/"  # The discard port: refused at once.


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
  """The IDX encoding of a uint8 array: magic, big-endian int32 sizes, data."""
  header = magic.to_bytes(4, "big") + np.asarray(array.shape, ">i4").tobytes()
  return header + np.ascontiguousarray(array, np.uint8).tobytes()


def fake_data(seed: int = 0) -> dict[str, np.ndarray]:
  """File name -> array: random pixels, labels that cycle through the classes."""
  rng = np.random.default_rng(seed)
  return {
      fm.TRAIN_IMAGES: rng.integers(0, 256, (NUM_TRAIN, 28, 28), np.uint8),
      fm.TRAIN_LABELS: np.arange(NUM_TRAIN, dtype=np.uint8) % 10,
      fm.TEST_IMAGES: rng.integers(0, 256, (NUM_TEST, 28, 28), np.uint8),
      fm.TEST_LABELS: np.array([9, 0, 5, 3], np.uint8),
  }


def write_files(folder, data, gzipped=fm.FILES):
  """Writes `data` as IDX files in `folder`; those not in `gzipped` plain."""
  os.makedirs(folder, exist_ok=True)
  for name, array in data.items():
    magic = fm.IMAGES_MAGIC if array.ndim == 3 else fm.LABELS_MAGIC
    raw = idx_bytes(array, magic)
    if name in gzipped:
      raw = gzip.compress(raw)
    else:
      name = name[:-len(".gz")]
    with open(os.path.join(folder, name), "wb") as f:
      f.write(raw)


@pytest.fixture(autouse=True)
def offline(monkeypatch, tmp_path):
  """No real source is ever reached: each fails fast, or is a fake."""
  monkeypatch.setattr(fm, "URL", UNREACHABLE_URL)
  monkeypatch.setattr(fm, "URL_TIMEOUT_S", 2.0)
  monkeypatch.setattr(fm, "INSTALLED_DIR", str(tmp_path / "no-such-install"))
  monkeypatch.setattr(fm, "APT_GET", str(tmp_path / "no-such-apt-get"))
  monkeypatch.setattr(FashionMnist, "NUM_VALIDATION", NUM_VALIDATION)


def cache_dir(data_dir) -> str:
  return os.path.join(data_dir, "downloads", "fashion_mnist")


def build(data_dir) -> FashionMnist:
  builder = FashionMnist(data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return builder


def test_splits_round_trip_in_order(tmp_path):
  data = fake_data()
  # One file stored un-gzipped, as a hand-placed copy may be.
  write_files(cache_dir(tmp_path), data,
              gzipped=[n for n in fm.FILES if n != fm.TEST_LABELS])
  builder = build(tmp_path)

  cut = NUM_TRAIN - NUM_VALIDATION
  expected = {
      "train": (data[fm.TRAIN_IMAGES][:cut], data[fm.TRAIN_LABELS][:cut]),
      "validation": (data[fm.TRAIN_IMAGES][cut:], data[fm.TRAIN_LABELS][cut:]),
      "test": (data[fm.TEST_IMAGES], data[fm.TEST_LABELS]),
  }
  assert {s: builder.info.splits[s].num_examples for s in expected} == {
      "train": cut, "validation": NUM_VALIDATION, "test": NUM_TEST}
  for split, (want_images, want_labels) in expected.items():
    images, labels = load_images(builder, split)
    assert images.dtype == np.uint8 and images.shape == (len(want_images), 28, 28)
    assert labels.dtype == np.int32 and labels.shape == (len(want_labels),)
    np.testing.assert_array_equal(images, want_images)
    np.testing.assert_array_equal(labels, want_labels)

  assert builder.info.features["label"].names == list(fm.CLASS_NAMES)
  assert builder.info.features["label"].int2str(9) == "Ankle boot"
  images, labels = load_images(builder, "train[2:5]")
  np.testing.assert_array_equal(images, data[fm.TRAIN_IMAGES][2:5])
  # A second prepare reuses the build.
  assert build(tmp_path).info.splits["test"].num_examples == NUM_TEST


def test_bad_magic_number_is_named(tmp_path):
  data = fake_data()
  write_files(cache_dir(tmp_path), data)
  path = os.path.join(cache_dir(tmp_path), fm.TRAIN_LABELS)
  with open(path, "wb") as f:  # Labels written with the images' magic.
    f.write(gzip.compress(idx_bytes(data[fm.TRAIN_LABELS], fm.IMAGES_MAGIC)))
  with pytest.raises(ValueError, match=r"magic number 2051, not 2049") as e:
    build(tmp_path)
  assert fm.TRAIN_LABELS in str(e.value)


def test_truncated_file_and_bad_counts_are_named(tmp_path):
  data = fake_data()
  folder = cache_dir(tmp_path)
  write_files(folder, data)
  path = os.path.join(folder, fm.TEST_IMAGES)
  with open(path, "wb") as f:
    f.write(gzip.compress(idx_bytes(data[fm.TEST_IMAGES], fm.IMAGES_MAGIC)[:-5]))
  with pytest.raises(ValueError, match="truncated"):
    fm.read_idx(path, fm.IMAGES_MAGIC)
  write_files(folder, {fm.TEST_LABELS: data[fm.TEST_LABELS][:3]})
  write_files(folder, {fm.TEST_IMAGES: data[fm.TEST_IMAGES]})
  with pytest.raises(ValueError, match="4 images but .* 3 labels"):
    fm.read_split_arrays(fetch_idx_files(os.path.dirname(folder)),
                         fm.TEST_IMAGES, fm.TEST_LABELS)


def test_validation_larger_than_train_is_named(tmp_path, monkeypatch):
  write_files(cache_dir(tmp_path), fake_data())
  monkeypatch.setattr(FashionMnist, "NUM_VALIDATION", NUM_TRAIN)
  with pytest.raises(ValueError, match="NUM_VALIDATION is 12"):
    build(tmp_path)


def test_no_source_names_every_one_tried(tmp_path):
  with pytest.raises(RuntimeError) as e:
    fetch_idx_files(str(tmp_path / "downloads"))
  message = str(e.value)
  assert f"1. download from {UNREACHABLE_URL}" in message
  assert f"2. installed copy in {fm.INSTALLED_DIR}" in message
  assert f"3. Debian package via `{fm.APT_GET} download {fm.DEB_PACKAGE}`" in message
  assert "could not start" in message  # Why apt failed.
  assert cache_dir(tmp_path) in message  # Where to place the files.
  for name in fm.FILES:
    assert name in message
  # The builder surfaces the same error.
  with pytest.raises(RuntimeError, match="Could not fetch Fashion-MNIST"):
    build(tmp_path)


def test_installed_copy_is_cached(tmp_path, monkeypatch):
  data = fake_data(seed=1)
  installed = tmp_path / "usr-share"
  write_files(installed, data)
  monkeypatch.setattr(fm, "INSTALLED_DIR", str(installed))
  paths = fetch_idx_files(str(tmp_path / "downloads"))
  assert paths == {n: os.path.join(cache_dir(tmp_path), n) for n in fm.FILES}
  shutil.rmtree(installed)  # Now served from the cache alone.
  assert fetch_idx_files(str(tmp_path / "downloads")) == paths
  np.testing.assert_array_equal(
      fm.read_idx(paths[fm.TEST_LABELS], fm.LABELS_MAGIC), data[fm.TEST_LABELS])


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_debian_package_is_unpacked(tmp_path, monkeypatch):
  """A fake `apt-get` that builds the .deb locally, laid out as Debian's is."""
  data = fake_data(seed=2)
  tree = tmp_path / "pkg"
  write_files(tree / fm.DEB_DIR, data)
  os.makedirs(tree / "DEBIAN")
  (tree / "DEBIAN" / "control").write_text(
      f"Package: {fm.DEB_PACKAGE}\nVersion: 0.1\nArchitecture: all\n"
      "Maintainer: test <test@example.com>\nDescription: fake\n")
  deb = tmp_path / "fake.deb"
  subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(tree), str(deb)],
                 check=True, capture_output=True)
  apt_get = tmp_path / "fake-apt-get"
  apt_get.write_text(f'#!/bin/sh\n[ "$1 $2" = "download {fm.DEB_PACKAGE}" ] '
                     f'&& cp {deb} ./{fm.DEB_PACKAGE}_0.1_all.deb\n')
  apt_get.chmod(apt_get.stat().st_mode | stat.S_IXUSR)
  monkeypatch.setattr(fm, "APT_GET", str(apt_get))

  paths = fetch_idx_files(str(tmp_path / "downloads"))
  for name, array in data.items():
    magic = fm.IMAGES_MAGIC if array.ndim == 3 else fm.LABELS_MAGIC
    np.testing.assert_array_equal(fm.read_idx(paths[name], magic), array)
  # Only the four files are kept: the .deb and its unpacked tree are gone.
  assert sorted(os.listdir(cache_dir(tmp_path))) == sorted(fm.FILES)
