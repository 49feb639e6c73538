"""Ctrl+C ends every command with one line and exit code 130 (the shell's code for SIGINT), not
click's "Aborted!" and 1: gpt-train and gpt-tui have their own tests; these are the others."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from export.cli import main as gpt_export
from model.data.cli import main as gpt_prepare
from model.hf.cli import main as gpt_import
from model.terminal import InterruptibleGroup
from model.train.cli import report as gpt_report


def ctrl_c(*args, **kwargs):
    raise KeyboardInterrupt


def test_a_group_ends_on_ctrl_c_in_any_subcommand():
    @click.group(cls=InterruptibleGroup)
    def tool():
        pass

    @tool.command()
    def work():
        ctrl_c()

    result = CliRunner().invoke(tool, ["work"])
    assert (result.exit_code, result.output) == (130, "interrupted\n")


@pytest.mark.parametrize("command, args, target", [
    (gpt_report, ["plot", "{metrics}"], "model.train.report.plot_learning_curve"),
    (gpt_export, ["onnx", "--ckpt", "{ckpt}", "--out", "{out}"], "export.onnx_export.export_onnx"),
    (gpt_import, ["hf", "{tmp}", "--out", "{out}"], "model.hf.load.import_hf"),
])
def test_every_tool_exits_130_on_ctrl_c(command, args, target, tiny_ckpt, tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text('{"step": 1, "loss": 4.0}\n')
    monkeypatch.setattr(target, ctrl_c, raising=False)
    given = [a.format(metrics=metrics, ckpt=tiny_ckpt, out=tmp_path / "out", tmp=tmp_path) for a in args]
    result = CliRunner().invoke(command, given)
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines()[-1] == "interrupted"
    assert "Aborted" not in result.output and "Traceback" not in result.output


def test_gpt_prepare_says_its_output_is_untouched_and_exits_130(tmp_path, monkeypatch):
    text = tmp_path / "t.txt"
    text.write_text("hello world " * 100)
    monkeypatch.setattr("model.data.prepare.prepare", ctrl_c)  # gpt-prepare imports it when it runs
    result = CliRunner().invoke(gpt_prepare, [str(text), "--out", str(tmp_path / "out")])
    assert result.exit_code == 130
    assert result.output.strip() == f"interrupted; {tmp_path / 'out'} is as it was before this run"
