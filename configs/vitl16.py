"""ViT-L/16 on ImageNet-1K at 224 as in the paper (600 epochs; no official config file)."""
from ijepa_jax.recipes import paper_recipe


def get_config():
  return paper_recipe('large', 16, 224, epochs=600, warmup_epochs=40)
