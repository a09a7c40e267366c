"""The I-JEPA objective: regress predictions onto layer-normed target-encoder features."""

import dataclasses

import jax
import jax.numpy as jnp
import optax

LOSSES = ('smooth_l1', 'l2')
TARGET_SPACES = ('representation', 'pixels')


def normalize_targets(h: jax.Array) -> jax.Array:
  """Affine-free LayerNorm over features, eps 1e-5 (the official F.layer_norm), in float32."""
  h = h.astype(jnp.float32)
  mean = h.mean(-1, keepdims=True)
  var = jnp.square(h - mean).mean(-1, keepdims=True)
  return (h - mean) * jax.lax.rsqrt(var + 1e-5)


def pixel_targets(images: jax.Array, patch: int, tgt_idx: jax.Array) -> jax.Array:
  """The pixel-target ablation's regression targets: each target patch's pixels [p*p*C]
  (rows, then columns, then channels) of the images as the encoder receives them, normalised
  per patch to zero mean and unit variance (eps 1e-6, MAE's normalised-pixel target).

  images [B, H, W, C] (normalised, float); tgt_idx [B, M, Kt] raster patch indices
  -> [B, M, Kt, p*p*C] float32.
  """
  b, hh, ww, c = images.shape
  x = images.astype(jnp.float32).reshape(b, hh // patch, patch, ww // patch, patch, c)
  x = x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (hh // patch) * (ww // patch), patch * patch * c)
  mean = x.mean(-1, keepdims=True)
  var = jnp.square(x - mean).mean(-1, keepdims=True)
  x = (x - mean) * jax.lax.rsqrt(var + 1e-6)
  _, m, kt = tgt_idx.shape
  out = jnp.take_along_axis(x, tgt_idx.reshape(b, m * kt)[..., None], axis=1)
  return out.reshape(b, m, kt, -1)


def real_tokens(tgt_len: jax.Array, target_len: int) -> jax.Array:
  """How many real target tokens a batch's tgt_len [B, M] marks (of `target_len` slots each)."""
  return jnp.sum(jnp.minimum(tgt_len, target_len)).astype(jnp.float32)


def jepa_loss(pred: jax.Array, target: jax.Array, tgt_len: jax.Array,
              kind: str = 'smooth_l1', tokens: jax.Array | None = None) -> jax.Array:
  """Mean loss over every real element.

  pred, target [B, M, Kt, D]; tgt_len [B, M] (entries k >= tgt_len are padding
  and do not count). `smooth_l1` is torch's F.smooth_l1_loss with beta=1 (the
  official code); `l2` is the mean squared error (the paper's L2). With no
  padding this is exactly the official mean over all elements. `tokens`: divide by this
  many real target tokens (x D) instead of this batch's own: a whole batch's
  (`real_tokens`) when this is one micro-batch of it, so the micro-batches' losses add up
  to the batch's.
  """
  pred, target = pred.astype(jnp.float32), target.astype(jnp.float32)
  if kind == 'smooth_l1':
    per = optax.huber_loss(pred, target, delta=1.0)  # = smooth-L1 with beta 1
  elif kind == 'l2':
    per = jnp.square(pred - target)
  else:
    raise ValueError(f'loss={kind!r}: choose one of {LOSSES}')
  valid = (jnp.arange(pred.shape[2])[None, None] < tgt_len[..., None]).astype(jnp.float32)
  total = jnp.sum(per.sum(-1) * valid)
  count = real_tokens(tgt_len, pred.shape[2]) if tokens is None else tokens
  return total / jnp.maximum(count * pred.shape[-1], 1.0)


# ---------------------------------------------------------------------------------------------
# Anti-collapse terms (off in the paper recipes). Each takes embeddings z [N, D] with weights
# w [N] (1 for a real row, 0 for padding) and returns a scalar. Under jax.jit on a mesh the
# sums run over the global batch, so the value does not depend on the number of devices.

EMBEDDINGS = ('pooled', 'patch')


def context_embeddings(z: jax.Array, ctx_len: jax.Array, kind: str) -> tuple[jax.Array, jax.Array]:
  """The rows the anti-collapse terms see, from context tokens z [B, Kc, D] (the first
  ctx_len[b] real): 'pooled' -> each image's mean over its real tokens [B, D] (all weight 1);
  'patch' -> every token [B*Kc, D], weight 1 where real, 0 on padding."""
  b, kc, d = z.shape
  real = (jnp.arange(kc)[None] < ctx_len[:, None]).astype(jnp.float32)  # [B, Kc]
  z = z.astype(jnp.float32)
  if kind == 'pooled':
    pooled = (z * real[..., None]).sum(1) / jnp.maximum(real.sum(1, keepdims=True), 1.0)
    return pooled, jnp.ones((b,), jnp.float32)
  if kind == 'patch':
    return z.reshape(b * kc, d), real.reshape(b * kc)
  raise ValueError(f'embeddings={kind!r}: choose one of {EMBEDDINGS}')


def _weighted_moments(z: jax.Array, w: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(count, mean [D], centred rows [N, D] with padding rows zeroed)."""
  n = jnp.maximum(w.sum(), 2.0)
  mean = (z * w[:, None]).sum(0) / n
  return n, mean, (z - mean) * w[:, None]


def variance_loss(z: jax.Array, w: jax.Array, target_std: float = 1.0,
                  eps: float = 1e-4) -> jax.Array:
  """VICReg's variance hinge: mean over dimensions of max(0, target_std - sqrt(var_d + eps)),
  var_d the unbiased variance of dimension d over the (real) rows."""
  n, _, c = _weighted_moments(z, w)
  var = jnp.square(c).sum(0) / (n - 1.0)
  return jnp.mean(jax.nn.relu(target_std - jnp.sqrt(var + eps)))


def covariance_loss(z: jax.Array, w: jax.Array) -> jax.Array:
  """VICReg's covariance term: sum of the squared off-diagonal entries of the (unbiased)
  covariance matrix over the real rows, divided by D."""
  n, _, c = _weighted_moments(z, w)
  cov = c.T @ c / (n - 1.0)  # [D, D]
  off = jnp.sum(jnp.square(cov)) - jnp.sum(jnp.square(jnp.diagonal(cov)))
  return off / z.shape[1]


def sigreg_directions(key: jax.Array, dim: int, num: int) -> jax.Array:
  """num random unit vectors in R^dim, as columns [dim, num]."""
  u = jax.random.normal(key, (dim, num), jnp.float32)
  return u / jnp.linalg.norm(u, axis=0, keepdims=True)


def epps_pulley(x: jax.Array, w: jax.Array, t_max: float = 3.0, points: int = 17) -> jax.Array:
  """The Epps-Pulley statistic of each column of x [N, K] against N(0, 1):

      N * integral over t of exp(-t^2/2) * |phi_N(t) - exp(-t^2/2)|^2 dt,

  phi_N(t) = sum_n w_n exp(i t x_n) / N the empirical characteristic function (N = sum w).
  The integrand is even in t, so the integral is twice the trapezoid rule on `points` evenly
  spaced t in [0, t_max]. Returns [K]."""
  n = jnp.maximum(w.sum(), 1.0)
  t = jnp.linspace(0.0, t_max, points)  # [T]
  tx = x[:, :, None] * t  # [N, K, T]
  re = (jnp.cos(tx) * w[:, None, None]).sum(0) / n  # [K, T]
  im = (jnp.sin(tx) * w[:, None, None]).sum(0) / n
  gauss = jnp.exp(-0.5 * t * t)
  integrand = gauss * (jnp.square(re - gauss) + jnp.square(im))
  return 2.0 * n * jnp.trapezoid(integrand, t, axis=-1)


def sigreg_loss(z: jax.Array, w: jax.Array, key: jax.Array, num_directions: int = 256,
                t_max: float = 3.0, points: int = 17) -> jax.Array:
  """SIGReg (LeJEPA): the Epps-Pulley statistic of z's projections on `num_directions`
  random unit directions drawn from `key`, averaged over the directions. Near 0 when the rows
  are standard Gaussian in every direction; large when they collapse."""
  u = sigreg_directions(key, z.shape[1], num_directions)
  return jnp.mean(epps_pulley(z.astype(jnp.float32) @ u, w, t_max, points))


@dataclasses.dataclass(frozen=True)
class AntiCollapse:
  """Weights and settings of the anti-collapse terms (all weights 0: the official objective).

  loss = jepa + var_weight * variance_loss + cov_weight * covariance_loss
              + sigreg_weight * sigreg_loss, on the context encoder's embeddings.
  SIGReg's directions are redrawn every step from (seed, step).
  """
  var_weight: float = 0.0
  cov_weight: float = 0.0
  target_std: float = 1.0
  sigreg_weight: float = 0.0
  sigreg_directions: int = 256
  sigreg_points: int = 17
  sigreg_t_max: float = 3.0
  embeddings: str = 'pooled'
  seed: int = 0

  @property
  def active(self) -> bool:
    return self.var_weight > 0 or self.cov_weight > 0 or self.sigreg_weight > 0

  def terms(self, z: jax.Array, ctx_len: jax.Array, step: jax.Array) -> dict[str, jax.Array]:
    """The weighted-in terms, each unweighted, for context tokens z [B, Kc, D]."""
    rows, w = context_embeddings(z, ctx_len, self.embeddings)
    out = {}
    if self.var_weight > 0:
      out['var_loss'] = variance_loss(rows, w, self.target_std)
    if self.cov_weight > 0:
      out['cov_loss'] = covariance_loss(rows, w)
    if self.sigreg_weight > 0:
      key = jax.random.fold_in(jax.random.key(self.seed), step)
      out['sigreg'] = sigreg_loss(rows, w, key, self.sigreg_directions, self.sigreg_t_max,
                                  self.sigreg_points)
    return out

  def total(self, terms: dict[str, jax.Array]) -> jax.Array:
    weights = {'var_loss': self.var_weight, 'cov_loss': self.cov_weight,
               'sigreg': self.sigreg_weight}
    return sum((weights[k] * v for k, v in terms.items()), jnp.zeros((), jnp.float32))
