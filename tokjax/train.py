"""CLI: train a token model.

  python -m tokjax.train --config configs/shakespeare.py:objective=md4 --workdir DIR \
      [--config.num_train_steps=2000 --config.batch_size=32 ...]

Rerunning the same command on the same workdir resumes from the latest checkpoint.
"""
from absl import app, flags
from ml_collections import config_flags

from tokjax import runtime, trainer

config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  runtime.initialize(compute_dtype=flags.FLAGS.config.model.dtype)
  trainer.train(flags.FLAGS.config, flags.FLAGS.workdir, started_at=runtime.process_start_time())


if __name__ == "__main__":
  app.run(main)
