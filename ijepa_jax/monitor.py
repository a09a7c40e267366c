"""The trainer's monitor: representation health every `monitor.health_every` steps with the
collapse alarm, and the pictures (masks at the start, patch-feature maps at a few steps,
training curves at the end), each a PNG in `<workdir>/pictures/` and an image in
TensorBoard.
"""

import dataclasses
from typing import Any, Callable

import jax
import numpy as np

from ijepa_jax import data as data_lib
from ijepa_jax import pictures, sharding
from ijepa_jax.evaluation import FeatureExtractor
from ijepa_jax.health import CollapseAlarm, health_metrics
from ijepa_jax.masks import MODES, MaskConfig, MaskSampler
from ijepa_jax.pixels import normalize
from ijepa_jax.spec import DataSpec, Run
from ijepa_jax.train_step import IJepa


def strategy_name(sampler: MaskSampler) -> str:
  """'' for the multi-block sampler, else 'random strategy, ' (and so on)."""
  return '' if sampler.strategy == 'multiblock' else f'{sampler.strategy} strategy, '


def mask_sections(config: MaskConfig, num_images: int, seed: int, step: int,
                  first: dict | None = None) -> list[tuple[str, dict | str]]:
  """`pictures.mask_picture` sections for both sampler modes, this config's mode first (one
  section for the random, block and rasterized strategies).

  `first`: the masks to show for this config's mode (the trainer passes its first batch's);
  otherwise each mode's sampler draws masks for `num_images` images at (seed, step). A mode
  that cannot sample this config shows its error instead.
  """
  sections = []
  # the other strategies have no official mode: only this config's section
  modes = MODES if config.strategy == 'multiblock' else (config.mode,)
  for mode in sorted(modes, key=lambda m: m != config.mode):
    try:
      sampler = MaskSampler(dataclasses.replace(config, mode=mode))
    except ValueError as e:
      sections.append((f'{mode} mode: cannot sample this config', str(e)[:160]))
      continue
    masks = first if (first is not None and mode == config.mode) else (
        sampler(num_images, seed, step)._asdict())
    masks = {k: np.asarray(v)[:num_images] for k, v in masks.items()}
    mine = ' (this config)' if mode == config.mode else ''
    sections.append((
        f'{strategy_name(sampler)}{mode} mode{mine}: context ({masks["ctx_len"].mean():.0f} of '
        f'{sampler.num_patches} patches on average, cut to {sampler.context_len}) | '
        f'{sampler.num_targets} target blocks | all', masks))
  return sections


def picture_images(source: data_lib.Source, d: DataSpec, crop_fraction: float,
                   num_images: int) -> np.ndarray:
  """The first `num_images` images of the training split through the evaluation transform
  [K, S, S, C] uint8: the same for every run of a dataset (corrupt ones are left out)."""
  out = []
  for i in range(len(source)):
    try:
      out.append(data_lib.eval_transform(source.load(i), d.image_size, d.channels,
                                         crop_fraction))
    except data_lib.CorruptImageError:
      continue
    if len(out) == num_images:
      break
  return np.stack(out)


def feature_steps(total: int, count: int) -> set[int]:
  """`count` steps spread evenly over [0, total], both ends included (0: none)."""
  if count <= 0:
    return set()
  if count == 1:
    return {total}
  return {int(round(i * total / (count - 1))) for i in range(count)}


def make_health_fn(model: IJepa, state_shardings: Any, mesh: jax.sharding.Mesh,
                   mean: tuple[float, ...], std: tuple[float, ...]) -> Callable:
  """`fn(state, batch) -> health metrics` on uint8 images, jitted over the mesh."""
  def fn(state, batch):
    batch = dict(batch, images=normalize(batch['images'], mean, std))
    return health_metrics(model, state.params, state.target_params, batch)

  return jax.jit(fn, in_shardings=(state_shardings, sharding.batch_sharding(mesh)),
                 out_shardings=sharding.replicated(mesh))


