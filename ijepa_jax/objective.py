"""The I-JEPA objective: regress predictions onto layer-normed target-encoder features."""

import jax
import jax.numpy as jnp

LOSSES = ('smooth_l1', 'l2')


def normalize_targets(h: jax.Array) -> jax.Array:
  """Affine-free LayerNorm over features, eps 1e-5 (the official F.layer_norm), in float32."""
  h = h.astype(jnp.float32)
  mean = h.mean(-1, keepdims=True)
  var = jnp.square(h - mean).mean(-1, keepdims=True)
  return (h - mean) * jax.lax.rsqrt(var + 1e-5)


def jepa_loss(pred: jax.Array, target: jax.Array, tgt_len: jax.Array,
              kind: str = 'smooth_l1') -> jax.Array:
  """Mean loss over every real element.

  pred, target [B, M, Kt, D]; tgt_len [B, M] (entries k >= tgt_len are padding
  and do not count). `smooth_l1` is torch's F.smooth_l1_loss with beta=1 (the
  official code); `l2` is the mean squared error (the paper's L2). With no
  padding this is exactly the official mean over all elements.
  """
  d = pred.astype(jnp.float32) - target.astype(jnp.float32)
  if kind == 'smooth_l1':
    per = jnp.where(jnp.abs(d) < 1.0, 0.5 * d * d, jnp.abs(d) - 0.5)
  elif kind == 'l2':
    per = d * d
  else:
    raise ValueError(f'loss={kind!r}: choose one of {LOSSES}')
  valid = (jnp.arange(pred.shape[2])[None, None] < tgt_len[..., None]).astype(jnp.float32)
  total = jnp.sum(per.sum(-1) * valid)
  return total / jnp.maximum(valid.sum() * pred.shape[-1], 1.0)
