"""Pixel statistics and normalisation: the one place both the encoders (core) and the input
pipeline (shell) take them from.

Images travel as uint8 from the host; `normalize` turns them into the encoder's input on the
device, inside the jitted step or the feature extractor.
"""

from typing import Sequence

import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # per channel, images in [0, 1] (the official transform's)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalize(images: jnp.ndarray, mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
  """uint8 [..., C] in 0..255 -> float32 (x / 255 - mean) / std, per channel (on the device)."""
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return (images.astype(jnp.float32) / 255.0 - mean) / std
