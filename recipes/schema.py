"""The recipe schema: every key a recipe may set, its type, its default, and what it does.

Recipes in this folder are pure YAML that override these defaults. The dataclasses are used as an omegaconf
structured config, so a mistyped key or a value of the wrong type fails before any work starts, with the full
key path (see ``recipes.loading``). Composer's own names are used wherever Composer has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class Choice(str, Enum):
    """A key that takes one of a few names. omegaconf validates it and lists the members when it is wrong.

    Each member's name is its value and it is a ``str``, so code compares it with plain strings
    (``config.precision == "fp32"``), uses it as a dict key, and prints it as the bare name.
    """

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


class Precision(Choice):
    fp32 = "fp32"
    amp_fp16 = "amp_fp16"
    amp_bf16 = "amp_bf16"


class Device(Choice):
    auto = "auto"
    cpu = "cpu"
    gpu = "gpu"


class Head(Choice):
    fc = "fc"
    conv1x1 = "conv1x1"


class Loss(Choice):
    cross_entropy = "cross_entropy"
    binary_cross_entropy = "binary_cross_entropy"
    binary_cross_entropy_mean = "binary_cross_entropy_mean"


class Init(Choice):
    torchvision = "torchvision"
    mosaic = "mosaic"


class ClassifierBias(Choice):
    chance_under_bce = "chance_under_bce"
    layer_default = "layer_default"


class Task(Choice):
    supervised = "supervised"
    moco_v3 = "moco_v3"
    linear_probe = "linear_probe"


class LossReduction(Choice):
    sum = "sum"
    mean = "mean"


class DataSource(Choice):
    digits = "digits"
    imagefolder = "imagefolder"
    ilsvrc = "ilsvrc"
    hf = "hf"
    synthetic = "synthetic"
    streaming = "streaming"
    tiny_imagenet = "tiny_imagenet"


class ShuffleAlgo(Choice):
    """MosaicML Streaming's shuffle algorithms (``streaming.base.shuffle``); py1e is its default."""

    py1b = "py1b"
    py1br = "py1br"
    py1e = "py1e"
    py1s = "py1s"
    py2s = "py2s"
    naive = "naive"


class ParallelStrategy(Choice):
    """How the model is spread over the processes: DDP (a whole copy each, gradients all-reduced) or FSDP."""

    ddp = "ddp"
    fsdp = "fsdp"


class ShardingStrategy(Choice):
    """PyTorch FSDP's sharding strategies, as Composer's FSDPConfig names them."""

    FULL_SHARD = "FULL_SHARD"
    SHARD_GRAD_OP = "SHARD_GRAD_OP"
    NO_SHARD = "NO_SHARD"
    HYBRID_SHARD = "HYBRID_SHARD"


class FsdpMixedPrecision(Choice):
    """Composer's FSDP mixed-precision presets (composer/distributed/mosaic_parallelism.py)."""

    DEFAULT = "DEFAULT"
    PURE = "PURE"
    FULL = "FULL"


class StateDictType(Choice):
    full = "full"
    sharded = "sharded"


class Interpolation(Choice):
    bilinear = "bilinear"
    bicubic = "bicubic"
    nearest = "nearest"


class Pipeline(Choice):
    fast = "fast"
    torchvision = "torchvision"


class BadImagePolicy(Choice):
    skip = "skip"
    fail = "fail"


class OptimizerName(Choice):
    decoupled_sgdw = "decoupled_sgdw"
    decoupled_adamw = "decoupled_adamw"
    lars = "lars"
    sgd = "sgd"
    lamb = "lamb"


class LrScaling(Choice):
    linear = "linear"
    sqrt = "sqrt"
    none = "none"


class SchedulerName(Choice):
    cosine_warmup = "cosine_warmup"
    linear_warmup = "linear_warmup"
    constant_warmup = "constant_warmup"
    one_cycle = "one_cycle"


class WandbMode(Choice):
    online = "online"
    offline = "offline"
    disabled = "disabled"


IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ModelConfig:
    """The network: torchvision's ResNet architecture wrapped as a Composer classifier."""

    # torchvision architecture name (resnet50 is the product, smaller ones are for quick experiments), or timm's
    # pre-activation ResNet (He et al. 2016): resnetv2_18/34/50/101/152, supervised only, no torchvision weights.
    name: str = "resnet50"
    # Number of output classes; None takes it from the data.
    num_classes: int | None = None
    # Zero-init the last BN gamma of each residual block (Goyal et al. 2017): each block starts as identity.
    # Pre-activation blocks end in a convolution, not a BN: its weight is zeroed instead (timm's zero_init_last).
    zero_init_residual: bool = True
    # Classifier head: "fc" (torchvision's Linear; timm's own head.fc for resnetv2) or "conv1x1" (a 1x1
    # convolution before pooling; torchvision names only).
    head: Head = Head.fc
    # cross_entropy (soft targets) or binary_cross_entropy (one-vs-all on the same soft targets, summed over the
    # classes, as Mosaic's Mild/Medium/Hot recipes) or binary_cross_entropy_mean (the same terms averaged over
    # the classes too, timm's BinaryCrossEntropy, as ResNet strikes back); under either BCE the classifier bias
    # starts at -log(num_classes).
    loss: Loss = Loss.cross_entropy
    # Weight initialisation: torchvision's own (timm's own for resnetv2), or Mosaic's ResNet benchmark's
    # (Kaiming-normal convolutions and classifier, BatchNorm weights uniform in [0, 1), biases zero);
    # zero_init_residual applies after either.
    init: Init = Init.torchvision
    # The classifier's bias at the start: chance_under_bce sets it to -log(num_classes) under a BCE loss (Mosaic's
    # model.py: each sigmoid starts near 1/num_classes, not 1/2) and keeps the layer's own init under
    # cross-entropy; layer_default always keeps the layer's own (torchvision's and timm's nn.Linear init).
    classifier_bias: ClassifierBias = ClassifierBias.chance_under_bce
    # task linear_probe: the MoCo v3 pretraining checkpoint (a file or s3:// URI) whose backbone is loaded and
    # frozen; only the classifier trains.
    backbone_checkpoint: str | None = None
    # resnetv2 names only: timm's stochastic depth, each block's residual branch dropped per image in training
    # at a rate rising linearly over the blocks to this one (0: off). torchvision's ResNets take
    # algorithms.stochastic_depth instead.
    drop_path_rate: float = 0.0
    # Evaluation only: score each image by its logits plus its horizontal flip's (FFCV's lr_tta); training,
    # checkpoints and exports are unchanged.
    flip_tta: bool = False
    # task supervised: BatchNorm statistics over the global batch, not each GPU's (SyncBatchNorm), as ResNet
    # strikes back trains; for small per-GPU batches (T4s). Converted only with several processes on GPUs.
    sync_batchnorm: bool = False


@dataclass
class TwoViewsConfig:
    """The two augmented views of each image a contrastive run trains on (``task: moco_v3``).

    BYOL's asymmetric pair, as MoCo v3's ``main_moco.py`` builds it: both views a RandomResizedCrop at
    ``data.train_resolution`` (aspect ratios ``data.crop_ratio``), colour jitter, grayscale and a flip; the
    first view always blurred, the second rarely blurred and sometimes solarized. Pairs are (view 1, view 2).
    """

    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    # ColorJitter brightness, contrast, saturation, hue, applied with probability color_jitter_p.
    color_jitter: list[float] = field(default_factory=lambda: [0.4, 0.4, 0.2, 0.1])
    color_jitter_p: float = 0.8
    grayscale_p: float = 0.2
    # Gaussian blur probability per view, sigma drawn uniformly from blur_sigma (pixels of a 224 px crop; scaled
    # by the current training size / 224, so progressive resizing keeps the blur relative to the image).
    blur_p: list[float] = field(default_factory=lambda: [1.0, 0.1])
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    # Solarization (pixels >= 128 inverted) probability per view.
    solarize_p: list[float] = field(default_factory=lambda: [0.0, 0.2])
    horizontal_flip: bool = True


