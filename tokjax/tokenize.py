"""CLI: train the byte-level BPE tokenizer of a text dataset, before training on it.

  python -m tokjax.tokenize --config configs/shakespeare.py [--config.data.bpe_vocab_size=4096]
  python -m tokjax.train --config configs/shakespeare.py --config.data.tokens=bpe \
      [--config.data.bpe_vocab_size=4096] --workdir DIR

Trains on the training split of `data.name` only (any text dataset, e.g.
--config.data.name=text_files --config.data.path=DIR or tfds:NAME) and writes
tokenizer.json to `tokjax.data.bpe.trained_path`, under data.data_dir, keyed by
the dataset, the text feature and data.bpe_vocab_size; it prints that path.
The same data and vocabulary flags always give the same file.
"""
from absl import app, flags
from ml_collections import config_flags

from tokjax.data import bpe

config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].", lock_config=True)
flags.mark_flags_as_required(["config"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  print(bpe.train_file(flags.FLAGS.config.data))


if __name__ == "__main__":
  app.run(main)
