"""Check that the installed torch can compute on every GPU, the last step of scripts/aws_setup.sh.

nvidia-smi only proves the driver sees the GPUs; a torch build whose CUDA is newer than the driver, or a machine
without GPUs, shows up only when torch runs a kernel. So this runs a small fp16 matmul on each device (what AMP
training does) and prints each GPU's name and memory, exiting 1 with the reason when something is wrong.
"""

from __future__ import annotations

import argparse
import sys

import torch


def check(expected: int | None) -> list[str]:
    """One line per working GPU; raises RuntimeError saying what is missing or broken."""
    if not torch.cuda.is_available():
        raise RuntimeError(
            f"torch {torch.__version__} (built for CUDA {torch.version.cuda}) sees no GPU: on a GPU instance, "
            "check `nvidia-smi` (no driver: use a Deep Learning AMI) and that the driver supports this CUDA"
        )
    count = torch.cuda.device_count()
    if expected is not None and count != expected:
        raise RuntimeError(
            f"torch sees {count} GPU(s), {expected} expected (g4dn.xlarge: 1, g4dn.12xlarge: 4)"
        )
    lines = []
    for index in range(count):
        properties = torch.cuda.get_device_properties(index)
        matrix = torch.ones(256, 256, device=f"cuda:{index}", dtype=torch.float16)
        total = (matrix @ matrix).float().sum().item()
        if total != 256.0**3:
            raise RuntimeError(f"GPU {index} ({properties.name}) computed a wrong matmul: {total}")
        lines.append(
            f"GPU {index}: {properties.name}, {properties.total_memory / 2**30:.1f} GiB, "
            f"compute capability {properties.major}.{properties.minor}: fp16 matmul ok"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Print each GPU, or the reason there is none, and exit 0 or 1 accordingly."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expect", type=int, help="the number of GPUs this machine should have")
    args = parser.parse_args(argv)
    try:
        lines = check(args.expect)
    except RuntimeError as error:
        print(f"check_gpu: error: {error}", file=sys.stderr)
        return 1
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
