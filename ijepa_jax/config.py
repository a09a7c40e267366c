"""Config checks, field by field: `validate` raises ConfigError for the first value that
cannot work, naming the field and what to change, before anything is compiled.

Whatever is derived from several fields (sizes, divisibility, the mask sampler, the steps
per epoch) is derived and checked in `spec.resolve`, which calls `validate` first.
"""

import math
import os

import jax.numpy as jnp
import ml_collections

from ijepa_jax.features import ENCODERS, OUTPUTS as POOLS
from ijepa_jax.masks import MODES
from ijepa_jax.models import PATCH_INITS, REMAT_POLICIES, VARIANTS
from ijepa_jax.objective import EMBEDDINGS, LOSSES, TARGET_SPACES
from ijepa_jax.paths import is_remote
from ijepa_jax.probes import names as probe_names

NONFINITE = ('stop', 'skip')
INIT_FROM_MODES = ('weights', 'full')
DTYPES = {'bfloat16': jnp.bfloat16, 'float32': jnp.float32}
ATTENTION = ('default', 'xla', 'cudnn')  # jax.nn.dot_product_attention implementations


class ConfigError(ValueError):
  """A config value that cannot work; the message names the field and the fix."""


def require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate(config: ml_collections.ConfigDict) -> None:
  """Raise ConfigError for the first field whose value cannot work (before any compile)."""
  m, d, o = config.model, config.data, config.optim
  require(m.variant in VARIANTS or m.variant == 'custom',
          f"model.variant={m.variant!r}: choose one of {sorted(VARIANTS)} or 'custom' "
          '(then set model.width, model.depth, model.num_heads)')
  for name in ('width', 'depth', 'num_heads', 'mlp_dim', 'pred_heads'):
    require(m[name] == -1 or m[name] > 0,
            f'model.{name}={m[name]} must be a positive integer or -1 (the variant\'s)')
  require(m.patch_size > 0, f'model.patch_size={m.patch_size} must be positive')
  require(d.image_size > 0, f'data.image_size={d.image_size} must be positive')
  require(m.pred_width > 0 and m.pred_width % 4 == 0,
          f'model.pred_width={m.pred_width} must be a positive multiple of 4')
  require(m.pred_depth > 0, f'model.pred_depth={m.pred_depth} must be positive')
  require(m.attention in ATTENTION, f'model.attention={m.attention!r}: choose one of {ATTENTION}')
  require(m.dtype in DTYPES, f'model.dtype={m.dtype!r}: choose one of {sorted(DTYPES)}')
  require(m.patch_init in PATCH_INITS,
          f'model.patch_init={m.patch_init!r}: choose one of {PATCH_INITS}')
  require(m.remat_policy in REMAT_POLICIES,
          f'model.remat_policy={m.remat_policy!r}: choose one of {sorted(REMAT_POLICIES)}')
  require(d.channels in (1, 3), f'data.channels={d.channels} must be 1 or 3')
  require(config.loss in LOSSES, f'loss={config.loss!r}: choose one of {LOSSES}')
  require(config.target_space in TARGET_SPACES,
          f'target_space={config.target_space!r}: choose one of {TARGET_SPACES}')
  _validate_anti_collapse(config.anti_collapse)
  require(config.masks.mode in MODES, f'masks.mode={config.masks.mode!r}: choose one of {MODES}')
  require(config.batch_size > 0, f'batch_size={config.batch_size} must be positive')
  require(config.num_epochs > 0, f'num_epochs={config.num_epochs} must be positive')
  require(config.steps_per_epoch == -1 or config.steps_per_epoch > 0,
          f'steps_per_epoch={config.steps_per_epoch} must be positive or -1 (from the dataset)')
  require(d.dataset_size == -1 or d.dataset_size > 0,
          f'data.dataset_size={d.dataset_size} must be positive or -1 (the split\'s size)')
  require(config.max_steps == -1 or config.max_steps > 0,
          f'max_steps={config.max_steps} must be positive or -1 (run every step)')
  require(o.warmup_epochs >= 0, f'optim.warmup_epochs={o.warmup_epochs} must be >= 0')
  require(o.ipe_scale >= 1.0, f'optim.ipe_scale={o.ipe_scale} must be >= 1 (it stretches the '
          'schedules past the end of training; 1.0 in I-JEPA)')
  for name in ('start_lr', 'lr', 'final_lr', 'weight_decay', 'final_weight_decay', 'grad_clip'):
    v = o[name]
    require(math.isfinite(v) and v >= 0, f'optim.{name}={v} must be a finite number >= 0')
  require(len(o.ema) == 2 and 0 <= o.ema[0] <= o.ema[1] <= 1,
          f'optim.ema={tuple(o.ema)} must be (start, end) with 0 <= start <= end <= 1')
  require(0 <= o.b1 < 1 and 0 <= o.b2 < 1 and o.eps > 0,
          f'optim.b1={o.b1}, b2={o.b2} must be in [0, 1) and optim.eps={o.eps} positive')
  require(o.accum_steps >= 1, f'optim.accum_steps={o.accum_steps} must be >= 1 (1: no gradient '
          'accumulation)')
  require(config.log_every > 0, f'log_every={config.log_every} must be positive')
  _validate_data(d)
  k = config.checkpoint
  require(k.every > 0, f'checkpoint.every={k.every} must be a positive number of steps')
  require(k.stop_check_every >= 1, f'checkpoint.stop_check_every={k.stop_check_every} must be '
          '>= 1 (steps between the processes\' agreement on a stop signal)')
  require(k.stop_deadline > 0, f'checkpoint.stop_deadline={k.stop_deadline} must be a positive '
          'number of seconds (a little under the scheduler\'s grace period)')
  require(k.keep >= 1, f'checkpoint.keep={k.keep} must be >= 1 (the latest is what resumes)')
  require(k.keep_every >= 0, f'checkpoint.keep_every={k.keep_every} must be >= 0 (0: none)')
  require(config.nonfinite in NONFINITE,
          f'nonfinite={config.nonfinite!r}: choose one of {NONFINITE}')
  require(config.init_from_mode in INIT_FROM_MODES,
          f'init_from_mode={config.init_from_mode!r}: choose one of {INIT_FROM_MODES}')
  require(not config.init_from or os.path.exists(config.init_from),
          f'init_from={config.init_from!r} does not exist; give the local (or mounted) workdir '
          'of an earlier run (or its checkpoints/<step> folder), or leave it empty')
  require(k.keep_every == 0 or k.keep_every % k.every == 0,
          f'checkpoint.keep_every={k.keep_every} must be a multiple of checkpoint.every='
          f'{k.every} (only saved steps can be kept)')
  _validate_evals(config.evals, config.log_every)
  _validate_monitor(config.monitor)


