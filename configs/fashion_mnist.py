"""Fashion-MNIST: pixel and FSQ-code token models, the FSQ tokenizer, MAE and a classifier.

Every objective reads one image per window. Pixel models see BOS + the 784
pixels in raster order (seq_len 785), each one of `levels` grey-level tokens
(`PixelTokenizer`), and report bits per dimension: for causal the exact NLL
of the pixels given BOS, for md4 the ELBO bound (its BOS token's tiny loss
included). With tokens=fsq a window is a class token + the 49 codes of a
trained FSQ tokenizer (seq_len 50). Validation is the last 5,000 training
images.

Run (each line one run; the fsq run comes before the models of its codes):

  python -m tokjax.train --config configs/fashion_mnist.py --workdir /tmp/tokjax/fmnist_causal
  python -m tokjax.train --config configs/fashion_mnist.py:objective=md4 --workdir /tmp/tokjax/fmnist_md4
  python -m tokjax.train --config configs/fashion_mnist.py:objective=fsq --workdir /tmp/tokjax/fmnist_fsq
  python -m tokjax.train --config configs/fashion_mnist.py:objective=maskgit --workdir /tmp/tokjax/fmnist_maskgit \
      --config.data.tokenizer_workdir=/tmp/tokjax/fmnist_fsq
  python -m tokjax.train --config configs/fashion_mnist.py:objective=classifier --workdir /tmp/tokjax/fmnist_classifier
  python -m tokjax.train --config configs/fashion_mnist.py:objective=mae --workdir /tmp/tokjax/fmnist_mae
  python -m tokjax.sample --workdir /tmp/tokjax/fmnist_maskgit   # WORKDIR/samples_STEP.png, a row per class

Variants (comma separated after ':'): objective=causal|md4|maskgit|fsq|mae|classifier,
tokens=pixels|fsq (what a token model reads: maskgit defaults to fsq, causal
and md4 to pixels), levels=N (grey levels per pixel, 2..256; default 256),
size=quickstart|tiny, mesh=dp|fsdp|fsdp_tp. Any key can still be overridden
with --config.KEY=VALUE.

Measured on the 2-core AMD EPYC CPU machine (no GPU), size=quickstart (3 x 128),
the data already prepared (the first run adds ~20 s: `apt-get download` of
Debian's dataset-fashion-mnist, unpacked, and the TFDS build), one run at a
time; the wall time is the train command's, with its final validation pass
and samples; figures on the test split (benchmarks/images_table.py,
2026-12-06; docs/images.md has the pictures):
  objective=classifier: 4.5 min, 600 x 128 images, accuracy 0.8486.
  objective=fsq:        2.3 min, 1500 x 64 images, MSE 0.00442, PSNR 23.55 dB,
                        codebook perplexity 379 of 1,000.
  objective=maskgit:    6.5 min, 1500 x 64 images (FSQ codes, guidance 2, 12
                        steps): FID-FMNIST 2.01 over 10,000 samples (the
                        classifier's features), class accuracy 0.977.
  objective=causal:     7.7 min, 200 x 16 images, exact NLL 3.261 bits/dim.
  objective=md4:        8.6 min, 200 x 16 images, ELBO bound 3.668 +- 0.009
                        bits/dim (2 draws per image; linear schedule).
  objective=mae:        4.3 min, 1000 x 128 images, linear probe 0.8349 (the
                        encoder at init 0.7111, raw pixels 0.8019).
causal and md4 bits/dim on the first 1,024 test images. For scale: a uniform
model over 256 levels scores 8 bits/dim.
"""
from tokjax.config import apply_size_and_mesh, base_config, parse_variant
from tokjax.data import DEFAULT_PIXEL_LEVELS, image_seq_len

FSQ_CODES_PER_IMAGE = 49  # The FSQ tokenizer's 7 x 7 latent grid.

# What each objective reads and how it trains: data.tokens, data.class_token
# (each window starts with its class token instead of BOS), batch, steps, lr.
OBJECTIVES = {
    "causal": dict(tokens="pixels", class_token=False, batch_size=16, steps=200, lr=3e-3),
    "md4": dict(tokens="pixels", class_token=False, batch_size=16, steps=200, lr=3e-3),
    # Class-conditional MaskGIT on FSQ codes, with class dropout for guidance.
    "maskgit": dict(tokens="fsq", class_token=True, batch_size=64, steps=1500, lr=2e-3),
    "fsq": dict(tokens="pixels", class_token=False, batch_size=64, steps=1500, lr=2e-3),
    # Labels for the classifier's loss and for MAE's linear probe.
    "classifier": dict(tokens="pixels", class_token=True, batch_size=128, steps=600, lr=2e-3),
    "mae": dict(tokens="pixels", class_token=True, batch_size=128, steps=1000, lr=2e-3),
}
TOKEN_MODELS = ("causal", "md4", "maskgit")  # Those that may read either kind of token.

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
  recipe = OBJECTIVES[config.objective]
  tokens = variant.pop("tokens", recipe["tokens"])
  if tokens not in ("pixels", "fsq") or (tokens != recipe["tokens"]
                                         and config.objective not in TOKEN_MODELS):
    raise ValueError(
        f"tokens={tokens!r}: use tokens=pixels|fsq, and tokens=fsq only with "
        f"objective={'|'.join(TOKEN_MODELS)} ({config.objective} reads pixels).")
  levels = variant.pop("levels", str(DEFAULT_PIXEL_LEVELS))
  if not levels.isdigit():
    raise ValueError(f"Config variant levels={levels!r} must be an integer in [2, 256], "
                     "e.g. levels=16.")
  apply_size_and_mesh(config, variant, SIZES, keys="objective, tokens, levels, size, mesh")
  config.data.name = "fashion_mnist"
  config.data.pixel_levels = int(levels)  # PixelTokenizer checks the range.
  config.data.tokens = tokens
  config.data.class_token = recipe["class_token"]
  # The workdir of the configs/fashion_mnist.py:objective=fsq run whose codes
  # tokens=fsq models read; set it with --config.data.tokenizer_workdir=DIR.
  config.data.tokenizer_workdir = ""
  # One image per window: BOS (or the class token) + 784 pixels or 49 codes.
  config.seq_len = image_seq_len("fashion_mnist") if tokens == "pixels" else 1 + FSQ_CODES_PER_IMAGE
  config.batch_size = recipe["batch_size"]
  config.num_train_steps = recipe["steps"]
  config.eval_every_steps = recipe["steps"] // 2
  config.checkpoint_every_steps = recipe["steps"] // 2
  config.eval_steps = 4
  config.final_eval_steps = 512 // recipe["batch_size"]  # The first 512 validation images.
  config.optimizer.learning_rate = recipe["lr"]
  config.optimizer.warmup_steps = 50
  config.md4.eval_samples = 2  # The fewest draws that give an error bar.
  # Whole images: AR draws all pixels or codes after BOS (masked samplers fill
  # the window anyway). A class-conditional run draws num_samples per class.
  config.sampler.num_samples = 8
  config.sampler.ar.max_new_tokens = config.seq_len - 1
  config.sampler.md4.num_steps = 64  # ~12 pixels per step; each step is a full forward.
  config.sampler.maskgit.num_steps = 12
  config.sampler.maskgit.guidance_scale = 2.0 if config.objective == "maskgit" else 0.0
  return config
