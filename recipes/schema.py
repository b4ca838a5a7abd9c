"""The recipe schema: every key a recipe may set, its type, its default, and what it does.

Recipes in this folder are pure YAML that override these defaults. The dataclasses are used as an omegaconf
structured config, so a mistyped key or a value of the wrong type fails before any work starts, with the full
key path (see ``recipes.loading``). Composer's own names are used wherever Composer has one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ModelConfig:
    """The network: torchvision's ResNet architecture wrapped as a Composer classifier."""

    # torchvision architecture name; resnet50 is the product, smaller ones are for quick experiments.
    name: str = "resnet50"
    # Number of output classes; None takes it from the data.
    num_classes: int | None = None
    # Zero-init the last BN gamma of each residual block (Goyal et al. 2017): each block starts as identity.
    zero_init_residual: bool = True
    # Classifier head: "fc" (torchvision's Linear) or "conv1x1" (a 1x1 convolution before pooling).
    head: str = "fc"


@dataclass
class DataConfig:
    """Where the images come from, which of them, and how they are transformed and loaded."""

    # digits | imagefolder | ilsvrc | hf | synthetic
    source: str = "digits"
    # Root folder (imagefolder, ilsvrc), or a Hugging Face hub name or saved-dataset folder (hf).
    path: str | None = None
    # Where derived data (the digits JPEG folder, file indexes, drawn Hugging Face subsets) is written.
    cache_dir: str = "~/.cache/mosaic-resnet50"
    # Folder sources: cache the file listing under cache_dir (rebuilt when a folder changes) so a restart or a
    # second process does not walk 1.28M files again.
    index_cache: bool = True
    # Split names: folder names for imagefolder, split names for hf ("train"/"validation" for imagenet-1k).
    train_split: str = "train"
    val_split: str = "val"
    # hf: stream from the hub instead of downloading the whole dataset first.
    hf_streaming: bool = False
    # hf: environment variable holding the hub token (imagenet-1k is gated).
    hf_token_env: str = "HF_TOKEN"
    # synthetic: class count and sample counts (other sources take the class count from the data).
    num_classes: int = 1000
    synthetic_train_samples: int = 512
    synthetic_val_samples: int = 128
    # digits: fraction held out for validation (stratified, seeded by `seed`).
    digits_val_fraction: float = 0.2
    # Training subset: a named size (tiny=1000, small=10000, medium=100000, large=500000, full) or a number.
    subset_size: str = "full"
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
    # Eval: resize the short side to resolution / ratio, then center-crop `eval_resolution`.
    eval_crop_ratio: float = 0.875
    interpolation: str = "bilinear"
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    # Decode path: "fast" (reduced-size JPEG decode, crop and resize in one step, uint8 batches normalised on
    # the device) or "torchvision" (torchvision's RandomResizedCrop/ToTensor/Normalize presets on the CPU).
    pipeline: str = "fast"
    # An image that cannot be decoded: "skip" (replace the sample, list the file in the run folder, report it
    # at the end) or "fail" (stop at once, naming the file).
    on_bad_image: str = "skip"
    # DataLoader settings (per process).
    num_workers: int = 8
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2
    drop_last: bool = True


@dataclass
class OptimizerConfig:
    """Optimizer and the batch-size rule that turns the per-256 base LR into the applied LR."""

    # decoupled_sgdw | decoupled_adamw (Composer's decoupled-weight-decay optimizers)
    name: str = "decoupled_sgdw"
    # Learning rate per 256 images; the applied LR is base_lr * rule(global_batch_size / 256).
    base_lr: float = 0.1
    # linear (Goyal et al. 2017) | sqrt (Krizhevsky 2014, Hoffer et al. 2017) | none
    lr_scaling: str = "linear"
    momentum: float = 0.9
    nesterov: bool = False
    # Decoupled weight decay (Composer scales it by lr / initial_lr, as in Loshchilov & Hutter).
    weight_decay: float = 5.0e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1.0e-8
    # Put BatchNorm weights and all biases in a group without weight decay.
    exclude_bn_and_bias_from_weight_decay: bool = False


@dataclass
class SchedulerConfig:
    """Learning-rate schedule."""

    # cosine_warmup | linear_warmup | constant_warmup | one_cycle
    name: str = "cosine_warmup"
    # Warmup length in Composer time units ("5ep", "500ba", "0.05dur"); 0 for none.
    t_warmup: str = "1ep"
    # Final LR as a fraction of the peak LR (warmup schedules).
    alpha_f: float = 0.0
    # one_cycle: fraction of the run spent rising, start = peak / div_factor, end = start / final_div_factor.
    pct_start: float = 0.25
    div_factor: float = 25.0
    final_div_factor: float = 1.0e4


