"""Host input pipeline: images and masks for a step, as a pure function of (seed, step, process).

This first pipeline serves an in-memory array source (the embedded
Fashion-MNIST). Each epoch is a permutation drawn from (seed, epoch); global
batch `step` is a contiguous slice of it (the tail that does not fill a batch
is dropped) and each process takes its own contiguous part, so processes never
overlap and a run resumes from the step number alone. A background thread
prepares the next batches while the device works.
"""

import queue
import threading
from typing import Callable, Iterator

import numpy as np

from ijepa_jax.masks import MaskSampler

_EPOCH_STREAM = 0x65706F63


class ArrayBatches:
  """Batches of one process from in-memory images [N, H, W, C] float32."""

  def __init__(self, images: np.ndarray, global_batch: int, seed: int, masks: MaskSampler,
               process_index: int = 0, process_count: int = 1):
    if global_batch % process_count:
      raise ValueError(f'batch_size={global_batch} must be divisible by the {process_count} processes')
    if len(images) < global_batch:
      raise ValueError(f'batch_size={global_batch} is larger than the dataset ({len(images)} images); '
                       'lower --config.batch_size')
    self.images = images
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.seed = seed
    self.masks = masks
    self.process_index = process_index
    self.steps_per_epoch = len(images) // global_batch
    self._perm: tuple[int, np.ndarray | None] = (-1, None)

  def indices(self, step: int) -> np.ndarray:
    """Dataset indices [local_batch] of this process's part of global batch `step`."""
    epoch, pos = divmod(step, self.steps_per_epoch)
    perm = self._permutation(epoch)
    start = pos * self.global_batch + self.process_index * self.local_batch
    return perm[start:start + self.local_batch]

  def _permutation(self, epoch: int) -> np.ndarray:
    if self._perm[0] != epoch:  # drawn once per epoch, not once per step
      self._perm = (epoch, np.random.default_rng([_EPOCH_STREAM, self.seed, epoch]).permutation(
          len(self.images)))
    return self._perm[1]

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    """The host-local batch for `step`: images and fixed-shape mask indices."""
    batch = {'images': self.images[np.sort(self.indices(step))]}
    batch.update(self.masks(self.local_batch, self.seed, step, self.process_index)._asdict())
    return batch


def prefetch(make: Callable[[int], dict], start: int, stop: int, depth: int = 2) -> Iterator[dict]:
  """Yield make(start), ..., make(stop - 1), computed `depth` ahead in a thread."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop_flag = threading.Event()

  def work():
    try:
      for step in range(start, stop):
        if stop_flag.is_set():
          return
        q.put((step, make(step), None))
    except Exception as e:  # surfaced in the consumer thread
      q.put((None, None, e))

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    for _ in range(start, stop):
      _, item, err = q.get()
      if err is not None:
        raise err
      yield item
  finally:
    stop_flag.set()
