"""Host input pipeline: a step's images and masks as a pure function of (seed, step).

Why not Grain: every element here is already a pure function of the run's
seed, the step and its position in the global batch, so the iterator's whole
state is one integer (the step) that the checkpoint stores. Grain's
MapDataset would give the same, at the price of another dependency and of
worker processes that copy every decoded image between processes; decoding
and resizing in Pillow release the GIL, so a thread pool scales over cores.

Order: epoch `e` is a permutation of the dataset drawn from (seed, e); global
batch `step` is a contiguous slice of it (the tail that does not fill a batch
is dropped, as the official `drop_last=True`), and process `p` of `P` reads
only its own contiguous part. The slices of the processes are disjoint and
together cover the epoch, and the global order does not depend on `P`.
Each element's crop and flip come from (seed, step, position in the global
batch), and so do its masks (ijepa_jax/masks.py): a global batch is the same
whatever the number of processes.

Each image is only opened (its header read) before its crop box is drawn, so that
a JPEG can be decoded at the smallest scale the box allows (data.train_transform).
A corrupt image is replaced by another image chosen deterministically
(the next in a fixed stride through the dataset), counted and named in the
batch's `skipped` list; the run goes on. A background thread keeps `depth`
batches ready while the device works.
"""

import concurrent.futures
import dataclasses
import queue
import threading
from typing import Any, Callable, Iterator

import numpy as np

from ijepa_jax.data import CorruptImageError, Source, train_transform
from ijepa_jax.masks import MaskSampler
from ijepa_jax.packing import Packer, batch_masks

_EPOCH_STREAM = 0x65706F63
_CROP_STREAM = 0x63726F70
_MAX_REPLACEMENTS = 32


@dataclasses.dataclass(frozen=True)
class TransformConfig:
  """The training transform (data.image_size, data.channels, data.crop_scale, ...)."""
  size: int
  channels: int
  scale: tuple[float, float] = (0.3, 1.0)
  ratio: tuple[float, float] = (3 / 4, 4 / 3)
  flip: bool = False

  @classmethod
  def of(cls, data: Any) -> 'TransformConfig':
    """The transform of a run's data settings (a `spec.DataSpec`)."""
    return cls(data.image_size, data.channels, tuple(data.crop_scale), tuple(data.crop_ratio),
               data.flip)


