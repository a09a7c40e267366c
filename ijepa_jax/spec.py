"""The config resolved once: `resolve` turns a `ConfigDict` into a `Run` of typed parts.

This is the one place that derives. `config.validate` checks each field on its own;
everything worked out from several fields or from the machine is worked out here, once:
the encoder's sizes from its variant, the predictor's heads, the patch grid, the attention
implementations and the blocks' scan for the platform, the mesh and the batch's
divisibility over its devices and processes, the mask sampler (built once per start and
handed on), the steps per epoch (a configured `steps_per_epoch` wins everywhere, else the
dataset's size over the batch), the schedules, the evaluation data from the training
data, the decoding threads. Only the entry points read the raw config: `main.py` (through
`trainer.train_and_evaluate`), the tools and the benchmarks call `resolve` and hand the
parts on.

A run resolved before its data is open has no steps per epoch unless the config gives
them (`steps_per_epoch`, or `data.dataset_size`); `Run.sized(len(split))` completes it.

A section's dataclass names every field of that config section (`base_config()`); a config
field that a dataclass lacks is a `TypeError` in `resolve`, and `tests/test_spec.py` checks
the two lists stay equal.
"""

import dataclasses
import json
import os
from typing import Any

import ml_collections

from ijepa_jax import flops as flops_lib
from ijepa_jax.config import DTYPES, ConfigError, require, validate
from ijepa_jax.masks import MaskConfig, MaskSampler
from ijepa_jax.packing import Packer
from ijepa_jax.models import (VARIANTS, Predictor, VisionTransformer, attention_implementation,
                              cudnn_flash_fits)
from ijepa_jax.objective import AntiCollapse
from ijepa_jax.probes import ProbeSettings
from ijepa_jax.schedules import Schedules
from ijepa_jax.sharding import mesh_shape
from ijepa_jax.train_step import IJepa, make_optimizer


def grid_of(image_size: int, patch_size: int) -> tuple[int, int]:
  """The patch grid of square `image_size` images: the one place it is worked out."""
  n = image_size // patch_size
  return (n, n)


def steps_per_epoch_of(dataset_size: int, batch_size: int, configured: int = -1) -> int:
  """Steps per epoch: a configured value (not -1) wins, else the dataset's whole batches."""
  return configured if configured != -1 else dataset_size // batch_size


# Platforms whose default is the blocks under nn.scan (model.scan_layers unset). Unrolled blocks
# are faster on GPUs (1.21-1.28x on an H200) and CPUs (1.27-1.35x) and compile in under a
# minute there (ViT-H/14 in 22 s on the H200); on TPUs, unmeasured so far, the scan keeps the
# compile flat in depth, which a pod's many-minute compiles of ViT-H/g need most
# (docs/PERFORMANCE.md, "Defaults").
SCAN_PLATFORMS = ('tpu',)


@dataclasses.dataclass(frozen=True)
class Arch:
  """The encoder's and predictor's sizes and compute settings, every `-1` resolved."""
  variant: str
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  patch_size: int
  image_size: int
  channels: int
  pred_width: int
  pred_depth: int
  pred_heads: int
  pred_out: int      # predictor_proj's outputs: the width, or p*p*C pixels for pixel targets
  dtype: str         # compute dtype name ('bfloat16' or 'float32'); parameters stay float32
  remat_policy: str
  scan_layers: bool
  # (('encoder', impl), ('predictor', impl)) on this platform
  attention: tuple[tuple[str, str], ...]

  @property
  def grid(self) -> tuple[int, int]:
    return grid_of(self.image_size, self.patch_size)

  @property
  def compute_dtype(self) -> Any:
    return DTYPES[self.dtype]

  @property
  def attention_backends(self) -> dict[str, str]:
    return dict(self.attention)

  def flop_sizes(self) -> dict[str, int]:
    """The model sizes `flops.train_step_flops` and `flops.useful_step_flops` take."""
    return dict(image_size=self.image_size, patch_size=self.patch_size, channels=self.channels,
                width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                pred_width=self.pred_width, pred_depth=self.pred_depth, pred_out=self.pred_out)

  def step_flops(self, batch_size: int, sampler: MaskSampler,
                 packer: Packer | None = None) -> float:
    """Executed FLOPs of one train step on a global batch of `batch_size` with `sampler`'s
    fixed shapes (padding included), packed as `packer` packs (masks.pack) where given."""
    padded = flops_lib.train_step_flops(
        batch_size=batch_size, context_len=sampler.context_len, target_len=sampler.target_len,
        num_targets=sampler.num_targets, **self.flop_sizes())
    if packer is None:
      return padded
    return padded + 3 * sum(packer.flop_change(self.depth, self.pred_depth).values())

  def useful_flops(self, ctx_len: Any, tgt_len: Any) -> float:
    """Useful FLOPs of the images with these real lengths (a mask batch's `ctx_len` [B],
    `tgt_len` [B, M]): the work without the padding."""
    return flops_lib.useful_step_flops(ctx_len=ctx_len, tgt_len=tgt_len, **self.flop_sizes())


