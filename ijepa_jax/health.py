"""Representation health: the statistics that show collapse, the known failure of I-JEPA.

A joint-embedding predictive objective is trivially solved by an encoder that maps every
image to the same features (the predictor then predicts a constant); the EMA target and
the narrow predictor usually prevent it, but a bad learning rate, EMA schedule or mask
setting can still let the representation collapse, fully or to a few dimensions. These
statistics, from the average-pooled output of the target encoder on a training batch
(`features [B, D]`), show it:

- `feature_std_mean`, `feature_std_min`: each dimension's standard deviation over the
  batch, averaged and the smallest over the D dimensions; a collapsed encoder gives 0.
- `effective_rank`: RankMe (Garrido et al., ICML 2023): exp of the entropy of the
  singular values of `features` normalised to sum 1; from 1 (every image on one
  direction, e.g. a constant) to min(B, D).
- `pred_cosine`: the mean cosine similarity between the predictor's outputs and their
  targets (the layer-normed target tokens) over the real target positions.

All are pure functions of arrays; `health_metrics` computes them for a train state and a
batch, `CollapseAlarm` turns them into a warning.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from ijepa_jax.train_step import Batch, IJepa, predictions_and_targets


def feature_std(features: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean, min) over dimensions of the per-dimension std over the batch; features [B, D]."""
  std = jnp.std(features.astype(jnp.float32), axis=0)  # [D]
  return std.mean(), std.min()


def effective_rank(features: jax.Array, eps: float = 1e-7) -> jax.Array:
  """RankMe of the centred features [B, D]: exp(-sum p log p), p = singular values / their
  sum (+ eps); 1 for a constant."""
  x = features.astype(jnp.float32)
  s = jnp.linalg.svd(x - x.mean(axis=0), compute_uv=False)
  p = s / jnp.maximum(s.sum(), 1e-30) + eps
  return jnp.exp(-jnp.sum(p * jnp.log(p)))


def masked_cosine(pred: jax.Array, targets: jax.Array, tgt_len: jax.Array) -> jax.Array:
  """Mean cosine similarity of pred and targets [B, M, Kt, D] over positions k < tgt_len [B, M]."""
  pred, targets = pred.astype(jnp.float32), targets.astype(jnp.float32)
  cos = (pred * targets).sum(-1) / jnp.maximum(
      jnp.linalg.norm(pred, axis=-1) * jnp.linalg.norm(targets, axis=-1), 1e-12)  # [B, M, Kt]
  valid = jnp.arange(pred.shape[2])[None, None] < tgt_len[..., None]
  return jnp.sum(jnp.where(valid, cos, 0.0)) / jnp.maximum(valid.sum(), 1)


def health_metrics(model: IJepa, params: Any, target_params: Any, batch: Batch) -> dict:
  """The health statistics (module docstring) for a batch of normalised images; pure."""
  pred, targets, h = predictions_and_targets(model, params, target_params, batch)
  pooled = h.astype(jnp.float32).mean(axis=1)  # [B, D], the evaluation's features
  std_mean, std_min = feature_std(pooled)
  return {
      'feature_std_mean': std_mean,
      'feature_std_min': std_min,
      'effective_rank': effective_rank(pooled),
      'pred_cosine': masked_cosine(pred, targets, batch['tgt_len']),
  }


@dataclasses.dataclass(frozen=True)
class CollapseAlarm:
  """A warning when the mean feature std or the effective rank falls below its floor."""
  std_floor: float
  rank_floor: float

  def check(self, health: dict[str, float]) -> str | None:
    """The warning for these statistics, or None when they are above both floors."""
    low = []
    if health['feature_std_mean'] < self.std_floor:
      low.append(f'mean per-dimension std {health["feature_std_mean"]:.3g} < '
                 f'monitor.collapse_std_floor {self.std_floor:g}')
    if health['effective_rank'] < self.rank_floor:
      low.append(f'effective rank {health["effective_rank"]:.3g} < '
                 f'monitor.collapse_rank_floor {self.rank_floor:g}')
    if not low:
      return None
    return ('the representation is collapsing (' + '; '.join(low) + '): the target encoder '
            'gives nearly the same features to every image. Usual causes: a learning rate too '
            'high or a warmup too short, an EMA momentum too low (optim.ema), target blocks too '
            'small to be informative (masks.*); go back to an earlier checkpoint '
            '(checkpoint.keep_every keeps some) and change one of them')
