"""Tokenizers: data symbols first, named special tokens after them.

`ByteTokenizer` (text): UTF-8 bytes are ids 0..255. `PixelTokenizer` (grey
images): grey levels are ids 0..levels-1, in raster order. Both share the
layout of the vocabulary, with S = 256 bytes or S = levels grey levels::

  0 .. S-1     a data symbol (a byte, or a grey level)
  S            <pad>
  S + 1        <bos>
  S + 2        <eos>
  S + 3        <mask>
  S + 4 ..     extra named specials, in the order given (e.g. sentinels)

Every objective counts the ids below `num_bytes` = S as the data's units, so
a likelihood per unit is bits per byte for text and bits per dimension (per
pixel) for images; `unit` names it. A tokenizer whose data ids stand for
several bytes each (`tokjax.data.bpe.BPETokenizer`) gives their lengths in
`byte_lengths`.
"""
from __future__ import annotations

import numpy as np

NUM_BYTES = 256
BASE_SPECIALS = ("<pad>", "<bos>", "<eos>", "<mask>")
DEFAULT_PIXEL_LEVELS = 256
DEFAULT_IMAGE_SHAPE = (28, 28)  # Fashion-MNIST.


class SymbolTokenizer:
  """The shared layout: `num_symbols` data ids, then the named specials.

  Attributes:
    unit: what a data id is, for reports: 'byte' (text) or 'dim' (a pixel).
    num_bytes: the number of data ids (ids below it are data symbols; the name
      is historical: objectives count these as the units of bits per unit).
    special_tokens: name -> id for every special token, e.g. '<pad>' -> S.
    pad_id, bos_id, eos_id, mask_id: ids of the four base specials.
    vocab_size: S + number of special tokens.
    byte_lengths: None here: each data id is one unit (a byte, a pixel, a
      code). A BPE gives the bytes per id instead (a tuple of vocab_size ints).

  Raises:
    ValueError: extra special names that repeat or reuse a base special.
  """

  unit = ""
  byte_lengths: tuple[int, ...] | None = None

  def __init__(self, num_symbols: int, extra_special_tokens: tuple[str, ...] = ()):
    names = BASE_SPECIALS + tuple(extra_special_tokens)
    if len(set(names)) != len(names):
      raise ValueError(
          f"extra_special_tokens={extra_special_tokens!r} repeats a name or "
          f"reuses one of {BASE_SPECIALS}; pass distinct new names."
      )
    self.num_bytes = num_symbols
    self.special_tokens = {name: num_symbols + i for i, name in enumerate(names)}
    self.pad_id = self.special_tokens["<pad>"]
    self.bos_id = self.special_tokens["<bos>"]
    self.eos_id = self.special_tokens["<eos>"]
    self.mask_id = self.special_tokens["<mask>"]
    self.vocab_size = num_symbols + len(names)

  def _framing_ids(self) -> tuple[int, ...]:
    """The specials that occur in encoded data (they frame each document)."""
    return (self.bos_id, self.eos_id)

  @property
  def non_text_ids(self) -> tuple[int, ...]:
    """Ids that never occur in encoded data: PAD, MASK, the extra specials
    (and for images EOS). Denoisers give these probability 0."""
    framing = set(self._framing_ids())
    return tuple(i for i in self.special_tokens.values() if i not in framing)

  @property
  def non_target_ids(self) -> tuple[int, ...]:
    """Ids a next-token (causal) model gives probability 0. None here: a text
    model keeps its full softmax, since BOS follows EOS in a packed stream."""
    return ()

  def _checked_ids(self, ids) -> np.ndarray:
    """ids as a numpy int[num_tokens].

    Raises:
      ValueError: not one 1-D sequence, or ids outside [0, vocab_size).
    """
    ids = np.asarray(ids)
    if ids.ndim != 1:
      raise ValueError(
          f"decode takes one sequence, int[num_tokens]; got shape {ids.shape}. "
          "Decode each row separately."
      )
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(
          f"ids must lie in [0, {self.vocab_size}); got range "
          f"[{ids.min()}, {ids.max()}]."
      )
    return ids

  def _framed(self, ids: np.ndarray, add_bos: bool, add_eos: bool) -> np.ndarray:
    """int32 ids, optionally with BOS before and EOS after."""
    parts = [np.asarray([self.bos_id], np.int32)] if add_bos else []
    parts.append(ids.astype(np.int32))
    if add_eos:
      parts.append(np.asarray([self.eos_id], np.int32))
    return np.concatenate(parts)

  def is_byte(self, ids):
    """Returns bool[...] (same shape as ids): True where the id is a data symbol.

    Works on numpy arrays and on jax arrays, also inside jit.
    """
    if not hasattr(ids, "dtype"):
      ids = np.asarray(ids)
    return ids < self.num_bytes

  def token_bytes(self, ids) -> int:
    """Number of data tokens in int[...] ids: the count for bits per byte (or dim)."""
    return int(np.sum(np.asarray(ids) < self.num_bytes))


