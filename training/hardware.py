"""What a recipe's ``hardware`` string means: how many GPUs of which type, on which machine, at what price.

The tables here are data with a source for every row, so a planned wall time or cost can be traced to a
published figure. Throughputs are ResNet-50 training images per second per GPU at 224 px; every row says
whether the figure was measured by its source or derived from measured figures (and how).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NVIDIA_PYTORCH_RN50 = (
    "https://github.com/NVIDIA/DeepLearningExamples/blob/master/PyTorch/Classification/ConvNets/resnet50v1.5/"
    "README.md (pytorch-21.03 NGC container)"
)
LAMBDA_PYTORCH = (
    "https://github.com/lambdal/deeplearning-benchmark/blob/master/pytorch/pytorch-train-throughput-fp32.csv "
    "and pytorch-train-throughput-fp16.csv (resnet50 column, 1 GPU; NVIDIA's DeepLearningExamples model)"
)
AWS_ON_DEMAND = "https://aws.amazon.com/ec2/pricing/on-demand/ (Linux, us-east-1)"


@dataclass(frozen=True)
class AlternativeThroughput:
    """A second derivation of a GPU's training figures from other measured sources, where the first is derived
    too: the planner shows the range between the two rather than one figure as if it were measured."""

    fp32_images_per_second: float
    amp_images_per_second: float
    source: str


@dataclass(frozen=True)
class GpuType:
    """One GPU model: memory, and published ResNet-50 training throughput at 224 px."""

    name: str
    memory_gib: float
    memory_source: str
    # Images per second per GPU, training, 224 px: fp32 (TF32 on Ampere and later, PyTorch's default for
    # convolutions) and automatic mixed precision (fp16).
    fp32_images_per_second: float
    amp_images_per_second: float
    # "measured" (the source ran ResNet-50 training) or "derived" (computed from measured figures; see
    # source).
    kind: str
    source: str
    # Tensor cores for bfloat16 (Ampere and later); without them amp_bf16 runs no faster than fp32.
    has_bf16_tensor_cores: bool
    # For a derived row: the same derivation from another source's measurements (None for a measured row).
    alternative: AlternativeThroughput | None = None


# NVIDIA publishes T4 ResNet-50 figures for inference only. Training is derived from them with the ratio of
# training to inference throughput that the same README reports for the V100 16GB at batch 256:
# fp32 415 x 367/1261 = 121, AMP 1198 x 1200/3382 = 425. Lambda's measured V100 16GB training throughput with
# NVIDIA's same model (369 fp32, 833 fp16) in place of NVIDIA's gives fp32 415 x 369/1261 = 121 and AMP
# 1198 x 833/3382 = 295: the AMP figure is uncertain by that much, and the planner shows both.
GPU_TYPES: dict[str, GpuType] = {
    gpu.name: gpu
    for gpu in (
        GpuType(
            "T4", 15.0, "16 GB GDDR6, 15360 MiB usable with ECC on (nvidia-smi)", 121, 425, "derived",
            f"{NVIDIA_PYTORCH_RN50}: T4 inference at batch 256 (415 img/s fp32, 1198 AMP) x the V100 16GB "
            "training/inference ratio in the same README (367/1261 fp32, 1200/3382 AMP)",
            False,
            AlternativeThroughput(
                121, 295,
                f"{NVIDIA_PYTORCH_RN50}: T4 inference (415 fp32, 1198 AMP) x Lambda's measured V100 16GB training "
                f"throughput over NVIDIA's V100 inference (369/1261 fp32, 833/3382 AMP) [{LAMBDA_PYTORCH}: "
                "LambdaCloud V100 16GB]",
            ),
        ),
        GpuType(
            "V100", 16.0, "V100 16 GB (DGX-1 16G)", 367, 1200, "measured",
            f"{NVIDIA_PYTORCH_RN50}: training performance, NVIDIA DGX-1 16GB, 1 GPU", False,
        ),
        GpuType(
            "A10", 24.0, "A10 24 GB GDDR6", 349, 638, "measured", f"{LAMBDA_PYTORCH}: LambdaCloud A10", True,
        ),
        GpuType(
            "A100", 80.0, "A100 80 GB (DGX A100)", 938, 2470, "measured",
            f"{NVIDIA_PYTORCH_RN50}: training performance, NVIDIA DGX A100 80GB, 1 GPU (TF32 / AMP)", True,
        ),
        GpuType(
            "H100", 80.0, "H100 80 GB SXM5", 1753, 2616, "measured", f"{LAMBDA_PYTORCH}: H100 80GB SXM5",
            True,
        ),
    )
}  # fmt: skip

# Multi-GPU data parallelism does not scale perfectly. NVIDIA's PyTorch ResNet-50 reaches 6.93x on 8 V100s in
# AMP (8322 / 1200 img/s; NVLink), the weakest strong scaling in that README: assumed for any multi-GPU run.
MULTI_GPU_EFFICIENCY = 8322 / (8 * 1200)
MULTI_GPU_EFFICIENCY_SOURCE = (
    f"{NVIDIA_PYTORCH_RN50}: training performance, DGX-1 16GB, 8 GPUs AMP 8322 img/s vs 1 GPU 1200"
)

# A whole run takes longer than its images divided by a benchmark's throughput: data loading, evaluation,
# checkpoints and start-up. NVIDIA's README publishes both for the same runs: each row's "Training Time (90E)"
# against 90 x 1,281,167 images at that row's throughput. (GPU, GPUs, precision): (img/s, hours).
NVIDIA_END_TO_END_RUNS: dict[tuple[str, int, str], tuple[float, float]] = {
    ("A100 80GB", 1, "TF32"): (938, 36), ("A100 80GB", 1, "AMP"): (2470, 14),
    ("A100 80GB", 8, "TF32"): (7248, 5), ("A100 80GB", 8, "AMP"): (16621, 3),
    ("V100 16GB", 1, "FP32"): (367, 92), ("V100 16GB", 1, "AMP"): (1200, 29),
    ("V100 16GB", 8, "FP32"): (2855, 12), ("V100 16GB", 8, "AMP"): (8322, 5),
    ("V100 32GB", 1, "FP32"): (356, 95), ("V100 32GB", 1, "AMP"): (1156, 30),
    ("V100 32GB", 8, "FP32"): (2766, 13), ("V100 32GB", 8, "AMP"): (8056, 5),
}  # fmt: skip
_END_TO_END = [hours * 3600 * rate / (90 * 1_281_167) for rate, hours in NVIDIA_END_TO_END_RUNS.values()]
# The range a run's wall time falls in, as multiples of the planner's throughput-based estimate: 1.05x to 1.56x.
END_TO_END_RANGE = (min(_END_TO_END), max(_END_TO_END))
END_TO_END_SOURCE = (
    f"{NVIDIA_PYTORCH_RN50}: training performance tables, 'Training Time (90E)' against the throughput columns "
    f"of the same rows ({len(_END_TO_END)} runs: {END_TO_END_RANGE[0]:.2f}x to {END_TO_END_RANGE[1]:.2f}x)"
)


@dataclass(frozen=True)
class Instance:
    """A machine one can rent (or use free): its GPUs, vCPUs and hourly price."""

    name: str
    gpu: str
    gpu_count: int
    vcpus: int
    usd_per_hour: float
    price_source: str
    # An EC2 instance type (its name is the type): budget.usd_per_hour=spot can read its spot price.
    on_aws: bool = True

    @property
    def aws_instance_type(self) -> str | None:
        """The EC2 instance type, for ``describe_spot_price_history`` (None off AWS)."""
        return self.name if self.on_aws else None


INSTANCES: dict[str, Instance] = {
    instance.name: instance
    for instance in (
        Instance("g4dn.xlarge", "T4", 1, 4, 0.526, AWS_ON_DEMAND),
        Instance("g4dn.12xlarge", "T4", 4, 48, 3.912, AWS_ON_DEMAND),
        Instance("p3.2xlarge", "V100", 1, 8, 3.06, AWS_ON_DEMAND),
        Instance(
            "Colab", "T4", 1, 2, 0.0,
            "https://research.google.com/colaboratory/faq.html (free tier: a T4 when available, usage "
            "limits apply)",
            on_aws=False,
        ),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Hardware:
    """A parsed ``hardware`` string: ``gpu`` is None on a CPU, ``instance`` when none is named or assumed."""

    text: str
    device: str
    gpu_count: int
    gpu: GpuType | None
    instance: Instance | None
    vcpus: int | None
    # How the string was read, where something had to be assumed.
    notes: tuple[str, ...]

    @property
    def world_size(self) -> int:
        """Training processes: one per GPU, one on a CPU."""
        return self.gpu_count if self.device == "gpu" else 1


GPU_PATTERN = re.compile(r"^\s*(\d+)\s*[x×]\s*([A-Za-z0-9]+)\s*(?:\((.*)\))?\s*$")
CPU_PATTERN = re.compile(r"^\s*cpu\s*(?:\((?:(\d+)\s*cores?)?.*\))?\s*$", re.IGNORECASE)


def parse_hardware(text: str) -> Hardware | None:
    """Read ``"4xT4 (g4dn.12xlarge)"``, ``"1xT4 (Colab)"``, ``"1xT4"``, ``"cpu (2 cores)"`` or ``"cpu"``.

    Returns None for a string in no known form (the schema keeps ``hardware`` free text).
    """
    cpu = CPU_PATTERN.match(text)
    if cpu:
        cores = int(cpu.group(1)) if cpu.group(1) else None
        return Hardware(text, "cpu", 0, None, None, cores, ())
    match = GPU_PATTERN.match(text)
    if not match:
        return None
    count, gpu_name, label = int(match.group(1)), match.group(2), (match.group(3) or "").strip()
    gpu = next((gpu for name, gpu in GPU_TYPES.items() if name.lower() == gpu_name.lower()), None)
    if gpu is None:
        return None
    instance = next(
        (item for name, item in INSTANCES.items() if label and name.lower() in label.lower()), None
    )
    notes: list[str] = []
    if instance is None:
        instance = _cheapest_instance(gpu.name, count)
        if instance is not None:
            notes.append(f"no machine named in '{text}'; assumed {instance.name}, the cheapest in the table")
    elif (instance.gpu, instance.gpu_count) != (gpu.name, count):
        notes.append(f"{instance.name} has {instance.gpu_count}x{instance.gpu}, not {count}x{gpu.name}")
    return Hardware(text, "gpu", count, gpu, instance, instance.vcpus if instance else None, tuple(notes))


def _cheapest_instance(gpu: str, count: int) -> Instance | None:
    """The cheapest priced instance with exactly ``count`` GPUs of this type (free ones are not assumed)."""
    matching = [i for i in INSTANCES.values() if (i.gpu, i.gpu_count) == (gpu, count) and i.usd_per_hour > 0]
    return min(matching, key=lambda instance: instance.usd_per_hour, default=None)


def known_forms() -> str:
    """The forms ``parse_hardware`` reads, for error messages."""
    return (
        f"'cpu (N cores)', or 'NxGPU (machine)' with GPU one of {', '.join(GPU_TYPES)} and machine one of "
        f"{', '.join(INSTANCES)} (optional)"
    )