def arch_of(config: ml_collections.ConfigDict, platform: str) -> Arch:
  """The model's sizes from a field-validated config: the variant's, with any explicit
  override (a custom model's MLP defaults to 4 x width); ConfigError for sizes that do not
  fit together or an attention the platform cannot run."""
  m, d = config.model, config.data
  base = VARIANTS.get(m.variant, (-1, -1, -1, -1))
  width, depth, heads = (v if v != -1 else b for v, b in zip((m.width, m.depth, m.num_heads), base))
  for name, v in (('width', width), ('depth', depth), ('num_heads', heads)):
    require(v > 0, f'model.{name}={v} must be a positive integer (required for variant=custom)')
  variant_mlp = base[3] if m.width == -1 and base[3] > 0 else 4 * width
  mlp_dim = m.mlp_dim if m.mlp_dim != -1 else variant_mlp
  require(mlp_dim > 0, f'model.mlp_dim={mlp_dim} must be positive (or -1 for the default)')
  require(d.image_size % m.patch_size == 0,
          f'data.image_size={d.image_size} must be a positive multiple of model.patch_size='
          f'{m.patch_size}; change one of them')
  require(d.image_size // m.patch_size >= 2,
          f'data.image_size={d.image_size} / model.patch_size={m.patch_size} gives fewer than '
          '2x2 patches; use larger images or smaller patches')
  require(width % heads == 0, f'model.width={width} must be divisible by model.num_heads={heads}')
  require(width % 4 == 0, f'model.width={width} must be divisible by 4 (2-D sin-cos positions)')
  pred_heads = heads if m.pred_heads == -1 else m.pred_heads
  require(pred_heads > 0 and m.pred_width % pred_heads == 0,
          f'model.pred_width={m.pred_width} must be divisible by the predictor heads '
          f'({pred_heads}; set model.pred_heads)')
  head_dims = {'encoder': width // heads, 'predictor': m.pred_width // pred_heads}
  if m.attention == 'cudnn':
    require(platform in ('gpu', 'cuda'), f'model.attention=cudnn needs a GPU (this run is on '
            f'{platform}); use model.attention=default')
    require(m.dtype == 'bfloat16', 'model.attention=cudnn needs model.dtype=bfloat16')
    for name, hd in head_dims.items():
      require(cudnn_flash_fits(hd, DTYPES[m.dtype]), f'model.attention=cudnn: the {name}\'s '
              f'head size {hd} must be a multiple of 8 and <= 128 for the flash kernel; use '
              'model.attention=default')
  requested = None if m.attention == 'default' else m.attention
  pixels = config.target_space == 'pixels'  # the predictor regresses a patch's p*p*C pixels
  return Arch(
      variant=m.variant, width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim,
      patch_size=m.patch_size, image_size=d.image_size, channels=d.channels,
      pred_width=m.pred_width, pred_depth=m.pred_depth, pred_heads=pred_heads,
      pred_out=m.patch_size ** 2 * d.channels if pixels else width, dtype=m.dtype,
      remat_policy=m.remat_policy,
      scan_layers=platform in SCAN_PLATFORMS if m.scan_layers is None else bool(m.scan_layers),
      attention=tuple((name, attention_implementation(requested, hd, DTYPES[m.dtype], platform))
                      for name, hd in head_dims.items()))


def mask_config(config: ml_collections.ConfigDict) -> MaskConfig:
  """config.masks on the config's patch grid (no other check: `draw_masks` draws configs that
  `resolve` would refuse)."""
  k = config.masks
  return MaskConfig(
      grid=grid_of(config.data.image_size, config.model.patch_size), mode=k.mode,
      num_targets=k.num_targets, target_scale=tuple(k.target_scale),
      target_aspect=tuple(k.target_aspect), context_scale=tuple(k.context_scale),
      context_aspect=tuple(k.context_aspect), min_keep=k.min_keep,
      context_len=None if k.context_len == -1 else k.context_len,
      truncation_batch=k.truncation_batch, strategy=k.strategy,
      target_fraction=k.target_fraction)


def anti_collapse(config: ml_collections.ConfigDict) -> AntiCollapse:
  """The anti-collapse terms (SIGReg's directions keyed by the run's seed)."""
  a = config.anti_collapse
  return AntiCollapse(
      var_weight=a.var_weight, cov_weight=a.cov_weight, target_std=a.target_std,
      sigreg_weight=a.sigreg_weight, sigreg_directions=a.sigreg_directions,
      sigreg_points=a.sigreg_points, sigreg_t_max=a.sigreg_t_max, embeddings=a.embeddings,
      seed=config.seed)


def _optimization(optim: 'OptimSpec', steps_per_epoch: int, num_epochs: float) -> dict:
  """The schedules and the optimizer for `steps_per_epoch` (the IJepa fields they fill)."""
  schedules = Schedules.from_epochs(
      steps_per_epoch=steps_per_epoch, num_epochs=num_epochs,
      warmup_epochs=optim.warmup_epochs, ipe_scale=optim.ipe_scale, start_lr=optim.start_lr,
      peak_lr=optim.lr, final_lr=optim.final_lr, weight_decay=optim.weight_decay,
      final_weight_decay=optim.final_weight_decay, ema_start=optim.ema[0],
      ema_end=optim.ema[1])
  optimizer = make_optimizer(schedules, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                             grad_clip=optim.grad_clip)
  return dict(schedules=schedules, optimizer=optimizer)


def _check_schedule(steps_per_epoch: int, num_epochs: float, batch_size: int,
                    dataset_size: int) -> None:
  require(steps_per_epoch > 0, f'steps_per_epoch resolves to {steps_per_epoch}: the dataset '
          f'({dataset_size} images) is smaller than batch_size={batch_size}; lower batch_size '
          'or set steps_per_epoch')
  require(int(num_epochs * steps_per_epoch) > 0,
          f'num_epochs={num_epochs} x {steps_per_epoch} steps per epoch is less than one step; '
          'train more epochs or use a smaller batch_size')


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The training data: where it is, its size, and the transforms' settings."""
  dataset: str
  data_dir: str
  split: str
  image_size: int
  channels: int
  dataset_size: int  # -1 only where no data was opened and none was configured
  crop_scale: tuple[float, float]
  crop_ratio: tuple[float, float]
  flip: bool
  mean: tuple[float, ...]
  std: tuple[float, ...]
  workers: int       # decoding threads per process (-1 resolved to the CPU count)
  prefetch: int



@dataclasses.dataclass(frozen=True)
class EvalSpec:
  """The frozen-feature evaluation (config.evals); `dataset` and `data_dir` resolved to the
  training data's where the config leaves them empty."""
  every: int
  at_end: bool
  baseline: bool
  dataset: str
  data_dir: str
  train_split: str
  test_split: str
  train_examples: int
  test_examples: int
  final_train_examples: int
  final_test_examples: int
  periodic_probes: tuple[str, ...]
  final_probes: tuple[str, ...]
  encoder: str
  pool: str
  crop_fraction: float
  batch_size: int
  probe: ProbeSettings
  configured_dataset: str   # the config's own evals.dataset / data_dir ('' = the training data's),
  configured_data_dir: str  # for error messages that name the field to change


@dataclasses.dataclass(frozen=True)
class MonitorSpec:
  tensorboard: bool
  progress: bool
  health_every: int
  collapse_std_floor: float
  collapse_rank_floor: float
  pictures: bool
  mask_images: int
  feature_images: int
  feature_maps: int


@dataclasses.dataclass(frozen=True)
class CheckpointSpec:
  every: int
  keep: int
  keep_every: int
  async_save: bool
  stop_check_every: int
  stop_deadline: float


@dataclasses.dataclass(frozen=True)
class OptimSpec:
  """config.optim: AdamW's settings and the schedules' values (counted in epochs)."""
  start_lr: float
  lr: float
  final_lr: float
  warmup_epochs: float
  weight_decay: float
  final_weight_decay: float
  ema: tuple[float, float]
  ipe_scale: float
  grad_clip: float
  b1: float
  b2: float
  eps: float
  accum_steps: int   # micro-batches per batch (gradient accumulation)


@dataclasses.dataclass(frozen=True)
class Run:
  """One run's settings, typed: what the trainer, the tools and the benchmarks take."""
  seed: int
  batch_size: int
  steps_per_epoch: int | None  # None: no dataset size known yet (see `sized`)
  total_steps: int | None
  num_epochs: float
  max_steps: int
  log_every: int
  nonfinite: str
  init_from: str
  init_from_mode: str
  arch: Arch
  model: IJepa            # the modules, the optimizer, the schedules, the objective
  masks: MaskConfig
  sampler: MaskSampler    # built once from `masks`, shared by everything in the start
  packer: Packer | None   # masks.pack: how each device's sequences are packed into rows
  mesh: tuple[int, int]   # (data, fsdp) devices
  data: DataSpec
  optim: OptimSpec
  evals: EvalSpec
  monitor: MonitorSpec
  checkpoint: CheckpointSpec
  configured_steps_per_epoch: int  # the config's steps_per_epoch (-1: from the dataset)
  config_json: str        # the resolved config, as the checkpoint's metadata records it

  def config_dict(self) -> dict:
    return json.loads(self.config_json)

  def sized(self, dataset_size: int, name: str = 'the training split') -> 'Run':
    """This run for a training split of `dataset_size` images: its steps per epoch (a
    configured `steps_per_epoch` wins), total steps and schedules. A configured
    data.dataset_size must be that size (a template's size on another dataset would
    set the wrong schedule)."""
    configured = self.data.dataset_size
    require(configured in (-1, dataset_size),
            f'data.dataset_size={configured} but {name} has {dataset_size} images; pass '
            '--config.data.dataset_size=-1 to use the split\'s size (or steps_per_epoch=N to '
            'set an epoch\'s length yourself)')
    spe = steps_per_epoch_of(dataset_size, self.batch_size, self.configured_steps_per_epoch)
    _check_schedule(spe, self.num_epochs, self.batch_size, dataset_size)
    require(spe * self.batch_size <= dataset_size,
            f'steps_per_epoch={spe} x batch_size={self.batch_size} is more images than {name} '
            f'holds ({dataset_size}); lower steps_per_epoch (or -1: the split\'s whole batches)')
    return self._with_steps(spe, dataset_size)

  def _with_steps(self, spe: int, dataset_size: int) -> 'Run':
    total = int(self.num_epochs * spe)
    config = self.config_dict()
    config['data']['dataset_size'] = dataset_size
    return dataclasses.replace(
        self, steps_per_epoch=spe,
        total_steps=total if self.max_steps == -1 else min(total, self.max_steps),
        model=dataclasses.replace(self.model, **_optimization(self.optim, spe, self.num_epochs)),
        data=dataclasses.replace(self.data, dataset_size=dataset_size),
        config_json=json.dumps(config))


def _section(cls, section: ml_collections.ConfigDict | dict, **resolved):
  """`cls` from one config section: its fields as they are, with `resolved` ones replaced
  and tuples kept as tuples. A field of the section that `cls` lacks raises TypeError."""
  values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in section.items()}
  values.update(resolved)
  return cls(**values)


