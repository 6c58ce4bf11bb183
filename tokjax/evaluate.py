"""CLI: the likelihood report of the latest checkpoint on a split.

  python -m tokjax.evaluate --workdir DIR [--split validation|test] [--max_batches N]
  python -m tokjax.evaluate --workdir DIR --samples [--judge CAUSAL_WORKDIR]
  python -m tokjax.evaluate --workdir IMAGE_RUN --samples --classifier CLASSIFIER_WORKDIR \
      [--num_images 10000] [--split test]
  python -m tokjax.evaluate --workdir MAE_RUN --probe [--split test]

Prints the report and writes it as JSON to WORKDIR/eval_SPLIT.json (samples:
eval_samples.json; an image run judged by a classifier: eval_images.json, whose
FID-FMNIST and class accuracy also go to WORKDIR/metrics.jsonl at the
checkpoint's step; a linear probe: eval_probe.json). Under
`launch/local_multiprocess.sh N evaluate ...` every process scores its share of
each batch and process 0 alone prints and writes.
"""
import json
import os

import jax
from absl import app, flags

from tokjax import evaluation, image_quality, probe, runtime, sample_quality
from tokjax.data import load_split
from tokjax.metrics import MetricWriter
from tokjax.restore import load_run

flags.DEFINE_string("workdir", None, "The training run's workdir.")
flags.DEFINE_enum("split", "validation", ["train", "validation", "test"], "Data split.")
flags.DEFINE_integer("max_batches", -1, "Batches to score; -1 scores the whole split.")
flags.DEFINE_bool("samples", False, "Score samples instead: generative perplexity under "
                  "--judge and unigram entropy, written to WORKDIR/eval_samples.json.")
flags.DEFINE_string("judge", None, "Workdir of the run that judges samples (exact likelihood, "
                    "e.g. causal); default: the run itself.")
flags.DEFINE_string("classifier", None, "Image runs: the workdir of a configs/fashion_mnist.py:"
                    "objective=classifier run whose features give FID-FMNIST and class accuracy "
                    "of --num_images samples against --split (needs --samples).")
flags.DEFINE_integer("num_images", 10000, "Images generated and taken from --split for FID-FMNIST.")
flags.DEFINE_bool("probe", False, "MAE runs: linear-probe accuracy of the frozen encoder on "
                  "--split (trained on --probe_train_images training images), beside a probe on "
                  "raw pixels and on the encoder at initialisation; eval_probe.json.")
flags.DEFINE_integer("probe_train_images", 10000, "Training images the linear probe fits.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.initialize()
  f = flags.FLAGS
  exp, params, step = load_run(f.workdir)
  if f.probe:
    train_images, train_labels = image_quality.real_images(exp.config.data, "train")
    n = f.probe_train_images
    _write(f.workdir, "eval_probe.json", probe.format_report, dict(
        probe.report(exp, params, train_images[:n], train_labels[:n],
                     *image_quality.real_images(exp.config.data, f.split)),
        step=step, split=f.split, probe_train_images=n))
    return
  if f.samples and f.classifier:
    classifier, classifier_params, classifier_step = load_run(f.classifier)
    report = image_quality.report(exp, params, classifier, classifier_params,
                                  num_images=f.num_images, split=f.split,
                                  seed=exp.config.sampler.seed)
    _write(f.workdir, "eval_images.json", image_quality.format_report, dict(
        report, step=step, classifier=f.classifier, classifier_step=classifier_step))
    # Beside the run's training curves, so `tokjax.plot` draws FID-FMNIST by step.
    writer = MetricWriter(f.workdir)
    writer.write(step, {f"eval/{k}": report[k] for k in ("fid_fmnist", "class_accuracy")
                        if k in report})
    writer.close()
    return
  if f.samples:
    judge, judge_params, judge_step = load_run(f.judge) if f.judge else (exp, params, step)
    _write(f.workdir, "eval_samples.json", sample_quality.format_report, dict(
        sample_quality.report(exp, params, judge, judge_params), step=step,
        judge=f.judge or f.workdir, judge_step=judge_step))
    return
  tokens = load_split(exp.config.data, f.split, exp.tokenizer)
  report = evaluation.evaluate(
      exp, evaluation.make_eval_step(exp), params, tokens,
      max_batches=f.max_batches, split=f.split, seed=exp.config.seed,
  )
  _write(f.workdir, f"eval_{f.split}.json", evaluation.format_report, dict(report, step=step))


def _write(workdir: str, filename: str, format_report, report: dict) -> None:
  """Process 0 prints the report's line and writes it as JSON to WORKDIR/filename."""
  if jax.process_index() == 0:
    print(format_report(report))
    with open(os.path.join(workdir, filename), "w") as out:
      json.dump(report, out, indent=1)


if __name__ == "__main__":
  app.run(main)
