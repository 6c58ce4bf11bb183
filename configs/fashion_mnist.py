"""Pixel-level token models on Fashion-MNIST: 28x28 grey images as 784 tokens.

Each image is one window of BOS + its 784 pixels in raster order (seq_len
785), each pixel one of `levels` grey-level tokens (`PixelTokenizer`), and
likelihoods are reported in bits per dimension (per pixel): for causal the
exact NLL of the pixels given BOS, for md4 the ELBO bound (its BOS token's
tiny loss included). Validation is the last 5,000 training images.

Run:

  python -m tokjax.train --config configs/fashion_mnist.py --workdir /tmp/tokjax/fmnist_causal
  python -m tokjax.train --config configs/fashion_mnist.py:objective=md4 --workdir /tmp/tokjax/fmnist_md4
  python -m tokjax.sample --workdir /tmp/tokjax/fmnist_md4   # WORKDIR/samples_STEP.png

Variants (comma separated after ':'): objective=causal|md4, levels=N (grey
levels per pixel, 2..256; default 256), size=quickstart|tiny, mesh=dp|fsdp|fsdp_tp.
Any key can still be overridden with --config.KEY=VALUE.

Measured on the 2-core AMD EPYC CPU machine (no GPU), size=quickstart, 256
levels, 200 steps of 16 images (3,200 images, 6% of an epoch), the data
already prepared (the first run adds ~10 s: `apt-get download` of Debian's
dataset-fashion-mnist, unpacked, and the TFDS build) and a warm compile cache;
the wall time includes the evaluation of the first 512 validation images and
8 samples (2026-11-25):
  objective=causal: 5 min 50 s, ~7.9k train tokens/s, exact NLL 3.233 bits/dim.
  objective=md4:    7 min 05 s, ~6.9k train tokens/s, ELBO bound 3.636 +- 0.013
                    bits/dim (2 draws per image; linear schedule; 64 sampler steps).
For scale: a uniform model over 256 levels scores 8 bits/dim.
"""
from tokjax.config import apply_size_and_mesh, base_config, parse_variant
from tokjax.data import DEFAULT_PIXEL_LEVELS, image_seq_len

OBJECTIVES = ("causal", "md4")  # Those this config supports so far.

SIZES = {
    # Sized for ~8 minutes end to end on 2 CPU cores (see the docstring).
    "quickstart": dict(num_layers=3, d_model=128, num_heads=4, d_ff=512),
    # For tests and smoke runs.
    "tiny": dict(num_layers=2, d_model=64, num_heads=2, d_ff=128),
}


def get_config(arg: str | None = None):
  variant = parse_variant(arg)
  config = base_config()
  config.objective = variant.pop("objective", "causal")
  if config.objective not in OBJECTIVES:
    raise ValueError(
        f"configs/fashion_mnist.py supports objective={'|'.join(OBJECTIVES)}, not "
        f"{config.objective!r}; train text objectives with configs/shakespeare.py.")
  levels = variant.pop("levels", str(DEFAULT_PIXEL_LEVELS))
  if not levels.isdigit():
    raise ValueError(f"Config variant levels={levels!r} must be an integer in [2, 256], "
                     "e.g. levels=16.")
  apply_size_and_mesh(config, variant, SIZES, keys="objective, levels, size, mesh")
  config.data.name = "fashion_mnist"
  config.data.pixel_levels = int(levels)  # PixelTokenizer checks the range.
  config.seq_len = image_seq_len("fashion_mnist")  # 785: BOS + 784 pixels, one image per window.
  config.batch_size = 16
  config.num_train_steps = 200
  config.eval_every_steps = 100
  config.eval_steps = 4
  config.final_eval_steps = 32  # 512 of the 5,000 validation images.
  config.checkpoint_every_steps = 100
  config.optimizer.learning_rate = 3e-3
  config.optimizer.warmup_steps = 50
  config.md4.eval_samples = 2  # The fewest draws that give an error bar.
  # Whole images: AR draws all 784 pixels after BOS (masked samplers fill
  # the 785-token window anyway).
  config.sampler.num_samples = 8
  config.sampler.ar.max_new_tokens = config.seq_len - 1
  config.sampler.md4.num_steps = 64  # ~12 pixels per step; each step is a full forward.
  return config
