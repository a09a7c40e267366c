"""ViT-g/16 on ImageNet-22K at 224: the official in22k_vitg16_ep44 config (predictor depth 16)."""
from ijepa_jax.recipes import paper_recipe


def get_config():
  return paper_recipe('giant', 16, 224, epochs=44, warmup_epochs=3, pred_depth=16,
                      dataset='imagenet21k')
