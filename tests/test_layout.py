"""The structure test: each room of the project imports only from rooms below it, no modules import each other in
a circle (function-local imports included), and every module imports on its own.

Imports are read from the source with ``ast``, so a new module or a new import is checked without anyone keeping
a list of names up to date. The layers are the ones README.md's layout table describes.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Lower layers never import higher ones; rooms on the same layer (data, model) never import each other.
LAYERS: dict[str, int] = {
    "recipes": 0,
    "data": 1,
    "model": 1,
    "algorithms": 2,
    "callbacks": 3,
    "training": 4,
    "tools": 5,
    "train": 6,
    "evaluate": 6,
}


def module_name(path: Path) -> str:
    """``training/trainer.py`` -> ``training.trainer``; a package's ``__init__.py`` is the package."""
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    """Every module of the rooms in ``LAYERS``, by dotted name."""
    modules = {}
    for room in LAYERS:
        folder = REPO / room
        paths = sorted(folder.rglob("*.py")) if folder.is_dir() else [REPO / f"{room}.py"]
        modules.update({module_name(path): path for path in paths})
    return modules


def imported_modules(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports anywhere in its body (top level, functions, TYPE_CHECKING blocks)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from tools import export` imports the submodule; `from data import build_data` the package.
            submodules = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [name if name in known else node.module for name in submodules]
        else:
            continue
        found.update(name for name in names if name in known)
    return found


def room(module: str) -> str:
    return module.split(".")[0]


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported_modules(path, set(modules)) - {name} for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    lowest: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = lowest[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                lowest[node] = min(lowest[node], lowest[target])
            elif target in on_stack:
                lowest[node] = min(lowest[node], index[target])
        if lowest[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_room_imports_from_a_higher_or_sibling_room() -> None:
    upward = [
        f"{module} ({room(module)}, layer {LAYERS[room(module)]}) imports {target} "
        f"({room(target)}, layer {LAYERS[room(target)]})"
        for module, targets in sorted(import_graph().items())
        for target in sorted(targets)
        if room(target) != room(module) and LAYERS[room(target)] >= LAYERS[room(module)]
    ]
    assert not upward, "imports against the layers:\n" + "\n".join(upward)


def test_recipes_import_nothing_of_the_project_beyond_recipes() -> None:
    outside = {
        module: sorted(target for target in targets if room(target) != "recipes")
        for module, targets in import_graph().items()
        if room(module) == "recipes"
    }
    assert not {module: targets for module, targets in outside.items() if targets}


def test_no_modules_import_each_other_in_a_circle() -> None:
    found = circles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(group) for group in found)


def test_the_checks_see_function_local_imports_and_circles(tmp_path: Path) -> None:
    """The reader and the circle finder themselves: a local import counts, and a two-module circle is found."""
    probe = tmp_path / "probe.py"
    probe.write_text("def later():\n    from tools.planning import plan_run\n", encoding="utf-8")
    assert imported_modules(probe, {"tools.planning"}) == {"tools.planning"}
    assert circles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_each_module_imports_on_its_own() -> None:
    """Each module in a fresh set of project modules: none works only because another was imported first. One
    interpreter for all (torch and Composer stay loaded, every project module is dropped before each import):
    a fresh interpreter per room spent ~8 s each importing torch again."""
    names = sorted(project_modules())
    script = (
        "import importlib, sys\n"
        f"project = {sorted(LAYERS)!r}\n"
        f"for name in {names!r}:\n"
        "    for loaded in [m for m in sys.modules if m.split('.')[0] in project]:\n"
        "        del sys.modules[loaded]\n"
        "    print(name, flush=True)\n"
        "    importlib.import_module(name)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    failed = result.stdout.strip().splitlines()[-1:] if result.returncode else []
    assert result.returncode == 0, f"importing {failed} alone failed:\n{result.stderr[-3000:]}"
