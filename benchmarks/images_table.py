"""Every Fashion-MNIST objective through the real CLIs, with its metric and picture.

  python benchmarks/images_table.py --out /tmp/tokjax/images [--markdown docs/images.md] \
      [--fid_images 10000] [--pixel_fid_images 0] [--test_images 1024]

Runs, one after another (a finished run's row in --out is reused):
  classifier  train; `evaluate --split test` (accuracy). Its features judge samples.
  fsq         train; `evaluate --split test` (MSE, PSNR, codebook perplexity); pictures.
  maskgit     class-conditional on the fsq run's codes; samples (a row per class);
              `evaluate --samples --classifier` (FID-FMNIST, class accuracy).
  causal, md4 on pixels, the same steps x batch x tokens (equal compute); bits/dim on
              the first --test_images test images (exact NLL vs ELBO bound ± MC s.e.);
              samples (FID-FMNIST of --pixel_fid_images samples if > 0).
  mae         train; `evaluate --probe --split test` (linear probe: MAE encoder, the
              same encoder at initialisation, raw pixels); pictures.

The markdown (default docs/images.md) gets one row per run: the metric of its
kind, train images/s, wall time (train command only), and its picture, copied
to docs/images/.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

from tokjax.config import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "fashion_mnist.py")
ORDER = ("classifier", "fsq", "maskgit", "causal", "md4", "mae")


def cli(module: str, *args: str) -> None:
  subprocess.run([sys.executable, "-m", f"tokjax.{module}", *args], check=True, cwd=ROOT)


def newest(workdir: str, prefix: str, suffix: str) -> str:
  """The path of the newest WORKDIR/PREFIX*SUFFIX file (e.g. samples_1500.png)."""
  names = [n for n in os.listdir(workdir) if n.startswith(prefix) and n.endswith(suffix)]
  return os.path.join(workdir, max(names, key=lambda n: os.path.getmtime(os.path.join(workdir, n))))


def train(name: str, args, *flags: str) -> tuple[str, float, float]:
  """Trains configs/fashion_mnist.py:objective=NAME; (workdir, wall seconds, mean tokens/s)."""
  workdir = os.path.join(args.out, name)
  start = time.perf_counter()
  cli("train", f"--config={CONFIG}:objective={name}", f"--workdir={workdir}",
      "--config.progress_bar=False", *flags)
  wall = time.perf_counter() - start
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rates = [r["tokens_per_s"] for r in map(json.loads, f) if "tokens_per_s" in r]
  return workdir, wall, sum(rates) / len(rates)


def read(workdir: str, name: str) -> dict:
  with open(os.path.join(workdir, name)) as f:
    return json.load(f)


def run(name: str, args) -> dict:
  """Trains and measures one run; returns its row (cached as WORKDIR/row.json)."""
  workdir = os.path.join(args.out, name)
  row_path = os.path.join(workdir, "row.json")
  if os.path.exists(row_path):
    return read(workdir, "row.json")
  extra = [f"--config.data.tokenizer_workdir={os.path.join(args.out, 'fsq')}"] if name == "maskgit" else []
  workdir, wall, rate = train(name, args, *extra)
  row = dict(objective=name, wall_s=wall, tokens_per_s=rate)
  classifier = os.path.join(args.out, "classifier")
  test = ["--split=test"]
  if name in ("classifier", "fsq"):
    cli("evaluate", f"--workdir={workdir}", *test)
    row.update(read(workdir, "eval_test.json"))
  if name in ("causal", "md4"):
    batches = args.test_images // 16
    cli("evaluate", f"--workdir={workdir}", *test, f"--max_batches={batches}")
    row.update(read(workdir, "eval_test.json"))
  images = args.fid_images if name == "maskgit" else args.pixel_fid_images
  if name in ("maskgit", "causal", "md4") and images:
    cli("evaluate", f"--workdir={workdir}", "--samples", f"--classifier={classifier}",
        f"--num_images={images}", *test)
    row.update(read(workdir, "eval_images.json"))
  if name == "mae":
    cli("evaluate", f"--workdir={workdir}", "--probe", *test)
    row.update(read(workdir, "eval_probe.json"))
  if name != "classifier":
    cli("sample", f"--workdir={workdir}")
    row["picture"] = newest(workdir, "samples_", ".png")
  with open(row_path, "w") as f:
    json.dump(row, f)
  return row


def metric(r: dict) -> str:
  """The run's figure of its kind, as one markdown cell."""
  name = r["objective"]
  if name == "classifier":
    return f"test accuracy {r['accuracy']:.4f}"
  if name == "fsq":
    return (f"test MSE {r['mse']:.5f}, PSNR {r['psnr']:.2f} dB, codebook perplexity "
            f"{r['codebook_perplexity']:.0f} ({100 * r['codebook_usage']:.0f}% of codes used)")
  if name == "mae":
    return (f"linear probe {r['probe_accuracy']:.4f} (random-init encoder "
            f"{r['probe_accuracy_random_init']:.4f}, raw pixels {r['probe_accuracy_pixels']:.4f})")
  cells = []
  if "bits_per_dim" in r:
    stderr = f" ± {r['bits_per_dim_stderr']:.3f}" if "bits_per_dim_stderr" in r else ""
    cells.append(f"{r['kind']} {r['bits_per_dim']:.3f}{stderr} bits/dim "
                 f"({r['bytes'] // 784} test images)")
  if "fid_fmnist" in r:
    cells.append(f"FID-FMNIST {r['fid_fmnist']:.2f} ({r['num_generated']} samples vs "
                 f"{r['num_reference']} test images)")
  if "class_accuracy" in r:
    cells.append(f"class accuracy {r['class_accuracy']:.3f}")
  return ", ".join(cells)


