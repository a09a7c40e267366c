"""From an ml_collections config to validated pieces: model, masks, schedules.

Every check here runs before anything is compiled; each error names the
config field and what to change.
"""

import math
import os

import jax.numpy as jnp
import ml_collections

from ijepa_jax.features import ENCODERS, OUTPUTS as POOLS
from ijepa_jax.probes import names as probe_names
from ijepa_jax.masks import MaskConfig, MaskSampler, MODES
from ijepa_jax.models import (PATCH_INITS, REMAT_POLICIES, VARIANTS, Predictor, VisionTransformer,
                              attention_implementation, cudnn_flash_fits)
from ijepa_jax.objective import EMBEDDINGS, LOSSES, TARGET_SPACES, AntiCollapse
from ijepa_jax.schedules import Schedules
from ijepa_jax.sharding import mesh_shape
from ijepa_jax.train_step import IJepa, make_optimizer

NONFINITE = ('stop', 'skip')
INIT_FROM_MODES = ('weights', 'full')
DTYPES = {'bfloat16': jnp.bfloat16, 'float32': jnp.float32}
ATTENTION = ('default', 'xla', 'cudnn')  # jax.nn.dot_product_attention implementations


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def encoder_dims(config: ml_collections.ConfigDict) -> tuple[int, int, int, int]:
  """(width, depth, heads, mlp_dim): the variant's, with any explicit override.

  A custom model's MLP defaults to 4 x width.
  """
  m = config.model
  _require(m.variant in VARIANTS or m.variant == 'custom',
           f"model.variant={m.variant!r}: choose one of {sorted(VARIANTS)} or 'custom' "
           '(then set model.width, model.depth, model.num_heads)')
  base = VARIANTS.get(m.variant, (-1, -1, -1, -1))
  width, depth, heads = (v if v != -1 else b for v, b in zip((m.width, m.depth, m.num_heads), base))
  for name, v in (('width', width), ('depth', depth), ('num_heads', heads)):
    _require(v > 0, f'model.{name}={v} must be a positive integer (required for variant=custom)')
  mlp_dim = m.mlp_dim if m.mlp_dim != -1 else (base[3] if m.width == -1 and base[3] > 0 else 4 * width)
  _require(mlp_dim > 0, f'model.mlp_dim={mlp_dim} must be positive (or -1 for the default)')
  return width, depth, heads, mlp_dim


def grid(config: ml_collections.ConfigDict) -> tuple[int, int]:
  n = config.data.image_size // config.model.patch_size
  return (n, n)


def mask_config(config: ml_collections.ConfigDict) -> MaskConfig:
  k = config.masks
  return MaskConfig(
      grid=grid(config), mode=k.mode, num_targets=k.num_targets,
      target_scale=tuple(k.target_scale), target_aspect=tuple(k.target_aspect),
      context_scale=tuple(k.context_scale), context_aspect=tuple(k.context_aspect),
      min_keep=k.min_keep, context_len=None if k.context_len == -1 else k.context_len,
      truncation_batch=k.truncation_batch, strategy=k.strategy,
      target_fraction=k.target_fraction)


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
  if config.steps_per_epoch != -1:
    return config.steps_per_epoch
  return config.data.dataset_size // config.batch_size