class ByteTokenizer(SymbolTokenizer):
  """Maps text to UTF-8 byte ids and back; specials come after the 256 bytes.

  See `SymbolTokenizer` for the attributes; here num_bytes = 256, unit 'byte'.
  """

  unit = "byte"

  def __init__(self, extra_special_tokens: tuple[str, ...] = ()):
    super().__init__(NUM_BYTES, extra_special_tokens)

  def encode(
      self, text: str, add_bos: bool = False, add_eos: bool = False
  ) -> np.ndarray:
    """Returns int32[num_tokens]: the UTF-8 bytes of `text`, optionally framed.

    Raises UnicodeEncodeError for strings holding lone surrogates, which have
    no UTF-8 form.
    """
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    return self._framed(ids, add_bos, add_eos)

  def decode(self, ids) -> str:
    """Decodes int[num_tokens] to text, skipping specials.

    Byte runs that are not valid UTF-8 become U+FFFD (errors='replace').

    Raises:
      ValueError: not one 1-D sequence, or ids outside [0, vocab_size).
    """
    ids = self._checked_ids(ids)
    byte_ids = ids[ids < self.num_bytes].astype(np.uint8)
    return byte_ids.tobytes().decode("utf-8", errors="replace")


def pixel_values(images, levels: int) -> np.ndarray:
  """float32[n, rows, cols] in [0, 1] of uint8[n, rows, cols] images, quantised
  as `PixelTokenizer(levels)` encodes them (id = p * levels // 256), each id as
  id / (levels - 1): the values the models that see pixels were trained on."""
  ids = np.asarray(images).astype(np.int32) * levels // 256
  return (ids / (levels - 1)).astype(np.float32)


class ImageTokenizer(SymbolTokenizer):
  """What image tokenizers share (pixels: `PixelTokenizer`; FSQ codes:
  `tokjax.fsq_tokenizer.FSQTokenizer`): each image is one window, BOS or its
  class token `<class_c>` (when `num_classes` > 0 and it has a label), then its
  data ids. The class token takes BOS's place, as the class condition of
  MaskGIT (Chang et al. 2022, Sec. 3.2).

  Attributes (besides `SymbolTokenizer`'s):
    num_classes: class tokens `<class_0>` ... (0: unlabelled windows).
    class_ids: their ids, class c at class_ids[c] (consecutive).

  Raises:
    ValueError: num_classes not an integer >= 0, or special names that repeat.
  """

  def __init__(self, num_symbols: int, extra_special_tokens: tuple[str, ...] = (),
               num_classes: int = 0):
    if int(num_classes) != num_classes or num_classes < 0:
      raise ValueError(f"num_classes={num_classes!r} must be an integer >= 0.")
    classes = tuple(f"<class_{c}>" for c in range(int(num_classes)))
    super().__init__(num_symbols, tuple(extra_special_tokens) + classes)
    self.num_classes = int(num_classes)
    self.class_ids = tuple(self.special_tokens[name] for name in classes)

  def _framing_ids(self) -> tuple[int, ...]:
    return (self.bos_id, *self.class_ids)

  @property
  def non_target_ids(self) -> tuple[int, ...]:
    """Every special: each window is one BOS (or class token) followed by data
    ids only, so a next-token model only ever predicts pixels or codes."""
    return tuple(self.special_tokens.values())

  def class_id(self, label: int) -> int:
    """The id of class token `<class_label>`.

    Raises:
      ValueError: a label outside [0, num_classes), naming data.class_token.
    """
    if not 0 <= int(label) < self.num_classes:
      raise ValueError(
          f"label={label} is outside [0, {self.num_classes}); this tokenizer has "
          f"{self.num_classes} class tokens (set --config.data.class_token=True for labelled "
          "windows).")
    return self.class_ids[int(label)]


