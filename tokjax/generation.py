"""Turns a config's sampler settings into samples from a trained model.

The one place sampling happens: the trainer (after training) and the
`tokjax.sample` CLI both call `write_samples`.
"""
from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

from tokjax import sharding
from tokjax.data import load_split
from tokjax.objectives import REGISTRY, Objective
from tokjax.samplers import model_fns, sampler_module
from tokjax.samplers.denoise import semi_autoregressive


@functools.cache
def _model_fns(graphdef, model_config):
  """One `ModelFns` per model, so the samplers' compiled programs are reused across calls."""
  return model_fns(graphdef, model_config)


def sampler_name(exp) -> str:
  """The configured sampler, else the objective's default ('' if it has none)."""
  return exp.objective.pick_sampler(exp.config.sampler.name)


def generate(exp, params, *, prompt: str | Sequence[str], num_samples: int,
             seed: int) -> tuple[list, dict]:
  """Samples `num_samples` continuations of `prompt` (a BOS is prepended).

  Several prompts (a sequence of strings) are sampled in one batch,
  `num_samples` rows each, prompt by prompt; prompts of different lengths are
  left-padded with PAD, which the AR samplers skip (ragged prompts).

  An image run samples whole images from BOS alone: AR appends the pixels or
  codes (sampler.ar.max_new_tokens of them; configs/fashion_mnist.py sets a
  whole image), masked samplers fill the seq_len window. A class-conditional
  image run (class tokens) samples `num_samples` images of each class, class
  by class, each from its class token.

  Returns the decoded samples, texts (str) or images (uint8[rows, cols]), and
  a record of the sampler settings, including the categorical `precision`, to
  store beside the samples (with `classes`, the class of each image, for a
  class-conditional run).

  Raises:
    ValueError: a prompt longer than the model's sequence length, or any
      prompt for an image run.
  """
  tok = exp.tokenizer
  prompts = [prompt] if isinstance(prompt, str) else list(prompt)
  ids = _left_padded([_prompt_ids(tok, p) for p in prompts], tok.pad_id, num_samples)
  classes = np.repeat(np.arange(getattr(tok, "num_classes", 0)), num_samples)
  if classes.size:
    ids = np.asarray(tok.class_ids, np.int32)[classes, None]
  rows, record = _run(exp, params, ids, num_samples=len(ids), seed=seed)
  record = dict(record, prompt=prompt if isinstance(prompt, str) else prompts, **({"classes": classes.tolist()} if classes.size else {}))
  if hasattr(tok, "decode_batch"):  # Codes -> images: one decoder pass.
    return list(tok.decode_batch(rows)), record
  return [tok.decode(row) for row in rows], record


def _left_padded(prompts: list[np.ndarray], pad_id: int, repeat: int) -> np.ndarray:
  """int32[len(prompts) * repeat, longest]: each prompt `repeat` times, left-padded with pad_id."""
  longest = max(len(p) for p in prompts)
  rows = [np.concatenate([np.full(longest - len(p), pad_id, np.int32), p]) for p in prompts]
  return np.repeat(np.stack(rows).astype(np.int32), repeat, axis=0)


def _prompt_ids(tok, prompt: str) -> np.ndarray:
  """int32[prompt_len]: BOS + the prompt's bytes, or BOS alone for images.

  Raises:
    ValueError: a non-empty prompt for an image run.
  """
  if tok.unit == "byte":
    return tok.encode(prompt, add_bos=True)
  if prompt:
    raise ValueError(f"Image runs sample from BOS alone; the prompt must be empty, got "
                     f"{prompt!r}; leave --prompt (and sampler.prompt) empty.")
  return np.asarray([tok.bos_id], np.int32)


def infill(exp, params, text: str, *, placeholder: str, hole_len: int | Sequence[int],
           num_samples: int, seed: int) -> tuple[list[str], dict]:
  """Fills each `placeholder` in `text` (a BOS is prepended), keeping the rest.

  Masked-token models (md4, maskgit, mlm) fill each hole with a fixed number
  of MASKs in place: `hole_len` tokens for every hole, or one length per hole
  given as a sequence. fim, cm3 and span_corruption models generate the spans
  in their own rearranged formats (`Objective.infill_prompt`), each ending at
  its sentinel or EOS, spliced back in place.

  Returns the filled texts and the sampler record.

  Raises:
    ValueError: no placeholder in `text`, a hole length < 1 or one length per
      hole with the wrong count, an objective that cannot infill (listing
      those that can), a prompt longer than seq_len, or an image run.
  """
  tok, objective = exp.tokenizer, exp.objective
  if tok.unit != "byte":
    raise ValueError("Infilling takes text with holes; an image run (a PixelTokenizer) has "
                     "no text to fill. Sample whole images with tokjax.sample instead.")
  pieces = [tok.encode(piece) for piece in text.split(placeholder)]
  if len(pieces) < 2:
    raise ValueError(f"The infill text has no {placeholder!r}; mark each hole with it.")
  hole_lens = _hole_lens(hole_len, num_holes=len(pieces) - 1)
  pieces[0] = np.concatenate([[tok.bos_id], pieces[0]]).astype(np.int32)
  prompt = objective.infill_prompt(pieces, hole_lens)
  if prompt is None:
    able = [n for n, c in REGISTRY.items() if c.infill_prompt is not Objective.infill_prompt]
    raise ValueError(f"Objective {objective.name!r} cannot infill; train one of: {', '.join(able)}.")
  rows, record = _run(exp, params, prompt, num_samples=num_samples, seed=seed,
                      seq_len=len(prompt))
  texts = [tok.decode(objective.infill_result(pieces, prompt, row)) for row in rows]
  return texts, dict(record, infill=text, hole_len=list(hole_lens))


