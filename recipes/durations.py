"""Composer time strings in a recipe ("90ep", "500ba", "0.05dur", "25600sp", "0") and what they come to in
optimizer steps.

One rule for every reader of a recipe's times: the LR schedule, the recipe checks, the training doctor and the
planner. It rounds as Composer's own schedulers do (``composer/optim/scheduler.py`` ``_convert_time``, 0.32.1):
an epoch is the training loader's length in batches, a fraction of the run (``dur``) is truncated to a whole
step, and a count of samples lasts until the step that reaches it. A bare ``0`` means zero steps (recipes write
``t_warmup: 0`` for "no warmup"; Composer itself needs a unit).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from recipes.errors import UsageError

if TYPE_CHECKING:
    from composer.core import Time


def parse_time(value: object, key: str) -> Time:
    """The Composer ``Time`` a recipe value stands for; an error naming ``key`` when it is not one."""
    # Imported here: importing Composer takes seconds (it loads torch), and ``recipes.loading`` reaches this module
    # while train.py checks a recipe's schema before the training stack is needed.
    from composer.core import Time, TimeUnit

    text = str(value).strip()
    if text == "0":
        return Time(0, TimeUnit.BATCH)
    try:
        return Time.from_timestring(text)
    except ValueError as error:
        raise UsageError(
            f"'{key}' is '{value}', which is not a Composer time such as '90ep', '500ba' or '0.1dur'."
        ) from error


def is_zero(value: object, key: str) -> bool:
    """Whether the time is zero in whatever unit (``0``, ``0ep``, ``0ba``, ``0dur``, ...)."""
    return parse_time(value, key).value == 0


def steps_in(
    value: object,
    key: str,
    *,
    batches_per_epoch: int,
    global_batch_size: int,
    total_steps: int | None = None,
) -> int:
    """``value`` as a number of optimizer steps.

    ``batches_per_epoch`` is each process's training loader length; ``total_steps`` the run's length, which a
    fraction of the run (``dur``) needs and ``max_duration`` itself does not have yet.
    """
    from composer.core import TimeUnit  # parse_time says why it is imported here

    time = parse_time(value, key)
    if time.value == 0:
        return 0
    if time.unit == TimeUnit.EPOCH:
        return int(time.value * batches_per_epoch)
    if time.unit == TimeUnit.BATCH:
        return int(time.value)
    if time.unit == TimeUnit.SAMPLE:
        return math.ceil(time.value / global_batch_size)
    if time.unit == TimeUnit.DURATION and total_steps is not None:
        return int(time.value * total_steps)
    fraction = " or as a fraction of the run ('0.05dur')" if key != "max_duration" else ""
    raise UsageError(
        f"'{key}' is '{value}', which cannot be counted in optimizer steps: give it in epochs ('8ep'), batches "
        f"('500ba') or samples ('25600sp'){fraction}."
    )


def run_steps(max_duration: object, *, batches_per_epoch: int, global_batch_size: int) -> int:
    """The length of the run (``max_duration``) in optimizer steps."""
    return steps_in(
        max_duration,
        "max_duration",
        batches_per_epoch=batches_per_epoch,
        global_batch_size=global_batch_size,
    )