@dataclass
class StreamingConfig:
    """How ``data.source: streaming`` reads MDS shards (MosaicML Streaming's ``StreamingDataset`` arguments).

    The training split is shuffled by Streaming over the canonical nodes, so every node downloads only the
    shards of its own partition and a resumed run continues from the checkpointed sample; validation is read
    by index, each image once.
    """

    # Shuffle algorithm and the number of samples shuffled together per block (None: Streaming's default,
    # max(4M / num_canonical_nodes, 2^18)); shuffle_seed None takes the recipe's seed.
    shuffle_algo: ShuffleAlgo = ShuffleAlgo.py1e
    shuffle_block_size: int | None = None
    shuffle_seed: int | None = None
    # Samples to download ahead of the one being read, per worker (None: Streaming's max(batch_size, 256) x 8).
    predownload: int | None = None
    # Cap on the local cache ("50gb"; None: keep every shard downloaded). Shards past it are evicted, coldest
    # first, and downloaded again when needed.
    cache_limit: str | None = None
    # The partition the shuffle is defined over. Keep it fixed for a run: None is the number of nodes at the
    # first launch, so a run resumed on another node count keeps its sample order.
    num_canonical_nodes: int | None = None
    # Seconds one shard may take to download before the run fails naming it.
    download_timeout: float = 60.0
    # Checksum each downloaded shard against the one its index records (scripts/convert_to_mds.py writes
    # xxh64; null skips the check, for shards written without it). A corrupt shard stops the run naming it.
    validate_hash: str | None = "xxh64"


@dataclass
class DataConfig:
    """Where the images come from, which of them, and how they are transformed and loaded."""

    # Where the images come from: the bundled digits, a folder, an ILSVRC/Kaggle layout, Hugging Face, generated,
    # MDS shards, or the tiny-imagenet-200 folder.
    source: DataSource = DataSource.digits
    # Root folder (imagefolder, ilsvrc, tiny_imagenet), or a Hugging Face hub name or saved-dataset folder (hf).
    path: str | None = None
    # Where derived data (the digits JPEG folder, file indexes, drawn Hugging Face subsets) is written.
    cache_dir: str = "~/.cache/mosaic-resnet50"
    # Folder sources: cache the file listing under cache_dir (rebuilt when a folder changes) so a restart or a
    # second process does not walk 1.28M files again.
    index_cache: bool = True
    # Split names: folder names for imagefolder, ilsvrc and tiny_imagenet, split names for hf ("train"/"validation"
    # for imagenet-1k).
    train_split: str = "train"
    val_split: str = "val"
    # hf: stream from the hub instead of downloading the whole dataset first.
    hf_streaming: bool = False
    # hf: environment variable holding the hub token (imagenet-1k is gated).
    hf_token_env: str = "HF_TOKEN"
    # streaming: where the MDS shards written by scripts/convert_to_mds.py are (s3://bucket/prefix or a folder,
    # holding <train_split>/ and <val_split>/), and this machine's cache folder for the shards it downloads.
    remote: str | None = None
    local: str = "~/.cache/mosaic-resnet50/mds"
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    # synthetic: class count and sample counts (other sources take the class count from the data).
    num_classes: int = 1000
    synthetic_train_samples: int = 512
    synthetic_val_samples: int = 128
    # digits: fraction held out for validation (stratified, seeded by `seed`).
    digits_val_fraction: float = 0.2
    # Training subset: a named size (tiny=1000, small=10000, medium=100000, large=500000, full) or a number.
    subset_size: str = "full"
    # Validation subset: the same forms as subset_size, drawn class-balanced and seeded by `seed`.
    val_subset_size: str = "full"
    # Keep only the first N classes (in class order) / at most N training images per class.
    max_classes: int | None = None
    max_samples_per_class: int | None = None
    # Image side length fed to the network.
    train_resolution: int = 224
    eval_resolution: int = 224
    # RandomResizedCrop area range and aspect-ratio range.
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    horizontal_flip: bool = True
    # Training only, after crop and flip (evaluation is never augmented): torchvision's ColorJitter brightness,
    # contrast, saturation and hue on every training image (null: off).
    color_jitter: list[float] | None = None
    # torchvision references/classification's --auto-augment policy: ta_wide (TrivialAugmentWide), ra
    # (RandAugment), imagenet | cifar10 | svhn (AutoAugment with that policy); null: off.
    auto_augment: str | None = None
    # auto_augment=ra: RandAugment's magnitude, 0-30 (torchvision's reference default 9).
    ra_magnitude: int = 9
    # Probability of torchvision's RandomErasing per training image (--random-erase): a box erased to 0 after
    # normalisation (the fast path fills it with the mean in uint8, the same input to the model).
    random_erasing: float = 0.0
    # Repeated augmentation (torchvision's --ra-sampler --ra-reps N, DeiT's RASampler): each training image N
    # times per epoch in a row, on different processes, each copy cropped and augmented anew; an epoch is then the
    # training set rounded down to a multiple of 256 images (torchvision's rule). 1: off.
    repeated_augmentation: int = 1
    # Eval: resize the short side to resolution / ratio, then center-crop `eval_resolution`.
    eval_crop_ratio: float = 0.875
    interpolation: Interpolation = Interpolation.bilinear
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    # Decode path: "fast" (reduced-size JPEG decode, crop and resize in one step, uint8 batches normalised on
    # the device) or "torchvision" (torchvision's RandomResizedCrop/ToTensor/Normalize presets on the CPU).
    pipeline: Pipeline = Pipeline.fast
    # An image that cannot be decoded: "skip" (replace the sample, list the file in the run folder, report it
    # at the end) or "fail" (stop at once, naming the file).
    on_bad_image: BadImagePolicy = BadImagePolicy.skip
    # The two views of a contrastive run (task: moco_v3); supervised runs use the crop keys above.
    two_views: TwoViewsConfig = field(default_factory=TwoViewsConfig)
    # DataLoader settings (per process).
    num_workers: int = 8
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2
    drop_last: bool = True