class Batches:
  """One process's batches from a random-access `Source`: `batches(step) -> dict`.

  The dict holds `images` uint8 [local_batch, size, size, channels], the
  fixed-shape mask arrays, and `skipped` (names of corrupt images replaced).
  """

  def __init__(self, source: Source, global_batch: int, seed: int, masks: MaskSampler,
               transform: TransformConfig, process_index: int = 0, process_count: int = 1,
               workers: int = 4, steps_per_epoch: int | None = None,
               packer: Packer | None = None):
    """`global_batch` divisible by `process_count` (`spec.resolve` checks it for a run);
    `steps_per_epoch`: the run's (`Run.steps_per_epoch`; None: the source's whole batches);
    `packer` (masks.pack): the packed rows' arrays are added to each batch."""
    self.steps_per_epoch = steps_per_epoch or len(source) // global_batch
    if len(source) < self.steps_per_epoch * global_batch or not self.steps_per_epoch:
      raise ValueError(f'{self.steps_per_epoch or 1} steps of batch_size={global_batch} are more '
                       f'images than the dataset holds ({len(source)}); lower --config.batch_size')
    self.source = source
    self.global_batch = global_batch
    self.local_batch = global_batch // process_count
    self.seed = seed
    self.masks = masks
    self.packer = packer
    self.transform = transform
    self.process_index = process_index
    self._perm: tuple[int, np.ndarray | None] = (-1, None)
    self._pool = concurrent.futures.ThreadPoolExecutor(max(1, workers), 'ijepa-data')
    self._pending: dict[int, tuple[list, concurrent.futures.Future]] = {}

  def indices(self, step: int) -> np.ndarray:
    """Dataset indices [local_batch] of this process's part of global batch `step`."""
    epoch, pos = divmod(step, self.steps_per_epoch)
    perm = self._permutation(epoch)
    start = pos * self.global_batch + self.process_index * self.local_batch
    return perm[start:start + self.local_batch]

  def _permutation(self, epoch: int) -> np.ndarray:
    if self._perm[0] != epoch:  # drawn once per epoch, not once per step
      self._perm = (epoch, np.random.default_rng([_EPOCH_STREAM, self.seed, epoch]).permutation(
          len(self.source)))
    return self._perm[1]

  def element(self, step: int, position: int, index: int) -> tuple[np.ndarray, list[str]]:
    """Transformed image `index` at `position` of global batch `step` (+ names it skipped)."""
    t = self.transform
    skipped = []
    n = len(self.source)
    for attempt in range(_MAX_REPLACEMENTS):
      i = (index + attempt * 7919) % n  # a fixed stride: the same replacement every time
      # drawn afresh: a corrupt image can fail after its box is drawn (it is decoded only
      # then, at the box's scale), and its replacement must get the same crop either way
      rng = np.random.default_rng([_CROP_STREAM, self.seed, step, position])
      try:
        return train_transform(self.source.open(i), rng, t.size, t.channels, t.scale, t.ratio,
                               t.flip, self.source.name(i)), skipped
      except CorruptImageError as e:
        skipped.append(str(e))
    raise CorruptImageError(f'{_MAX_REPLACEMENTS} images in a row could not be decoded '
                            f'(last: {skipped[-1]}); is data.data_dir the right dataset?')

  def _submit(self, step: int) -> None:
    """Queue global batch `step`'s images and masks on the workers (once)."""
    if step in self._pending:
      return
    first = self.process_index * self.local_batch
    jobs = [self._pool.submit(self.element, step, first + k, int(i))
            for k, i in enumerate(self.indices(step))]
    masks = self._pool.submit(batch_masks, self.masks, self.packer, self.local_batch, self.seed,
                              step, first)
    self._pending[step] = (jobs, masks)

  def __call__(self, step: int) -> dict:
    """The host-local batch for `step`: uint8 images, fixed-shape masks, skipped names.

    The next step's work is queued before this one's is collected, so the workers never
    drain at a batch's boundary (each element depends on its step and position alone, so the
    batches are the same whatever order they are asked for in)."""
    self._submit(step)
    self._submit(step + 1)
    jobs, masks = self._pending.pop(step)
    for other in [s for s in self._pending if s != step + 1]:  # asked out of order: stale
      for job in self._pending.pop(other)[0]:
        job.cancel()
    images = np.empty((self.local_batch, self.transform.size, self.transform.size,
                       self.transform.channels), np.uint8)
    skipped: list[str] = []
    for k, job in enumerate(jobs):
      images[k], names = job.result()
      skipped += names
    batch = {'images': images, 'skipped': skipped}
    batch.update(masks.result())
    return batch

  def close(self) -> None:
    self._pool.shutdown(wait=False, cancel_futures=True)


def prefetch(make: Callable[[int], dict], start: int, stop: int, depth: int = 2) -> Iterator[dict]:
  """Yield make(start), ..., make(stop - 1), computed `depth` ahead in a thread."""
  q: queue.Queue = queue.Queue(maxsize=depth)
  stop_flag = threading.Event()

  def put(entry) -> None:  # gives up once the consumer has gone
    while not stop_flag.is_set():
      try:
        q.put(entry, timeout=0.1)
        return
      except queue.Full:
        continue

  def work():
    try:
      for step in range(start, stop):
        if stop_flag.is_set():
          return
        put((make(step), None))
    except Exception as e:  # noqa: BLE001  (any error: surfaced in the consumer thread)
      put((None, e))

  thread = threading.Thread(target=work, daemon=True)
  thread.start()
  try:
    for _ in range(start, stop):
      item, err = q.get()
      if err is not None:
        raise err
      yield item
  finally:
    stop_flag.set()

