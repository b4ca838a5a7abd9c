#!/usr/bin/env bash
# Make a fresh AWS GPU instance (Deep Learning AMI) ready to train: a venv, the project installed, GPUs checked.
# Usage: scripts/aws_setup.sh --help
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$repo/scripts/lib/common.sh"

# Where the Deep Learning AMIs keep their Python: /opt/pytorch (the current PyTorch DLAMIs' python_location),
# /opt/conda/envs/pytorch (older conda-based ones); then the system's. The project needs 3.10-3.12.
readonly PYTHON_CANDIDATES=(/opt/pytorch/bin/python3 /opt/conda/envs/pytorch/bin/python python3.12 python3.11
    python3.10 python3)

usage() {
    cat <<'EOF'
Usage: scripts/aws_setup.sh [--gpus N] [--extras NAME] [--python PYTHON] [--venv DIR] [--skip-gpu-check]
                           [--dry-run]

On a fresh GPU instance (a Deep Learning AMI on g4dn.xlarge or g4dn.12xlarge), from the repository root:
  1. create the venv DIR (default .venv) with the AMI's Python (3.10-3.12), unless it exists;
  2. pip install -e . into it (Composer 0.32.1 brings its pinned torch 2.7.0 with CUDA: a few GB);
  3. nvidia-smi: the driver sees the GPUs (name, memory, driver version);
  4. scripts/check_gpu.py: torch runs an fp16 matmul on each GPU, and prints its name and memory.
Rerunning is safe: an existing venv is reused and pip skips what is installed.

Options:
  --python PYTHON   the interpreter for the venv (default: the first of /opt/pytorch/bin/python3,
                    /opt/conda/envs/pytorch/bin/python, python3.12, python3.11, python3.10, python3
                    that is 3.10-3.12)
  --venv DIR        the venv to create or reuse (default .venv, the one the other scripts use)
  --extras NAME     also install the project's optional extras, e.g. test (pip install -e '.[test]')
  --gpus N          fail unless torch sees exactly N GPUs (g4dn.xlarge: 1, g4dn.12xlarge: 4)
  --skip-gpu-check  install only (a CPU instance, or building an image)
  --dry-run         print each step's command, run nothing (needs no GPU)
  -h, --help        this text

Next: scripts/setup_imagenet.sh --help (the data), then scripts/train_phase2.sh or scripts/train_phase3.sh.
EOF
}

python=""
venv=.venv
extras=""
gpus=""
gpu_check=true
while (($# > 0)); do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --dry-run) dry_run=true ;;
    --skip-gpu-check) gpu_check=false ;;
    --python | --venv | --extras | --gpus)
        need_value "$1" $# "${2:-}"
        case "$1" in
        --python) python=$2 ;;
        --venv) venv=${2%/} ;;
        --extras) extras=$2 ;;
        --gpus) need_number "$1" "$2" && gpus=$2 ;;
        esac
        shift
        ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done

supported_python() {
    "$1" -c 'import sys; sys.exit(not (3, 10) <= sys.version_info[:2] <= (3, 12))' 2>/dev/null
}

cd "$repo"
if $dry_run; then
    say "dry run: printing the commands, running none"
fi

if [[ -x "$venv/bin/python" ]]; then
    say "reusing the venv $venv ($("$venv/bin/python" --version 2>&1))"
else
    if [[ -z "$python" ]]; then
        for candidate in "${PYTHON_CANDIDATES[@]}"; do
            if command -v "$candidate" >/dev/null && supported_python "$candidate"; then
                python=$(command -v "$candidate")
                break
            fi
        done
        if [[ -z "$python" ]]; then
            $dry_run || die "no Python 3.10-3.12 found (tried ${PYTHON_CANDIDATES[*]}); pass --python"
            python="<python 3.10-3.12>"
        fi
    elif ! $dry_run && ! supported_python "$python"; then
        die "--python $python is not Python 3.10-3.12 (the project supports those)"
    fi
    say "creating the venv $venv with $python"
    run "$python" -m venv "$venv"
fi
run "$venv/bin/python" -m pip install --upgrade pip
run "$venv/bin/python" -m pip install -e ".${extras:+[$extras]}"

if $gpu_check; then
    if ! $dry_run; then
        need_command nvidia-smi "no NVIDIA driver: use a GPU instance with a Deep Learning AMI, or pass --skip-gpu-check"
    fi
    run nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
    run "$venv/bin/python" scripts/check_gpu.py ${gpus:+--expect "$gpus"}
fi
if ! command -v aws >/dev/null; then
    say "note: no aws CLI on PATH; scripts/setup_imagenet.sh needs it ($venv/bin/pip install awscli)"
fi
if $dry_run; then
    say "dry run: nothing was installed or checked"
else
    say "ready. Next: scripts/setup_imagenet.sh --help, then scripts/train_phase2.sh or scripts/train_phase3.sh"
fi
