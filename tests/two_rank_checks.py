"""Both two-rank checks in one launch (``composer -n 2 tests/two_rank_checks.py FOLDER``), as each rank: the MoCo
step (``tests/moco_rank_step.py``, results in ``FOLDER/moco``), then the FSDP wrap and step
(``tests/fsdp_rank_check.py``, in ``FOLDER/fsdp``), in one process group. One launch costs what two cost in
starting two interpreters per rank (~8 s on 2 cores); tests/conftest.py's ``two_rank_checks`` launches it once."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import fsdp_rank_check, moco_rank_step


def main(folder: Path) -> None:
    for name, check in (("moco", moco_rank_step.main), ("fsdp", fsdp_rank_check.main)):
        (folder / name).mkdir(parents=True, exist_ok=True)
        check(folder / name)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
