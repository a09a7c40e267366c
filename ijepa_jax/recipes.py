"""Config defaults and the paper's recipes, shared by the files in configs/.

`base_config()` lists every field the trainer reads, with the official
I-JEPA values; `paper_recipe(...)` fills in one of the paper's models.
"""

import ml_collections

from ijepa_jax.pixels import IMAGENET_MEAN, IMAGENET_STD


def base_config() -> ml_collections.ConfigDict:
  """Every config field, with the official I-JEPA defaults (ViT-H/14 ImageNet-1K)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.batch_size = 2048          # global batch, over all processes and devices
  c.num_epochs = 300.0
  c.steps_per_epoch = -1       # -1: dataset size // batch_size (IN-1K at 2048: 625)
  c.max_steps = -1             # stop early (schedules keep their full length); -1: run all
  c.loss = 'smooth_l1'         # or 'l2'
  c.target_space = 'representation'  # or 'pixels': regress the target patches' normalised
                                     # pixels (the paper's ablation; docs/ablations.md)
  c.log_every = 50
  c.nonfinite = 'stop'         # a non-finite loss or gradient: 'stop' (keep the last good
                               # checkpoint) or 'skip' (leave the state as it was; count it)
  c.init_from = ''             # start from another run: its workdir, checkpoints/ or
                               # checkpoints/<step>
  c.init_from_mode = 'weights'  # 'weights': params + EMA, fresh optimizer, step 0;
                                # 'full': all of it

  # Anti-collapse terms on the context encoder's output (ijepa_jax/objective.py), all off
  # (weight 0) in the official method: loss = jepa + var_weight * variance hinge
  # + cov_weight * off-diagonal covariance (C-JEPA / VICReg) + sigreg_weight * SIGReg (LeJEPA).
  c.anti_collapse = ml_collections.ConfigDict()
  # 'pooled' (each image's mean token) or 'patch' (every token)
  c.anti_collapse.embeddings = 'pooled'
  c.anti_collapse.var_weight = 0.0
  c.anti_collapse.cov_weight = 0.0
  c.anti_collapse.target_std = 1.0  # the variance hinge's floor on each dimension's std
  c.anti_collapse.sigreg_weight = 0.0
  c.anti_collapse.sigreg_directions = 256  # random unit directions, redrawn each step
  c.anti_collapse.sigreg_points = 17  # trapezoid points on t in [0, sigreg_t_max]
  c.anti_collapse.sigreg_t_max = 3.0

  c.model = ml_collections.ConfigDict()
  c.model.variant = 'huge'     # tiny small base large huge giant, or 'custom' (width/depth/heads)
  c.model.width = -1           # -1: from the variant
  c.model.depth = -1
  c.model.num_heads = -1
  c.model.patch_size = 14
  c.model.mlp_dim = -1         # -1: the variant's (4 x width; ViT-g 6144); custom: 4 x width
  c.model.pred_width = 384
  c.model.pred_depth = 12
  c.model.pred_heads = -1      # -1: the encoder's number of heads (official)
  c.model.dtype = 'bfloat16'   # compute dtype; parameters stay float32
  c.model.remat_policy = 'none'  # none, full, dots_saveable
  c.model.attention = 'default'  # jax.nn.dot_product_attention implementation: default, xla, cudnn
  # blocks under nn.scan (True: compile time flat in depth) or unrolled (False: faster);
  # unset (None): by platform, unrolled on GPUs and CPUs, scanned on TPUs (config.scan_layers)
  c.model.scan_layers = ml_collections.config_dict.placeholder(bool)
  c.model.patch_init = 'official'  # patch conv kernel: official N(0, 0.02) or lecun N(0, 1/fan_in)

  c.data = ml_collections.ConfigDict()
  c.data.dataset = 'imagenet2012'  # a prepared TFDS dataset, 'image_folder' or 'fashion_mnist'
  c.data.data_dir = ''         # TFDS: its data_dir ('' : $TFDS_DATA_DIR or ~/tensorflow_datasets);
                               # image_folder: the root of <split>/<class>/*.jpg
  c.data.split = 'train'
  c.data.image_size = 224
  c.data.channels = 3          # grey images are made 3-channel (and colour ones grey) to match
  c.data.dataset_size = -1     # -1: the split's size; sets steps_per_epoch when that is -1
  c.data.crop_scale = (0.3, 1.0)  # RandomResizedCrop (official)
  c.data.crop_ratio = (3 / 4, 4 / 3)
  c.data.flip = False          # horizontal flip (off in the official recipe)
  c.data.mean = IMAGENET_MEAN  # per channel, images in [0, 1]
  c.data.std = IMAGENET_STD
  c.data.workers = -1          # decoding threads per process; -1: one per CPU core
  c.data.prefetch = 2          # batches prepared ahead of the device

  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 1000    # steps between checkpoints (also at the end and on SIGTERM/SIGINT)
  c.checkpoint.keep = 3        # the last K checkpoints ...
  c.checkpoint.keep_every = 0  # ... plus every M-th step for good (0: none)
  c.checkpoint.async_save = True
  # several processes agree on a SIGTERM/SIGINT every this many steps (one small host
  # all-gather then; none in between); a single process checks every step, for free
  c.checkpoint.stop_check_every = 10
  # seconds from a stop signal to exit: past it the process dumps its threads' stacks and
  # exits 3 (a restarter resumes from the last complete checkpoint) instead of hanging
  c.checkpoint.stop_deadline = 120.0

  c.masks = ml_collections.ConfigDict()
  c.masks.mode = 'official'    # or 'corrected' (ijepa_jax/masks.py)
  c.masks.num_targets = 4
  c.masks.target_scale = (0.15, 0.2)
  c.masks.target_aspect = (0.75, 1.5)
  c.masks.context_scale = (0.85, 1.0)
  c.masks.context_aspect = (1.0, 1.0)
  c.masks.min_keep = 10
  c.masks.context_len = -1     # -1: derived (ijepa_jax/masks.py)
  c.masks.truncation_batch = 128  # official per-GPU batch (2048 on 16 GPUs)
  # or random, block, rasterized (the paper's ablation; corrected mode)
  c.masks.strategy = 'multiblock'
  c.masks.target_fraction = 0.6  # random / block: the targets' share of the grid (the paper's)
  # pack the contexts and the predictor's sequences into rows (ijepa_jax/packing.py): the
  # same result with less padded work where lengths vary per image (corrected masks)
  c.masks.pack = False

  c.optim = ml_collections.ConfigDict()
  c.optim.start_lr = 2e-4
  c.optim.lr = 1e-3
  c.optim.final_lr = 1e-6
  c.optim.warmup_epochs = 40.0
  c.optim.weight_decay = 0.04
  c.optim.final_weight_decay = 0.4
  c.optim.ema = (0.996, 1.0)
  c.optim.ipe_scale = 1.0
  c.optim.grad_clip = 0.0      # 0: none (official)
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.accum_steps = 1      # gradient accumulation: each batch in this many micro-batches

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1             # -1: the rest of the devices
  c.mesh.fsdp = 1

  c.evals = ml_collections.ConfigDict()  # frozen-feature evaluation (ijepa_jax/evaluation.py)
  c.evals.every = 0            # pretraining steps between evaluations on the periodic subset
                               # (0: none)
  c.evals.at_end = False       # a full evaluation after the last step
  c.evals.baseline = False     # at the end, also the same network at random initialisation
  c.evals.dataset = ''         # labelled data: '' = data.dataset (any source of the input pipeline)
  c.evals.data_dir = ''        # '' = data.data_dir
  c.evals.train_split = 'train'
  c.evals.test_split = 'test'  # ImageNet: 'validation'
  c.evals.train_examples = 10000  # the periodic evaluation's fixed subsets (-1: all)
  c.evals.test_examples = 5000
  c.evals.final_train_examples = -1  # the final / standalone evaluation's (-1: all)
  c.evals.final_test_examples = -1
  c.evals.periodic_probes = ('linear', 'knn')
  c.evals.final_probes = ('linear', 'knn', 'lowshot')
  c.evals.encoder = 'target'   # target (EMA) or context
  c.evals.pool = 'mean'        # mean (average-pooled output), last4 (mean of the last 4 blocks')
                               # or tokens (every output token, flattened: T x D values)
  c.evals.crop_fraction = 0.875  # resize the short side to size / this, centre-crop
  c.evals.batch_size = 256     # images per feature-extraction step (global)
  c.evals.knn_k = 20
  c.evals.knn_temperature = 0.07
  c.evals.probe_lrs = (0.01, 0.1, 1.0)  # the linear probe's grid (SGD + momentum, cosine) ...
  c.evals.probe_l2s = (0.0, 1e-4, 1e-3)   # ... x L2 penalties, chosen on a held-out part
  c.evals.holdout = 0.1        # of the training features
  c.evals.probe_steps = 1000
  c.evals.probe_batch = 1024
  c.evals.lowshot_per_class = (1, 5, 10)
  c.evals.lowshot_fraction = 0.01  # and 1% of each class (0: skip)
  c.evals.attentive_epochs = 20    # the attentive probe (V-JEPA's, ijepa_jax/probes/attentive.py):
  c.evals.attentive_lrs = (1e-3,)  # AdamW rates, one head each, chosen on the held-out part;
  c.evals.attentive_wd = 1e-3      # weight decay (cosine-decayed to 1e-6 with the rate to 0);
  c.evals.attentive_batch = 1024   # V-JEPA's values: 20 epochs, 1e-3, 1e-3, 16 x 64 GPUs
  c.evals.attentive_heads = 0      # its heads (0: the encoder's)
  c.evals.attentive_queries = 1    # learnable query tokens
  c.evals.attentive_mlp_ratio = 4.0
  # a split's tokens kept in memory up to this; beyond, recomputed
  c.evals.attentive_cache_gib = 8.0

  c.monitor = ml_collections.ConfigDict()  # what the run shows (ijepa_jax/monitor.py)
  c.monitor.tensorboard = True  # event files in the workdir, beside metrics.jsonl
  c.monitor.progress = True    # a live progress line when stdout is a terminal
  c.monitor.health_every = 100  # steps between representation-health checks (0: none)
  c.monitor.collapse_std_floor = 1e-3  # warn below this mean per-dimension feature std ...
  c.monitor.collapse_rank_floor = 2.0  # ... or this effective rank (1: a constant)
  c.monitor.pictures = True    # masks at the start, feature maps, curves at the end (PNG)
  c.monitor.mask_images = 4    # images in the mask picture ...
  c.monitor.feature_images = 8  # ... and in the feature pictures (the first of data.split)
  c.monitor.feature_maps = 5   # patch-feature pictures, evenly spaced from step 0 to the end
  return c


def paper_recipe(variant: str, patch_size: int, image_size: int, epochs: float,
                 warmup_epochs: float, pred_depth: int = 12,
                 dataset: str = 'imagenet2012') -> ml_collections.ConfigDict:
  """One of the paper's ImageNet recipes (DESIGN.md); everything else is official default."""
  c = base_config()
  c.model.variant = variant
  c.model.patch_size = patch_size
  c.model.pred_depth = pred_depth
  c.data.dataset = dataset
  c.data.image_size = image_size
  c.num_epochs = float(epochs)
  c.optim.warmup_epochs = float(warmup_epochs)
  # k-NN + linear probe on 25k train / 10k validation images every 10 epochs (a few seconds
  # against 10 epochs of training), then the full evaluation on IN-1K (-1: whole splits;
  # features of the 1.28M training images take 6.5 GB of host and device memory at ViT-H)
  c.evals.every = 6250
  c.evals.at_end = True
  c.evals.dataset = 'imagenet2012'
  c.evals.test_split = 'validation'
  c.evals.train_examples = 25000
  c.evals.test_examples = 10000
  if dataset == 'imagenet2012':
    c.data.dataset_size = 1281167  # the official schedules count ImageNet-1K's epochs
  elif dataset == 'imagenet21k':  # ImageNet-22K (full, 21,841 classes)
    c.data.dataset_size = 14197122
  return c