@dataclass
class MocoConfig:
    """MoCo v3 pretraining (``task: moco_v3``), as facebookresearch/moco-v3 builds it for ResNet-50."""

    # Projector MLP backbone features -> hidden -> output_dim, predictor output_dim -> hidden -> output_dim.
    projector_hidden_dim: int = 4096
    predictor_hidden_dim: int = 4096
    output_dim: int = 256
    # InfoNCE temperature; each of the two terms is cross-entropy x 2 x temperature, as the official code.
    temperature: float = 1.0
    # The momentum encoder's momentum at the start; a half-cosine raises it to 1 at the end of training.
    momentum: float = 0.99
    # The two symmetric terms summed (the official code) or averaged: a constant factor of 2 on the loss and
    # its gradients, which LARS's trust ratio and AdamW's normalisation largely absorb but SGD does not.
    loss_reduction: LossReduction = LossReduction.sum
    # Negatives kept from earlier batches (MoCo v2's queue) for small batches on one GPU; 0: none, as v3.
    queue_size: int = 0
    # Convert BatchNorm to SyncBatchNorm under DDP (the official runs do); no effect on one process.
    sync_batchnorm: bool = True
    # The k-NN monitor: how often (Composer time; null: never) the validation images are classified by their
    # k nearest training images in the backbone's feature space (cosine similarity, votes weighted by
    # exp(similarity / knn_temperature), as Wu et al. 2018), on a class-balanced, seeded draw of at most
    # knn_train_images training images (one centre-cropped view). Labels are read for this only.
    knn_interval: str | None = "1ep"
    knn_k: int = 20
    knn_temperature: float = 0.07
    knn_train_images: int = 10000