@dataclass
class LoggingConfig:
    """Console, metrics file and Weights & Biases."""

    progress_bar: bool = True
    # Plain-text metric lines on the console, every `console_log_interval`.
    log_to_console: bool = False
    console_log_interval: str = "1ep"
    # Write a training line to metrics.jsonl every N batches (eval lines are always written).
    metrics_every_n_batches: int = 10
    wandb: bool = False
    wandb_project: str = "mosaic-resnet50"
    wandb_entity: str | None = None
    # online | offline | disabled
    wandb_mode: str = "online"


@dataclass
class DoctorConfig:
    """The training doctor: watches loss, accuracy and gradient norm, and says plainly what looks wrong."""

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
    # "At chance": the smoothed loss never went this fraction below ln(num_classes).
    chance_loss_tolerance: float = 0.02
    # Val top-1 at chance: at most 1/num_classes plus this fraction of it ...
    chance_accuracy_margin: float = 0.5
    # ... and plus at most this much (few classes: 2 classes at 55 % is not chance).
    chance_accuracy_max_margin: float = 0.05
    # Diverging: smoothed loss above this multiple of its running minimum (or ln(num_classes) if lower) ...
    divergence_ratio: float = 1.5
    # ... and above it by this fraction of ln(num_classes) (low losses are noisy in ratio) ...
    divergence_min_rise: float = 0.25
    # ... for this many batches in a row.
    divergence_window: int = 10
    # Spike: one batch's loss at least this multiple of the recent median ...
    spike_ratio: float = 5.0
    # ... and above it by this fraction of ln(num_classes).
    spike_min_rise: float = 0.5
    # Stalled: smoothed loss improved by less than this fraction over stall_window batches ...
    stall_min_improvement: float = 0.02
    stall_window: int = 200
    # ... while the LR is below this fraction of its peak ...
    stall_lr_fraction: float = 0.1
    # ... and the loss is still high: above this fraction of ln(num_classes) (also for vanishing gradients).
    high_loss_fraction: float = 0.5
    # Gradient norm exploding: this multiple of its recent median.
    grad_norm_explode_ratio: float = 20.0
    # Gradient norm vanishing: recent median below this fraction of its largest median, with the loss high.
    grad_norm_vanish_ratio: float = 1.0e-3
    # First batch's loss above this multiple of ln(num_classes): broken loss or init (summed: ~batch size).
    initial_loss_ratio: float = 3.0
    # amp_fp16: the GradScaler skipping this many steps in a row (non-finite gradients) stops the run.
    skipped_steps_limit: int = 25
    # Before a NaN, "the loss was climbing": smoothed loss up from its minimum by this fraction of ln(C) ...
    climbing_loss_rise: float = 0.1
    # ... or the last gradient norm this multiple of its median.
    climbing_grad_norm_ratio: float = 5.0


@dataclass
class RecipeConfig:
    """A whole training recipe."""

    # One line saying what this recipe is for.
    description: str = ""
    # What the recipe is sized for: "cpu (2 cores)", "1xT4 (Colab)", "4xT4 (g4dn.12xlarge)". The planner
    # (--plan) and the recipe checks read it for world size, GPU type, vCPUs and price (recipes/hardware.py).
    hardware: str = "cpu"
    # Composer's run name; stable names make autoresume find the run again.
    run_name: str | None = None
    seed: int = 17
    # Local folder or s3://bucket/prefix; "{run_name}" is filled in by Composer.
    save_folder: str = "runs/{run_name}"
    # Endpoint of an S3-compatible store (MinIO, R2, ...) for an s3:// save_folder; None: S3_ENDPOINT_URL or
    # AWS_ENDPOINT_URL if set, else AWS.
    s3_endpoint_url: str | None = None
    # Region of the s3:// save_folder's bucket; None: AWS_DEFAULT_REGION or the AWS config file.
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
    # fp32 | amp_fp16 | amp_bf16 (CPU runs fall back to fp32 and say so)
    precision: str = "fp32"
    # auto | cpu | gpu
    device: str = "auto"
    # Wrap the model in torch.compile.
    compile: bool = False
    # Composer's deterministic mode (bit-exact reruns; slower).
    deterministic: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    # Composer algorithms by name, each mapped to its keyword arguments ({} for defaults, null to switch off).
    algorithms: dict[str, Any] = field(default_factory=dict)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    doctor: DoctorConfig = field(default_factory=DoctorConfig)
