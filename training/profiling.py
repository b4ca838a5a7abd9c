"""The recipe's ``profiler`` section as Composer's ``Profiler`` (torch profiler traces, Composer's own event trace,
system counters) and the ``StepBreakdown`` callback that reads its schedule.

Per rank and cycle the torch profiler writes ``torch/rank<R>.<batch>.pt.trace.json`` (Chrome trace format: open
it in https://ui.perfetto.dev or chrome://tracing); Composer's JSON trace handler writes its events per rank and a
``merged_trace.json`` per node that puts every rank's Composer and torch events on one timeline.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from composer.core import Callback, State
from composer.profiler import JSONTraceHandler, Profiler, ProfilerAction, TorchProfiler, cyclic_schedule
from omegaconf import DictConfig

from callbacks.step_breakdown import StepBreakdown


def profiled_epochs(
    schedule: Callable[[State], ProfilerAction], epochs: int | None
) -> Callable[[State], ProfilerAction]:
    """``schedule`` for the first ``epochs`` epochs and SKIP after (Composer's cyclic schedule repeats each epoch)."""
    if epochs is None:
        return schedule
    return lambda state: schedule(state) if state.timestamp.epoch.value < epochs else ProfilerAction.SKIP


def build_profiler(settings: DictConfig, output: Path) -> tuple[Profiler | None, list[Callback]]:
    """Composer's profiler and the step breakdown when ``profiler.enabled``, else ``(None, [])``."""
    if not settings.enabled:
        return None, []
    folder = Path(settings.folder) if settings.folder else output / "profiler"
    schedule = cyclic_schedule(
        skip_first=settings.skip_first,
        wait=settings.wait,
        warmup=settings.warmup,
        active=settings.active,
        repeat=settings.repeat,
    )
    profiler = Profiler(
        schedule=profiled_epochs(schedule, settings.epochs),
        trace_handlers=[
            JSONTraceHandler(
                folder=str(folder / "composer"),
                remote_file_name=None,
                merged_trace_remote_file_name=None,
                overwrite=True,  # a resumed run profiles again into the same folder
            )
        ],
        # All off, so that Composer adds no TorchProfiler of its own: it would add one only with one of these on,
        # and with_flops (its default) made a profiled CPU step ~6x slower than a plain trace.
        torch_prof_record_shapes=False,
        torch_prof_profile_memory=False,
        torch_prof_with_stack=False,
        torch_prof_with_flops=False,
        torch_prof_remote_file_name=None,
        torch_prof_memory_remote_file_name=None,
    )
    torch_trace = TorchProfiler(
        folder=str(folder / "torch"),
        remote_file_name=None,
        memory_remote_file_name=None,
        overwrite=True,
        record_shapes=settings.record_shapes,
        profile_memory=settings.profile_memory,
        with_stack=settings.with_stack,
        with_flops=settings.with_flops,
    )
    # The breakdown first: its BATCH_END closes the step before the torch profiler writes the trace there.
    return profiler, [StepBreakdown(folder), torch_trace]
