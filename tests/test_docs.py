"""Every command README and the guides print is one the tools accept: each fenced ``bash`` line that
runs one of our commands names a subcommand and flags that exist (read from the click commands
themselves, nothing is run), and CI runs README's test command exactly as README prints it."""

from __future__ import annotations

import shlex

import click
import pytest
from conftest import FENCE, REPO, split_commands, unknown_flags

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "checkpoints" / "README.md"]


def commands() -> dict[str, click.Command]:
    from export.cli import main as gpt_export
    from model.data.cli import main as gpt_prepare
    from model.hf.cli import main as gpt_import
    from model.train.cli import main as gpt_train
    from model.train.cli import report as gpt_report
    from tui.cli import main as gpt_tui

    return {"gpt-train": gpt_train, "gpt-report": gpt_report, "gpt-export": gpt_export,
            "gpt-import": gpt_import, "gpt-prepare": gpt_prepare, "gpt-tui": gpt_tui}


MODULES = {"model.train.cli": "gpt-train"}  # `python -m ...` and torchrun's `-m ...`


def invocations() -> list[tuple[str, int, list[str]]]:
    """(file, line, words) of each call of one of our commands in a fenced bash block."""
    found = []
    for path in DOCS:
        text = path.read_text(encoding="utf-8")
        for block in FENCE.finditer(text):
            first_line = text[:block.start(1)].count("\n") + 1
            joined = block.group(1).replace("\\\n", " \n")  # continuation lines stay on their first
            for offset, line in enumerate(joined.split("\n")):
                words = shlex.split(line, comments=True) if line.strip() else []
                for part in split_commands(words):
                    for i, word in enumerate(part):
                        name = MODULES.get(word) if i and part[i - 1] == "-m" else word
                        if name in ("gpt-train", "gpt-report", "gpt-export", "gpt-import", "gpt-prepare",
                                    "gpt-tui"):
                            found.append((path.relative_to(REPO).as_posix(), first_line + offset,
                                          [name, *part[i + 1:]]))
                            break
    return found




CALLS = invocations()


def test_the_docs_call_our_commands():
    """The scan finds what it must (else the check below would pass on nothing)."""
    names = {words[0] for _, _, words in CALLS}
    assert {"gpt-train", "gpt-report", "gpt-export", "gpt-import", "gpt-prepare", "gpt-tui"} <= names
    assert len(CALLS) > 40
    assert unknown_flags(commands()["gpt-export"], ["onnx", "--no-such-flag", "x"]) == ["--no-such-flag"]


@pytest.mark.parametrize("where, line, words", CALLS, ids=[f"{f}:{n}" for f, n, _ in CALLS])
def test_every_documented_flag_exists(where, line, words):
    wrong = unknown_flags(commands()[words[0]], words[1:])
    assert wrong == [], f"{where}:{line}: {' '.join(words)}: {words[0]} has no {', '.join(wrong)}"


def test_ci_runs_readme_test_command_as_printed():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    printed = [b for b in FENCE.findall(readme) if "pytest" in b]
    assert len(printed) == 1, "README prints one test command"
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert printed[0].strip() in ci