class Monitor:
  """Called by the trainer's loop: `begin` before the first step, `after_step` after each,
  `end` after the last."""

  def __init__(self, run: Run, mesh: jax.sharding.Mesh, state_shardings: Any, run_log: Any,
               log: Callable[[str], None], source: data_lib.Source):
    m = run.monitor
    self.run, self.run_log, self.total, self.log = run, run_log, run.total_steps, log
    self.every = m.health_every
    self.alarm = CollapseAlarm(m.collapse_std_floor, m.collapse_rank_floor)
    self.warnings = 0
    self.health_fn = (make_health_fn(run.model, state_shardings, mesh, run.data.mean,
                                     run.data.std) if self.every > 0 else None)
    self.pictures = m.pictures
    self.feature_at = feature_steps(self.total, m.feature_maps) if m.pictures else set()
    self.images = (picture_images(source, run.data, run.evals.crop_fraction, m.feature_images)
                   if self.feature_at else None)
    self.extract = FeatureExtractor.for_run(run, mesh, 'tokens') if self.feature_at else None

  # -- pictures ----------------------------------------------------------------

  def begin(self, state: Any, start: int, first_batch: dict[str, np.ndarray]) -> None:
    """The mask picture (this config's mode from the first batch of this start; the
    other mode drawn for the same images) and the start's feature map when due."""
    if not self.pictures:
      return
    k = min(self.run.monitor.mask_images, len(first_batch['images']))
    masks = {key: first_batch[key][:k] for key in ('ctx_idx', 'ctx_len', 'tgt_idx', 'tgt_len')}
    # training step start + 1 takes global batch `start` (the sampler's step argument)
    sections = mask_sections(self.run.masks, k, self.run.seed, start, masks)
    image = pictures.mask_picture(first_batch['images'][:k], sections, self.run.arch.patch_size)
    path = self.run_log.picture('masks', image, start + 1)
    self.log(f'pictures: masks of training step {start + 1} in {path}; patch-feature maps at steps '
             f'{sorted(self.feature_at)}; training curves at the end')
    if start in self.feature_at:
      self.feature_map(state, start)

  def feature_map(self, state: Any, step: int) -> None:
    tokens = self.extract(state.target_params, self.images)
    grid = self.run.arch.grid
    image = pictures.feature_picture(
        self.images, tokens, grid,
        f'step {step}: the first 3 principal components of the target encoder\'s patch '
        'features; below, without each position\'s mean over these images')
    self.run_log.picture(f'features_step{step:07d}', image, step)

  def end(self, step: int) -> None:
    if not self.pictures or jax.process_index() != 0:
      return
    from ijepa_jax.reporting import read_metrics  # pylint: disable=import-outside-toplevel
    self.run_log.flush()
    self.run_log.picture('curves', pictures.curves_image(read_metrics(self.run_log.workdir)), step)

  # -- health ------------------------------------------------------------------

  def due(self, step: int) -> bool:
    """Whether `after_step` has work at `step` (a feature map or a health check)."""
    return step in self.feature_at or (self.health_fn is not None and step % self.every == 0)

  def after_step(self, step: int, state: Any, batch: dict[str, jax.Array]) -> None:
    if step in self.feature_at:
      self.feature_map(state, step)
    if self.health_fn is None or step % self.every:
      return
    health = {k: float(v) for k, v in jax.device_get(self.health_fn(state, batch)).items()}
    warning = self.alarm.check(health)
    health['collapse_warning'] = float(warning is not None)
    self.run_log.write({'step': step, **{f'health_{k}': v for k, v in health.items()}})
    if warning:
      self.warnings += 1
      self.log(f'WARNING at step {step}: {warning}' if self.warnings == 1 else
               f'WARNING at step {step}: still collapsing (std {health["feature_std_mean"]:.3g}, '
               f'effective rank {health["effective_rank"]:.3g})')
    else:
      self.log(f'health at step {step}: feature std {health["feature_std_mean"]:.3g} (min '
               f'{health["feature_std_min"]:.3g}) | effective rank {health["effective_rank"]:.2f}'
               f' | prediction-target cosine {health["pred_cosine"]:.3f}')
