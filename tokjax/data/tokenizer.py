"""Byte-level tokenizer: UTF-8 bytes are ids 0..255, named special tokens follow.

Layout of the vocabulary::

  0 .. 255     the byte with that value
  256          <pad>
  257          <bos>
  258          <eos>
  259          <mask>
  260 ..       extra named specials, in the order given (e.g. sentinels)
"""
import numpy as np

NUM_BYTES = 256
BASE_SPECIALS = ("<pad>", "<bos>", "<eos>", "<mask>")


class ByteTokenizer:
  """Maps text to UTF-8 byte ids and back; specials come after the 256 bytes.

  Attributes:
    num_bytes: 256, the number of byte ids (ids below it are bytes).
    special_tokens: name -> id for every special token, e.g. '<pad>' -> 256.
    pad_id, bos_id, eos_id, mask_id: ids of the four base specials.
    vocab_size: 256 + number of special tokens.
  """

  def __init__(self, extra_special_tokens: tuple[str, ...] = ()):
    names = BASE_SPECIALS + tuple(extra_special_tokens)
    if len(set(names)) != len(names):
      raise ValueError(
          f"extra_special_tokens={extra_special_tokens!r} repeats a name or "
          f"reuses one of {BASE_SPECIALS}; pass distinct new names."
      )
    self.num_bytes = NUM_BYTES
    self.special_tokens = {name: NUM_BYTES + i for i, name in enumerate(names)}
    self.pad_id = self.special_tokens["<pad>"]
    self.bos_id = self.special_tokens["<bos>"]
    self.eos_id = self.special_tokens["<eos>"]
    self.mask_id = self.special_tokens["<mask>"]
    self.vocab_size = NUM_BYTES + len(names)

  @property
  def non_text_ids(self) -> tuple[int, ...]:
    """Ids that never occur in encoded text: PAD, MASK and the extra specials.

    (Text is bytes framed by BOS and EOS.) Denoisers give these probability 0.
    """
    text = {self.bos_id, self.eos_id}
    return tuple(i for i in self.special_tokens.values() if i not in text)

  def encode(
      self, text: str, add_bos: bool = False, add_eos: bool = False
  ) -> np.ndarray:
    """Returns int32[num_tokens]: the UTF-8 bytes of `text`, optionally framed.

    Raises UnicodeEncodeError for strings holding lone surrogates, which have
    no UTF-8 form.
    """
    ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)
    prefix = [self.bos_id] if add_bos else []
    suffix = [self.eos_id] if add_eos else []
    if not (prefix or suffix):
      return ids
    return np.concatenate([np.asarray(prefix, np.int32), ids,
                           np.asarray(suffix, np.int32)])

  def decode(self, ids) -> str:
    """Decodes int[num_tokens] to text, skipping specials.

    Byte runs that are not valid UTF-8 become U+FFFD (errors='replace').
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
    byte_ids = ids[ids < self.num_bytes].astype(np.uint8)
    return byte_ids.tobytes().decode("utf-8", errors="replace")

  def is_byte(self, ids):
    """Returns bool[...] (same shape as ids): True where the id is a byte.

    Works on numpy arrays and on jax arrays, also inside jit.
    """
    if not hasattr(ids, "dtype"):
      ids = np.asarray(ids)
    return ids < self.num_bytes

  def token_bytes(self, ids) -> int:
    """Number of byte tokens in int[...] ids: the byte count for bits per byte."""
    return int(np.sum(np.asarray(ids) < self.num_bytes))
