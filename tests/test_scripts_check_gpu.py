"""scripts/check_gpu.py says plainly when torch sees no GPU, or not as many as the instance should have."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.script_modules import load_script

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_gpu.py"
check_gpu = load_script("check_gpu")


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
