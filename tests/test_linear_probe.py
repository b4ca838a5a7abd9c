"""The linear probe (task: linear_probe): a MoCo v3 backbone frozen as main_lincls.py freezes it, only fc
trained, its checkpoint evaluated like a supervised one, and the wrong checkpoints refused with the reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import evaluate
import train
from model import moco_backbone_state
from tools.lr_range_curve import MINIMUM_ITERATIONS
from training.weights import extract_model_state, read_checkpoint


def checkpoint_in(folder: Path) -> Path:
    """The one checkpoint a run left in its folder."""
    (path,) = folder.glob("ep*-ba*-rank0.pt")
    return path


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory, digits_cache: Path) -> Path:
    """A two-step moco_v3_smoke run's checkpoint, on resnet18 with narrow heads (a checkpoint of megabytes, not
        hundreds, to keep the test quick; the probe is the same code for every torchvision ResNet); no k-NN monitor,
    which the probe never reads."""
    folder = tmp_path_factory.mktemp("moco") / "run"
    status = train.main(
        ["moco_v3_smoke", "model.name=resnet18", "moco.projector_hidden_dim=64", "moco.predictor_hidden_dim=64",
         "moco.output_dim=32", "moco.knn_interval=null", "data.subset_size=16", "global_batch_size=8", "max_duration=2ba", "save_interval=2ba",
         "data.num_workers=0", f"data.cache_dir={digits_cache}", f"save_folder={folder}", "run_name=moco",
         "logging.progress_bar=false"]
    )  # fmt: skip
    assert status == 0
    return checkpoint_in(folder)


def probe_args(folder: Path, backbone: Path | str, digits_cache: Path, *extra: str) -> list[str]:
    """linear_probe_smoke on resnet18, shortened to three steps on 24 images."""
    return [
        "linear_probe_smoke", "model.name=resnet18", f"model.backbone_checkpoint={backbone}", "data.subset_size=24",
        "global_batch_size=8", "max_duration=3ba", "save_interval=3ba", "eval_interval=3ba",
        "data.num_workers=0", "data.val_subset_size=40", f"data.cache_dir={digits_cache}",
        f"save_folder={folder}", "run_name=probe", "logging.progress_bar=false", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory, pretrained: Path, digits_cache: Path) -> Path:
    """The probe's checkpoint after three steps on the pretrained backbone."""
    folder = tmp_path_factory.mktemp("probe") / "run"
    assert train.main(probe_args(folder, pretrained, digits_cache)) == 0
    return checkpoint_in(folder)


def test_only_fc_changes_backbone_weights_and_batchnorm_statistics_bit_identical(
    pretrained: Path, probe: Path
) -> None:
    backbone = moco_backbone_state(extract_model_state(read_checkpoint(pretrained)))
    probed = extract_model_state(read_checkpoint(probe))
    assert set(probed) == set(backbone) | {"fc.weight", "fc.bias"}
    assert any(key.endswith("running_mean") for key in backbone)
    changed = [key for key in backbone if not torch.equal(probed[key], backbone[key])]
    assert changed == []
    # fc trained: three SGD steps moved it from its N(0, 0.01) start and its zero bias.
    assert probed["fc.bias"].abs().max() > 0


def test_fc_starts_as_main_lincls_initialises_it(pretrained: Path, digits_cache: Path) -> None:
    from omegaconf import OmegaConf

    from recipes.loading import load_recipe
    from training.weights import load_linear_probe

    config = load_recipe(
        "linear_probe_smoke", ["model.name=resnet18", f"model.backbone_checkpoint={pretrained}"]
    )
    torch.manual_seed(0)
    network = load_linear_probe(OmegaConf.create(OmegaConf.to_container(config)), 10).module
    weight = network.fc.weight
    assert weight.shape == (10, 512)
    assert abs(weight.mean().item()) < 1e-3
    assert weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.equal(network.fc.bias, torch.zeros(10))
    trainable = [name for name, parameter in network.named_parameters() if parameter.requires_grad]
    assert trainable == ["fc.weight", "fc.bias"]
    # Composer calls model.train() every epoch: the backbone must stay in eval mode, fc follows.
    probe = load_linear_probe(OmegaConf.create(OmegaConf.to_container(config)), 10).train()
    assert not probe.module.layer1.training and not probe.module.bn1.training
    assert probe.module.fc.training


def test_probe_checkpoint_evaluates_with_evaluate_py(probe: Path, tmp_path: Path) -> None:
    """evaluate.py on the probe's last checkpoint reports what the run reported for those weights, on the same
    40 validation images."""
    assert evaluate.main(["--checkpoint", str(probe), "--output", str(tmp_path / "eval.json")]) == 0
    evaluated = json.loads((tmp_path / "eval.json").read_text())
    reported = json.loads((probe.parent / "summary.json").read_text())
    assert reported["steps"] == 3 and probe.name.endswith("-ba3-rank0.pt")
    assert evaluated["images"] == reported["val_images"] == 40
    # Three steps leave the probe near chance, so the loss tells weights apart (measured: 2.30081 reported;
    # 2.30041 with fc left at its start, 2.30294 with the centre crop changed), and accuracy matches anyway.
    for key in ("val/acc1", "val/acc5", "val/loss"):
        assert evaluated[key] == pytest.approx(reported[key], rel=1e-5, abs=1e-6), key