def resolve(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1,
            platform: str | None = None, dataset_size: int | None = None) -> Run:
  """Validate `config` and derive everything from it: a `Run` (ConfigError first).

  `dataset_size`: the training split's size (as `Run.sized`). Without it the run is sized
  from a configured steps_per_epoch or data.dataset_size where there is one; otherwise its
  schedules are built for one step per epoch and `steps_per_epoch` and `total_steps` are
  None: enough for the tools that restore or export weights (the optimizer's state has the
  same structure at any schedule), not for training. `platform` (jax.default_backend();
  None: 'cpu') sets the attention and the blocks' scan.
  """
  platform = platform or 'cpu'
  validate(config)
  arch = arch_of(config, platform)
  try:
    mesh = mesh_shape(config.mesh.data, config.mesh.fsdp, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  devices = mesh[0] * mesh[1]
  require(config.batch_size % devices == 0,
          f'batch_size={config.batch_size} must be divisible by the {devices} devices of '
          f'the mesh ({mesh[0]} data x {mesh[1]} fsdp); use a multiple of {devices}')
  require(config.batch_size % num_processes == 0,
          f'batch_size={config.batch_size} must be divisible by the {num_processes} processes')
  k = config.optim.accum_steps
  require(config.batch_size % (k * devices) == 0,
          f'batch_size={config.batch_size} must be divisible by optim.accum_steps={k} x the '
          f'{devices} devices ({k * devices}): each micro-batch is split over the devices')
  masks = mask_config(config)
  try:
    sampler = MaskSampler(masks)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  packer = None
  if config.masks.pack:
    packer = Packer(sampler, config.batch_size, devices, arch.grid[0] * arch.grid[1],
                    (arch.width, arch.mlp_dim), (arch.pred_width, 4 * arch.pred_width),
                    accum_steps=config.optim.accum_steps)
  m = config.model
  attention = None if m.attention == 'default' else m.attention
  encoder = VisionTransformer(
      patch_size=arch.patch_size, width=arch.width, depth=arch.depth, num_heads=arch.num_heads,
      mlp_dim=arch.mlp_dim, dtype=arch.compute_dtype, remat_policy=arch.remat_policy,
      attention=attention, scan_layers=arch.scan_layers, patch_init=m.patch_init)
  predictor = Predictor(
      grid=arch.grid, embed_dim=arch.width, width=arch.pred_width, depth=arch.pred_depth,
      num_heads=arch.pred_heads, mlp_dim=4 * arch.pred_width, dtype=arch.compute_dtype,
      remat_policy=arch.remat_policy, attention=attention, scan_layers=arch.scan_layers,
      out_dim=None if arch.pred_out == arch.width else arch.pred_out)
  optim = _section(OptimSpec, config.optim)
  model = IJepa(encoder, predictor, loss=config.loss, anti_collapse=anti_collapse(config),
                target_space=config.target_space, accum_steps=optim.accum_steps,
                **_optimization(optim, 1, config.num_epochs))
  run = Run(
      seed=config.seed, batch_size=config.batch_size, steps_per_epoch=None, total_steps=None,
      num_epochs=config.num_epochs, max_steps=config.max_steps, log_every=config.log_every,
      nonfinite=config.nonfinite, init_from=config.init_from,
      init_from_mode=config.init_from_mode, arch=arch, model=model, masks=masks,
      sampler=sampler, packer=packer, mesh=mesh, data=data_spec(config), optim=optim,
      evals=eval_spec(config),
      monitor=_section(MonitorSpec, config.monitor),
      checkpoint=_section(CheckpointSpec, config.checkpoint),
      configured_steps_per_epoch=config.steps_per_epoch,
      config_json=config.to_json_best_effort())
  if dataset_size is not None:
    return run.sized(dataset_size)
  size = config.data.dataset_size
  if config.steps_per_epoch != -1 or size != -1:  # sized by the config alone
    spe = steps_per_epoch_of(size, config.batch_size, config.steps_per_epoch)
    _check_schedule(spe, config.num_epochs, config.batch_size, size)
    return run._with_steps(spe, size)
  return run


def resolve_here(config: ml_collections.ConfigDict) -> Run:
  """`resolve` for this process's devices and backend (the tools' and benchmarks' way in)."""
  import jax  # pylint: disable=import-outside-toplevel
  return resolve(config, jax.device_count(), jax.process_count(), jax.default_backend())


def data_spec(config: ml_collections.ConfigDict) -> DataSpec:
  """config.data, typed (decoding threads resolved); `resolve` uses it, and so does a tool
  that needs only the data (`draw_masks`)."""
  d = config.data
  return _section(DataSpec, d, workers=(os.cpu_count() or 1) if d.workers == -1 else d.workers)


def eval_spec(config: ml_collections.ConfigDict) -> EvalSpec:
  """config.evals, typed, its empty dataset and data_dir resolved to the training data's."""
  ev, d = config.evals, config.data
  probe_fields = {f.name for f in dataclasses.fields(ProbeSettings)}
  probe = _section(ProbeSettings, {k: v for k, v in ev.items() if k in probe_fields})
  return _section(EvalSpec, {k: v for k, v in ev.items() if k not in probe_fields},
                  dataset=ev.dataset or d.dataset, data_dir=ev.data_dir or d.data_dir,
                  probe=probe, configured_dataset=ev.dataset, configured_data_dir=ev.data_dir)


def describe_arch(arch: Arch) -> str:
  """'ViT custom width 64 depth 4 heads 4 mlp 256 patch 4 @ 28px' for the logs."""
  return (f'ViT {arch.variant} width {arch.width} depth {arch.depth} heads {arch.num_heads} '
          f'mlp {arch.mlp_dim} patch {arch.patch_size} @ {arch.image_size}px')

