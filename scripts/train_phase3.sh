#!/usr/bin/env bash
# Phase 3: recipes/g4dn_12xlarge.yaml on four T4s with DDP (g4dn.12xlarge), relaunched after preemption. Usage: --help
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$repo/scripts/lib/common.sh"
# shellcheck source-path=SCRIPTDIR source=lib/train_phase.sh
source "$repo/scripts/lib/train_phase.sh"

PHASE=3
RECIPE=g4dn_12xlarge
INSTANCE="four T4s with DDP (g4dn.12xlarge)"
GPUS=4
# Empty: the recipe sets run_name (and autoresume) itself; --run-name overrides it.
RUN_NAME=""

train_phase_main "$@"
