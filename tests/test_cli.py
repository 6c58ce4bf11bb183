"""End to end through the real CLIs: train, sample, evaluate (kills and
preemption: test_chaos.py)."""
import json
import math
import os
import subprocess
import sys

import pytest

from chaos import losses
from test_cli_images import IMAGE_REPORTS
from tiny import CLI_ENV, ROOT, cli_flags, run_cli
from tokjax.objectives import REGISTRY

ENV = CLI_ENV
_cli = run_cli


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))


# Every registered objective, and a mixture whose first component is md4: the
# kind of likelihood its report must carry and the sampler it must end with.
EXPECTED = {
    "causal": ("exact", "ar"), "md4": ("elbo_upper_bound", "md4"),
    "prefix_lm": ("exact_conditional", "ar"), "meap": ("exact", "ar"), "fim": ("exact", "ar"),
    "cm3": ("exact", "ar"), "multi_token": ("exact", "ar"), "mlm": ("pseudo_likelihood", "maskgit"),
    "maskgit": ("pseudo_likelihood", "maskgit"), "span_corruption": ("pseudo_likelihood", "ar"),
    "mixture": ("pseudo_likelihood", "maskgit"), "electra": ("none", "maskgit"),
    "mixture:md4": ("elbo_upper_bound", "md4"),
}
MIXTURE_FIRST = {"mixture:md4": "--config.mixture.objectives=('md4', 'maskgit')"}


@pytest.fixture(scope="module")
def train(tmp_path_factory, data_dir):
  """train(spec) -> (workdir, stdout) of one CLI training run per spec, shared by tests."""
  runs = {}

  def run(spec):
    if spec not in runs:
      workdir = str(tmp_path_factory.mktemp(spec.replace(":", "_")))
      flags = cli_flags(data_dir, spec.split(":")[0]) + [MIXTURE_FIRST.get(spec, "")]
      runs[spec] = workdir, _cli("train", f"--workdir={workdir}", *filter(None, flags))
    return runs[spec]

  return run


@pytest.fixture(scope="module")
def causal_run(train):
  return train("causal")


def test_causal_train_writes_metrics_checkpoints_and_samples(causal_run):
  workdir, stdout = causal_run
  assert "exact" in stdout and "bits/byte" in stdout
  assert sorted(losses(workdir)) == [1, 2, 3, 4, 5, 6]
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "6"
  samples = json.load(open(os.path.join(workdir, "samples.json")))
  assert samples["precision"] == "float64" and len(samples["samples"]) == 2


def test_sample_cli_keeps_the_prompt_and_the_runs_settings(causal_run):
  """Flags override single settings; the rest are the run's (max_new_tokens=12), not defaults."""
  workdir, _ = causal_run
  _cli("sample", f"--workdir={workdir}", "--prompt=ROMEO:", "--num_samples=3",
       "--sampler.ar.top_p=0.5")
  record = json.load(open(os.path.join(workdir, "samples_6.json")))
  assert len(record["samples"]) == 3 and (record["top_p"], record["max_new_tokens"]) == (0.5, 12)
  assert all(s.startswith("ROMEO:") for s in record["samples"])


def test_sample_cli_spreads_the_rows_over_cpu_devices(causal_run):
  """--cpu_devices=2 makes two CPU devices and shards the rows over them (two
  prompts, two rows each); with --mesh=fsdp_tp the rows stay whole and the
  weights are split over the devices instead (tensor parallel). Greedy
  decoding gives the samples of one device either way."""
  workdir, _ = causal_run
  flags = ("--prompt=ROMEO:", "--prompt=O", "--num_samples=2", "--sampler.ar.temperature=0")
  one, two = _sample(workdir, *flags), _sample(workdir, *flags, "--cpu_devices=2")
  tensor = _sample(workdir, *flags, "--cpu_devices=2", "--mesh=fsdp_tp")
  assert (one["row_shards"], two["row_shards"], tensor["row_shards"]) == (1, 2, 1)
  assert len(one["samples"]) == 4 and two["samples"] == tensor["samples"] == one["samples"]


