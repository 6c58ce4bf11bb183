"""End to end through the real CLIs for the image objectives: train, pictures,
evaluate, and MaskGIT on FSQ codes judged by a classifier run (its own file,
so that pytest-xdist runs it beside tests/test_cli.py)."""
import json
import os

import numpy as np
import pytest

from tiny import ROOT, run_cli

_cli = run_cli


# The image objectives that see pixel values, and an entry their validation report must have.
IMAGE_REPORTS = {"fsq": "codebook_perplexity", "mae": "mse", "classifier": "accuracy"}
IMAGE_FLAGS = dict(batch_size=8, num_train_steps=4, log_every_steps=1, eval_every_steps=2,
                   eval_steps=1, final_eval_steps=1, checkpoint_every_steps=2, progress_bar=False)


@pytest.fixture(scope="module")
def image_data_dir(tmp_path_factory):
  """A TFDS data_dir holding fake Fashion-MNIST IDX files, 5,032 training
  images (the last 5,000 are validation) and 16 test images, each image a
  bright band at its class's rows over noise, so the builder reads them
  instead of fetching the real files."""
  from test_fashion_mnist import cache_dir, write_files
  from tokjax.data import fashion_mnist as fm
  rng = np.random.default_rng(0)

  def images(labels):
    x = rng.integers(0, 64, (len(labels), 28, 28), np.uint8)
    for i, c in enumerate(labels):
      x[i, 2 * c + 4: 2 * c + 8] = 255
    return x

  train_labels, test_labels = np.arange(5032) % 10, np.arange(16) % 10
  data_dir = str(tmp_path_factory.mktemp("fmnist"))
  write_files(cache_dir(data_dir), {
      fm.TRAIN_IMAGES: images(train_labels), fm.TRAIN_LABELS: train_labels.astype(np.uint8),
      fm.TEST_IMAGES: images(test_labels), fm.TEST_LABELS: test_labels.astype(np.uint8)})
  return data_dir


@pytest.fixture(scope="module")
def train_image(tmp_path_factory, image_data_dir):
  """train_image(objective, *flags) -> (workdir, stdout) of one tiny image run per objective."""
  runs = {}

  def run(objective, *flags):
    if objective not in runs:
      workdir = str(tmp_path_factory.mktemp(f"image_{objective}"))
      runs[objective] = workdir, _cli(
          "train", f"--workdir={workdir}",
          f"--config={ROOT}/configs/fashion_mnist.py:objective={objective},size=tiny",
          f"--config.data.data_dir={image_data_dir}", "--config.sampler.num_samples=2",
          "--config.sampler.maskgit.num_steps=2", *flags,
          *(f"--config.{k}={v}" for k, v in IMAGE_FLAGS.items()))
    return runs[objective]

  return run


@pytest.mark.parametrize("objective", sorted(IMAGE_REPORTS))
def test_image_objectives_train_show_and_evaluate(train_image, objective):
  """Trains through the CLI, writes its pictures (classifier: none), and
  evaluates with the objective's own figures instead of a likelihood."""
  workdir, stdout = train_image(objective)
  assert f"{objective}: no likelihood" in stdout
  pictures = os.path.exists(os.path.join(workdir, "samples.png"))
  assert pictures == (objective != "classifier"), stdout[-2000:]
  _cli("evaluate", f"--workdir={workdir}")
  report = json.load(open(os.path.join(workdir, "eval_validation.json")))
  assert report["kind"] == "none" and IMAGE_REPORTS[objective] in report


def test_maskgit_on_fsq_codes_samples_each_class_and_is_judged(train_image):
  """MaskGIT on the FSQ run's codes (49 per image after the class token)
  samples a grid row per class with guidance, and a classifier run judges the
  samples: FID-FMNIST and class accuracy."""
  fsq, _ = train_image("fsq")
  classifier, _ = train_image("classifier")
  workdir, stdout = train_image("maskgit", f"--config.data.tokenizer_workdir={fsq}")
  assert "one row per class" in stdout and "maskgit: pseudo_likelihood" in stdout
  record = json.load(open(os.path.join(workdir, "samples.json")))
  assert record["classes"] == [c for c in range(10) for _ in range(2)]
  assert record["guidance_scale"] == 2.0 and np.asarray(record["samples"]).shape == (20, 28, 28)
  _cli("evaluate", f"--workdir={workdir}", "--samples", f"--classifier={classifier}",
       "--num_images=20", "--split=test")
  report = json.load(open(os.path.join(workdir, "eval_images.json")))
  assert report["num_generated"] == 20 and report["num_reference"] == 16
  assert report["fid_fmnist"] >= 0 and 0 <= report["class_accuracy"] <= 1
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    logged = [json.loads(line) for line in f][-1]
  assert logged == {"step": 4, "eval/fid_fmnist": report["fid_fmnist"],
                    "eval/class_accuracy": report["class_accuracy"]}


def test_mae_linear_probe_beside_its_baselines(train_image):
  workdir, _ = train_image("mae")
  _cli("evaluate", f"--workdir={workdir}", "--probe", "--split=test", "--probe_train_images=64")
  report = json.load(open(os.path.join(workdir, "eval_probe.json")))
  for key in ("probe_accuracy", "probe_accuracy_random_init", "probe_accuracy_pixels"):
    assert 0 <= report[key] <= 1
