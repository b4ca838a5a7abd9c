#!/usr/bin/env bash
# Phase 2: recipes/g4dn_xlarge.yaml on one T4 (g4dn.xlarge), relaunched after preemption. Usage: --help
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$repo/scripts/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/train_phase.sh
source "$repo/scripts/lib/train_phase.sh"

PHASE=2
RECIPE=g4dn_xlarge
INSTANCE="one T4 (g4dn.xlarge)"
GPUS=1
# The recipe names no run; a fixed name is what lets a relaunch find its checkpoints.
RUN_NAME=resnet50-imagenet100-g4dnxl

train_phase_main "$@"
