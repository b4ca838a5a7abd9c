"""The machine's price for a recipe (the planner's and the budget guard's), and the budget guard for a run.

``budget.usd_per_hour`` null prices the run at its hardware's instance in the planner's table
(``training.hardware``); a number is taken as given; ``spot`` reads the instance type's current spot price from
AWS EC2 (``describe_spot_price_history``, Linux/UNIX) in ``budget.region`` (else AWS_DEFAULT_REGION, else
us-east-1, the table's region). The planner does not call AWS: it plans a spot run at the on-demand price.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from composer.core import Callback
from omegaconf import DictConfig

from algorithms.resolutions import resolution_schedule
from callbacks.budget_guard import BudgetGuard, Price
from recipes.durations import run_steps
from recipes.errors import UsageError
from training.hardware import Hardware, parse_hardware

SPOT = "spot"
# The price table's region (training.hardware.AWS_ON_DEMAND).
DEFAULT_REGION = "us-east-1"
SPOT_PRODUCT = "Linux/UNIX"


def recipe_price(config: DictConfig, hardware: Hardware | None, *, read_spot: bool = True) -> Price:
    """The hourly price of the recipe's machine, and where it comes from (with no price, why none)."""
    setting = config.budget.usd_per_hour
    instance = hardware.instance if hardware is not None else None
    if setting is None:
        if instance is None:
            return Price(
                None,
                f"no price for hardware '{config.hardware}' in the instance table; set budget.usd_per_hour",
            )
        return Price(instance.usd_per_hour, f"{instance.name}: {instance.price_source}")
    if isinstance(setting, int | float) and not isinstance(setting, bool):
        if setting < 0:
            raise UsageError(
                f"budget.usd_per_hour={setting} is negative: give dollars per hour, null or 'spot'."
            )
        return Price(float(setting), f"budget.usd_per_hour={setting:g}")
    if str(setting) != SPOT:
        raise UsageError(
            f"budget.usd_per_hour={setting!r} is not a price: give dollars per hour (e.g. 0.526), null for the "
            f"hardware's on-demand price, or '{SPOT}' for the current AWS spot price."
        )
    instance_type = instance.aws_instance_type if instance is not None else None
    if instance_type is None:
        raise UsageError(
            f"budget.usd_per_hour=spot needs an AWS instance, but hardware='{config.hardware}' names none; name "
            "one in hardware (e.g. '1xT4 (g4dn.xlarge)') or give budget.usd_per_hour=NUMBER."
        )
    region = config.budget.region or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION
    if not read_spot:
        return Price(
            instance.usd_per_hour,
            f"{instance.name} on-demand (budget.usd_per_hour=spot: the run reads the spot price in {region} "
            "when it starts)",
        )
    usd, zone = spot_price(instance_type, region)
    return Price(usd, f"{instance_type} spot in {zone}, read from AWS at launch")


def spot_price(instance_type: str, region: str) -> tuple[float, str]:
    """The current Linux/UNIX spot price of ``instance_type`` in ``region``: the newest price of each availability
    zone, the highest of them (the zone the machine lands in is not known here), and that zone."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    # A session of its own: boto3's default one keeps the credentials it found first for the process.
    client = boto3.session.Session().client("ec2", region_name=region)
    try:
        response = client.describe_spot_price_history(
            InstanceTypes=[instance_type],
            ProductDescriptions=[SPOT_PRODUCT],
            StartTime=datetime.datetime.now(datetime.timezone.utc),
        )
    except NoCredentialsError as error:
        raise UsageError(
            "budget.usd_per_hour=spot reads the spot price from AWS EC2, but no AWS credentials were found: set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run on an instance with a role "
            "allowing ec2:DescribeSpotPriceHistory), or give budget.usd_per_hour=NUMBER."
        ) from error
    except (BotoCoreError, ClientError) as error:
        raise UsageError(
            f"budget.usd_per_hour=spot could not read the spot price of {instance_type} in {region}: {error}. "
            "Check the credentials' ec2:DescribeSpotPriceHistory permission and budget.region, or give "
            "budget.usd_per_hour=NUMBER."
        ) from error
    newest: dict[str, tuple[datetime.datetime, float]] = {}
    for record in response.get("SpotPriceHistory", []):
        zone, stamp, price = record["AvailabilityZone"], record["Timestamp"], float(record["SpotPrice"])
        if zone not in newest or stamp > newest[zone][0]:
            newest[zone] = (stamp, price)
    if not newest:
        raise UsageError(
            f"AWS has no {SPOT_PRODUCT} spot price for {instance_type} in {region} (budget.region): pick a region "
            "that offers it, or give budget.usd_per_hour=NUMBER."
        )
    zone = max(newest, key=lambda name: newest[name][1])
    return newest[zone][1], zone


def build_budget_guard(
    config: DictConfig, output_folder: str | Path, save_folder: str, batches_per_epoch: int
) -> list[Callback]:
    """The guard for this run, or none when there is neither a price nor a limit (a CPU run with no budget)."""
    budget = config.budget
    for key in ("max_usd", "max_hours"):
        if budget[key] is not None and budget[key] <= 0:
            raise UsageError(f"budget.{key}={budget[key]} is not a limit: give a positive number, or null.")
    price = recipe_price(config, parse_hardware(config.hardware))
    if price.usd_per_hour is None and budget.max_usd is None and budget.max_hours is None:
        return []
    if price.usd_per_hour is None and budget.max_usd is not None:
        raise UsageError(
            f"budget.max_usd={budget.max_usd:g} needs a price, but {price.source} (dollars per hour of the whole "
            "machine)."
        )
    total = run_steps(
        config.max_duration, batches_per_epoch=batches_per_epoch, global_batch_size=config.global_batch_size
    )
    segments = [(steps, side) for steps, side, _ in resolution_schedule(config, batches_per_epoch, total)]
    return [
        BudgetGuard(
            price,
            segments,
            batches_per_epoch,
            output_folder,
            save_folder,
            max_usd=budget.max_usd,
            max_hours=budget.max_hours,
            resuming=config.autoresume,
        )
    ]
