#!/usr/bin/env bash
# Relaunch a train.py command while it exits with status 75 (preempted: checkpoint saved, relaunch to resume).
# Usage and the EC2 spot watcher: scripts/run_until_done.sh --help
set -euo pipefail

readonly PREEMPTED=75
# The instance metadata service; the AWS SDKs read the same variable (http://[fd00:ec2::254] on IPv6-only instances).
readonly IMDS=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}

usage() {
    cat <<'EOF'
Usage: scripts/run_until_done.sh [--max-relaunches N] [--watch-spot] [--spot-poll-seconds S] [--dry-run] [--]
       COMMAND [ARG...]

Runs COMMAND, a train.py command line, and runs it again unchanged each time it exits with status 75:
train.py's "preempted at epoch E batch B; checkpoint saved to ...", after a SIGTERM. Any other status ends
the loop and becomes this script's status (75 if the relaunches run out). The command must resume when
relaunched: a fixed run_name and autoresume=true, on the command line or in the recipe (g4dn_12xlarge sets both).

A SIGTERM or SIGINT sent to this script is passed to COMMAND's whole process group as SIGTERM (as systemd and
Slurm do); COMMAND saves at its next batch boundary and exits 75, and this script then stops instead of
relaunching, since whatever sent the signal wants the machine back.

Options:
  --max-relaunches N  relaunch at most N times (default 10)
  --watch-spot        on EC2, poll the instance metadata service every 5 s for a spot interruption notice
                      and on a notice send COMMAND a SIGTERM (two minutes before the instance stops);
                      AWS_EC2_METADATA_SERVICE_ENDPOINT changes the address, as in the AWS SDKs
  --spot-poll-seconds S
                      with --watch-spot, poll every S seconds instead (default 5, as AWS suggests)
  --dry-run           print what would run, and run nothing
  -h, --help          this text

Examples:
  scripts/run_until_done.sh --watch-spot -- composer -n 4 train.py g4dn_12xlarge
  scripts/run_until_done.sh -- .venv/bin/python train.py smoke run_name=smoke-spot autoresume=true

The spot interruption notice (IMDSv2). Until AWS schedules an interruption the metadata path answers 404; then
200 with {"action": "terminate", "time": "..."}, about two minutes ahead:
  TOKEN=$(curl -s -X PUT http://169.254.169.254/latest/api/token \
      -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')
  curl -s -o /dev/null -w '%{http_code}\n' -H "X-aws-ec2-metadata-token: $TOKEN" \
      http://169.254.169.254/latest/meta-data/spot/instance-action

The watcher --watch-spot runs, for a training process started some other way (PID: its process id; for
`composer -n 4` the launcher's, whose SIGTERM reaches every rank):
  while sleep 5; do
    TOKEN=$(curl -s -X PUT http://169.254.169.254/latest/api/token \
        -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') || continue
    if curl -sf -o /dev/null -H "X-aws-ec2-metadata-token: $TOKEN" \
        http://169.254.169.254/latest/meta-data/spot/instance-action; then
      kill -TERM "$PID"; break
    fi
  done

Under `composer -n N`, Composer's launcher sends SIGKILL 30 s after it starts stopping the ranks (its
CLEANUP_TIMEOUT), so the next batch, the checkpoint and its upload must fit in 30 s (seconds for ResNet-50).
EOF
}

say() {
    echo "run_until_done: $*" >&2
}

max_relaunches=10
watch_spot=false
spot_poll_seconds=5
dry_run=false
while (($# > 0)); do
    case "$1" in
    --max-relaunches)
        [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || {
            say "--max-relaunches needs a whole number (e.g. --max-relaunches 10)"
            exit 2
        }
        max_relaunches=$2
        shift 2
        ;;
    --watch-spot) watch_spot=true && shift ;;
    --spot-poll-seconds)
        [[ $# -ge 2 && "$2" =~ ^[0-9]*[.]?[0-9]+$ && ! "$2" =~ ^[0.]+$ ]] || {
            say "--spot-poll-seconds needs a number of seconds above 0 (e.g. --spot-poll-seconds 5)"
            exit 2
        }
        spot_poll_seconds=$2
        shift 2
        ;;
    --dry-run) dry_run=true && shift ;;
    -h | --help)
        usage
        exit 0
        ;;
    --) shift && break ;;
    -*)
        say "unknown option $1 (see --help)"
        exit 2
        ;;
    *) break ;;
    esac
done
if (($# == 0)); then
    say "no command given; e.g. scripts/run_until_done.sh -- .venv/bin/python train.py smoke (see --help)"
    exit 2
fi
command=("$@")
printf -v shown '%q ' "${command[@]}"
shown=${shown% }
if $watch_spot && ! command -v curl >/dev/null; then
    say "--watch-spot needs curl to reach the instance metadata service; install it or drop --watch-spot"
    exit 2
fi

if $dry_run; then
    say "would run: $shown"
    say "and relaunch it while it exits $PREEMPTED, at most $max_relaunches times"
    if $watch_spot; then
        say "and send it SIGTERM on an EC2 spot interruption notice ($IMDS/latest/meta-data/spot/instance-action)"
    fi
    exit 0
fi

# Job control: each background job gets its own process group, so a signal reaches COMMAND's children too.
set -m
child=""
stopping=false
watcher=""

# shellcheck disable=SC2329  # called by the trap below
stop_command() {
    stopping=true
    if [[ -n "$child" ]] && kill -0 "$child" 2>/dev/null; then
        say "passing SIGTERM to the command (process group $child); it saves at its next batch boundary"
        kill -TERM -- "-$child" 2>/dev/null || true
    fi
}
trap stop_command TERM INT

watch_for_spot_notice() {
    local token
    while sleep "$spot_poll_seconds"; do
        token=$(curl -sf --max-time 2 -X PUT "$IMDS/latest/api/token" \
            -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') || continue
        if curl -sf --max-time 2 -o /dev/null -H "X-aws-ec2-metadata-token: $token" \
            "$IMDS/latest/meta-data/spot/instance-action"; then
            say "EC2 spot interruption notice received"
            kill -TERM "$$"
            return
        fi
    done
}

if $watch_spot; then
    watch_for_spot_notice &
    watcher=$!
    say "watching $IMDS/latest/meta-data/spot/instance-action every ${spot_poll_seconds} s (process $watcher)"
fi

status=0
launch=0
while ! $stopping; do
    launch=$((launch + 1))
    say "launch $launch (at most $((max_relaunches + 1))): $shown"
    "${command[@]}" &
    child=$!
    # `wait` returns 128+N early when a trapped signal N arrives, the command still running or its status not yet
    # read. So a status over 128 is read again: bash keeps an exited command's status until it is waited for, and
    # answers 127 once it has been (then the 128+N was the command's own). Asking `kill -0` instead lost a 75 to
    # 143 when the command exited between the two calls.
    status=0
    while true; do
        code=0
        wait "$child" || code=$?
        ((code == 127)) && break
        status=$code
        ((code > 128)) || break
    done
    child=""
    if ((status != PREEMPTED)); then
        say "the command exited with status $status; done"
        break
    fi
    if $stopping; then
        say "the command saved a checkpoint and stopped (status $PREEMPTED); not relaunching: this script was asked to stop"
        break
    fi
    if ((launch > max_relaunches)); then
        say "preempted again (status $PREEMPTED) and $max_relaunches relaunches used; stopping"
        break
    fi
    say "preempted (status $PREEMPTED): checkpoint saved; relaunching to resume"
done

if [[ -n "$watcher" ]]; then
    kill -- "-$watcher" 2>/dev/null || true
fi
exit "$status"