@dataclass
class OptimizerConfig:
    """Optimizer and the batch-size rule that turns the per-256 base LR into the applied LR."""

    # Composer's decoupled-weight-decay SGDW or AdamW, MoCo v3's LARS, PyTorch's SGD (weight decay coupled, as
    # torchvision's and FFCV's references), or timm's LAMB (ResNet strikes back).
    name: OptimizerName = OptimizerName.decoupled_sgdw
    # Learning rate per 256 images; the applied LR is base_lr * rule(global_batch_size / 256).
    base_lr: float = 0.1
    # linear (Goyal et al. 2017) | sqrt (Krizhevsky 2014, Hoffer et al. 2017) | none
    lr_scaling: LrScaling = LrScaling.linear
    momentum: float = 0.9
    nesterov: bool = False
    # Decoupled weight decay (Composer scales it by lr / initial_lr, as in Loshchilov & Hutter).
    weight_decay: float = 5.0e-4
    # The global batch weight_decay was tuned at: at another batch the decay is rescaled so each epoch shrinks the
    # weights as much as there (decoupled: x batch / this; coupled: only a non-linear LR rule changes it; printed
    # at start, in --print-config and --plan). null: applied as written, whatever the batch.
    weight_decay_batch: int | None = None
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    # Put BatchNorm weights and all biases in a group without weight decay.
    exclude_bn_and_bias_from_weight_decay: bool = False
    # Weight decay of normalization layers' weights and biases (torchvision's --norm-weight-decay); null: the same
    # as every other parameter.
    norm_weight_decay: float | None = None
    # Parameters whose name contains one of these strings take no weight decay (FFCV's rn50 configs: ["bn"]).
    no_weight_decay_names: list[str] = field(default_factory=list)
    # lamb only: timm's LAMB clips the global gradient norm to this before its step (timm's own default is 1.0,
    # which ResNet strikes back keeps); null: no clipping.
    max_grad_norm: float | None = None
    # LARS only: the trust ratio's coefficient (eta); MoCo v3's moco/optimizer.py uses 0.001.
    trust_coefficient: float = 0.001


@dataclass
class SchedulerConfig:
    """Learning-rate schedule."""

    # Composer's warmup schedules, or PyTorch's OneCycleLR.
    name: SchedulerName = SchedulerName.cosine_warmup
    # Warmup length in Composer time units ("5ep", "500ba", "0.05dur"); 0 for none.
    t_warmup: str = "1ep"
    # Warmup schedules: the fraction of the peak LR the linear warmup starts from (0: Composer's, from zero;
    # torchvision's --lr-warmup-decay 0.01; timm's --warmup-lr over --lr).
    warmup_start: float = 0.0
    # Final LR as a fraction of the peak LR (warmup schedules).
    alpha_f: float = 0.0
    # one_cycle: fraction of the run spent rising, start = peak / div_factor, end = start / final_div_factor.
    pct_start: float = 0.25
    div_factor: float = 25.0
    final_div_factor: float = 1.0e4


@dataclass
class LoggingConfig:
    """Console, metrics file, and the loggers people already watch: Weights & Biases, TensorBoard, MLflow (each
    gets every metric under the same names), and Slack for the doctor's findings."""

    progress_bar: bool = True
    # Plain-text metric lines on the console, every `console_log_interval`.
    log_to_console: bool = False
    console_log_interval: str = "1ep"
    # Write a training line to metrics.jsonl every N batches (eval lines are always written).
    metrics_every_n_batches: int = 10
    wandb: bool = False
    wandb_project: str = "mosaic-resnet50"
    wandb_entity: str | None = None
    # wandb's mode: offline writes the run locally to sync later.
    wandb_mode: WandbMode = WandbMode.online
    # wandb's run group (tools.ablate sets the study's name, so a study's runs are shown together).
    wandb_group: str | None = None
    # Composer's TensorboardLogger: event files under <run folder>/tensorboard/<run_name>/ (the tensorboard extra).
    tensorboard: bool = False
    # Composer's MLFlowLogger: an MLflow run named after this one (the mlflow extra).
    mlflow: bool = False
    # The MLflow tracking server or store; null: MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db).
    mlflow_tracking_uri: str | None = None
    mlflow_experiment: str = "mosaic-resnet50"
    # Post each finding of the doctor and the curve watch to the Slack incoming webhook in SLACK_WEBHOOK_URL.
    slack_findings: bool = False


