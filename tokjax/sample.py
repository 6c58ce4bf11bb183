"""CLI: sample from the latest checkpoint of a run.

  python -m tokjax.sample --workdir DIR [--prompt TEXT] [--num_samples N] \
      [--sampler.precision=float64 --sampler.ar.top_p=0.9 --sampler.md4.num_steps=128 ...]

Uses the objective's default sampler unless --sampler.name is set. Prints the
samples and writes them, with the sampler settings, to WORKDIR/samples_STEP.json.
"""
from absl import app, flags
from ml_collections import config_flags

from tokjax import runtime
from tokjax.config import sampler_config
from tokjax.restore import load_run
from tokjax.trainer import write_samples

flags.DEFINE_string("workdir", None, "The training run's workdir.")
flags.DEFINE_string("prompt", None, "Text prefix to continue (default: the run's config).")
flags.DEFINE_integer("num_samples", None, "Number of samples (default: the run's config).")
config_flags.DEFINE_config_dict("sampler", sampler_config(), "Sampler settings.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.initialize()
  sampler = flags.FLAGS.sampler
  if flags.FLAGS.prompt is not None:
    sampler.prompt = flags.FLAGS.prompt
  if flags.FLAGS.num_samples is not None:
    sampler.num_samples = flags.FLAGS.num_samples
  exp, params, step = load_run(flags.FLAGS.workdir, {"sampler": sampler})
  write_samples(exp, params, flags.FLAGS.workdir, step, f"samples_{step}.json")


if __name__ == "__main__":
  app.run(main)
