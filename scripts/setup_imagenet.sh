#!/usr/bin/env bash
# ImageNet on an EBS volume: make one (setup), keep it as a snapshot (snapshot), mount a copy elsewhere (ebs-only).
# Usage: scripts/setup_imagenet.sh --help
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$repo/scripts/lib/common.sh"

# The instance metadata service; the AWS SDKs read the same variable (http://[fd00:ec2::254] on IPv6-only instances).
readonly IMDS=${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254}
readonly SNAPSHOT_POLL_SECONDS=30
# AWS CLI v2 pipes output to a pager on a terminal, which would stop the script at every call.
export AWS_PAGER=""

usage() {
    cat <<'EOF'
Usage: scripts/setup_imagenet.sh setup    (--s3-uri s3://BUCKET/PREFIX | --from PATH) [options]
       scripts/setup_imagenet.sh snapshot [--volume-id VOLUME] [options]
       scripts/setup_imagenet.sh ebs-only [--snapshot-id SNAPSHOT] [options]

Puts ImageNet where the GPU recipes read it: MOUNT/train/<wnid>/*.JPEG and MOUNT/val/<wnid>/*.JPEG on an EBS gp3
volume mounted at MOUNT (default /data/imagenet, the recipes' data.path), on the EC2 instance this runs on.

  setup     create an empty gp3 volume in this instance's availability zone, attach it, format it (ext4; only a
            volume with no filesystem, which it just created) and mount it; fetch ImageNet from S3 (with
            scripts/sync_s3.py, resumable) or take it from a local PATH; lay it out with
            scripts/layout_imagenet.py, which reads image-net.org's ILSVRC2012_img_train.tar and
            ILSVRC2012_img_val.tar (+ LOC_val_solution.csv, val_labels.txt or the devkit), Kaggle's
            imagenet-object-localization-challenge.zip or its unzipped tree, or train/ and val/ folders.
            If MOUNT is already a mounted filesystem, the volume steps are skipped: rerun the same command
            after an interruption and it carries on (the sync resumes; the layout is redone).
  snapshot  snapshot the volume (the one mounted at MOUNT unless --volume-id), frozen for a consistent copy,
            tagged Name=NAME, and wait until it is complete; --delete-volume then removes the volume.
  ebs-only  on a new instance: create a gp3 volume from the snapshot (--snapshot-id, or the newest completed
            snapshot of yours tagged Name=NAME), attach it, mount it at MOUNT. No download, no formatting.
            The volume is deleted when the instance terminates (--keep-on-termination keeps it).

Options:
  --region REGION            AWS region of this instance (default: $AWS_REGION, then $AWS_DEFAULT_REGION)
  --mount-point DIR          where the volume is mounted (default /data/imagenet)
  --name NAME                Name tag of the volume and snapshot (default imagenet)
  --device NAME              device name given to attach-volume (default /dev/sdf)
  --iops N                   gp3 IOPS (default 3000, the free baseline)
  --throughput MIBS          gp3 throughput in MiB/s (default 250; baseline 125; 4xT4 read ~220 MB/s of JPEGs)
  --dry-run                  print the AWS calls and commands, run nothing (needs no aws, curl or root)
  -h, --help                 this text
setup:
  --s3-uri s3://BUCKET/PREFIX   fetch everything under the prefix (the archives, or a laid-out tree)
  --from PATH                a local folder (or Kaggle's zip) holding ImageNet in one of the forms above
  --size GIB                 volume size (default 320: the 144 GiB of archives and their 144 GiB unpacked;
                             200 is enough when --download-dir is on other storage)
  --download-dir DIR         where --s3-uri lands before the layout (default MOUNT/.downloads); deleted after
                             a complete layout. EBS snapshots copy written blocks, not files, so downloads
                             deleted from the volume can still take space in its snapshot: on a g4dn.12xlarge
                             put them on the instance's NVMe (/opt/dlami/nvme on a Deep Learning AMI)
  --keep-downloads           keep --download-dir after the layout
snapshot:
  --volume-id VOLUME         the volume to snapshot (default: the one mounted at MOUNT)
  --no-wait                  return once the snapshot has started (it completes in the background)
  --delete-volume            after the snapshot completes, unmount, detach and delete the volume
ebs-only:
  --snapshot-id SNAPSHOT     the snapshot to restore (default: your newest completed one tagged Name=NAME)
  --size GIB                 volume size (default: the snapshot's)
  --initialization-rate MIBS load the snapshot at a steady 100-300 MiB/s (charged). Without it, blocks come
                             from S3 on first read, so the first epoch reads slower than the rest
  --keep-on-termination      keep the volume when the instance terminates (default: deleted with it)

Examples (REGION, BUCKET: yours; credentials: an instance role or the usual AWS variables):
  scripts/setup_imagenet.sh setup --region REGION --s3-uri s3://BUCKET/imagenet --dry-run
  scripts/setup_imagenet.sh setup --region REGION --from ~/imagenet-object-localization-challenge.zip
  scripts/setup_imagenet.sh snapshot --region REGION --delete-volume
  scripts/setup_imagenet.sh ebs-only --region REGION             # on the g4dn.12xlarge
Needs on the instance: the aws CLI, curl, sudo (or root), and for setup the project's .venv
(scripts/aws_setup.sh; PYTHON=... picks another interpreter with boto3 and the project installed).
EOF
}

subcommand=""
region=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
mount_point=/data/imagenet
name=imagenet
device_name=/dev/sdf
iops=3000
throughput=250
dry_run=false
s3_uri=""
from=""
size=""
download_dir=""
keep_downloads=false
volume_id=""
wait_snapshot=true
delete_volume=false
snapshot_id=""
initialization_rate=""
delete_on_termination=true
given=()
instance_id=""
zone=""
device=""

while (($# > 0)); do
    case "$1" in
    -h | --help)
        usage
        exit 0
        ;;
    --dry-run) dry_run=true ;;
    --keep-downloads | --no-wait | --delete-volume | --keep-on-termination)
        given+=("$1")
        case "$1" in
        --keep-downloads) keep_downloads=true ;;
        --no-wait) wait_snapshot=false ;;
        --delete-volume) delete_volume=true ;;
        --keep-on-termination) delete_on_termination=false ;;
        esac
        ;;
    --region | --mount-point | --name | --device | --iops | --throughput | --s3-uri | --from | --size | \
        --download-dir | --volume-id | --snapshot-id | --initialization-rate)
        need_value "$1" $# "${2:-}"
        given+=("$1")
        case "$1" in
        --region) region=$2 ;;
        --mount-point) mount_point=${2%/} ;;
        --name) name=$2 ;;
        --device) device_name=$2 ;;
        --iops) need_number "$1" "$2" && iops=$2 ;;
        --throughput) need_number "$1" "$2" && throughput=$2 ;;
        --s3-uri) s3_uri=$2 ;;
        --from) from=$2 ;;
        --size) need_number "$1" "$2" && size=$2 ;;
        --download-dir) download_dir=${2%/} ;;
        --volume-id) volume_id=$2 ;;
        --snapshot-id) snapshot_id=$2 ;;
        --initialization-rate) need_number "$1" "$2" && initialization_rate=$2 ;;
        esac
        shift
        ;;
    setup | snapshot | ebs-only)
        [[ -z "$subcommand" ]] || die "one subcommand at a time, not '$subcommand' and '$1'"
        subcommand=$1
        ;;
    *) die "unknown argument '$1'; the subcommands are setup, snapshot and ebs-only (see --help)" ;;
    esac
    shift
done

[[ -n "$subcommand" ]] || die "no subcommand: setup, snapshot or ebs-only (see --help)"
# Options that belong to another subcommand are a mistake to point out, not to ignore.
case "$subcommand" in
setup) own="--s3-uri --from --size --download-dir --keep-downloads" ;;
snapshot) own="--volume-id --no-wait --delete-volume" ;;
ebs-only) own="--snapshot-id --size --initialization-rate --keep-on-termination" ;;
esac
for option in "${given[@]}"; do
    case "$option" in
    --region | --mount-point | --name | --device | --iops | --throughput) ;;
    *) [[ " $own " == *" $option "* ]] || die "$option does not apply to $subcommand (see --help)" ;;
    esac
done
[[ -n "$region" ]] || die "no AWS region: pass --region REGION or set AWS_REGION (the region of this instance)"
[[ "$region" =~ ^[a-z]{2}(-[a-z]+)+-[0-9]+$ ]] ||
    die "'$region' is not an AWS region name (a zone such as ...-1a is in the region without its last letter)"
[[ "$mount_point" == /* ]] || die "--mount-point must be an absolute path, not '$mount_point'"
sudo=()
if ((EUID != 0)); then
    sudo=(sudo)
fi

# imds VARIABLE PATH PLACEHOLDER: one value from the instance metadata service (IMDSv2), such as
# placement/availability-zone; the session token is fetched once and never printed.
imds_token=""
imds() {
    local url="$IMDS/latest/meta-data/$2"
    if [[ -z "$imds_token" ]]; then
        echo "+ TOKEN=\$(curl -sf -X PUT $IMDS/latest/api/token -H 'X-aws-ec2-metadata-token-ttl-seconds: 300')" >&2
        imds_token="<token>"
        if ! $dry_run; then
            need_command curl "install curl to reach the instance metadata service"
            imds_token=$(curl -sf --max-time 5 -X PUT "$IMDS/latest/api/token" \
                -H 'X-aws-ec2-metadata-token-ttl-seconds: 300') ||
                die "the instance metadata service ($IMDS) did not answer: run this on the EC2 instance that gets the volume"
        fi
    fi
    echo "+ $1=\$(curl -sf -H \"X-aws-ec2-metadata-token: \$TOKEN\" $url)" >&2
    if $dry_run; then
        printf -v "$1" '%s' "$3"
    else
        local value
        value=$(curl -sf --max-time 5 -H "X-aws-ec2-metadata-token: $imds_token" "$url") ||
            die "could not read $2 from the instance metadata service ($url)"
        printf -v "$1" '%s' "$value"
    fi
}

# aws_ec2 OPERATION [ARG...]: an EC2 call in --region (after the waiter's name for `aws ec2 wait NAME`).
aws_ec2() {
    local operation=("$1")
    shift
    if [[ "${operation[0]}" == wait ]]; then
        operation+=("$1")
        shift
    fi
    run aws ec2 "${operation[@]}" --region "$region" "$@"
}

# This instance and its availability zone, which must be in --region (a volume attaches only within its zone).
this_instance() {
    if ! $dry_run; then
        need_command aws "install the AWS CLI (it comes with the Deep Learning AMI)"
    fi
    imds instance_id instance-id "<instance id>"
    imds zone placement/availability-zone "<availability zone>"
    if ! $dry_run && [[ "$zone" != "$region"* ]]; then
        die "this instance is in $zone, which is not in --region $region; pass --region ${zone%[a-z]}"
    fi
}

# The block device of an attached volume: on Nitro instances (g4dn) an NVMe device whose serial is the volume
# id, listed under /dev/disk/by-id; on older ones the attach name, as /dev/sdX or /dev/xvdX.
attached_device() {
    local by_id="/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_${volume_id//-/}" path
    echo "+ device=\$(readlink -f $by_id)    # once it appears; $device_name on a non-Nitro instance" >&2
    if $dry_run; then
        device="<device of $volume_id>"
        return
    fi
    for _ in $(seq 120); do
        for path in "$by_id" "$device_name" "/dev/xvd${device_name#/dev/sd}"; do
            if [[ -b "$path" ]]; then
                device=$(readlink -f "$path")
                say "$volume_id is $device"
                return
            fi
        done
        sleep 1
    done
    die "$volume_id is attached but no block device for it appeared in 2 minutes ($by_id, $device_name)"
}

# What the device holds: a filesystem or partition table type ("ext4", "gpt"), or "" if it is blank.
device_contents() {
    local probe
    echo "+ $(shell_line "${sudo[@]}" blkid -p -o export "$device")    # TYPE= or PTTYPE= when it is not blank" >&2
    if $dry_run; then
        return
    fi
    probe=$("${sudo[@]}" blkid -p -o export "$device" || true)
    sed -n -e 's/^TYPE=//p' -e 's/^PTTYPE=//p' <<<"$probe" | head -n 1
}

create_and_attach() {
    capture volume_id "<new volume id>" aws ec2 create-volume --region "$region" --availability-zone "$zone" \
        --volume-type gp3 --iops "$iops" --throughput "$throughput" "$@" \
        --tag-specifications "ResourceType=volume,Tags=[{Key=Name,Value=$name}]" --query VolumeId --output text
    aws_ec2 wait volume-available --volume-ids "$volume_id"
    aws_ec2 attach-volume --volume-id "$volume_id" --instance-id "$instance_id" --device "$device_name"
    aws_ec2 wait volume-in-use --volume-ids "$volume_id"
    attached_device
}

mount_device() {
    run "${sudo[@]}" mkdir -p "$mount_point"
    run "${sudo[@]}" mount -o noatime "$device" "$mount_point"
}

require_empty_mount_point() {
    if ! $dry_run && [[ -e "$mount_point" ]] && [[ -n "$(ls -A "$mount_point")" ]]; then
        die "$mount_point is not a mount point but holds files; pick an empty --mount-point"
    fi
}

do_setup() {
    [[ -n "$s3_uri" || -n "$from" ]] || die "setup needs the data: --s3-uri s3://BUCKET/PREFIX or --from PATH"
    [[ -z "$s3_uri" || -z "$from" ]] || die "give --s3-uri or --from, not both"
    [[ -z "$s3_uri" || "$s3_uri" =~ ^s3://[^/]+ ]] || die "--s3-uri must look like s3://BUCKET/PREFIX, not '$s3_uri'"
    if [[ -n "$from" ]] && ! $dry_run && [[ ! -e "$from" ]]; then
        die "--from $from does not exist"
    fi
    local python=${PYTHON:-$repo/.venv/bin/python}
    if ! $dry_run && [[ ! -x "$python" ]]; then
        die "$python not found: run scripts/aws_setup.sh first (or set PYTHON to an interpreter with the project installed)"
    fi

    if mountpoint -q "$mount_point"; then
        say "$mount_point is already a mounted filesystem: using it, skipping the volume steps"
    else
        require_empty_mount_point
        this_instance
        create_and_attach --size "${size:-320}"
        local contents
        contents=$(device_contents)
        [[ -z "$contents" ]] ||
            die "refusing to format $device ($volume_id): it already holds '$contents'. setup formats only the blank volume it creates; mount this one yourself or use ebs-only"
        run "${sudo[@]}" mkfs.ext4 -q -m 0 -L "${name:0:16}" -E nodiscard "$device"
        mount_device
        run "${sudo[@]}" chown "$(id -u):$(id -g)" "$mount_point"
    fi

    if [[ -f "$mount_point/imagenet-layout.json" ]]; then
        say "$mount_point is already laid out ($(cat "$mount_point/imagenet-layout.json")); nothing to fetch"
        return
    fi
    local source=$from move=()
    if [[ -n "$s3_uri" ]]; then
        source=${download_dir:-$mount_point/.downloads}
        run "$python" "$repo/scripts/sync_s3.py" "$s3_uri" "$source" --region "$region"
        move=(--move)
    fi
    run "$python" "$repo/scripts/layout_imagenet.py" "$source" "$mount_point" "${move[@]}"
    if [[ -n "$s3_uri" ]] && ! $keep_downloads; then
        run rm -rf "$source"
    fi
    say "ImageNet is at $mount_point${volume_id:+ on $volume_id}. Next:"
    say "  scripts/setup_imagenet.sh snapshot --region $region    # keep it for other instances"
    say "  scripts/train_phase2.sh --data-path $mount_point"
}

do_snapshot() {
    if $delete_volume && ! $wait_snapshot; then
        die "--delete-volume waits for the snapshot to complete; drop --no-wait"
    fi
    local mounted=false
    if mountpoint -q "$mount_point"; then
        mounted=true
    fi
    if [[ -z "$volume_id" ]]; then
        volume_at_mount_point "$mounted"
    fi
    [[ "$volume_id" == vol-* || "$volume_id" == "<"* ]] || die "'$volume_id' is not a volume id (vol-...)"
    if ! $dry_run; then
        need_command aws "install the AWS CLI (it comes with the Deep Learning AMI)"
    fi

    # Writes stopped while the snapshot's point in time is taken: its copy is then a clean filesystem.
    run sync
    if $mounted; then
        run "${sudo[@]}" fsfreeze --freeze "$mount_point"
        trap unfreeze EXIT
    fi
    capture snapshot_id "<new snapshot id>" aws ec2 create-snapshot --region "$region" --volume-id "$volume_id" \
        --description "ImageNet train/ and val/ laid out by scripts/setup_imagenet.sh" \
        --tag-specifications "ResourceType=snapshot,Tags=[{Key=Name,Value=$name}]" \
        --query SnapshotId --output text
    if $mounted; then
        trap - EXIT
        unfreeze
    fi
    say "snapshot $snapshot_id of $volume_id started"

    if $wait_snapshot; then
        wait_for_snapshot
    fi
    if $delete_volume; then
        if $mounted; then
            run "${sudo[@]}" umount "$mount_point"
        fi
        aws_ec2 detach-volume --volume-id "$volume_id"
        aws_ec2 wait volume-available --volume-ids "$volume_id"
        aws_ec2 delete-volume --volume-id "$volume_id"
    fi
    say "on a new instance in $region: scripts/setup_imagenet.sh ebs-only --region $region --snapshot-id $snapshot_id"
}

# volume_at_mount_point MOUNTED: set volume_id to the EBS volume mounted at --mount-point; an NVMe EBS device's
# serial is its volume id without the dash.
volume_at_mount_point() {
    echo "+ volume_id=vol-\$(lsblk -dno SERIAL \$(findmnt -no SOURCE $mount_point) | sed s/^vol//)" >&2
    if $dry_run; then
        volume_id="<volume mounted at $mount_point>"
        return
    fi
    $1 || die "nothing is mounted at $mount_point: pass --volume-id, or the --mount-point of the volume"
    local source serial
    source=$(findmnt -no SOURCE "$mount_point")
    serial=$(lsblk -dno SERIAL "$source" | tr -d ' ')
    [[ "$serial" == vol* ]] || die "cannot tell which EBS volume $source is (serial '$serial'); pass --volume-id"
    volume_id="vol-${serial#vol}"
}

# shellcheck disable=SC2329  # called by the trap in do_snapshot
unfreeze() {
    run "${sudo[@]}" fsfreeze --unfreeze "$mount_point"
}

# aws ec2 wait snapshot-completed gives up after 10 minutes; a first ImageNet snapshot takes longer.
wait_for_snapshot() {
    local query=(describe-snapshots --snapshot-ids "$snapshot_id" --query 'Snapshots[0].[State,Progress]'
        --output text)
    if $dry_run; then
        aws_ec2 "${query[@]}"
        say "(every ${SNAPSHOT_POLL_SECONDS} s until the state is completed)"
        return
    fi
    local answer state progress
    while true; do
        answer=$(aws ec2 "${query[0]}" --region "$region" "${query[@]:1}")
        read -r state progress <<<"$answer"
        say "snapshot $snapshot_id: $state ${progress:-}"
        case "$state" in
        completed) return ;;
        error) die "snapshot $snapshot_id failed (state error); see the EC2 console, then run snapshot again" ;;
        esac
        sleep "$SNAPSHOT_POLL_SECONDS"
    done
}

do_ebs_only() {
    if [[ -n "$initialization_rate" ]] && ((initialization_rate < 100 || initialization_rate > 300)); then
        die "--initialization-rate must be 100-300 MiB/s, not $initialization_rate"
    fi
    if mountpoint -q "$mount_point"; then
        [[ -d "$mount_point/train" && -d "$mount_point/val" ]] ||
            die "$mount_point is mounted but holds no train/ and val/; unmount it or pick another --mount-point"
        say "$mount_point is already mounted and holds train/ and val/: nothing to do"
        return
    fi
    require_empty_mount_point
    if [[ -z "$snapshot_id" ]]; then
        capture snapshot_id "<newest snapshot tagged Name=$name>" aws ec2 describe-snapshots --region "$region" \
            --owner-ids self --filters "Name=tag:Name,Values=$name" Name=status,Values=completed \
            --query 'sort_by(Snapshots,&StartTime)[-1].SnapshotId' --output text
        [[ "$snapshot_id" == snap-* || "$snapshot_id" == "<"* ]] ||
            die "no completed snapshot of yours tagged Name=$name in $region: pass --snapshot-id, or run setup and snapshot first"
    fi
    this_instance
    local extra=(--snapshot-id "$snapshot_id")
    if [[ -n "$size" ]]; then
        extra+=(--size "$size")
    fi
    if [[ -n "$initialization_rate" ]]; then
        extra+=(--volume-initialization-rate "$initialization_rate")
    fi
    create_and_attach "${extra[@]}"
    if $delete_on_termination; then
        aws_ec2 modify-instance-attribute --instance-id "$instance_id" --block-device-mappings \
            "[{\"DeviceName\":\"$device_name\",\"Ebs\":{\"DeleteOnTermination\":true}}]"
    fi
    if [[ -z "$(device_contents)" ]] && ! $dry_run; then
        die "$device ($volume_id, from $snapshot_id) holds no filesystem; was $snapshot_id made by 'setup_imagenet.sh snapshot'?"
    fi
    mount_device
    if ! $dry_run && [[ ! -d "$mount_point/train" || ! -d "$mount_point/val" ]]; then
        die "$mount_point (from $snapshot_id) holds no train/ and val/; is it the ImageNet snapshot?"
    fi
    say "ImageNet is at $mount_point on $volume_id (from $snapshot_id). Next:"
    say "  scripts/train_phase3.sh --data-path $mount_point --save-folder s3://BUCKET/resnet50/{run_name} --watch-spot"
}

if $dry_run; then
    say "dry run: printing the commands, running none"
fi
case "$subcommand" in
setup) do_setup ;;
snapshot) do_snapshot ;;
ebs-only) do_ebs_only ;;
esac
