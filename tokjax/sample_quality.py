"""Sample quality on one scale for every sampler: generative perplexity and unigram entropy.

Masked-diffusion papers report the two together ("Masked Diffusion Models are
Secretly Time-Agnostic Masked Models and Exploit Inaccurate Categorical
Sampling", Zheng et al. 2024, Sec. 5): a judge model's perplexity of the
samples alone rewards low-entropy, repetitive text, and low-precision Gumbel
sampling lowers both numbers at once.
"""
from __future__ import annotations


import numpy as np

from tokjax import evaluation, generation


def unigram_entropy(texts: list[str]) -> float:
  """Entropy of the byte frequencies over all `texts`, in bits per byte (0 for no bytes)."""
  data = b"".join(t.encode("utf-8") for t in texts)
  if not data:
    return 0.0
  counts = np.bincount(np.frombuffer(data, np.uint8), minlength=256)
  p = counts[counts > 0] / len(data)
  return float(-(p * np.log2(p)).sum())


def judge_report(judge, judge_params, texts: list[str], seed: int) -> dict:
  """Scores `texts` under a judge run with an exact likelihood.

  Args:
    judge: the judge's `Experiment` (e.g. a causal run).
    judge_params: its parameters.
    texts: the samples; each is scored as BOS + text + EOS, packed into windows.

  Returns:
    gen_bits_per_byte (the judge's NLL of the samples, bits per byte) and
    gen_perplexity_per_byte = 2^gen_bits_per_byte, with the byte count.

  Raises:
    ValueError: a judge whose likelihood is not exact, or samples with no bytes.
  """
  if judge.objective.likelihood_kind != "exact":
    raise ValueError(
        f"The judge's objective {judge.objective.name!r} reports a "
        f"{judge.objective.likelihood_kind!r} figure; judge with a run whose likelihood is "
        "exact (causal, meap, fim, cm3, multi_token).")
  tok = judge.tokenizer
  tokens = np.concatenate([tok.encode(t, add_bos=True, add_eos=True) for t in texts])
  scored = evaluation.evaluate(judge, evaluation.make_eval_step(judge), judge_params, tokens,
                               max_batches=-1, split="samples", seed=seed)
  if not scored["bytes"]:
    raise ValueError("The samples hold no bytes to score; sample longer texts.")
  bpb = scored["bits_per_byte"]
  return {"gen_bits_per_byte": bpb, "gen_perplexity_per_byte": 2.0**bpb,
          "scored_bytes": scored["bytes"]}


def report(exp, params, judge, judge_params) -> dict:
  """Samples with the run's sampler settings, then its quality report.

  Returns the sampler record (sampler, precision, settings) with the samples,
  unigram_entropy (bits per byte) and the judge's figures (`judge_report`).

  Raises:
    ValueError: an image run or judge (it scores text only), or a judge
      whose likelihood is not exact.
  """
  if exp.tokenizer.unit != "byte" or judge.tokenizer.unit != "byte":
    raise ValueError("Sample quality (generative perplexity, unigram entropy) scores text; "
                     "for an image run, look at the samples' PNG (tokjax.sample) instead.")
  s = exp.config.sampler
  texts, record = generation.generate(exp, params, prompt=s.prompt, num_samples=s.num_samples,
                                      seed=s.seed)
  out = dict(record, unigram_entropy=unigram_entropy(texts), samples=texts)
  return dict(out, **judge_report(judge, judge_params, texts, seed=s.seed))


def format_report(r: dict) -> str:
  """One line: gen. perplexity and entropy beside the sampler and its precision."""
  return (f"[samples] {r['sampler']} ({r['precision']}, {len(r['samples'])} samples): "
          f"judge {r['gen_bits_per_byte']:.4f} bits/byte (perplexity "
          f"{r['gen_perplexity_per_byte']:.3f} per byte), unigram entropy "
          f"{r['unigram_entropy']:.4f} bits/byte")
