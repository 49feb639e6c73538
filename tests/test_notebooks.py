"""The walkthrough notebooks (README's "Learn" section) run top to bottom on this package's code."""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
ORDER = [
    "01_tokens_and_embeddings",
    "02_attention_step_by_step",
    "03_the_whole_gpt",
    "04_inside_the_shipped_model",
]


def test_the_four_notebooks_are_there_in_order():
    assert [p.stem for p in NOTEBOOKS] == ORDER


def test_readme_links_every_notebook_and_diagram():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    learn = readme[readme.index("## Learn"):]
    learn = learn[: learn.find("\n## ", 1)]
    for name in ORDER:
        assert f"notebooks/{name}.ipynb" in learn, name
    for kind in ("model", "block", "attention"):
        assert f"docs/diagrams/shakespeare-char/{kind}.svg" in learn, kind


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_shows_its_outputs(path):
    """Outputs are committed so the notebooks read on GitHub: every code cell ran, none failed,
    in order, and the file stays small enough to load quickly."""
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "re-run it top to bottom"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors[0].get("evalue")
    assert path.stat().st_size < 400_000
    # links to the diagrams and between notebooks point at files that exist
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for target in re.findall(r"\]\(([^)#]+)\)", cell.source):
                assert (path.parent / target).resolve().exists(), target


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, shakespeare_available, monkeypatch):
    # the kernel imports this checkout's package, wherever pytest was started from
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    # one thread: the notebooks' models are small, and two threads stall badly on a shared CPU
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()  # raises CellExecutionError naming the cell and its traceback