def _hole_lens(hole_len: int | Sequence[int], num_holes: int) -> tuple[int, ...]:
  """One length per hole: `hole_len` repeated, or the given sequence checked.

  Raises:
    ValueError: a length < 1, or a sequence whose length is not num_holes.
  """
  lens = (hole_len,) * num_holes if isinstance(hole_len, int) else tuple(int(n) for n in hole_len)
  if len(lens) == 1:
    lens *= num_holes
  if len(lens) != num_holes or min(lens) < 1:
    raise ValueError(f"The text has {num_holes} hole(s) but hole_len is {list(lens)}: give one "
                     "length >= 1 for all holes, or one per hole, e.g. --hole_len=8,3.")
  return lens


def _run(exp, params, ids: np.ndarray, *, num_samples: int, seed: int, seq_len: int | None = None):
  """Samples `num_samples` rows from prompt `ids`: (int32[num_samples, length] host rows, record).

  `ids` is int[prompt_len], or int[num_samples, prompt_len] for one prompt per row.

  Masked samplers generate `seq_len` tokens (default `sampler.length`, else the
  model's seq_len; past it semi-autoregressively); AR appends.

  Raises:
    ValueError: a prompt longer than the model's sequence length.
  """
  name, c = sampler_name(exp), exp.config
  module = sampler_module(name)
  prompt_len = np.shape(ids)[-1]
  kwargs = module.bind(dict(c.sampler[name]), exp.objective.sampling_spec(), exp.tokenizer,
                       seq_len=c.seq_len, prompt_len=prompt_len)
  masked = "seq_len" in kwargs  # Masked samplers fill a canvas; AR appends after the prompt.
  if masked and np.any(np.asarray(ids)[..., 0] == exp.tokenizer.pad_id):
    raise ValueError(f"Sampler {name!r} fills a canvas after one prompt length; prompts of "
                     "different lengths need an autoregressive sampler (--sampler.name=ar).")
  if prompt_len + (0 if masked else 1) > c.seq_len:
    raise ValueError(f"The prompt is {prompt_len} tokens but seq_len is {c.seq_len}; shorten it.")
  length = seq_len or c.sampler.length or c.seq_len
  prompt_batch = prompt_rows(exp.batch_sharding, ids, num_samples)
  args = (_model_fns(exp.graphdef, exp.model_config), params, prompt_batch, jax.random.key(seed))
  sample = module.sample
  if not masked:
    out = sample(*args, precision=c.sampler.precision, **kwargs)
  elif length <= c.seq_len:
    out = sample(*args, precision=c.sampler.precision, **dict(kwargs, seq_len=length))
  else:
    out = semi_autoregressive(sample, *args, length=length, block_len=c.sampler.block_len,
                              precision=c.sampler.precision, **kwargs)
  record = dict(sampler=name, seed=seed, precision=c.sampler.precision,
                nfe=int(out.nfe), length=int(out.tokens.shape[1]),
                row_shards=sharding.axes_size(exp.batch_sharding.mesh, exp.batch_sharding.spec[0]),
                **{k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))})
  return multihost_utils.process_allgather(out.tokens, tiled=True)[:num_samples], record


