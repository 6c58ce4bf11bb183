"""Real-size causal LMs: GPT-2 small and medium widths, and a 1.2B model.

Variants (comma separated after ':'): size=small|medium|1b (default small),
objective=causal|md4|mlm|prefix_lm, mesh=dp|fsdp|fsdp_tp (default: the size's
preset below). Any key can be overridden with --config.KEY=VALUE.

Sizes (layers x width, heads, MLP width; parameters counted by
`jax.eval_shape`, untied input embedding and output head):
  small   12 x 768,  12 heads, d_ff 3072:   85.0M in the blocks; 85.4M with
          the byte vocabulary (260 ids), 162.1M with GPT-2's 50,257 BPE ids.
  medium  24 x 1024, 16 heads, d_ff 4096:  302.0M in the blocks; 302.6M with
          bytes, 405.0M with 50,257 BPE ids.
  1b      24 x 2048, 16 heads, d_ff 8192: 1208.1M in the blocks; 1209.1M with
          bytes, 1413.9M with 50,257 BPE ids.
GPT-2's own counts (124M, 355M) tie the head to the embedding and add learned
positions; these models use RoPE and an untied head.

Each window is 1024 tokens; the global batch is 256 windows (262k tokens per
step, GPT-2's 512 halved). Activations and matmuls run in bfloat16, the
parameters and AdamW moments stay float32; layers are scanned, and each block
is rematerialised (small, medium: 'dots_with_no_batch_dims_saveable' keeps the
projections' outputs; 1b: 'full' keeps only each block's input). Meshes:
fsdp (ZeRO-3 over every device) for small and medium, fsdp_tp (tensor
parallelism 2) for 1b.

Know before you rent (per-device memory, FLOPs and whether it fits):

  python -m tokjax.compile --config configs/gpt2.py:size=1b --topology v5p-64

These configs have not been trained here (a 2-core CPU). Compiled ahead of
time (benchmarks/aot_memory.py, libtpu 0.0.42.1), the train step needs per
chip, on v5p-8 / v5p-64 (95 GiB HBM): small 21.2 / 2.7 GiB, medium 42.7 /
5.4 GiB, 1b 40.7 / 5.4 GiB, mostly activations. Medium does not fit a
v5e-8 (16 GiB chips) at 32 sequences per chip.
"""
from tokjax.config import apply_size_and_mesh, base_config, parse_variant

_SAVE_DOTS = "dots_with_no_batch_dims_saveable"
SIZES = {
    "small": dict(num_layers=12, d_model=768, num_heads=12, d_ff=3072, remat=_SAVE_DOTS),
    "medium": dict(num_layers=24, d_model=1024, num_heads=16, d_ff=4096, remat=_SAVE_DOTS),
    "1b": dict(num_layers=24, d_model=2048, num_heads=16, d_ff=8192, remat="full"),
}
# Per size: the mesh preset and the peak learning rate (GPT-3's table for
# these widths, Brown et al. 2020).
TRAINING = {
    "small": dict(mesh="fsdp", learning_rate=6e-4),
    "medium": dict(mesh="fsdp", learning_rate=3e-4),
    "1b": dict(mesh="fsdp_tp", learning_rate=2e-4),
}


def get_config(arg: str | None = None):
  variant = parse_variant(arg)
  size = variant.setdefault("size", "small")
  if size not in TRAINING:
    raise ValueError(f"Unknown size {size!r}; use one of {sorted(TRAINING)}.")
  training = TRAINING[size]
  variant.setdefault("mesh", training["mesh"])
  config = base_config()
  config.objective = variant.pop("objective", "causal")
  apply_size_and_mesh(config, variant, SIZES, keys="objective, mesh, size")
  config.model.update(dtype="bfloat16", scan_layers=True)
  # The only text corpus offline here; point data at your own (data.name=text_files,
  # data.path=...). The vocabulary is the tokenizer's: bytes (256 + specials), or
  # "bpe" of data.bpe_vocab_size ids (train it first: python -m tokjax.tokenize).
  config.data.name = "shakespeare"
  config.data.tokens = "bytes"
  config.update(seq_len=1024, batch_size=256, num_train_steps=20_000, eval_every_steps=1000,
                checkpoint_every_steps=1000)
  config.optimizer.update(learning_rate=training["learning_rate"], warmup_steps=1000)
  return config