def attention_backends(config: ml_collections.ConfigDict, platform: str) -> dict[str, str]:
  """The attention implementation the encoder and the predictor will use on `platform`."""
  m = config.model
  width, _, heads, _ = encoder_dims(config)
  pred_heads = heads if m.pred_heads == -1 else m.pred_heads
  requested = None if m.attention == 'default' else m.attention
  return {name: attention_implementation(requested, head_dim, DTYPES[m.dtype], platform)
          for name, head_dim in (('encoder', width // heads),
                                 ('predictor', m.pred_width // pred_heads))}


# Platforms whose default is the blocks under nn.scan (model.scan_layers unset). Unrolled blocks
# are faster on GPUs (1.21-1.28x on an H200) and CPUs (1.27-1.35x) and compile in under a
# minute there (ViT-H/14 in 22 s on the H200); on TPUs, unmeasured so far, the scan keeps the
# compile flat in depth, which a pod's many-minute compiles of ViT-H/g need most
# (docs/PERFORMANCE.md, "Defaults").
SCAN_PLATFORMS = ('tpu',)


def scan_layers(config: ml_collections.ConfigDict, platform: str) -> bool:
  """Whether the blocks run under nn.scan on `platform`: model.scan_layers where it is set,
  else the platform's default (`SCAN_PLATFORMS`)."""
  chosen = config.model.scan_layers
  return platform in SCAN_PLATFORMS if chosen is None else bool(chosen)


def validate(config: ml_collections.ConfigDict, num_devices: int, num_processes: int = 1,
             platform: str | None = None) -> None:
  """Raise ConfigError for the first value that cannot work (before any compile).

  `platform` (jax.default_backend()) enables the checks that depend on the device kind.
  """
  m, d, o = config.model, config.data, config.optim
  width, depth, heads, _ = encoder_dims(config)
  _require(m.patch_size > 0, f'model.patch_size={m.patch_size} must be positive')
  _require(d.image_size > 0 and d.image_size % m.patch_size == 0,
           f'data.image_size={d.image_size} must be a positive multiple of model.patch_size='
           f'{m.patch_size}; change one of them')
  _require(d.image_size // m.patch_size >= 2,
           f'data.image_size={d.image_size} / model.patch_size={m.patch_size} gives fewer than '
           '2x2 patches; use larger images or smaller patches')
  _require(width % heads == 0, f'model.width={width} must be divisible by model.num_heads={heads}')
  _require(width % 4 == 0, f'model.width={width} must be divisible by 4 (2-D sin-cos positions)')
  pred_heads = heads if m.pred_heads == -1 else m.pred_heads
  _require(m.pred_width > 0 and m.pred_width % 4 == 0,
           f'model.pred_width={m.pred_width} must be a positive multiple of 4')
  _require(pred_heads > 0 and m.pred_width % pred_heads == 0,
           f'model.pred_width={m.pred_width} must be divisible by the predictor heads ({pred_heads}; '
           'set model.pred_heads)')
  _require(m.pred_depth > 0, f'model.pred_depth={m.pred_depth} must be positive')
  _require(m.attention in ATTENTION, f'model.attention={m.attention!r}: choose one of {ATTENTION}')
  _require(m.dtype in DTYPES, f'model.dtype={m.dtype!r}: choose one of {sorted(DTYPES)}')
  if m.attention == 'cudnn' and platform is not None:
    _require(platform in ('gpu', 'cuda'), f'model.attention=cudnn needs a GPU (this run is on '
             f'{platform}); use model.attention=default')
    _require(m.dtype == 'bfloat16', 'model.attention=cudnn needs model.dtype=bfloat16')
    for name, hd in (('encoder', width // heads), ('predictor', m.pred_width // pred_heads)):
      _require(cudnn_flash_fits(hd, DTYPES[m.dtype]), f'model.attention=cudnn: the {name}\'s '
               f'head size {hd} must be a multiple of 8 and <= 128 for the flash kernel; use '
               'model.attention=default')
  _require(m.patch_init in PATCH_INITS,
           f'model.patch_init={m.patch_init!r}: choose one of {PATCH_INITS}')
  _require(m.remat_policy in REMAT_POLICIES,
           f'model.remat_policy={m.remat_policy!r}: choose one of {sorted(REMAT_POLICIES)}')
  _require(d.channels in (1, 3), f'data.channels={d.channels} must be 1 or 3')
  _require(config.loss in LOSSES, f'loss={config.loss!r}: choose one of {LOSSES}')
  _require(config.target_space in TARGET_SPACES,
           f'target_space={config.target_space!r}: choose one of {TARGET_SPACES}')
  _validate_anti_collapse(config.anti_collapse)
  _require(config.masks.mode in MODES, f'masks.mode={config.masks.mode!r}: choose one of {MODES}')
  _require(config.batch_size > 0, f'batch_size={config.batch_size} must be positive')
  try:
    data_par, fsdp = mesh_shape(config.mesh.data, config.mesh.fsdp, num_devices)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _require(config.batch_size % (data_par * fsdp) == 0,
           f'batch_size={config.batch_size} must be divisible by the {data_par * fsdp} devices of '
           f'the mesh ({data_par} data x {fsdp} fsdp); use a multiple of {data_par * fsdp}')
  _require(config.batch_size % num_processes == 0,
           f'batch_size={config.batch_size} must be divisible by the {num_processes} processes')
  _require(config.num_epochs > 0, f'num_epochs={config.num_epochs} must be positive')
  _require(config.steps_per_epoch == -1 or config.steps_per_epoch > 0,
           f'steps_per_epoch={config.steps_per_epoch} must be positive or -1 (from the dataset)')
  _require(d.dataset_size == -1 or d.dataset_size > 0,
           f'data.dataset_size={d.dataset_size} must be positive or -1 (the split\'s size)')
  if config.steps_per_epoch != -1 or d.dataset_size != -1:  # else known once the data is open
    validate_schedule(config)
  _require(config.max_steps == -1 or config.max_steps > 0,
           f'max_steps={config.max_steps} must be positive or -1 (run every step)')
  _require(o.warmup_epochs >= 0, f'optim.warmup_epochs={o.warmup_epochs} must be >= 0')
  _require(o.ipe_scale >= 1.0, f'optim.ipe_scale={o.ipe_scale} must be >= 1 (it stretches the '
           'schedules past the end of training; 1.0 in I-JEPA)')
  for name in ('start_lr', 'lr', 'final_lr', 'weight_decay', 'final_weight_decay', 'grad_clip'):
    v = o[name]
    _require(math.isfinite(v) and v >= 0, f'optim.{name}={v} must be a finite number >= 0')
  _require(len(o.ema) == 2 and 0 <= o.ema[0] <= o.ema[1] <= 1,
           f'optim.ema={tuple(o.ema)} must be (start, end) with 0 <= start <= end <= 1')
  _require(0 <= o.b1 < 1 and 0 <= o.b2 < 1 and o.eps > 0,
           f'optim.b1={o.b1}, b2={o.b2} must be in [0, 1) and optim.eps={o.eps} positive')
  _require(config.log_every > 0, f'log_every={config.log_every} must be positive')
  _validate_data(d)
  k = config.checkpoint
  _require(k.every > 0, f'checkpoint.every={k.every} must be a positive number of steps')
  _require(k.stop_check_every >= 1, f'checkpoint.stop_check_every={k.stop_check_every} must be '
           '>= 1 (steps between the processes\' agreement on a stop signal)')
  _require(k.stop_deadline > 0, f'checkpoint.stop_deadline={k.stop_deadline} must be a positive '
           'number of seconds (a little under the scheduler\'s grace period)')
  _require(k.keep >= 1, f'checkpoint.keep={k.keep} must be >= 1 (the latest is what resumes)')
  _require(k.keep_every >= 0, f'checkpoint.keep_every={k.keep_every} must be >= 0 (0: none)')
  _require(config.nonfinite in NONFINITE, f'nonfinite={config.nonfinite!r}: choose one of {NONFINITE}')
  _require(config.init_from_mode in INIT_FROM_MODES,
           f'init_from_mode={config.init_from_mode!r}: choose one of {INIT_FROM_MODES}')
  _require(not config.init_from or os.path.exists(config.init_from),
           f'init_from={config.init_from!r} does not exist; give the local (or mounted) workdir '
           'of an earlier run (or its checkpoints/<step> folder), or leave it empty')
  _require(k.keep_every == 0 or k.keep_every % k.every == 0,
           f'checkpoint.keep_every={k.keep_every} must be a multiple of checkpoint.every='
           f'{k.every} (only saved steps can be kept)')
  try:
    MaskSampler(mask_config(config))
  except ValueError as e:
    raise ConfigError(str(e)) from None
  _validate_evals(config.evals, config.log_every)
  _validate_monitor(config.monitor)


def validate_schedule(config: ml_collections.ConfigDict) -> None:
  """The checks that need the steps per epoch (data.dataset_size or steps_per_epoch set):
  `validate` runs them when it can; the trainer runs them once the data is open."""
  spe = steps_per_epoch(config)
  _require(spe > 0, f'steps_per_epoch resolves to {spe}: data.dataset_size='
           f'{config.data.dataset_size} is smaller than batch_size={config.batch_size}; lower '
           'batch_size or set steps_per_epoch')
  _require(int(config.num_epochs * spe) > 0,
           f'num_epochs={config.num_epochs} x {spe} steps per epoch is less than one step; '
           'train more epochs or use a smaller batch_size')


def _validate_anti_collapse(a: ml_collections.ConfigDict) -> None:
  _require(a.embeddings in EMBEDDINGS,
           f'anti_collapse.embeddings={a.embeddings!r}: choose one of {EMBEDDINGS}')
  for name in ('var_weight', 'cov_weight', 'sigreg_weight'):
    v = a[name]
    _require(math.isfinite(v) and v >= 0, f'anti_collapse.{name}={v} must be a finite number '
             '>= 0 (0: the term is off)')
  _require(a.target_std > 0, f'anti_collapse.target_std={a.target_std} must be positive')
  _require(a.sigreg_directions >= 1 and a.sigreg_points >= 2 and a.sigreg_t_max > 0,
           f'anti_collapse.sigreg_directions={a.sigreg_directions} must be >= 1, sigreg_points='
           f'{a.sigreg_points} >= 2 and sigreg_t_max={a.sigreg_t_max} positive')


def anti_collapse(config: ml_collections.ConfigDict) -> AntiCollapse:
  """The anti-collapse terms of a validated config (SIGReg's directions keyed by its seed)."""
  a = config.anti_collapse
  return AntiCollapse(
      var_weight=a.var_weight, cov_weight=a.cov_weight, target_std=a.target_std,
      sigreg_weight=a.sigreg_weight, sigreg_directions=a.sigreg_directions,
      sigreg_points=a.sigreg_points, sigreg_t_max=a.sigreg_t_max, embeddings=a.embeddings,
      seed=config.seed)


def _validate_evals(ev: ml_collections.ConfigDict, log_every: int) -> None:
  _require(ev.every >= 0, f'evals.every={ev.every} must be >= 0 (0: no evaluation during training)')
  for name in ('periodic_probes', 'final_probes'):
    bad = [p for p in ev[name] if p not in probe_names()]
    _require(not bad, f'evals.{name}={tuple(ev[name])}: unknown {bad}; choose from {", ".join(probe_names())}')
  _require(ev.encoder in ENCODERS, f'evals.encoder={ev.encoder!r}: choose one of {ENCODERS}')
  _require(ev.pool in POOLS,
           f'evals.pool={ev.pool!r}: choose {", ".join(POOLS[:-1])} or {POOLS[-1]}')
  _require(0 < ev.crop_fraction <= 1, f'evals.crop_fraction={ev.crop_fraction} must be in (0, 1]')
  _require(0 < ev.holdout < 1, f'evals.holdout={ev.holdout} must be in (0, 1)')
  _require(ev.knn_k > 0 and ev.knn_temperature > 0,
           f'evals.knn_k={ev.knn_k} and evals.knn_temperature={ev.knn_temperature} must be positive')
  _require(ev.batch_size > 0 and ev.probe_steps > 0 and ev.probe_batch > 0,
           'evals.batch_size, evals.probe_steps and evals.probe_batch must be positive')
  _require(len(ev.probe_lrs) > 0 and all(v > 0 for v in ev.probe_lrs),
           f'evals.probe_lrs={tuple(ev.probe_lrs)} must be a non-empty list of positive rates')
  _require(len(ev.probe_l2s) > 0 and all(v >= 0 for v in ev.probe_l2s),
           f'evals.probe_l2s={tuple(ev.probe_l2s)} must be a non-empty list of values >= 0')
  _require(all(n > 0 for n in ev.lowshot_per_class) and 0 <= ev.lowshot_fraction < 1,
           f'evals.lowshot_per_class={tuple(ev.lowshot_per_class)} must be positive counts and '
           f'evals.lowshot_fraction={ev.lowshot_fraction} in [0, 1)')
  _require(ev.attentive_epochs > 0 and ev.attentive_batch > 0 and ev.attentive_queries > 0,
           'evals.attentive_epochs, evals.attentive_batch and evals.attentive_queries must be '
           'positive')
  _require(len(ev.attentive_lrs) > 0 and all(v > 0 for v in ev.attentive_lrs),
           f'evals.attentive_lrs={tuple(ev.attentive_lrs)} must be a non-empty list of positive rates')
  _require(ev.attentive_wd >= 0 and ev.attentive_heads >= 0 and ev.attentive_mlp_ratio > 0
           and ev.attentive_cache_gib >= 0,
           f'evals.attentive_wd={ev.attentive_wd}, evals.attentive_heads={ev.attentive_heads} '
           f'(0: the encoder\'s) and evals.attentive_cache_gib={ev.attentive_cache_gib} must be '
           f'>= 0, evals.attentive_mlp_ratio={ev.attentive_mlp_ratio} positive')
  for name in ('train_examples', 'test_examples', 'final_train_examples', 'final_test_examples'):
    _require(ev[name] == -1 or ev[name] > 0, f'evals.{name}={ev[name]} must be positive or -1 (all)')


def _validate_monitor(m: ml_collections.ConfigDict) -> None:
  _require(m.health_every >= 0,
           f'monitor.health_every={m.health_every} must be >= 0 (0: no health checks)')
  _require(m.collapse_std_floor >= 0 and m.collapse_rank_floor >= 0,
           f'monitor.collapse_std_floor={m.collapse_std_floor} and monitor.collapse_rank_floor='
           f'{m.collapse_rank_floor} must be >= 0 (0: never warn)')
  _require(m.mask_images >= 1 and m.feature_images >= 1,
           f'monitor.mask_images={m.mask_images} and monitor.feature_images={m.feature_images} '
           'must be >= 1')
  _require(m.feature_maps >= 0, f'monitor.feature_maps={m.feature_maps} must be >= 0')


def is_remote(path: str) -> bool:
  """A bucket URL (gs://, s3://), reached through etils.epath."""
  return '://' in path


def _validate_data(d: ml_collections.ConfigDict) -> None:
  _require(bool(d.dataset), "data.dataset is empty: name a prepared TFDS dataset, 'image_folder' "
           "or 'fashion_mnist'")
  _require(bool(d.split), 'data.split is empty: name the split to train on (e.g. train)')
  _require(not d.data_dir or is_remote(d.data_dir) or os.path.isdir(d.data_dir),
           f'data.data_dir={d.data_dir!r} is not a directory; point it at the dataset '
           '(or leave it empty for the default location)')
  _require(d.dataset != 'image_folder' or bool(d.data_dir),
           'data.dataset=image_folder needs data.data_dir=<root of <split>/<class>/*.jpg>')
  _require(d.dataset not in ('image_folder', 'fashion_mnist') or not is_remote(d.data_dir),
           f'data.data_dir={d.data_dir!r}: {d.dataset} reads local (or mounted) folders only; '
           'bucket URLs work for TFDS datasets')
  lo, hi = d.crop_scale
  _require(0 < lo <= hi <= 1, f'data.crop_scale={tuple(d.crop_scale)} must satisfy '
           '0 < min <= max <= 1 (fractions of the image area; official (0.3, 1.0))')
  lo, hi = d.crop_ratio
  _require(0 < lo <= hi, f'data.crop_ratio={tuple(d.crop_ratio)} must satisfy 0 < min <= max '
           '(width / height; official (3/4, 4/3))')
  for name in ('mean', 'std'):
    _require(len(d[name]) == d.channels, f'data.{name} has {len(d[name])} values but '
             f'data.channels={d.channels}; give one per channel')
  _require(all(v > 0 for v in d.std), f'data.std={tuple(d.std)} must be positive')
  _require(d.workers == -1 or d.workers > 0, f'data.workers={d.workers} must be positive or -1 '
           '(one per CPU core)')
  _require(d.prefetch >= 1, f'data.prefetch={d.prefetch} must be >= 1 batch')


def with_dataset_size(config: ml_collections.ConfigDict, size: int) -> ml_collections.ConfigDict:
  """A copy of `config` with data.dataset_size set to the split's size where it was -1."""
  config = ml_collections.ConfigDict(config.to_dict())
  if config.data.dataset_size == -1:
    config.data.dataset_size = size
  return config


def predictor_out_dim(config: ml_collections.ConfigDict) -> int | None:
  """predictor_proj's outputs: None (the encoder's width) for representation targets, a
  patch's p*p*C pixels for pixel targets."""
  if config.target_space == 'pixels':
    return config.model.patch_size ** 2 * config.data.channels
  return None


def build_model(config: ml_collections.ConfigDict, platform: str | None = None) -> IJepa:
  """The static I-JEPA pieces (modules, optimizer, schedules) from a validated config, for
  `platform` (None: this process's JAX backend), which sets the blocks' scan by default."""
  m, o = config.model, config.optim
  if platform is None:
    import jax  # pylint: disable=import-outside-toplevel
    platform = jax.default_backend()
  scan = scan_layers(config, platform)
  width, depth, heads, mlp_dim = encoder_dims(config)
  dtype = DTYPES[m.dtype]
  attention = None if m.attention == 'default' else m.attention
  encoder = VisionTransformer(
      patch_size=m.patch_size, width=width, depth=depth, num_heads=heads, mlp_dim=mlp_dim,
      dtype=dtype, remat_policy=m.remat_policy, attention=attention, scan_layers=scan,
      patch_init=m.patch_init)
  predictor = Predictor(
      grid=grid(config), embed_dim=width, width=m.pred_width, depth=m.pred_depth,
      num_heads=heads if m.pred_heads == -1 else m.pred_heads, mlp_dim=4 * m.pred_width,
      dtype=dtype, remat_policy=m.remat_policy, attention=attention, scan_layers=scan,
      out_dim=predictor_out_dim(config))
  schedules = Schedules.from_epochs(
      steps_per_epoch=steps_per_epoch(config), num_epochs=config.num_epochs,
      warmup_epochs=o.warmup_epochs, ipe_scale=o.ipe_scale, start_lr=o.start_lr,
      peak_lr=o.lr, final_lr=o.final_lr, weight_decay=o.weight_decay,
      final_weight_decay=o.final_weight_decay, ema_start=o.ema[0], ema_end=o.ema[1])
  optimizer = make_optimizer(schedules, b1=o.b1, b2=o.b2, eps=o.eps, grad_clip=o.grad_clip)
  return IJepa(encoder, predictor, optimizer, schedules, config.loss, anti_collapse(config),
               config.target_space)


def total_steps(config: ml_collections.ConfigDict) -> int:
  """Steps this run trains: num_epochs * steps_per_epoch, or max_steps if that is set."""
  n = int(config.num_epochs * steps_per_epoch(config))
  return n if config.max_steps == -1 else min(n, config.max_steps)
