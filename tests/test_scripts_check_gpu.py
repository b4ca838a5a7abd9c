"""scripts/check_gpu.py says plainly when torch sees no GPU, or not as many as the instance should have."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_gpu.py"
_spec = importlib.util.spec_from_file_location("check_gpu", SCRIPT)
check_gpu = sys.modules["check_gpu"] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_gpu)


def test_no_gpu_exits_1_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert check_gpu.main([]) == 1
    error = capsys.readouterr().err
    assert "sees no GPU" in error and "nvidia-smi" in error and torch.__version__ in error


def test_too_few_gpus_exits_1(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert check_gpu.main(["--expect", "4"]) == 1
    assert "sees 2 GPU(s), 4 expected" in capsys.readouterr().err
