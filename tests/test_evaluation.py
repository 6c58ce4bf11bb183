"""The likelihood report: kinds, the MD4 bound's standard error, formatting."""
import math

import jax
import numpy as np
import pytest

from test_objectives import TOY_PAD, NeighbourModel, _toy_md4
from tokjax import evaluation
from tokjax.objectives import REGISTRY
from tokjax.objectives.base import LIKELIHOOD_KINDS


def _md4_reports(eval_samples: int, seeds: int) -> list[dict]:
  """The report of one fixed batch (16 rows of up to 24 tokens) under many seeds."""
  obj = _toy_md4(eval_samples=eval_samples)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 6, (16, 24))
  x[::3, 18:] = TOY_PAD
  sums = jax.jit(jax.vmap(lambda r: evaluation.likelihood_sums(obj, NeighbourModel(), x, r)))(
      jax.random.split(jax.random.key(1), seeds))
  sums = jax.tree.map(np.asarray, sums)
  return [evaluation.report(obj, "test", {k: v[i] for k, v in sums.items()}) for i in range(seeds)]


def test_md4_standard_error_matches_the_spread_over_seeds():
  """The reported MC standard error (4 draws per sequence) agrees with the
  spread of the estimate across 400 seeds within 15%, about 3.5 times the
  sampling error of a standard deviation estimated from 400 draws (~3.5%):
  in mean square, and for the typical (median) run. A heavy-tailed estimator
  fails the second: the 1/t-weighted training estimator gives a median s.e.
  of a third of its spread here."""
  reports = _md4_reports(eval_samples=4, seeds=400)
  bpb = np.array([r["bits_per_byte"] for r in reports])
  stderr = np.array([r["bits_per_byte_stderr"] for r in reports])
  spread = bpb.std(ddof=1)
  assert spread > 0.01  # The toy bound is noisy enough to test.
  assert math.sqrt(np.mean(stderr**2)) == pytest.approx(spread, rel=0.15)
  assert np.median(stderr) == pytest.approx(spread, rel=0.15)


def test_one_mc_sample_reports_no_error_bar():
  report = _md4_reports(eval_samples=1, seeds=1)[0]
  assert report["mc_samples"] == 1 and "bits_per_byte_stderr" not in report
  line = evaluation.format_report(report)
  assert "±" not in line and "no error bar" in line


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_objective_declares_a_known_kind(name):
  assert REGISTRY[name].likelihood_kind in LIKELIHOOD_KINDS or name == "mixture"


def test_pixel_reports_say_bits_per_dim():
  """unit 'dim' (a PixelTokenizer) repeats bits per byte as bits per dim and prints bits/dim."""
  obj = _toy_md4(eval_samples=2)
  totals = dict(nats=100.0, var=4.0, tokens=30.0, bytes=25.0)
  text = evaluation.report(obj, "validation", totals)
  assert text["unit"] == "byte" and "bits_per_dim" not in text
  assert "bits/byte ±" in evaluation.format_report(text)
  r = evaluation.report(obj, "validation", totals, unit="dim")
  assert r["bits_per_dim"] == r["bits_per_byte"] == pytest.approx(100 / (25 * math.log(2)))
  assert r["bits_per_dim_stderr"] == r["bits_per_byte_stderr"] == pytest.approx(
      2 / (25 * math.log(2)))
  line = evaluation.format_report(r)
  assert f"{r['bits_per_dim']:.4f} bits/dim ± " in line and "bits/byte" not in line