def fashion_mnist_demo() -> ml_collections.ConfigDict:
  """The embedded default (configs/demo.py): a small ViT, one epoch of Fashion-MNIST on a
  CPU, with the variance-covariance terms that keep it from collapsing (docs/RESULTS.md)."""
  c = base_config()
  c.batch_size = 128
  c.num_epochs = 1.25  # 585 steps: 1.0 left the linear probe at 79.4% on seed 1 (docs/RESULTS.md)
  c.log_every = 25
  c.model.variant = 'custom'
  c.model.width = 64
  c.model.depth = 4
  c.model.num_heads = 4
  c.model.patch_size = 4
  c.model.pred_width = 32
  c.model.pred_depth = 2
  c.model.dtype = 'float32'
  c.data.dataset = 'fashion_mnist'
  c.data.image_size = 28
  c.data.channels = 1
  # data.dataset_size stays -1: the split's own size (60,000 here), so the schedule is right
  # when this config is a template for another dataset
  # no random crop: at 28 px the official RandomResizedCrop (scale 0.3-1) cost the probe
  # 1.4 points over 3 seeds (docs/PERFORMANCE.md); scale = ratio = 1 is the whole image
  c.data.crop_scale = (1.0, 1.0)
  c.data.crop_ratio = (1.0, 1.0)
  c.data.mean = (0.2860,)      # Fashion-MNIST's pixel statistics
  c.data.std = (0.3530,)
  c.checkpoint.every = 100
  # without them the representation partially collapses mid-run (docs/RESULTS.md): a variance
  # hinge and a decorrelation term on the pooled context features, as C-JEPA adds to I-JEPA
  c.anti_collapse.var_weight = 1.0
  c.anti_collapse.cov_weight = 1.0
  c.masks.mode = 'corrected'
  c.masks.min_keep = 4
  # mean context ~24 of 49 patches; uncapped (Kc 43) and padded, a step costs 1.28x the time;
  # masks.context_len=-1 with masks.pack=True trains uncapped at this speed (PERFORMANCE.md)
  c.masks.context_len = 32
  c.optim.warmup_epochs = 0.1
  c.evals.every = 200          # k-NN + linear probe on 5k train / 2k test images: ~3% of the time
  c.evals.train_examples = 5000
  c.evals.test_examples = 2000
  c.evals.at_end = True        # then the full evaluation (60k / 10k) ...
  c.evals.baseline = True      # ... of the pretrained and of the randomly initialised encoder
  c.evals.crop_fraction = 1.0  # whole 28-px images, as in training
  # and V-JEPA's attentive probe, sized for 2 cores by its held-out accuracy on the pretrained
  # tokens (docs/RESULTS.md): 60,000 images at V-JEPA's batch of 1,024 make 53 steps an epoch
  # (ImageNet: 1,250), too few at 1e-3; 128 per batch, 10 epochs, two rates, 16 heads of 4
  c.evals.final_probes = ('linear', 'knn', 'lowshot', 'attentive')
  c.evals.attentive_epochs = 10
  c.evals.attentive_batch = 128
  c.evals.attentive_lrs = (3e-3, 1e-2)
  c.evals.attentive_heads = 16
  c.monitor.health_every = 25  # the representation-health statistics with every log line
  return c