@dataclass
class DoctorConfig:
    """The training doctor: watches loss, accuracy and gradient norm, and says plainly what looks wrong.

    "The chance loss" is what a model guessing 1/C for every class scores under the recipe's loss: ln(C) for
    cross-entropy, ln(C) - (C - 1) ln(1 - 1/C) for binary cross-entropy (model.chance_loss).
    """

    # On by default: it only speaks when a run is unhealthy; a healthy run pays one gradient-norm pass per
    # backward (lost in the noise of the CPU smoke run's throughput) and, under DDP, one tiny all-reduce.
    enabled: bool = True
    # "Smoothed loss": the median of the last N batch losses (one bad batch does not move it).
    smoothing_batches: int = 20
    # Batches whose median is the reference for loss spikes and gradient-norm extremes.
    median_window: int = 50
    # Time after warmup (Composer time) before loss or accuracy may be called at chance; 1000-class runs need
    # a few hundred steps to get 2 % below ln(1000), whatever the epoch length.
    chance_grace: str = "300ba"
    # "At chance": the smoothed loss never went this fraction below the chance loss.
    chance_loss_tolerance: float = 0.02
    # Val top-1 at chance: at most 1/num_classes plus this fraction of it ...
    chance_accuracy_margin: float = 0.5
    # ... and plus at most this much (few classes: 2 classes at 55 % is not chance).
    chance_accuracy_max_margin: float = 0.05
    # Diverging: smoothed loss above this multiple of its running minimum (or the chance loss if lower) ...
    divergence_ratio: float = 1.5
    # ... and above it by this fraction of the chance loss (low losses are noisy in ratio) ...
    divergence_min_rise: float = 0.25
    # ... for this many batches in a row.
    divergence_window: int = 10
    # Spike: one batch's loss at least this multiple of the recent median ...
    spike_ratio: float = 5.0
    # ... and above it by this fraction of the chance loss.
    spike_min_rise: float = 0.5
    # Stalled: smoothed loss improved by less than this fraction over stall_window batches ...
    stall_min_improvement: float = 0.02
    stall_window: int = 200
    # ... while the LR is below this fraction of its peak ...
    stall_lr_fraction: float = 0.1
    # ... and the loss is still high: above this fraction of the chance loss (also for vanishing gradients).
    high_loss_fraction: float = 0.5
    # Gradient norm exploding: this multiple of its recent median.
    grad_norm_explode_ratio: float = 20.0
    # Gradient norm vanishing: recent median below this fraction of its largest median, with the loss high.
    grad_norm_vanish_ratio: float = 1.0e-3
    # First batch's loss above this multiple of the chance loss: broken loss or init (summed: ~batch size).
    initial_loss_ratio: float = 3.0
    # amp_fp16: the GradScaler skipping this many steps in a row (non-finite gradients) stops the run.
    skipped_steps_limit: int = 25
    # Before a NaN, "the loss was climbing": smoothed loss up from its minimum by this fraction of the chance loss ...
    climbing_loss_rise: float = 0.1
    # ... or the last gradient norm this multiple of its median.
    climbing_grad_norm_ratio: float = 5.0
    # Contrastive runs (task moco_v3). A first loss this fraction above or below the one the objective predicts
    # (negatives, temperature, the 2T scale, sum or mean) ...
    contrastive_initial_tolerance: float = 0.25
    # ... a loss that after warmup and chance_grace has moved less than this fraction from its start ...
    contrastive_min_progress: float = 0.05
    # ... an applied LR per 256 images below this fraction of the official one for the optimizer ...
    official_lr_fraction: float = 0.3
    # ... the schedule's LR below this fraction of its peak while the loss has not moved ...
    decayed_lr_fraction: float = 0.1
    # ... and the normalised outputs' per-dimension std below this fraction of a healthy 1/sqrt(d) (collapse).
    collapse_std_fraction: float = 0.2


