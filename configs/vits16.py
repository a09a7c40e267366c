"""ViT-S/16 on ImageNet-1K at 224 with the ViT-B/L schedule (no official config or paper figure)."""
from ijepa_jax.recipes import paper_recipe


def get_config():
  return paper_recipe('small', 16, 224, epochs=600, warmup_epochs=40)
