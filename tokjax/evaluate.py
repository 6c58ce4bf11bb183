"""CLI: the likelihood report of the latest checkpoint on a split.

  python -m tokjax.evaluate --workdir DIR [--split validation|test] [--max_batches N]
  python -m tokjax.evaluate --workdir DIR --samples [--judge CAUSAL_WORKDIR]

Prints the report and writes it as JSON to WORKDIR/eval_SPLIT.json. Under
`launch/local_multiprocess.sh N evaluate ...` every process scores its share of
each batch and process 0 alone prints and writes.
"""
import json
import os

import jax
from absl import app, flags

from tokjax import evaluation, runtime, sample_quality
from tokjax.data import load_split
from tokjax.restore import load_run

flags.DEFINE_string("workdir", None, "The training run's workdir.")
flags.DEFINE_enum("split", "validation", ["train", "validation", "test"], "Data split.")
flags.DEFINE_integer("max_batches", -1, "Batches to score; -1 scores the whole split.")
flags.DEFINE_bool("samples", False, "Score samples instead: generative perplexity under "
                  "--judge and unigram entropy, written to WORKDIR/eval_samples.json.")
flags.DEFINE_string("judge", None, "Workdir of the run that judges samples (exact likelihood, "
                    "e.g. causal); default: the run itself.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.initialize()
  f = flags.FLAGS
  exp, params, step = load_run(f.workdir)
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