def _validate_anti_collapse(a: ml_collections.ConfigDict) -> None:
  require(a.embeddings in EMBEDDINGS,
          f'anti_collapse.embeddings={a.embeddings!r}: choose one of {EMBEDDINGS}')
  for name in ('var_weight', 'cov_weight', 'sigreg_weight'):
    v = a[name]
    require(math.isfinite(v) and v >= 0, f'anti_collapse.{name}={v} must be a finite number '
            '>= 0 (0: the term is off)')
  require(a.target_std > 0, f'anti_collapse.target_std={a.target_std} must be positive')
  require(a.sigreg_directions >= 1 and a.sigreg_points >= 2 and a.sigreg_t_max > 0,
          f'anti_collapse.sigreg_directions={a.sigreg_directions} must be >= 1, sigreg_points='
          f'{a.sigreg_points} >= 2 and sigreg_t_max={a.sigreg_t_max} positive')


def _validate_evals(ev: ml_collections.ConfigDict, log_every: int) -> None:
  require(ev.every >= 0, f'evals.every={ev.every} must be >= 0 (0: no evaluation during training)')
  for name in ('periodic_probes', 'final_probes'):
    bad = [p for p in ev[name] if p not in probe_names()]
    require(not bad, f'evals.{name}={tuple(ev[name])}: unknown {bad}; choose from '
            f'{", ".join(probe_names())}')
  require(ev.encoder in ENCODERS, f'evals.encoder={ev.encoder!r}: choose one of {ENCODERS}')
  require(ev.pool in POOLS,
          f'evals.pool={ev.pool!r}: choose {", ".join(POOLS[:-1])} or {POOLS[-1]}')
  require(0 < ev.crop_fraction <= 1, f'evals.crop_fraction={ev.crop_fraction} must be in (0, 1]')
  require(0 < ev.holdout < 1, f'evals.holdout={ev.holdout} must be in (0, 1)')
  require(ev.knn_k > 0 and ev.knn_temperature > 0,
          f'evals.knn_k={ev.knn_k} and evals.knn_temperature={ev.knn_temperature} must be positive')
  require(ev.batch_size > 0 and ev.probe_steps > 0 and ev.probe_batch > 0,
          'evals.batch_size, evals.probe_steps and evals.probe_batch must be positive')
  require(len(ev.probe_lrs) > 0 and all(v > 0 for v in ev.probe_lrs),
          f'evals.probe_lrs={tuple(ev.probe_lrs)} must be a non-empty list of positive rates')
  require(len(ev.probe_l2s) > 0 and all(v >= 0 for v in ev.probe_l2s),
          f'evals.probe_l2s={tuple(ev.probe_l2s)} must be a non-empty list of values >= 0')
  require(all(n > 0 for n in ev.lowshot_per_class) and 0 <= ev.lowshot_fraction < 1,
          f'evals.lowshot_per_class={tuple(ev.lowshot_per_class)} must be positive counts and '
          f'evals.lowshot_fraction={ev.lowshot_fraction} in [0, 1)')
  require(ev.attentive_epochs > 0 and ev.attentive_batch > 0 and ev.attentive_queries > 0,
          'evals.attentive_epochs, evals.attentive_batch and evals.attentive_queries must be '
          'positive')
  require(len(ev.attentive_lrs) > 0 and all(v > 0 for v in ev.attentive_lrs),
          f'evals.attentive_lrs={tuple(ev.attentive_lrs)} must be a non-empty list of positive '
          'rates')
  require(ev.attentive_wd >= 0 and ev.attentive_heads >= 0 and ev.attentive_mlp_ratio > 0
          and ev.attentive_cache_gib >= 0,
          f'evals.attentive_wd={ev.attentive_wd}, evals.attentive_heads={ev.attentive_heads} '
          f'(0: the encoder\'s) and evals.attentive_cache_gib={ev.attentive_cache_gib} must be '
          f'>= 0, evals.attentive_mlp_ratio={ev.attentive_mlp_ratio} positive')
  for name in ('train_examples', 'test_examples', 'final_train_examples', 'final_test_examples'):
    require(ev[name] == -1 or ev[name] > 0, f'evals.{name}={ev[name]} must be positive or -1 (all)')


