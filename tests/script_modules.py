"""Load a file in ``scripts/`` as a module, once per test session.

The scripts are commands, not a package, so tests load them by path. Each is registered in ``sys.modules`` under its
file name because dataclasses and pickling (process pools) look a function's module up by that name; loading a script
twice would leave two objects under one name, and pickling a function from the first then fails with "it's not the
same object". So every test file goes through ``load_script`` and gets the one copy.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` as the module ``name``, loaded on first use and shared afterwards."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
        assert spec is not None and spec.loader is not None, f"no script {SCRIPTS / name}.py"
        module = sys.modules[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules[name]
