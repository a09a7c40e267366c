"""Fixed 2-D sin-cos position embeddings in the official I-JEPA layout."""

import numpy as np


def sincos_1d(dim: int, pos: np.ndarray) -> np.ndarray:
  """[..., dim] table: all sines then all cosines of pos * omega_k.

  omega_k = 1 / 10000^(k / (dim/2)), k = 0 .. dim/2 - 1.
  """
  if dim % 2:
    raise ValueError(f'sin-cos embedding width must be even, got {dim}')
  omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
  angles = pos.reshape(-1)[:, None].astype(np.float64) * omega[None, :]
  return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)


def sincos_2d(dim: int, grid: tuple[int, int]) -> np.ndarray:
  """[H*W, dim] float32 table for an H x W patch grid, tokens in raster order.

  The first dim/2 channels encode the column coordinate, the last dim/2 the
  row, as the official code (and its checkpoints) lay it out.
  """
  if dim % 4:
    raise ValueError(f'2-D sin-cos embedding width must be divisible by 4, got {dim}')
  h, w = grid
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  table = np.concatenate([sincos_1d(dim // 2, cols), sincos_1d(dim // 2, rows)], axis=1)
  return table.astype(np.float32)