@dataclass
class ParallelismConfig:
    """DDP or FSDP, and FSDP's settings (passed to Composer's ``parallelism_config={"fsdp": ...}``, FSDP1).

    ResNet-50 has 25.6M parameters (~100 MB in fp32): every GPU holds them, their gradients and SGD's momentum
    (~300 MB together) with room to spare, so DDP is the right choice; sharding can save at most part of those
    300 MB per GPU, at the price of all-gathers every step. docs/scaling-out.md says when FSDP pays.
    """

    strategy: ParallelStrategy = ParallelStrategy.ddp
    # fsdp: what is sharded over the processes (FULL_SHARD: parameters, gradients and optimizer state).
    sharding_strategy: ShardingStrategy = ShardingStrategy.FULL_SHARD
    # fsdp: DEFAULT computes in the recipe's precision and reduces gradients in fp32; PURE also reduces in it;
    # FULL keeps everything fp32. BatchNorm stays fp32 in its own FSDP unit under all three (PyTorch's rule).
    mixed_precision: FsdpMixedPrecision = FsdpMixedPrecision.DEFAULT
    # fsdp: recompute each residual block's activations in backward instead of storing them (Composer applies
    # activation checkpointing only under FSDP).
    activation_checkpointing: bool = False
    # fsdp: checkpoints hold the full weights ("full"); "sharded" is refused: evaluate.py, export and the
    # torchvision conversion read one file.
    state_dict_type: StateDictType = StateDictType.full


@dataclass
class WatchConfig:
    """The curve watch: each validation top-1 against a reference curve at the same fraction of the schedule
    (callbacks/curve_watch.py). Off while ``reference`` is null."""

    # What the run is compared with: a name in recipes/reference_curves/ ("ffcv_rn50"; the curve nearest the run's
    # length in epochs), a finished run's folder (runs/NAME: its metrics.jsonl and recipe.yaml), or several runs of
    # one recipe with other seeds, comma-separated (their mean, the band from their spread); null: no watch.
    reference: str | None = None
    # Half-width of the band in points of top-1; null: 2.8 x the noise of one of the reference's evaluations.
    band: float | None = None
    # Composer time before which the watch only reports, no finding and no stop: early curves are steep, and a run
    # a few steps ahead of or behind the reference is many points off it.
    grace: str = "0.25dur"
    # Points of top-1 under the reference at two evaluations in a row (after grace) that checkpoint and stop the
    # run (exit status 4); null: never stops.
    stop_below: float | None = None


@dataclass
class BudgetConfig:
    """The budget guard: measured throughput projects the run's finish time and cost, once an epoch; a warning when
    the projection passes a limit, a checkpoint and a stop before the spend does (callbacks/budget_guard.py). On
    when a price is known (the hardware's instance, or usd_per_hour) or a limit is set; silent otherwise."""

    # Dollars per hour of the whole machine: null = the recipe hardware's instance price (training/hardware.py);
    # a number (another provider, a reserved price); or "spot": the instance type's current AWS spot price.
    usd_per_hour: int | float | str | None = None
    # Dollars the run may spend, earlier launches of a resumed run included; null: no limit.
    max_usd: float | None = None
    # Wall-clock hours the run may take, earlier launches included; null: no limit.
    max_hours: float | None = None
    # AWS region whose spot price usd_per_hour=spot reads; null: AWS_DEFAULT_REGION, else us-east-1.
    region: str | None = None


@dataclass
class ProfilerConfig:
    """Composer's profiler with the torch profiler over a window of steps, and where each step's time went.

    The window is Composer's cyclic schedule, counted in batches from the start of each profiled epoch: skip
    ``skip_first``, then ``repeat`` cycles of ``wait`` idle, ``warmup`` warm-up (recorded, discarded) and
    ``active`` recorded batches. Each cycle writes a Chrome/Perfetto trace per rank; the step-time breakdown
    (data wait, forward, backward, optimizer, all-reduce) covers the active batches.
    """

    enabled: bool = False
    # Batches to leave out at the start of each profiled epoch (the first steps pay one-time costs).
    skip_first: int = 2
    wait: int = 0
    warmup: int = 1
    active: int = 4
    # Cycles per epoch; 0 records the whole epoch.
    repeat: int = 1
    # Epochs profiled, from the first (null: every epoch, as Composer's schedule does).
    epochs: int | None = 1
    # Where the traces and step_breakdown.json go; null: profiler/ in the run's local output folder (the
    # save_folder, or runs/<run_name> when it is on S3).
    folder: str | None = None
    # torch.profiler options (each makes the trace larger and the profiled steps slower).
    record_shapes: bool = False
    profile_memory: bool = False
    with_stack: bool = False
    # FLOPs of matrix multiplications and convolutions in the trace (records shapes: ~6x slower on a CPU).
    with_flops: bool = False