def test_a_mesh_the_devices_do_not_fit_names_cpu_devices(causal_run):
  out = subprocess.run([sys.executable, "-m", "tokjax.sample", f"--workdir={causal_run[0]}",
                        "--mesh=fsdp_tp"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode != 0 and "--cpu_devices=2" in out.stderr


def _sample(workdir, *flags):
  """Runs the sample CLI; returns its record (samples_6.json)."""
  _cli("sample", f"--workdir={workdir}", *flags)
  return json.load(open(os.path.join(workdir, "samples_6.json")))


def test_the_autoregressive_samplers_through_the_sample_cli(causal_run, train):
  """Speculative decoding (token recycling; the multi_token run's own heads),
  beam search over ragged prompts, and AR
  with a stop sequence and a rolling cache past seq_len (32), all through
  `python -m tokjax.sample`."""
  workdir, _ = causal_run
  record = _sample(workdir, "--sampler.name=speculative", "--prompt=ROMEO:", "--prompt=O")
  assert record["sampler"] == "speculative" and record["prompt"] == ["ROMEO:", "O"]
  assert [s[:6] for s in record["samples"]] == ["ROMEO:"] * 2 + ["O" + s[1:6] for s in
                                                                    record["samples"][2:]]
  record = _sample(workdir, "--sampler.name=beam", "--prompt=ROMEO:", "--prompt=O",
                   "--num_samples=1", "--sampler.beam.num_beams=3")
  assert record["num_beams"] == 3 and record["samples"][0].startswith("ROMEO:")
  record = _sample(workdir, "--prompt=A", "--sampler.ar.window=16", "--sampler.ar.sinks=2",
                   "--sampler.ar.max_new_tokens=40", "--sampler.ar.temperature=0",
                   "--sampler.ar.stop_sequences=('e',)")
  assert record["length"] == 42 and all(s.count("e") <= 1 for s in record["samples"])
  mtp, _ = train("multi_token")
  record = _sample(mtp, "--sampler.name=speculative", "--sampler.speculative.draft=multi_token",
                   "--sampler.speculative.num_draft_tokens=2")
  assert record["draft"] == "multi_token" and len(record["samples"]) == 2


def test_md4_evaluate_on_test_split(train):
  workdir, _ = train("md4")
  stdout = _cli("evaluate", f"--workdir={workdir}", "--split=test")
  report = json.load(open(os.path.join(workdir, "eval_test.json")))
  assert report["kind"] == "elbo_upper_bound" and "elbo_upper_bound" in stdout
  assert report["mc_samples"] == 4 and report["bits_per_byte_stderr"] > 0
  assert report["step"] == 6 and report["tokens"] > 0


@pytest.mark.parametrize("sampler", ["first_hitting", "maskgit"])
def test_md4_samples_with_its_other_samplers(train, sampler):
  workdir, _ = train("md4")
  _cli("sample", f"--workdir={workdir}", f"--sampler.name={sampler}", "--num_samples=2")
  record = json.load(open(os.path.join(workdir, "samples_6.json")))
  assert record["sampler"] == sampler and len(record["samples"]) == 2


def test_md4_samples_past_its_window_block_by_block(train):
  workdir, _ = train("md4")  # seq_len 32, md4 at 8 steps per round.
  _cli("sample", f"--workdir={workdir}", "--sampler.length=56", "--sampler.block_len=12",
       "--num_samples=2")
  record = json.load(open(os.path.join(workdir, "samples_6.json")))
  assert record["length"] == 56 and record["nfe"] == 3 * 8  # The window, then 24 / 12 rounds.


@pytest.mark.parametrize("spec", ["md4", "mlm", "fim", "cm3", "span_corruption"])
def test_infill_keeps_the_known_text(train, spec):
  workdir, _ = train(spec)
  _cli("sample", f"--workdir={workdir}", "--infill=To be, or ____ to be", "--hole_len=5",
       "--num_samples=2")
  record = json.load(open(os.path.join(workdir, "infill_6.json")))
  assert record["infill"] == "To be, or ____ to be" and len(record["samples"]) == 2
  assert all(s.startswith("To be, or ") and s.endswith(" to be") for s in record["samples"])


def test_a_model_that_cannot_infill_says_which_can(causal_run):
  workdir, _ = causal_run
  out = subprocess.run([sys.executable, "-m", "tokjax.sample", f"--workdir={workdir}",
                        "--infill=To be ____ be"], cwd=ROOT, env=ENV, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode != 0 and "cannot infill" in out.stderr
  assert all(name in out.stderr for name in ("md4", "mlm", "maskgit", "fim", "cm3", "span_corruption"))


def test_sample_quality_under_a_causal_judge(train):
  """md4 samples scored by the causal run: the report's entropy is the samples'
  byte entropy (recomputed here), and a non-exact judge is refused."""
  import collections
  workdir, _ = train("md4")
  judge, _ = train("causal")
  stdout = _cli("evaluate", f"--workdir={workdir}", "--samples", f"--judge={judge}")
  report = json.load(open(os.path.join(workdir, "eval_samples.json")))
  assert "[samples] md4" in stdout and report["judge_step"] == 6 and report["nfe"] >= 1
  data = "".join(report["samples"]).encode()
  freq = [c / len(data) for c in collections.Counter(data).values()]
  assert report["unigram_entropy"] == pytest.approx(-sum(p * math.log2(p) for p in freq))
  # Each window's first token has no context and is unscored (seq_len 32; BOS + EOS per sample).
  windows = -(-(len(data) + 2 * len(report["samples"])) // 32)
  assert len(data) - windows < report["scored_bytes"] <= len(data)
  assert 0 < report["gen_bits_per_byte"] < 20
  assert report["gen_perplexity_per_byte"] == pytest.approx(2 ** report["gen_bits_per_byte"])
  out = subprocess.run([sys.executable, "-m", "tokjax.evaluate", f"--workdir={judge}", "--samples",
                        f"--judge={workdir}"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                       timeout=300)
  assert out.returncode != 0 and "exact" in out.stderr


def test_incompatible_checkpoint_is_a_clear_error(causal_run, data_dir):
  workdir, _ = causal_run
  out = subprocess.run(
      [sys.executable, "-m", "tokjax.train", f"--workdir={workdir}", *cli_flags(data_dir),
       "--config.model.d_model=32"],
      cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "different config" in out.stderr and "d_model" in out.stderr


def test_expectations_cover_the_registry():
  assert set(EXPECTED) | set(IMAGE_REPORTS) == set(REGISTRY) | set(MIXTURE_FIRST)


@pytest.mark.parametrize("spec", sorted(EXPECTED))
def test_every_objective_trains_samples_and_evaluates(train, spec):
  """Trains, then samples with the objective's sampler or prints the documented
  'No sampler' line, then evaluates; the report carries the declared kind."""
  kind, sampler = EXPECTED[spec]
  objective = spec.split(":")[0]
  workdir, stdout = train(spec)
  assert f"{objective}: {kind}" in stdout or f"{objective}: no likelihood" in stdout
  assert (f"({sampler}, precision=" in stdout) if sampler else ("No sampler" in stdout)
  _cli("evaluate", f"--workdir={workdir}")
  report = json.load(open(os.path.join(workdir, "eval_validation.json")))
  assert report["kind"] == kind
  assert ("disc_auc" in report) == (objective == "electra")
