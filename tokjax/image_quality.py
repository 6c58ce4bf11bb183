"""Sample quality of an image run, judged by the project's own Fashion-MNIST classifier.

Two figures (`tokjax.image_metrics` computes them):

* `fid_fmnist`: the Frechet distance between the classifier's penultimate
  features of generated images and of a real split ("GANs Trained by a Two
  Time-Scale Update Rule Converge to a Local Nash Equilibrium", Heusel et al.
  2017, Sec. 3). It uses a small classifier trained here
  (configs/fashion_mnist.py:objective=classifier), not Inception, so its
  values are comparable only with other FID-FMNIST values from the same
  classifier run, never with ImageNet FID.
* `class_accuracy`: for a class-conditional run, the fraction of samples the
  classifier assigns to the class they were asked for.
"""
from __future__ import annotations

import jax
import numpy as np

from tokjax import generation, image_metrics
from tokjax.data.tokenizer import pixel_values
from tokjax.data import datasets, fashion_mnist

CHUNK = 1000  # Images per sampler call and per classifier call.


def real_images(config_data, split: str) -> tuple[np.ndarray, np.ndarray]:
  """(uint8[n, rows, cols] images, int32[n] labels) of an image dataset's split."""
  return fashion_mnist.load_images(datasets.prepare(config_data), split)


def classify(classifier_exp, classifier_params, images: np.ndarray):
  """(logits float32[n, classes], features float32[n, d]) of uint8[n, rows, cols] images
  under a classifier run, CHUNK images per call of one jitted program.

  Raises:
    ValueError: a run that is not a classifier.
  """
  if classifier_exp.objective.name != "classifier":
    raise ValueError(
        f"--classifier must be the workdir of a configs/fashion_mnist.py:objective=classifier "
        f"run; this one trained {classifier_exp.objective.name!r}.")

  @jax.jit
  def run(params, batch):
    return classifier_exp.model(params).logits_and_features(batch)

  pixels = pixel_values(images, classifier_exp.objective.levels)  # As it was trained.
  outputs = [run(classifier_params, pixels[i:i + CHUNK]) for i in range(0, len(images), CHUNK)]
  return tuple(np.concatenate([np.asarray(o[k]) for o in outputs]) for k in (0, 1))


def generate_images(exp, params, num_images: int, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
  """(uint8[num_images, rows, cols] samples, int[num_images] requested classes or
  None), from the run's sampler in chunks of CHUNK images; a class-conditional
  run draws the same number of each class (num_images rounded down to a
  multiple of the class count).
  """
  classes = getattr(exp.tokenizer, "num_classes", 0)
  per_call = CHUNK // classes if classes else CHUNK
  total = num_images // classes if classes else num_images
  images, requested = [], []
  for i, start in enumerate(range(0, total, per_call)):
    n = min(per_call, total - start)
    samples, record = generation.generate(exp, params, prompt="", num_samples=n, seed=seed + i)
    images.append(np.stack(samples))
    requested.append(np.asarray(record.get("classes", []), np.int64))
  return np.concatenate(images), (np.concatenate(requested) if classes else None)


def report(exp, params, classifier_exp, classifier_params, *, num_images: int,
           split: str = "test", seed: int = 0) -> dict:
  """FID-FMNIST of `num_images` samples of the run against the first
  `num_images` images of `split`, and (class-conditional runs) class accuracy.

  Returns a dict: fid_fmnist, num_generated, num_reference, reference_split,
  classifier_accuracy_on_reference (how well the judge itself classifies the
  real images), and class_accuracy for a class-conditional run.

  Raises:
    ValueError: a classifier run that is not one, or a text run.
  """
  if exp.tokenizer.unit == "byte":
    raise ValueError("--classifier judges image samples; for a text run use --judge.")
  generated, requested = generate_images(exp, params, num_images, seed)
  reference, labels = real_images(exp.config.data, split)
  reference, labels = reference[:num_images], labels[:num_images]
  gen_logits, gen_features = classify(classifier_exp, classifier_params, generated)
  ref_logits, ref_features = classify(classifier_exp, classifier_params, reference)
  out = {
      "fid_fmnist": image_metrics.fid(gen_features, ref_features),
      "num_generated": len(generated),
      "num_reference": len(reference),
      "reference_split": split,
      "classifier_accuracy_on_reference": image_metrics.class_accuracy(ref_logits, labels),
  }
  if requested is not None:
    out["class_accuracy"] = image_metrics.class_accuracy(gen_logits, requested)
  return out


def format_report(r: dict) -> str:
  """One line: FID-FMNIST (and class accuracy) with the image counts."""
  line = (f"FID-FMNIST = {r['fid_fmnist']:.3f} ({r['num_generated']} samples vs "
          f"{r['num_reference']} {r['reference_split']} images; features of this project's "
          f"classifier, whose accuracy on them is {r['classifier_accuracy_on_reference']:.4f})")
  if "class_accuracy" in r:
    line += f", class accuracy of the samples = {r['class_accuracy']:.4f}"
  return line
