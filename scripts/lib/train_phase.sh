# What scripts/train_phase2.sh and scripts/train_phase3.sh share: options, the train.py command line, and its
# relaunch by scripts/run_until_done.sh. Sourced after lib/common.sh; the phase script sets PHASE, RECIPE,
# INSTANCE, GPUS (1: python train.py; more: composer -n GPUS train.py) and RUN_NAME (empty: the recipe's), then
# calls train_phase_main "$@".

# shellcheck shell=bash

train_phase_usage() {
    local launcher="python train.py" default_name="the recipe's run_name"
    if ((GPUS > 1)); then
        launcher="composer -n $GPUS train.py"
    fi
    if [[ -n "$RUN_NAME" ]]; then
        default_name=$RUN_NAME
    fi
    cat <<EOF
Usage: scripts/train_phase$PHASE.sh [options] [--] [KEY=VALUE ...]

Phase $PHASE: recipes/$RECIPE.yaml on $INSTANCE.
Trains through scripts/run_until_done.sh, which relaunches the run while it exits 75 (preempted after saving a
checkpoint). Every launch is the same command with a fixed run name and autoresume=true, so it continues from
the newest checkpoint, on this instance or (with an s3:// --save-folder) on a fresh one:

  $launcher $RECIPE [run_name=NAME] autoresume=true [data.path=DIR] [save_folder=URI] [KEY=VALUE ...]

Options:
  --data-path DIR       ImageNet as DIR/train/<wnid>/ and DIR/val/<wnid>/ (default: the recipe's, /data/imagenet,
                        where scripts/setup_imagenet.sh mounts it)
  --save-folder URI     checkpoints: s3://BUCKET/PREFIX/{run_name}, which a new spot instance resumes from,
                        or a folder (default: the recipe's, runs/{run_name} on this instance)
  --run-name NAME       the fixed run name autoresume finds checkpoints by (default: $default_name)
  --watch-spot          poll the EC2 spot interruption notice; on a notice the run saves and stops
  --max-relaunches N    relaunch at most N times (default 10)
  --dry-run             print the command and what run_until_done.sh would do; run nothing
  -h, --help            this text
  KEY=VALUE ...         recipe overrides (omegaconf dotlist, as train.py takes them); they come last and win

Examples (BUCKET: yours):
  scripts/train_phase$PHASE.sh --dry-run
  scripts/train_phase$PHASE.sh --save-folder s3://BUCKET/resnet50/{run_name} --watch-spot
  scripts/train_phase$PHASE.sh max_duration=2ep logging.wandb=true
EOF
}

train_phase_main() {
    local data_path="" save_folder="" run_name=$RUN_NAME watch_spot=false max_relaunches=10 extra=()
    while (($# > 0)); do
        case "$1" in
        -h | --help)
            train_phase_usage
            exit 0
            ;;
        --dry-run) dry_run=true ;;
        --watch-spot) watch_spot=true ;;
        --data-path | --save-folder | --run-name | --max-relaunches)
            need_value "$1" $# "${2:-}"
            case "$1" in
            --data-path) data_path=$2 ;;
            --save-folder) save_folder=$2 ;;
            --run-name) run_name=$2 ;;
            --max-relaunches) need_number "$1" "$2" && max_relaunches=$2 ;;
            esac
            shift
            ;;
        --)
            shift
            extra+=("$@")
            break
            ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) extra+=("$1") ;;
        esac
        shift
    done
    local override
    for override in "${extra[@]}"; do
        [[ "$override" == [A-Za-z_]*=* ]] || die "'$override' is not an option or a KEY=VALUE recipe override (see --help)"
    done

    local overrides=()
    if [[ -n "$run_name" ]]; then
        overrides+=("run_name=$run_name")
    fi
    overrides+=(autoresume=true)
    if [[ -n "$data_path" ]]; then
        overrides+=("data.path=$data_path")
    fi
    if [[ -n "$save_folder" ]]; then
        overrides+=("save_folder=$save_folder")
    fi
    overrides+=("${extra[@]}")

    local venv=${VENV:-.venv} command
    if ((GPUS > 1)); then
        command=("$venv/bin/composer" -n "$GPUS" train.py "$RECIPE" "${overrides[@]}")
    else
        command=("$venv/bin/python" train.py "$RECIPE" "${overrides[@]}")
    fi
    local wrapper=(scripts/run_until_done.sh --max-relaunches "$max_relaunches")
    if $watch_spot; then
        wrapper+=(--watch-spot)
    fi
    if $dry_run; then
        wrapper+=(--dry-run)
    fi

    cd "$(dirname "${BASH_SOURCE[0]}")/../.." || exit 1
    if ! $dry_run; then
        [[ -x "${command[0]}" ]] || die "${command[0]} not found: run scripts/aws_setup.sh first (or set VENV)"
        need_command nvidia-smi "phase $PHASE trains on $INSTANCE's GPUs; run it there (scripts/aws_setup.sh checks them)"
        local found
        found=$(nvidia-smi -L | grep -c '^GPU ' || true)
        ((found >= GPUS)) || die "phase $PHASE needs $GPUS GPU(s) ($INSTANCE); nvidia-smi lists $found"
    fi
    if $watch_spot && [[ "$save_folder" != s3://* ]]; then
        say "warning: checkpoints stay on this instance's disk; after a spot interruption a new instance cannot" \
            "resume from them. Pass --save-folder s3://BUCKET/PREFIX/{run_name}"
    fi
    say "phase $PHASE: recipes/$RECIPE.yaml on $GPUS GPU(s), run name ${run_name:-as in the recipe}," \
        "checkpoints in ${save_folder:-the save_folder of the recipe}"
    echo "+ $(shell_line "${wrapper[@]}" -- "${command[@]}")" >&2
    exec "${wrapper[@]}" -- "${command[@]}"
}