class PixelTokenizer(ImageTokenizer):
  """Grey images as pixel ids in raster order, quantised to `levels` grey levels.

  Pixel value p (uint8) becomes id p * levels // 256, so 256 levels keep every
  value and fewer levels share 256 / levels values per id; decoding maps an id
  to the middle value of its bin (rounded down). As in PixelCNN-style image
  models ("Pixel Recurrent Neural Networks", van den Oord et al. 2016), each
  pixel is one categorical token and likelihoods are in bits per dimension.
  An image is encoded as BOS (or its class token, `ImageTokenizer`) + its
  pixels; EOS never occurs in image data.

  Attributes (besides `ImageTokenizer`'s; num_bytes = levels, unit 'dim'):
    levels: grey levels, the number of pixel ids.
    image_shape: (rows, cols) of every image.
    num_pixels: rows * cols, the pixel ids per image.

  Raises:
    ValueError: levels not an integer in [2, 256], or a bad image_shape.
  """

  unit = "dim"

  def __init__(self, levels: int = DEFAULT_PIXEL_LEVELS,
               extra_special_tokens: tuple[str, ...] = (),
               image_shape: tuple[int, int] = DEFAULT_IMAGE_SHAPE, num_classes: int = 0):
    if isinstance(levels, bool) or int(levels) != levels or not 2 <= levels <= 256:
      raise ValueError(
          f"levels={levels!r} must be an integer in [2, 256] (grey levels per "
          "pixel, e.g. 256, 16 or 8; --config.data.pixel_levels sets it)."
      )
    image_shape = tuple(int(n) for n in image_shape)
    if len(image_shape) != 2 or min(image_shape) < 1:
      raise ValueError(f"image_shape={image_shape} must be (rows, cols), both >= 1.")
    super().__init__(int(levels), extra_special_tokens, num_classes)
    self.levels = int(levels)
    self.image_shape = image_shape
    self.num_pixels = image_shape[0] * image_shape[1]
    ids = np.arange(self.levels)
    low = -(-ids * 256 // self.levels)  # The smallest value p with p * levels // 256 == id.
    high = -(-(ids + 1) * 256 // self.levels) - 1
    self._centres = ((low + high) // 2).astype(np.uint8)

  @property
  def tokens_per_image(self) -> int:
    """Data tokens per image, num_pixels: a window is 1 + this many tokens."""
    return self.num_pixels

  def encode(
      self, image, add_bos: bool = False, add_eos: bool = False, label: int | None = None
  ) -> np.ndarray:
    """Returns int32[num_pixels (+1 per BOS / EOS)]: image uint8[rows, cols] in
    raster order (row by row), each pixel as its grey-level id. With add_bos
    and a `label`, the first token is the class token class_ids[label].

    Raises:
      ValueError: an image that is not uint8[rows, cols] of `image_shape`, or
        a label outside [0, num_classes).
    """
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 2 or image.shape != self.image_shape:
      raise ValueError(
          f"encode takes one grey image, uint8{list(self.image_shape)}; got "
          f"{image.dtype}{list(image.shape)}. Encode each image separately and "
          "convert it first, e.g. image.astype(np.uint8) for values in [0, 255]."
      )
    ids = self._framed(image.reshape(-1).astype(np.int32) * self.levels // 256, add_bos, add_eos)
    if add_bos and label is not None:
      ids[0] = self.class_id(label)
    return ids

  def decode(self, ids) -> np.ndarray:
    """Returns the image uint8[rows, cols] of int[num_tokens] ids.

    Specials are dropped and the pixel ids fill the image in raster order,
    each as the middle value of its grey-level bin (exact for 256 levels). A
    sequence with fewer than num_pixels pixel ids is completed with 0 (black);
    pixel ids past num_pixels are ignored.

    Raises:
      ValueError: not one 1-D sequence, or ids outside [0, vocab_size).
    """
    ids = self._checked_ids(ids)
    pixels = ids[ids < self.num_bytes][: self.num_pixels]
    image = np.zeros(self.num_pixels, np.uint8)
    image[: pixels.size] = self._centres[pixels]
    return image.reshape(self.image_shape)