def images_per_s(r: dict) -> float:
  """Training images per second: tokens/s over the run's window (785 or 50 tokens)."""
  return r["tokens_per_s"] / load_config_file(CONFIG, f"objective={r['objective']}").seq_len


def markdown(rows: list[dict], command: str, note: str) -> str:
  lines = [
      "# Images: Fashion-MNIST on one backbone and one trainer", "",
      f"Command: `{command}`", "",
      f"Hardware: the 2-core CPU machine, runs one after another. {note}".strip(), "",
      "Each run is `python -m tokjax.train --config configs/fashion_mnist.py:objective=NAME` "
      "with the config's defaults (size=quickstart: 3 layers x 128). FID-FMNIST uses the "
      "penultimate features of the classifier in the first row, not Inception: compare it only "
      "with other FID-FMNIST figures from that classifier. causal and md4 train the same steps x "
      "batch x 785 tokens (equal compute); their bits/dim are an exact NLL and an ELBO upper "
      "bound (± its Monte-Carlo standard error).", "",
      "| objective | metric (test split) | train images/s | wall time | picture |",
      "|---|---|---|---|---|",
  ]
  for r in rows:
    picture = f"![{r['objective']}](images/{r['objective']}.png)" if "picture" in r else ""
    lines.append(f"| {r['objective']} | {metric(r)} | {images_per_s(r):,.1f} | "
                 f"{r['wall_s'] / 60:.1f} min | {picture} |")
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--objectives", default=",".join(ORDER))
  parser.add_argument("--fid_images", type=int, default=10000)
  # Pixel models draw 784 tokens per image (md4: 64 passes over the 785-token
  # window), so their FID is off by default; their figure is bits/dim.
  parser.add_argument("--pixel_fid_images", type=int, default=0)
  parser.add_argument("--test_images", type=int, default=1024)
  parser.add_argument("--markdown", default=os.path.join(ROOT, "docs", "images.md"))
  parser.add_argument("--note", default="", help="A sentence on how this table was measured.")
  args = parser.parse_args()
  rows = [run(name, args) for name in args.objectives.split(",")]
  pictures = os.path.join(os.path.dirname(args.markdown), "images")
  os.makedirs(pictures, exist_ok=True)
  for r in rows:
    if "picture" in r:
      shutil.copy(r["picture"], os.path.join(pictures, f"{r['objective']}.png"))
  command = "python benchmarks/images_table.py " + shlex.join(sys.argv[1:])
  text = markdown(rows, command, args.note)
  with open(args.markdown, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
