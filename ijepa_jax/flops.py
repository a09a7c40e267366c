"""Analytic FLOP count of the I-JEPA train step, and peak FLOP/s per accelerator.

Counts matrix-multiply FLOPs (2 per multiply-add) of the work the step really
does, padding included: the target encoder forward on all N patches, the
context encoder on Kc tokens and the predictor on M sequences of Kc + Kt
tokens, forward and backward (backward = 2x forward). Elementwise work is
left out, as is usual for MFU.
"""

import ml_collections

from ijepa_jax import config as cfg_lib

# Dense bf16 peak FLOP/s per chip, keyed by a substring of `device.device_kind`.
PEAK_FLOPS = {
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,
    'TPU v5e': 197e12,
    'TPU v5p': 459e12,
    'TPU v5': 459e12,
    'TPU v6': 918e12,
    'H200': 989e12,
    'H100': 989e12,  # SXM; an H100 PCIe peaks at 756e12
    'A100': 312e12,
}


def peak_flops(device_kind: str) -> float | None:
  """Peak bf16 FLOP/s of one device of this kind, or None (e.g. a CPU)."""
  for key, value in PEAK_FLOPS.items():
    if key.lower() in device_kind.lower():
      return value
  return None


def transformer_flops(tokens: int, width: int, depth: int, hidden: int) -> float:
  """Forward FLOPs of `depth` pre-norm blocks (MLP `hidden` wide) over one sequence of `tokens`."""
  dense = 2 * tokens * (4 * width * width + 2 * width * hidden)  # qkv + proj + fc1 + fc2
  attention = 2 * 2 * tokens * tokens * width  # q k^T and p v
  return depth * (dense + attention)


def train_step_flops(config: ml_collections.ConfigDict, context_len: int, target_len: int,
                     num_targets: int | None = None) -> float:
  """FLOPs of one train step on the global batch (forward + backward); `num_targets`
  defaults to masks.num_targets (the multi-block sampler's M)."""
  width, depth, _, mlp_dim = cfg_lib.encoder_dims(config)
  m = config.model
  n = (config.data.image_size // m.patch_size) ** 2
  patch = 2 * n * m.patch_size ** 2 * config.data.channels * width  # the whole image, both encoders
  k = config.masks.num_targets if num_targets is None else num_targets
  out = cfg_lib.predictor_out_dim(config) or width  # predictor_proj's outputs
  target = patch + transformer_flops(n, width, depth, mlp_dim)
  context = patch + transformer_flops(context_len, width, depth, mlp_dim)
  predictor = (2 * context_len * width * m.pred_width  # predictor_embed
               + k * transformer_flops(context_len + target_len, m.pred_width, m.pred_depth,
                                       4 * m.pred_width)
               + 2 * k * target_len * m.pred_width * out)  # predictor_proj
  return config.batch_size * (target + 3 * (context + predictor))
