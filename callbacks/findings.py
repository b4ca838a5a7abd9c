"""Findings: what the recipe checks and the training doctor tell a person, in one shape and one file.

Both speak in the same form so a run folder has one place to look (``findings.jsonl``) and the console shows each
finding once: a stable code for tools and tests, a severity, and a message that names the measured numbers and
the fix.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from composer.utils import dist

FINDINGS_FILENAME = "findings.jsonl"
SEVERITIES = ("error", "warning")


@dataclass(frozen=True)
class Finding:
    """One thing wrong (or likely wrong) with a recipe or a run."""

    # Stable identifier, e.g. "loss_not_finite" or "warmup_longer_than_run".
    code: str
    # "error" stops the run; "warning" is printed once and recorded.
    severity: str
    # Plain words: what was measured, what it likely means, what to change.
    message: str
    # Where it came from: "recipe_check" or "doctor".
    source: str
    # Optimizer step at which the doctor saw it (None for recipe checks).
    step: int | None = None

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ValueError(f"severity must be one of {SEVERITIES}, not {self.severity!r}")

    def line(self) -> str:
        """The console form: ``warning [code] at step N: message``."""
        where = f" at step {self.step}" if self.step is not None else ""
        return f"{self.severity} [{self.code}]{where}: {self.message}"


def append_findings(folder: str | Path, findings: list[Finding]) -> Path:
    """Append findings to ``folder/findings.jsonl`` (one JSON object per line) and return the file's path.

    Call it from global rank 0 only; the folder is created if needed.
    """
    path = Path(folder) / FINDINGS_FILENAME
    if findings:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as file:
            for finding in findings:
                file.write(json.dumps(asdict(finding)) + "\n")
    return path


def announce_findings(folder: str | Path, findings: list[Finding]) -> None:
    """Say each finding's line once (global rank 0) and record it in ``folder/findings.jsonl``."""
    if dist.get_global_rank() != 0:
        return
    for finding in findings:
        print(finding.line(), flush=True)
    append_findings(folder, findings)


def read_findings(folder: str | Path) -> list[Finding]:
    """The findings recorded in a run folder (none when the file does not exist)."""
    path = Path(folder) / FINDINGS_FILENAME
    if not path.exists():
        return []
    return [Finding(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
