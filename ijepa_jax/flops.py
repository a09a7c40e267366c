"""Analytic FLOP count of the I-JEPA train step, and peak FLOP/s per accelerator.

Counts matrix-multiply FLOPs (2 per multiply-add) of the work the step really
does, padding included: the target encoder forward on all N patches, the
context encoder on Kc tokens and the predictor on M sequences of Kc + Kt
tokens, forward and backward (backward = 2x forward). Elementwise work is
left out, as is usual for MFU.
"""

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


def train_step_flops(*, batch_size: int, image_size: int, patch_size: int, channels: int,
                     width: int, depth: int, mlp_dim: int, pred_width: int, pred_depth: int,
                     pred_out: int, context_len: int, target_len: int, num_targets: int) -> float:
  """FLOPs of one train step on the global batch (forward + backward): an encoder of
  `width` x `depth` (MLP `mlp_dim`), a predictor of `pred_width` x `pred_depth` (MLP 4x,
  `pred_out` outputs per token), contexts of `context_len` tokens and `num_targets` target
  blocks of `target_len` (the mask sampler's padded shapes). `spec.Arch.step_flops` fills
  these in from a run."""
  n = (image_size // patch_size) ** 2
  patch = 2 * n * patch_size ** 2 * channels * width  # the whole image, both encoders
  target = patch + transformer_flops(n, width, depth, mlp_dim)
  context = patch + transformer_flops(context_len, width, depth, mlp_dim)
  predictor = (2 * context_len * width * pred_width  # predictor_embed
               + num_targets * transformer_flops(context_len + target_len, pred_width,
                                                 pred_depth, 4 * pred_width)
               + 2 * num_targets * target_len * pred_width * pred_out)  # predictor_proj
  return batch_size * (target + 3 * (context + predictor))
