"""notebooks/colab_sanity_test.ipynb: executed top to bottom on the CPU with the bundled digits, as Colab would run it.

The kernel is this interpreter (a kernelspec written for ``sys.executable`` into ``tmp_path``), not whichever
``python3`` kernel Jupyter would find first, so the test runs against the project's own environment.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import nbformat
import pytest
from ipykernel.kernelspec import write_kernel_spec
from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "notebooks" / "colab_sanity_test.ipynb"
KERNEL_NAME = "mosaic-resnet50-tests"
CELL_TIMEOUT_S = 300


def cell_text(cell: Any) -> str:
    """Everything a cell printed (stdout, stderr, plain-text results), as one string."""
    parts = []
    for output in cell.get("outputs", []):
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output and "text/plain" in output["data"]:
            parts.append(output["data"]["text/plain"])
    return "".join(parts)


def cell_tagged(notebook: Any, tag: str) -> Any:
    """The one code cell carrying ``tag`` in its metadata."""
    (cell,) = [cell for cell in notebook.cells if tag in cell.metadata.get("tags", [])]
    return cell


@pytest.fixture(scope="module")
def executed(tmp_path_factory: pytest.TempPathFactory, digits_cache: Path) -> dict[str, Any]:
    """The notebook run top to bottom by nbclient, shrunk through its environment-variable parameters."""
    scratch = tmp_path_factory.mktemp("notebook")
    kernels = scratch / "kernels"
    write_kernel_spec(path=kernels / KERNEL_NAME)  # argv: this interpreter, -m ipykernel_launcher
    manager = KernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)])
    )
    run_folder = scratch / "run"
    with pytest.MonkeyPatch.context() as environment:
        # DATA=auto must fall back to the digits without touching the network.
        environment.delenv("HF_TOKEN", raising=False)
        environment.setenv("SANITY_DATA", "auto")
        environment.setenv("SANITY_MAX_DURATION", "16ba")
        environment.setenv("SANITY_RUN_FOLDER", str(run_folder))
        environment.setenv("SANITY_CACHE_DIR", str(digits_cache))
        environment.setenv("SANITY_OVERRIDES", "logging.progress_bar=false")
        environment.setenv("SANITY_REPO_URL", "file:///nonexistent-so-a-clone-would-fail")
        environment.setenv("IPYTHONDIR", str(scratch / "ipython"))
        environment.setenv("JUPYTER_RUNTIME_DIR", str(scratch / "runtime"))
        environment.delenv("MPLBACKEND", raising=False)
        # One intra-op thread: on 2 cores shared with other processes the notebook took 37 s so, and 162 s with
        # PyTorch's default of one thread per core (its threads wait on each other when descheduled).
        environment.setenv("OMP_NUM_THREADS", "1")
        notebook = nbformat.read(NOTEBOOK, as_version=4)
        client = NotebookClient(
            notebook,
            km=manager,
            timeout=CELL_TIMEOUT_S,
            # Started from its own folder, as Jupyter does: the notebook must find the checkout above it.
            resources={"metadata": {"path": str(NOTEBOOK.parent)}},
        )
        client.execute()
    return {"notebook": notebook, "run_folder": run_folder}


def test_committed_notebook_is_valid_nbformat_4_without_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=nbformat.NO_CONVERT)
    nbformat.validate(notebook)
    assert notebook.nbformat == 4
    code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert [cell.id for cell in code_cells if cell.outputs or cell.execution_count is not None] == []


def test_runs_top_to_bottom_without_an_error(executed: dict[str, Any]) -> None:
    errors = [
        f"{output['ename']}: {output['evalue']}"
        for cell in executed["notebook"].cells
        for output in cell.get("outputs", [])
        if output["output_type"] == "error"
    ]
    assert errors == []


def test_uses_the_checkout_and_installs_nothing(executed: dict[str, Any]) -> None:
    text = cell_text(cell_tagged(executed["notebook"], "install"))
    assert f"running inside the checkout {NOTEBOOK.parent.parent}" in text
    assert "pip" not in text


def test_device_cell_says_cpu(executed: dict[str, Any]) -> None:
    assert "device: CPU" in cell_text(cell_tagged(executed["notebook"], "device"))


def test_without_a_token_it_picks_the_digits_and_says_why(executed: dict[str, Any]) -> None:
    text = cell_text(cell_tagged(executed["notebook"], "data"))
    assert "data: the bundled digits" in text
    assert "HF_TOKEN is not set" in text


def test_shows_the_overrides_and_trains_for_the_requested_duration(executed: dict[str, Any]) -> None:
    text = cell_text(cell_tagged(executed["notebook"], "train"))
    assert "python train.py colab" in text
    assert "max_duration=16ba" in text
    assert "data.source=digits" in text
    assert (executed["run_folder"] / "latest-rank0.pt").exists()


def test_prints_throughput_and_says_gpu_memory_is_not_available(
    executed: dict[str, Any], record_property: Any
) -> None:
    text = cell_text(cell_tagged(executed["notebook"], "throughput"))
    throughput = re.search(r"throughput: ([0-9.]+) training images/s", text)
    assert throughput is not None and float(throughput.group(1)) > 0
    record_property(
        "figure",
        f"Colab notebook on the CPU, top to bottom: {throughput.group(1)} training images/s reported",
    )
    assert "peak GPU memory: n/a on CPU" in text


def test_evaluate_prints_the_accuracy_train_reported(executed: dict[str, Any]) -> None:
    text = cell_text(cell_tagged(executed["notebook"], "evaluate"))
    accuracy = re.search(r"evaluate\.py: val top-1 ([0-9.]+).*train\.py reported top-1 ([0-9.]+)", text)
    assert accuracy is not None
    assert accuracy.group(1) == accuracy.group(2)


def test_shows_and_saves_the_loss_and_accuracy_plot(executed: dict[str, Any]) -> None:
    outputs = cell_tagged(executed["notebook"], "plot").outputs
    assert any("image/png" in output.get("data", {}) for output in outputs)
    assert (executed["run_folder"] / "curves.png").stat().st_size > 0
