"""Data: byte tokenizer, TFDS builders (array_record, no TensorFlow), grain pipeline."""
from __future__ import annotations

from tokjax.data.datasets import BUILDERS, default_config, load_split
from tokjax.data.pipeline import eval_batches, to_global, train_iterator
from tokjax.data.tokenizer import ByteTokenizer

__all__ = [
    "BUILDERS",
    "ByteTokenizer",
    "default_config",
    "eval_batches",
    "load_split",
    "to_global",
    "train_iterator",
]
