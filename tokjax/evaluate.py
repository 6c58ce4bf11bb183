"""CLI: the likelihood report of the latest checkpoint on a split.

  python -m tokjax.evaluate --workdir DIR [--split validation|test] [--max_batches N]

Prints the report and writes it as JSON to WORKDIR/eval_SPLIT.json. Under
`launch/local_multiprocess.sh N evaluate ...` every process scores its share of
each batch and process 0 alone prints and writes.
"""
import json
import os

import jax
from absl import app, flags

from tokjax import evaluation, runtime
from tokjax.data import load_split
from tokjax.restore import load_run

flags.DEFINE_string("workdir", None, "The training run's workdir.")
flags.DEFINE_enum("split", "validation", ["train", "validation", "test"], "Data split.")
flags.DEFINE_integer("max_batches", -1, "Batches to score; -1 scores the whole split.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.initialize()
  f = flags.FLAGS
  exp, params, step = load_run(f.workdir)
  tokens = load_split(exp.config.data, f.split, exp.tokenizer)
  report = evaluation.evaluate(
      exp, evaluation.make_eval_step(exp), params, tokens,
      max_batches=f.max_batches, split=f.split, seed=exp.config.seed,
  )
  report["step"] = step
  if jax.process_index() == 0:
    print(evaluation.format_report(report))
    with open(os.path.join(f.workdir, f"eval_{f.split}.json"), "w") as out:
      json.dump(report, out, indent=1)


if __name__ == "__main__":
  app.run(main)