@dataclass
class RecipeConfig:
    """A whole training recipe."""

    # One line saying what this recipe is for.
    description: str = ""
    # What is trained: "supervised" (a classifier on the labels) or "moco_v3" (self-supervised pretraining of
    # the same backbone on two views of each image; labels ignored; settings in the moco section) or
    # "linear_probe" (a classifier trained on the frozen backbone of model.backbone_checkpoint).
    task: Task = Task.supervised
    # What the recipe is sized for: "cpu (2 cores)", "1xT4 (Colab)", "4xT4 (g4dn.12xlarge)". The planner
    # (--plan) and the recipe checks read it for world size, GPU type, vCPUs and price (training/hardware.py).
    hardware: str = "cpu"
    # Composer's run name; stable names make autoresume find the run again.
    run_name: str | None = None
    seed: int = 17
    # Local folder or s3://bucket/prefix; "{run_name}" is filled in by Composer.
    save_folder: str = "runs/{run_name}"
    # Endpoint of an S3-compatible store (MinIO, R2, ...) for an s3:// save_folder or model.backbone_checkpoint;
    # None: S3_ENDPOINT_URL or AWS_ENDPOINT_URL if set, else AWS.
    s3_endpoint_url: str | None = None
    # Region of the s3:// save_folder's (or model.backbone_checkpoint's) bucket; None: AWS_DEFAULT_REGION or
    # the AWS config file.
    s3_region: str | None = None
    save_interval: str = "1ep"
    # Checkpoints kept in save_folder; -1 keeps all.
    save_num_checkpoints_to_keep: int = 3
    save_overwrite: bool = False
    autoresume: bool = False
    # Composer time string: "90ep", "2000ba", ...
    max_duration: str = "90ep"
    eval_interval: str = "1ep"
    # Images per optimizer step summed over all devices; per-device batch = global / world size.
    global_batch_size: int = 256
    # Images per eval step summed over all devices; None uses global_batch_size.
    eval_batch_size: int | None = None
    # Gradient accumulation: per-device microbatch size, an int or "auto" (GPU only); None: no accumulation.
    device_train_microbatch_size: int | str | None = None
    # Numeric precision (CPU runs fall back to fp32 and say so).
    precision: Precision = Precision.fp32
    # auto: the GPU when one is visible, else the CPU.
    device: Device = Device.auto
    # Wrap the model in torch.compile.
    compile: bool = False
    # Composer's deterministic mode (bit-exact reruns; slower).
    deterministic: bool = False
    # GPU: let cuDNN time its convolution algorithms once per input shape and keep the fastest (shapes change
    # only at progressive-resizing steps). Ignored on the CPU and under deterministic mode.
    cudnn_benchmark: bool = True
    # Seconds a process waits for the others at a collective before failing (Composer's default is 300): rank 0
    # alone checks an S3 destination, downloads a resume checkpoint or walks a cold 1.28M-file tree first.
    dist_timeout: float = 1800.0
    # The global batch at which the algorithms' settings counted in batches (EMA half_life and update_interval
    # in "ba", SAM's interval) were tuned; the recipe checks warn when the run's batch differs. Settings given
    # in samples ("204800sp") mean the same images at any batch and are converted to steps when built.
    algorithms_tuned_for_batch: int | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    moco: MocoConfig = field(default_factory=MocoConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Composer algorithms by name, each mapped to its keyword arguments ({} for defaults, null to switch off).
    algorithms: dict[str, Any] = field(default_factory=dict)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
    profiler: ProfilerConfig = field(default_factory=ProfilerConfig)
    watch: WatchConfig = field(default_factory=WatchConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    parallelism: ParallelismConfig = field(default_factory=ParallelismConfig)
