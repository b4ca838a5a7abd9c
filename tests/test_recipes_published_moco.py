"""The MoCo v3 recipes against facebookresearch/moco-v3: the published value, ours, and why they differ.

Source: facebookresearch/moco-v3 at commit c349e6e (the newest; the project's mirror holds it): ``main_moco.py``
(argparse defaults and the training loop), ``moco/builder.py``, ``moco/optimizer.py``, ``main_lincls.py``, and
``CONFIG.md``'s ResNet-50 100-epoch pretraining command (``--moco-m-cos --crop-min=.2``, everything else at its
default) and linear-classification command (all defaults). Line numbers are of that commit.

Each recipe is resolved as ``train.py`` loads it; every published value must come out as published unless
``CHANGES`` lists the recipe's own value and the reason (the same rule as tests/test_recipes_published.py for
Mosaic's recipes). Not compared: paths, checkpoint cadence, loaders' workers and the k-NN monitor, which do not
change what is trained.
"""

from __future__ import annotations

import pytest

from tests.test_recipes_published import Change, Published, departures, same
from training.preflight import load_run_recipe

SOURCE = "facebookresearch/moco-v3@c349e6e"

PRETRAINING: dict[str, Published] = {
    "task": Published("moco_v3", "main_moco.py"),
    "model.name": Published("resnet50", "main_moco.py:49 --arch default"),
    "model.init": Published("torchvision", "main_moco.py:186 torchvision_models.resnet50"),
    "model.zero_init_residual": Published(True, "main_moco.py:186 zero_init_residual=True"),
    "max_duration": Published("100ep", "main_moco.py:56 --epochs 100 (CONFIG.md 100-epoch command)"),
    "global_batch_size": Published(4096, "main_moco.py:60 --batch-size 4096, over all GPUs"),
    "optimizer.name": Published("lars", "main_moco.py:112 --optimizer lars, :225 moco.optimizer.LARS"),
    "optimizer.base_lr": Published(0.6, "main_moco.py:65 --lr 0.6 (per 256)"),
    "optimizer.lr_scaling": Published("linear", "main_moco.py:190 lr * batch_size / 256"),
    "lr": Published(9.6, "0.6 x 4096 / 256"),
    "optimizer.momentum": Published(0.9, "main_moco.py:67 --momentum 0.9"),
    "optimizer.weight_decay": Published(1.0e-6, "main_moco.py:69 --wd 1e-6"),
    "optimizer.trust_coefficient": Published(0.001, "moco/optimizer.py:14 trust_coefficient=0.001"),
    "scheduler.name": Published("cosine_warmup", "main_moco.py:420-425 linear warmup, half-cycle cosine"),
    "scheduler.t_warmup": Published("10ep", "main_moco.py:115 --warmup-epochs 10"),
    "scheduler.alpha_f": Published(0.0, "main_moco.py:425 the cosine ends at 0"),
    "precision": Published("amp_fp16", "main_moco.py:352 torch.cuda.amp.autocast"),
    "moco.output_dim": Published(256, "main_moco.py:95 --moco-dim 256"),
    "moco.projector_hidden_dim": Published(4096, "main_moco.py:97 --moco-mlp-dim 4096"),
    "moco.predictor_hidden_dim": Published(4096, "main_moco.py:97 --moco-mlp-dim 4096"),
    "moco.momentum": Published(0.99, "main_moco.py:99 --moco-m 0.99, raised to 1 by :433 (--moco-m-cos)"),
    "moco.temperature": Published(1.0, "main_moco.py:104 --moco-t 1.0"),
    "moco.loss_reduction": Published(
        "sum", "moco/builder.py contrastive_loss(q1, k2) + contrastive_loss(q2, k1)"
    ),
    "moco.queue_size": Published(0, "moco/builder.py keeps no queue (v3)"),
    "moco.sync_batchnorm": Published(True, "main_moco.py:196 convert_sync_batchnorm"),
    "data.train_resolution": Published(224, "main_moco.py:263, :275 RandomResizedCrop(224)"),
    "data.crop_ratio": Published([0.75, 4 / 3], "RandomResizedCrop's default ratio"),
    "data.drop_last": Published(True, "main_moco.py:299 drop_last=True"),
    "data.two_views.crop_scale": Published([0.2, 1.0], "CONFIG.md --crop-min=.2; main_moco.py:263, :275"),
    "data.two_views.color_jitter": Published([0.4, 0.4, 0.2, 0.1], "main_moco.py:265, :277"),
    "data.two_views.color_jitter_p": Published(0.8, "main_moco.py:264-266 RandomApply p=0.8"),
    "data.two_views.grayscale_p": Published(0.2, "main_moco.py:267, :279"),
    "data.two_views.blur_p": Published([1.0, 0.1], "main_moco.py:268 p=1.0, :280 p=0.1"),
    "data.two_views.blur_sigma": Published([0.1, 2.0], "main_moco.py:268, :280 GaussianBlur([.1, 2.])"),
    "data.two_views.solarize_p": Published([0.0, 0.2], "main_moco.py:281 Solarize p=0.2, view 2 only"),
    "data.two_views.horizontal_flip": Published(True, "main_moco.py:269, :282"),
}

