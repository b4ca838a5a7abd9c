"""The baseline bench/stack_overhead.py times this project against: what a user would write with Composer alone.

    python bench/plain_composer.py DATA_DIR [--seed 17] [--model resnet50] [--epochs 10] [--subset TRAIN VAL]

Composer's Trainer on torchvision's ResNet-50 (zero-init residual BN), ImageFolder and transforms, with the smoke
recipe's optimizer, learning rate, batch, training crop, schedule and loader workers: DecoupledAdamW at 1e-3 (0.008
per 256 at batch 32), betas (0.9, 0.999), weight decay 5e-4; cosine after a one-epoch warm-up; RandomResizedCrop to
32 px at scale 0.8-1; the whole image, resized, evaluated after every epoch. Prints the final top-1 and the training
clock (Composer's, evaluation excluded) as JSON. ``--subset`` draws that many images per split (the bench's quick run).
"""

import argparse
import json

import torch
from composer import Trainer
from composer.models import ComposerClassifier
from composer.optim import CosineAnnealingWithWarmupScheduler, DecoupledAdamW
from torch.utils.data import DataLoader, Subset
from torchvision import datasets, models, transforms

parser = argparse.ArgumentParser()
parser.add_argument("data")
parser.add_argument("--seed", type=int, default=17)
parser.add_argument("--model", default="resnet50")
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--subset", type=int, nargs=2, metavar=("TRAIN", "VAL"))
args = parser.parse_args()

normalize = transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
crop = transforms.RandomResizedCrop(32, scale=(0.8, 1.0))
train_set = datasets.ImageFolder(
    f"{args.data}/train", transforms.Compose([crop, transforms.ToTensor(), normalize])
)
whole = transforms.Compose([transforms.Resize((32, 32)), transforms.ToTensor(), normalize])
val_set = datasets.ImageFolder(f"{args.data}/val", whole)
classes = len(train_set.classes)
generator = torch.Generator().manual_seed(args.seed)
if args.subset:
    draw = [
        torch.randperm(len(s), generator=generator)[:n].tolist()
        for s, n in ((train_set, args.subset[0]), (val_set, args.subset[1]))
    ]
    train_set, val_set = Subset(train_set, draw[0]), Subset(val_set, draw[1])
workers = {"num_workers": 1, "persistent_workers": True}
train = DataLoader(train_set, batch_size=32, shuffle=True, drop_last=True, generator=generator, **workers)
val = DataLoader(val_set, batch_size=128, **workers)

model = ComposerClassifier(getattr(models, args.model)(num_classes=classes, zero_init_residual=True), classes)
trainer = Trainer(
    model=model,
    train_dataloader=train,
    eval_dataloader=val,
    optimizers=DecoupledAdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=5e-4),
    schedulers=CosineAnnealingWithWarmupScheduler(t_warmup="1ep"),
    max_duration=f"{args.epochs}ep",
    eval_interval="1ep",
    seed=args.seed,
)
trainer.fit()
top1 = float(trainer.state.eval_metrics["eval"]["MulticlassAccuracy"].compute())
clock = trainer.state.timestamp
print(
    json.dumps({"val/acc1": top1, "train_time_s": clock.total_wct.total_seconds(), "steps": int(clock.batch)})
)
