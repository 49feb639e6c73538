"""The import graph of the project's own modules, read with ``ast`` (nothing is imported): no cycles,
layers one way (model <- export <- tui), and inference never pulls in the training module."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import REPO

PACKAGES = ("model", "export", "tui")
LAYER = {"model": 0, "export": 1, "tui": 2}  # a module may import its own layer or lower ones
# the training stack: the loop, the state its checkpoints save and resume, --init-from, --attention auto,
# the optimizers and --time-budget
TRAINING = {"model.train", "model.train_state", "model.init_from", "model.attention_choice",
            "model.optimizers", "model.time_budget"}
TRAINING_USERS = {"model.cli"} | TRAINING  # the training CLI; everything else in model/ must not need it


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports() -> dict[str, set[str]]:
    """Each project module -> the project modules it imports (at any depth: lazy imports count)."""
    modules = {module_name(p): p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from model import checkpoint` imports model.checkpoint; `from model.x import y` model.x
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def find_cycle(graph: dict[str, set[str]], within: str | None = None) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None; ``within`` limits it to one package."""
    def inside(name: str) -> bool:
        return within is None or name.split(".")[0] == within

    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if not inside(nxt):
                continue
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(n for n in graph if inside(n)):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


GRAPH = project_imports()


def test_the_graph_sees_known_edges():
    """The scan itself works: edges we know exist are found (else every check below passes vacuously)."""
    assert "model.engine" in GRAPH["model.torch_backend"]
    assert "export.graph" in GRAPH["export.ort_backend"]
    assert "model.checkpoint" in GRAPH["model.cli"]  # `from model.checkpoint import ...`
    assert "model.distributed" in GRAPH["model.train"]  # `from model import distributed`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("package", ["model", "export"])
def test_no_import_cycles(package):
    cycle = find_cycle(GRAPH, within=package)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_no_import_cycles_in_tui():
    cycle = find_cycle(GRAPH, within="tui")
    if cycle is not None:
        pytest.xfail("tui import cycle, being removed on the tui side of issue 16: " + " -> ".join(cycle))


def test_no_import_cycles_across_packages():
    cycle = find_cycle(GRAPH)
    assert cycle is None or any(name.startswith("tui") for name in cycle), \
        "import cycle: " + " -> ".join(cycle or [])


def test_layers_import_one_way():
    upward = sorted(f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
                    if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]])
    assert upward == [], "layers are model <- export <- tui; these go the wrong way: " + "; ".join(upward)


def test_only_the_training_cli_imports_the_training_module():
    assert TRAINING <= GRAPH.keys()  # a renamed module would make the check below pass vacuously
    users = sorted(a for a, targets in GRAPH.items() if TRAINING & targets and a.startswith("model."))
    assert set(users) <= TRAINING_USERS, f"{', '.join(sorted(set(users) - TRAINING_USERS))} import " \
        f"{', '.join(sorted(TRAINING))}; inference and reports must not need the training stack " \
        "(see model.device)"