def test_a_classifier_checkpoint_as_backbone_is_refused_naming_it(
    probe: Path, tmp_path: Path, digits_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The probe's own checkpoint is a supervised classifier's, keys and all.
    assert train.main(probe_args(tmp_path / "again", probe, digits_cache)) == 2
    error = capsys.readouterr().err
    assert str(probe) in error
    assert "classifier's checkpoint" in error and "not a MoCo v3 pretraining checkpoint" in error
    assert "task: moco_v3 run" in error


def test_missing_backbone_checkpoint_is_refused_by_the_recipe_check(
    tmp_path: Path, digits_cache: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert train.main(probe_args(tmp_path / "none", "null", digits_cache)) == 2
    error = capsys.readouterr().err
    assert "linear_probe_without_backbone" in error and "model.backbone_checkpoint" in error


def bucket_with_checkpoint(s3_endpoint: str, bucket: str, checkpoint: Path) -> Any:
    """A new bucket on the loopback S3 server holding ``checkpoint`` as a run's save_folder would: under
    moco/run/, by its own name; the boto3 client, to add more."""
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    client.create_bucket(Bucket=bucket)
    client.upload_file(str(checkpoint), bucket, f"moco/run/{checkpoint.name}")
    return client


def probe_from(uri: str, s3_endpoint: str) -> torch.nn.Module:
    """linear_probe_smoke's probe (resnet18) on the backbone at ``uri``, read through the recipe's S3 keys."""
    from omegaconf import OmegaConf

    from recipes.loading import load_recipe
    from training.weights import load_linear_probe

    config = load_recipe(
        "linear_probe_smoke",
        ["model.name=resnet18", f"model.backbone_checkpoint={uri}", f"s3_endpoint_url={s3_endpoint}"],
    )
    return load_linear_probe(OmegaConf.create(OmegaConf.to_container(config)), 10).module


def assert_holds_backbone_of(network: torch.nn.Module, pretrained: Path) -> None:
    backbone = moco_backbone_state(extract_model_state(read_checkpoint(pretrained)))
    loaded = network.state_dict()
    assert all(torch.equal(loaded[key], value) for key, value in backbone.items())


@pytest.mark.usefixtures("aws_env")
def test_backbone_checkpoint_from_s3_loads_the_same_backbone(pretrained: Path, s3_endpoint: str) -> None:
    bucket_with_checkpoint(s3_endpoint, "probe-backbones", pretrained)
    network = probe_from(f"s3://probe-backbones/moco/run/{pretrained.name}", s3_endpoint)
    assert_holds_backbone_of(network, pretrained)


@pytest.mark.usefixtures("aws_env")
def test_latest_pointer_on_s3_is_followed_to_the_checkpoint_it_names(
    pretrained: Path, s3_endpoint: str, tmp_path: Path
) -> None:
    # On S3 Composer's latest-rank0.pt is an object latest-rank0.pt.symlink whose body is the newest checkpoint's
    # name beside it (test_training_checkpointing.py reads the one a run uploads); written here by Composer's own
    # create_symlink_file.
    from composer.utils.file_helpers import create_symlink_file

    client = bucket_with_checkpoint(s3_endpoint, "probe-latest", pretrained)
    pointer = tmp_path / "latest-rank0.pt.symlink"
    create_symlink_file(pretrained.name, pointer)
    client.upload_file(str(pointer), "probe-latest", "moco/run/latest-rank0.pt.symlink")
    assert_holds_backbone_of(
        probe_from("s3://probe-latest/moco/run/latest-rank0.pt", s3_endpoint), pretrained
    )


@pytest.mark.usefixtures("aws_env")
def test_a_missing_s3_checkpoint_is_refused_naming_the_object_and_its_pointer(
    pretrained: Path, s3_endpoint: str
) -> None:
    from recipes.errors import UsageError

    bucket_with_checkpoint(s3_endpoint, "probe-no-latest", pretrained)
    with pytest.raises(UsageError) as raised:
        probe_from("s3://probe-no-latest/moco/run/latest-rank0.pt", s3_endpoint)
    message = str(raised.value)
    assert "s3://probe-no-latest/moco/run/latest-rank0.pt nor" in message
    assert "s3://probe-no-latest/moco/run/latest-rank0.pt.symlink" in message
    assert "s3://probe-no-latest/moco/run/ep<E>-ba<B>-rank0.pt" in message


def test_the_lr_range_test_sweeps_the_probe_and_leaves_the_backbone_alone(
    pretrained: Path, digits_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tools import lr_range_test

    swept: list[torch.nn.Module] = []
    real_build_trainer = lr_range_test.build_trainer

    def keep_model(
        start: Any, config: Any, data: Any, model: torch.nn.Module, *args: Any, **kwargs: Any
    ) -> Any:
        swept.append(model)
        return real_build_trainer(start, config, data, model, *args, **kwargs)

    monkeypatch.setattr(lr_range_test, "build_trainer", keep_model)
    iterations = MINIMUM_ITERATIONS
    status = train.main(
        [*probe_args(tmp_path, pretrained, digits_cache), "--find-lr", "--iterations", str(iterations)]
    )
    assert status == 0
    result = json.loads((tmp_path / "lr_range_test.json").read_text())
    assert 1 < result["steps_run"] <= iterations
    (model,) = swept
    state = {key.removeprefix("module."): value for key, value in model.state_dict().items()}
    backbone = moco_backbone_state(extract_model_state(read_checkpoint(pretrained)))
    assert [key for key in backbone if not torch.equal(state[key], backbone[key])] == []
    assert state["fc.bias"].abs().max() > 0  # the classifier is what the sweep trained


def test_the_lr_range_test_refuses_pretraining_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = train.main(
        ["moco_v3_smoke", f"save_folder={tmp_path}", "--find-lr", "--min-lr", "0.01", "--max-lr", "10"]
    )
    assert status == 2
    err = capsys.readouterr().err
    assert (
        "--find-lr does not apply to task: moco_v3" in err
        and "0.6" in err
        and "linear_probe --find-lr" in err
    )
    assert not any(tmp_path.iterdir())
