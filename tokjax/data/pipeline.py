"""Packing and batching a token stream with grain, and host batches to global arrays.

The stream is cut into consecutive windows of `seq_len` tokens; the last one is
padded with PAD, so no token is lost. Training draws windows through grain
(shuffle anew each epoch, repeat, batch, keep this process's rows), optionally
in grain worker processes; its iterator checkpoints its position, the number
of global batches drawn, with `get_state`/`set_state`. Evaluation visits each
window once, in order.
"""
from __future__ import annotations

from typing import Iterator

import grain
import jax
import numpy as np

from tokjax.data.tokenizer import ByteTokenizer

DEFAULT_PAD_ID = ByteTokenizer().pad_id
READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=8)


def pack(tokens, seq_len: int, pad_id: int = DEFAULT_PAD_ID) -> np.ndarray:
  """int[num_tokens] -> int32[num_windows, seq_len], the last window PAD-filled."""
  tokens = np.asarray(tokens, dtype=np.int32)
  if tokens.ndim != 1:
    raise ValueError(f"tokens must be int[num_tokens], got shape {tokens.shape}.")
  if seq_len <= 0:
    raise ValueError(f"seq_len must be positive, got {seq_len}.")
  num_windows = -(-tokens.size // seq_len)
  flat = np.full(num_windows * seq_len, pad_id, dtype=np.int32)
  flat[: tokens.size] = tokens
  return flat.reshape(num_windows, seq_len)


def local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
  """The per-process share of a global batch.

  Raises:
    ValueError: batch_size not divisible by process_count, or a bad index.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} must lie in [0, {process_count}).")
  if batch_size <= 0 or batch_size % process_count:
    raise ValueError(
        f"batch_size={batch_size} must be a positive multiple of the "
        f"process count {process_count}; set --config.batch_size accordingly."
    )
  return batch_size // process_count


class TrainIterator:
  """Endless iterator over a grain MapDataset of batches, resumable at any batch.

  Its state, {'batches': number drawn}, names a global position: it restores
  under any process count and any `worker_count` (grain's own iterator state
  depends on both). With worker_count > 0, grain worker processes build the
  batches (`IterDataset.mp_prefetch`), in the same order.

  Args:
    ids: MapDataset of int64[local_batch], the window indices of each batch.
    windows: int32[num_windows, seq_len], what the indices select.
    worker_count: grain worker processes (0: build batches in this process).
  """

  def __init__(self, ids: grain.MapDataset, windows: np.ndarray, worker_count: int = 0):
    if worker_count < 0:
      raise ValueError(f"data.worker_count={worker_count} must be >= 0 (0: no worker processes).")
    self._ids, self._worker_count = ids, worker_count
    self._batches = ids.map(lambda i: windows[i])
    self._start(0)

  def _start(self, position: int) -> None:
    self.position = position
    dataset = self._batches[position:].to_iter_dataset(READ_OPTIONS)
    if self._worker_count:
      dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._worker_count))
    self._iterator = iter(dataset)

  def __iter__(self) -> TrainIterator:
    return self

  def __next__(self) -> np.ndarray:
    batch = next(self._iterator)
    self.position += 1
    return batch

  def example_ids(self) -> np.ndarray:
    """int64[local_batch]: the window indices (rows of `pack`'s output) of the
    batch last drawn, this process's rows only."""
    if not self.position:
      raise ValueError("No batch drawn yet: call next() first.")
    return self._ids[self.position - 1]

  def get_state(self) -> dict:
    return {"batches": self.position}

  def set_state(self, state: dict) -> None:
    """Resumes after state['batches'] batches (or a grain iterator state of
    checkpoints written before this class: {'next_index': batches})."""
    self._start(int(state["batches"] if "batches" in state else state["next_index"]))


def train_iterator(
    tokens,
    *,
    seq_len: int,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    pad_id: int = DEFAULT_PAD_ID,
    worker_count: int = 0,
) -> TrainIterator:
  """Endless iterator of int32[local_batch, seq_len], local_batch = batch_size // process_count.

  The global batches do not depend on the process count: one order of all
  windows per epoch, drawn from `seed` and the epoch number, is cut into
  global batches of batch_size windows (batches may straddle epochs), and
  process p reads only rows p * local_batch ... (p + 1) * local_batch - 1 of
  each, the rows `to_global` places on its devices. So a run on any number of
  processes, with any number of grain workers (`worker_count`), trains on
  exactly the batches of a one-process run. Save and restore the position
  with `get_state`/`set_state`.

  Raises:
    ValueError: bad batch size or worker_count, or fewer windows than one
      global batch.
  """
  local = local_batch_size(batch_size, process_index, process_count)
  windows = pack(tokens, seq_len, pad_id)
  if len(windows) < batch_size:
    raise ValueError(
        f"The stream has {np.size(tokens)} tokens, {len(windows)} windows of seq_len={seq_len}, "
        f"fewer than one batch of batch_size={batch_size}. Use more data, a shorter seq_len "
        "or a smaller batch_size."
    )
  rows = slice(process_index * local, (process_index + 1) * local)
  ids = (
      grain.MapDataset.range(len(windows))
      .shuffle(seed=seed)
      .repeat()
      .batch(batch_size, drop_remainder=True)
      .map(lambda batch: batch[rows])
  )
  return TrainIterator(ids, windows, worker_count)


def eval_batches(
    tokens,
    *,
    seq_len: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    pad_id: int = DEFAULT_PAD_ID,
) -> Iterator[np.ndarray]:
  """Iterator of int32[local_batch, seq_len] covering every window once, in order.

  Global batch b holds windows b * batch_size ... (b + 1) * batch_size - 1, and
  process p holds its p-th slice of local_batch rows, matching `to_global` on
  a batch-sharded mesh. The last batch is filled with all-PAD rows, so every
  process yields the same number of full-size batches.
  """
  local = local_batch_size(batch_size, process_index, process_count)
  windows = pack(tokens, seq_len, pad_id)
  num_batches = -(-len(windows) // batch_size)
  rows = np.full((num_batches * batch_size, seq_len), pad_id, dtype=np.int32)
  rows[: len(windows)] = windows
  batches = rows.reshape(num_batches, process_count, local, seq_len)
  return iter(batches[:, process_index])


def to_global(local_batch: np.ndarray, sharding: jax.sharding.NamedSharding) -> jax.Array:
  """Assembles each process's int32[local_batch, seq_len] into one global jax.Array.

  The global array is int32[local_batch * process_count, seq_len] when
  `sharding` splits the batch axis across processes.
  """
  return jax.make_array_from_process_local_data(sharding, local_batch)
