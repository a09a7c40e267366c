"""The config resolved once: `resolve` turns a validated `ConfigDict` into a `Run` of typed parts.

Only the entry points read the raw config: `main.py` (through `trainer.train_and_evaluate`),
the tools and the benchmarks call `resolve` (after `validate`) and hand the parts on; the
trainer, the evaluator, the monitor, the state builders and the encoders' loaders take
those parts. Every `-1` ("derived") of the config is worked out here: the encoder's sizes
from its variant, the predictor's heads, the evaluation data from the training data, the
decoding threads, the steps per epoch from the dataset's size.

A section's dataclass names every field of that config section (`base_config()`); a config
field that a dataclass lacks is a `TypeError` in `resolve`, and `tests/test_spec.py` checks
the two lists stay equal.
"""

import dataclasses
import json
import os
from typing import Any

import ml_collections

from ijepa_jax import config as cfg_lib
from ijepa_jax import flops as flops_lib
from ijepa_jax.input_pipeline import TransformConfig
from ijepa_jax.masks import MaskConfig, MaskSampler
from ijepa_jax.probes import ProbeSettings
from ijepa_jax.sharding import mesh_shape
from ijepa_jax.train_step import IJepa


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
  attention: tuple[tuple[str, str], ...]  # (('encoder', impl), ('predictor', impl)) on this platform

  @property
  def grid(self) -> tuple[int, int]:
    n = self.image_size // self.patch_size
    return (n, n)

  @property
  def compute_dtype(self) -> Any:
    return cfg_lib.DTYPES[self.dtype]

  @property
  def attention_backends(self) -> dict[str, str]:
    return dict(self.attention)

  def flop_sizes(self) -> dict[str, int]:
    """The model sizes `flops.train_step_flops` and `flops.useful_step_flops` take."""
    return dict(image_size=self.image_size, patch_size=self.patch_size, channels=self.channels,
                width=self.width, depth=self.depth, mlp_dim=self.mlp_dim,
                pred_width=self.pred_width, pred_depth=self.pred_depth, pred_out=self.pred_out)

  def step_flops(self, batch_size: int, sampler: MaskSampler) -> float:
    """Executed FLOPs of one train step on a global batch of `batch_size` with `sampler`'s
    fixed shapes (padding included)."""
    return flops_lib.train_step_flops(
        batch_size=batch_size, context_len=sampler.context_len, target_len=sampler.target_len,
        num_targets=sampler.num_targets, **self.flop_sizes())

  def useful_flops(self, ctx_len: Any, tgt_len: Any) -> float:
    """Useful FLOPs of the images with these real lengths (a mask batch's `ctx_len` [B],
    `tgt_len` [B, M]): the work without the padding."""
    return flops_lib.useful_step_flops(ctx_len=ctx_len, tgt_len=tgt_len, **self.flop_sizes())


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

  @property
  def transform(self) -> TransformConfig:
    return TransformConfig(self.image_size, self.channels, self.crop_scale, self.crop_ratio,
                           self.flip)


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
class Run:
  """One run's settings, typed: what the trainer, the tools and the benchmarks take."""
  seed: int
  batch_size: int
  steps_per_epoch: int | None  # None: no dataset size known (weights-only tools)
  total_steps: int | None
  log_every: int
  nonfinite: str
  init_from: str
  init_from_mode: str
  arch: Arch
  model: IJepa            # the modules, the optimizer, the schedules, the objective
  masks: MaskConfig
  mesh: tuple[int, int]   # (data, fsdp) devices
  data: DataSpec
  evals: EvalSpec
  monitor: MonitorSpec
  checkpoint: CheckpointSpec
  config_json: str        # the resolved config, as the checkpoint's metadata records it

  def sampler(self) -> MaskSampler:
    return MaskSampler(self.masks)

  def config_dict(self) -> dict:
    return json.loads(self.config_json)


def _section(cls, section: ml_collections.ConfigDict | dict, **resolved):
  """`cls` from one config section: its fields as they are, with `resolved` ones replaced
  and tuples kept as tuples. A field of the section that `cls` lacks raises TypeError."""
  values = {k: tuple(v) if isinstance(v, (list, tuple)) else v for k, v in section.items()}
  values.update(resolved)
  return cls(**values)


def resolve(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1,
            platform: str | None = None, dataset_size: int | None = None,
            validated: bool = False) -> Run:
  """Validate `config` and resolve it into a `Run`.

  `dataset_size`: the training split's size when the data is open (it fills
  data.dataset_size where that is -1, as the schedules need it). Without it and without a
  configured size, the schedules are built for one step per epoch and `steps_per_epoch` and
  `total_steps` are None: enough for the tools that restore or export weights (the
  optimizer's state has the same structure at any schedule), not for training.
  `validated`: the caller ran `config.validate` on it already (the trainer does, before it
  opens the data); then only the checks that needed the dataset size run here.
  """
  if dataset_size is not None:
    config = cfg_lib.with_dataset_size(config, dataset_size)
  if not validated:
    cfg_lib.validate(config, num_devices, num_processes, platform)
  elif dataset_size is not None:
    cfg_lib.validate_schedule(config)
  sized = config.steps_per_epoch != -1 or config.data.dataset_size != -1
  model = cfg_lib.build_model(
      config if sized else cfg_lib.with_dataset_size(config, config.batch_size), platform or 'cpu')
  m, d = config.model, config.data
  width, depth, heads, mlp_dim = cfg_lib.encoder_dims(config)
  arch = Arch(
      variant=m.variant, width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim,
      patch_size=m.patch_size, image_size=d.image_size, channels=d.channels,
      pred_width=m.pred_width, pred_depth=m.pred_depth,
      pred_heads=heads if m.pred_heads == -1 else m.pred_heads,
      pred_out=cfg_lib.predictor_out_dim(config) or width, dtype=m.dtype,
      remat_policy=m.remat_policy, scan_layers=model.encoder.scan_layers,
      attention=tuple(cfg_lib.attention_backends(config, platform or 'cpu').items()))
  return Run(
      seed=config.seed, batch_size=config.batch_size,
      steps_per_epoch=cfg_lib.steps_per_epoch(config) if sized else None,
      total_steps=cfg_lib.total_steps(config) if sized else None,
      log_every=config.log_every, nonfinite=config.nonfinite, init_from=config.init_from,
      init_from_mode=config.init_from_mode, arch=arch, model=model,
      masks=cfg_lib.mask_config(config),
      mesh=mesh_shape(config.mesh.data, config.mesh.fsdp, num_devices),
      data=data_spec(config), evals=eval_spec(config),
      monitor=_section(MonitorSpec, config.monitor),
      checkpoint=_section(CheckpointSpec, config.checkpoint),
      config_json=config.to_json_best_effort())


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