PROBE: dict[str, Published] = {
    "task": Published("linear_probe", "main_lincls.py"),
    "model.name": Published("resnet50", "main_lincls.py --arch default"),
    "max_duration": Published("90ep", "main_lincls.py:49 --epochs 90"),
    "global_batch_size": Published(1024, "main_lincls.py:53 --batch-size 1024"),
    "optimizer.base_lr": Published(0.1, "main_lincls.py:58 --lr 0.1 (per 256)"),
    "optimizer.lr_scaling": Published("linear", "main_lincls.py:196 lr * batch_size / 256"),
    "lr": Published(0.4, "0.1 x 1024 / 256"),
    "optimizer.momentum": Published(0.9, "main_lincls.py:60 --momentum 0.9"),
    "optimizer.nesterov": Published(False, "main_lincls.py:236 torch.optim.SGD without nesterov"),
    "optimizer.weight_decay": Published(0.0, "main_lincls.py:62 --wd 0 (plain and decoupled SGD agree at 0)"),
    "scheduler.name": Published("cosine_warmup", "main_lincls.py:501 cosine"),
    "scheduler.t_warmup": Published("0ba", "main_lincls.py:501 no warmup"),
    "scheduler.alpha_f": Published(0.0, "main_lincls.py:501 the cosine ends at 0"),
    "precision": Published("fp32", "main_lincls.py trains without autocast"),
    "data.train_resolution": Published(224, "main_lincls.py:273 RandomResizedCrop(224)"),
    "data.crop_scale": Published([0.08, 1.0], "main_lincls.py:273 RandomResizedCrop's default scale"),
    "data.horizontal_flip": Published(True, "main_lincls.py:274"),
    "data.eval_resolution": Published(224, "main_lincls.py:291 CenterCrop(224)"),
    "eval_resize": Published(256, "main_lincls.py:290 Resize(256)"),
}

PUBLISHED = {"moco_v3_imagenet": PRETRAINING, "linear_probe": PROBE}

CHANGES: dict[str, dict[str, Change]] = {
    "moco_v3_imagenet": {
        "global_batch_size": Change(
            512, "128 images per T4: CONFIG.md fits 256 per 32 GB V100, a T4 has 16 GB"
        ),
        "lr": Change(1.2, "0.6 per 256 at batch 512 (the linear rule of main_moco.py:190)"),
    },
    "linear_probe": {
        "precision": Change("amp_fp16", "T4 tensor cores; the frozen backbone's features feed an fp32 loss"),
    },
}


@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_recipe_keeps_every_published_value_it_does_not_change_on_purpose(recipe: str) -> None:
    wrong = departures(load_run_recipe(recipe), PUBLISHED[recipe], CHANGES[recipe])
    assert not wrong, f"{recipe} against {SOURCE}:\n" + "\n".join(wrong)


@pytest.mark.parametrize("recipe", sorted(PUBLISHED))
def test_each_listed_change_is_a_change(recipe: str) -> None:
    for key, change in CHANGES[recipe].items():
        assert key in PUBLISHED[recipe] and not same(change.value, PUBLISHED[recipe][key].value), key
        assert change.why
