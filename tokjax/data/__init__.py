"""Data: byte, BPE and pixel tokenizers, TFDS builders (array_record, no TensorFlow), grain pipeline."""
from __future__ import annotations

from tokjax.data.bpe import BPETokenizer
from tokjax.data.datasets import (BUILDERS, IMAGE_CLASSES, IMAGE_SHAPES, TEXT_TOKENS, default_config,
                                  image_seq_len, load_split)
from tokjax.data.pipeline import eval_batches, to_global, train_iterator
from tokjax.data.tokenizer import DEFAULT_PIXEL_LEVELS, ByteTokenizer, PixelTokenizer

__all__ = [
    "BPETokenizer",
    "BUILDERS",
    "ByteTokenizer",
    "DEFAULT_PIXEL_LEVELS",
    "IMAGE_CLASSES",
    "IMAGE_SHAPES",
    "PixelTokenizer",
    "TEXT_TOKENS",
    "default_config",
    "eval_batches",
    "image_seq_len",
    "load_split",
    "to_global",
    "train_iterator",
]