def _validate_monitor(m: ml_collections.ConfigDict) -> None:
  require(m.health_every >= 0,
          f'monitor.health_every={m.health_every} must be >= 0 (0: no health checks)')
  require(m.collapse_std_floor >= 0 and m.collapse_rank_floor >= 0,
          f'monitor.collapse_std_floor={m.collapse_std_floor} and monitor.collapse_rank_floor='
          f'{m.collapse_rank_floor} must be >= 0 (0: never warn)')
  require(m.mask_images >= 1 and m.feature_images >= 1,
          f'monitor.mask_images={m.mask_images} and monitor.feature_images={m.feature_images} '
          'must be >= 1')
  require(m.feature_maps >= 0, f'monitor.feature_maps={m.feature_maps} must be >= 0')


def _validate_data(d: ml_collections.ConfigDict) -> None:
  require(bool(d.dataset), "data.dataset is empty: name a prepared TFDS dataset, 'image_folder' "
          "or 'fashion_mnist'")
  require(bool(d.split), 'data.split is empty: name the split to train on (e.g. train)')
  require(not d.data_dir or is_remote(d.data_dir) or os.path.isdir(d.data_dir),
          f'data.data_dir={d.data_dir!r} is not a directory; point it at the dataset '
          '(or leave it empty for the default location)')
  require(d.dataset != 'image_folder' or bool(d.data_dir),
          'data.dataset=image_folder needs data.data_dir=<root of <split>/<class>/*.jpg>')
  require(d.dataset not in ('image_folder', 'fashion_mnist') or not is_remote(d.data_dir),
          f'data.data_dir={d.data_dir!r}: {d.dataset} reads local (or mounted) folders only; '
          'bucket URLs work for TFDS datasets')
  lo, hi = d.crop_scale
  require(0 < lo <= hi <= 1, f'data.crop_scale={tuple(d.crop_scale)} must satisfy '
          '0 < min <= max <= 1 (fractions of the image area; official (0.3, 1.0))')
  lo, hi = d.crop_ratio
  require(0 < lo <= hi, f'data.crop_ratio={tuple(d.crop_ratio)} must satisfy 0 < min <= max '
          '(width / height; official (3/4, 4/3))')
  for name in ('mean', 'std'):
    require(len(d[name]) == d.channels, f'data.{name} has {len(d[name])} values but '
            f'data.channels={d.channels}; give one per channel')
  require(all(v > 0 for v in d.std), f'data.std={tuple(d.std)} must be positive')
  require(d.workers == -1 or d.workers > 0, f'data.workers={d.workers} must be positive or -1 '
          '(one per CPU core)')
  require(d.prefetch >= 1, f'data.prefetch={d.prefetch} must be >= 1 batch')