def prompt_rows(batch_sharding, ids: np.ndarray, num_samples: int) -> jax.Array:
  """int32[rows, prompt_len]: `ids` int[prompt_len] repeated (or, as
  int[num_samples, prompt_len], one prompt per sample), a global array whose
  rows are sharded over the mesh's data axes (as training batches are), so
  every device samples its share. rows is num_samples rounded up to a
  multiple of the data shards; the extra rows (copies of the last prompt) are
  dropped after sampling.
  """
  shards = sharding.axes_size(batch_sharding.mesh, batch_sharding.spec[0])
  rows = -(-num_samples // shards) * shards
  ids = np.asarray(ids, np.int32).reshape(-1, np.shape(ids)[-1])
  host = ids[np.minimum(np.arange(rows), len(ids) - 1)]
  return jax.make_array_from_callback(host.shape, batch_sharding, lambda index: host[index])


def write_samples(exp, params, workdir: str, step: int, filename: str = "samples.json",
                  infill_text: str | None = None, prompts: Sequence[str] | None = None,
                  **infill_kwargs) -> list:
  """Prints samples from the config's sampler and writes them to WORKDIR/filename.

  `prompts`, several prompts sampled in one batch, replaces sampler.prompt.

  With `infill_text`, fills its holes instead (see `infill` for the kwargs).
  Image samples (a PixelTokenizer) go into the JSON as uint8 rows of pixel
  values, and as a grid in a PNG beside it, WORKDIR/<filename stem>.png (e.g.
  samples_STEP.png beside samples_STEP.json); the printout names the PNG.

  Returns the decoded samples: texts, or images uint8[rows, cols].
  """
  s = exp.config.sampler
  if not sampler_name(exp):
    return write_pictures(exp, params, workdir, filename)
  if infill_text is None:
    texts, record = generate(exp, params, prompt=prompts or s.prompt,
                             num_samples=s.num_samples, seed=s.seed)
  else:
    texts, record = infill(exp, params, infill_text, num_samples=s.num_samples, seed=s.seed,
                           **infill_kwargs)
  if jax.process_index() != 0:
    return texts
  images = exp.tokenizer.unit != "byte"
  samples = [np.asarray(t).tolist() for t in texts] if images else texts
  with open(os.path.join(workdir, filename), "w") as f:
    json.dump(dict(record, step=step, samples=samples), f, indent=1)
  label = f"{record['sampler']}, precision={record['precision']}"
  if images:
    png = os.path.join(workdir, os.path.splitext(filename)[0] + ".png")
    per_row = s.num_samples if "classes" in record else 8  # A row per class.
    write_png(png, image_grid(np.stack(texts), cols=per_row))
    rows = ", one row per class" if "classes" in record else ""
    print(f"--- {len(texts)} image samples ({label}) in {png}{rows} ---")
  else:
    for i, text in enumerate(texts):
      print(f"--- sample {i} ({label}) ---\n{text}")
  return texts


def write_pictures(exp, params, workdir: str, filename: str) -> list:
  """For an objective without a sampler: its `pictures` of the first
  sampler.num_samples validation images, as a PNG grid with one row per panel
  (e.g. MAE's original, masked, reconstructed), WORKDIR/<filename stem>.png,
  and the panels' names in the JSON beside it. Prints a line either way.

  Returns the panels' images, uint8[rows, cols] each, panel by panel.
  """
  objective, c = exp.objective, exp.config
  if type(objective).pictures is Objective.pictures:
    print(f"No sampler for objective {objective.name!r} yet.")
    return []
  num = c.sampler.num_samples
  tokens = load_split(c.data, "validation", exp.tokenizer)[: num * c.seq_len]
  panels = objective.pictures(exp.model(params), jnp.asarray(tokens.reshape(-1, c.seq_len)),
                              jax.random.key(c.sampler.seed))
  images = [image for panel in panels.values() for image in np.asarray(panel, np.uint8)]
  if jax.process_index() == 0:
    stem = os.path.join(workdir, os.path.splitext(filename)[0])
    with open(stem + ".json", "w") as f:
      json.dump(dict(panels=list(panels), num_images=len(tokens) // c.seq_len), f, indent=1)
    write_png(stem + ".png", image_grid(np.stack(images), cols=len(images) // len(panels)))
    print(f"--- {objective.name} pictures of validation images in {stem}.png, rows: "
          f"{' / '.join(panels)} ---")
  return images


def image_grid(images: np.ndarray, cols: int = 8, border: int = 2) -> np.ndarray:
  """uint8[num_images, rows, cols] -> one uint8 image: the images in a grid,
  `cols` per row (fewer if there are fewer images), `border` grey pixels
  between and around them."""
  images = np.asarray(images, np.uint8)
  n, h, w = images.shape
  cols = max(1, min(cols, n))
  grid_rows = -(-n // cols)
  grid = np.full((grid_rows * (h + border) + border, cols * (w + border) + border), 128, np.uint8)
  for i, image in enumerate(images):
    top, left = border + (i // cols) * (h + border), border + (i % cols) * (w + border)
    grid[top:top + h, left:left + w] = image
  return grid


def write_png(path: str, image: np.ndarray, scale: int = 4) -> None:
  """Writes grey image uint8[rows, cols] to `path` as a PNG, each pixel a
  scale x scale block (0 black, 255 white)."""
  from matplotlib import image as mpimage  # Only image runs need it; no pyplot, no backend.
  big = np.repeat(np.repeat(np.asarray(image, np.uint8), scale, 0), scale, 1)
  mpimage.imsave(path, big, cmap="gray", vmin=0, vmax=255)
