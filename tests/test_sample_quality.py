"""Sample-quality figures: unigram entropy against closed forms."""
import math

import pytest

from tokjax.sample_quality import unigram_entropy


def test_unigram_entropy_closed_forms():
  assert unigram_entropy(["abab", "ba"]) == pytest.approx(1.0)
  assert unigram_entropy(["aaaa"]) == 0.0 and unigram_entropy([""]) == 0.0
  every_byte = bytes(range(128)).decode("ascii")  # 128 equally frequent bytes.
  assert unigram_entropy([every_byte, every_byte]) == pytest.approx(7.0)
  # UTF-8: 'é' is two bytes; counts pool over all samples.
  counts = [2, 1, 1]  # 'a' twice, then the two bytes of 'é'.
  expected = -sum(c / 4 * math.log2(c / 4) for c in counts)
  assert unigram_entropy(["a", "aé"]) == pytest.approx(expected)
