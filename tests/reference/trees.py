"""Helpers for parameter trees in the tests."""

import jax
import jax.numpy as jnp
import numpy as np

F32 = jnp.float32


def randomize(params, seed):
  """Init-scale weights hide bugs; use O(1) random values everywhere."""
  leaves, tree = jax.tree.flatten(params)
  rng = np.random.default_rng(seed)
  return jax.tree.unflatten(tree, [jnp.asarray(rng.normal(0, 0.3, x.shape), F32) for x in leaves])
