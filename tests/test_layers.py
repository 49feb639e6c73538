"""The import graph of the project's own modules, read with ``ast`` (nothing is imported): no cycle
anywhere, layers one way (model <- export <- tui <- serve), model's sub-packages by the rules of MODEL_PARTS,
and inference never pulls in the training stack."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO

PACKAGES = ("model", "export", "tui", "serve")
LAYER = {"model": 0, "export": 1, "tui": 2, "serve": 3}  # a module may import its own layer or lower ones
# inside model/: the core at its top (the network, tokenizers, checkpoints, files, devices) imports
# no sub-package; each sub-package imports the core and those named here, and nothing outside
# model.train imports the training stack, so loading a model never pulls it in
MODEL_PARTS = {"model": set(), "model.data": {"model"}, "model.generate": {"model"}, "model.hf": {"model"},
               "model.train": {"model", "model.data"}}


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


def part(name: str) -> str:
    """The unit the rules speak of: model's core or one of its sub-packages, or a top package."""
    parts = name.split(".")
    if parts[0] != "model":
        return parts[0]
    return "model" if len(parts) == 2 else ".".join(parts[:2])


def test_the_graph_sees_known_edges():
    """The scan itself works: edges we know exist are found (else every check below passes vacuously)."""
    assert "model.generate.engine" in GRAPH["model.generate.torch_backend"]
    assert "export.graph" in GRAPH["export.ort_backend"]
    assert "model.checkpoint" in GRAPH["model.train.cli"]  # `from model.checkpoint import ...`
    assert "model.train.distributed" in GRAPH["model.train.loop"]  # `from model.train import distributed`
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert {part(n) for n in GRAPH if n.startswith("model")} == MODEL_PARTS.keys()  # no part without rules


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_layers_import_one_way():
    upward = sorted(f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
                    if LAYER[b.split(".")[0]] > LAYER[a.split(".")[0]])
    assert upward == [], "layers are model <- export <- tui; these go the wrong way: " + "; ".join(upward)


def test_model_parts_import_by_their_rules():
    wrong = sorted(f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
                   if a.startswith("model") and part(b) != part(a) and part(b) not in MODEL_PARTS[part(a)])
    assert wrong == [], "model's parts import only what MODEL_PARTS allows: " + "; ".join(wrong)


def test_only_training_imports_the_training_stack():
    users = sorted(f"{a} imports {b}" for a, targets in GRAPH.items() for b in targets
                   if part(b) == "model.train" and part(a) != "model.train")
    assert users == [], "inference, export and the app must not need the training stack: " + "; ".join(users)


def test_no_script_folder_shadows_a_package():
    """`python bench/X.py` puts bench/ first on sys.path, so a bench/export.py would be imported for
    every `import export...` of that run, and the run would fail."""
    shadowing = sorted(f"{folder}/{name}.py" for folder in ("bench", "docs")
                       for name in (*PACKAGES, "tests") if (REPO / folder / f"{name}.py").exists())
    assert shadowing == [], f"rename {', '.join(shadowing)}: it shadows the package of that name"


def test_test_modules_share_helpers_through_conftest_only():
    """A test module importing another runs that module's import-time work twice under two names
    (``test_x`` and ``tests.test_x``) and ties the two modules' edits together: shared helpers live
    in conftest, imported one way (``from conftest import``), as pytest itself loads it."""
    tests = REPO / "tests"
    wrong = []
    for path in sorted(tests.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom)
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            wrong += [f"{path.name}: {name}" for name in names
                      if name.startswith("tests") or name.startswith("test_")]
    assert wrong == [], "import helpers from conftest: " + "; ".join(wrong)
