import errno
import json
import sys

import pytest
from click.testing import CliRunner
from conftest import TEXT

from export.cli import main as export_cli
from model.train.cli import main, report
from model.train.report import split_losses


def test_help_explains_the_flags():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--preset", "--n-layer", "--block-size", "--learning-rate", "--max-iters", "--resume",
                 "--dtype", "--compile", "--data"):
        assert flag in result.output
    assert "Train a GPT" in result.output


def test_bad_flag_value_names_the_flag():
    result = CliRunner().invoke(main, ["--n-layer", "0"])
    assert result.exit_code == 2
    assert "Invalid value for '--n-layer': 0 is not in the range x>=1." in result.output


def test_invalid_combination_is_one_clear_line(tmp_path):
    result = CliRunner().invoke(main, ["--n-embd", "100", "--n-head", "6", "--out", str(tmp_path)])
    assert result.exit_code == 2  # a usage error, as click's own
    assert result.output.strip() == (
        "Error: n_embd must be divisible by n_head: 100 % 6 != 0; pick n_embd as a multiple of 6"
    )


def test_missing_data_file(tmp_path):
    result = CliRunner().invoke(main, ["--data", str(tmp_path / "none.txt"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "none.txt does not exist; pass --data shakespeare or a text file" in result.output


@pytest.mark.parametrize("command, name",
                         [(main, "gpt-train"), (report, "gpt-report"), (export_cli, "gpt-export")])
def test_every_command_has_a_version(command, name):
    result = CliRunner().invoke(command, ["--version"])
    assert result.exit_code == 0 and result.output.startswith(f"{name}, version ")


def test_report_usage_errors_exit_2_naming_a_directory(tmp_path):
    folder = CliRunner().invoke(report, ["losses", str(tmp_path)])
    assert folder.exit_code == 2
    assert folder.output.strip() == \
        f"Error: CKPT {tmp_path} is a directory; pass a checkpoint file (such as {tmp_path / 'ckpt.pt'})"
    missing = CliRunner().invoke(report, ["losses", str(tmp_path / "none.pt")])
    assert missing.exit_code == 2 and "checkpoint" in missing.output and "none.pt not found" in missing.output
    export_dir = CliRunner().invoke(export_cli, ["onnx", "--ckpt", str(tmp_path)])
    assert export_dir.exit_code == 2 and f"--ckpt {tmp_path} is a directory" in export_dir.output


def test_report_losses_follows_every_batch(tiny_ckpt, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 3)
    seen = []
    losses = split_losses(tiny_ckpt, str(text), batch_size=2, on_batch=lambda *a: seen.append(a))
    assert set(losses) == {"train", "val"}
    for split in ("train", "val"):
        calls = [(done, total) for s, done, total in seen if s == split]
        assert calls == [(i + 1, calls[0][1]) for i in range(calls[0][1])]  # 1/N ... N/N
    result = CliRunner().invoke(report, ["losses", str(tiny_ckpt), "--data", str(text)])
    assert result.exit_code == 0 and result.output.splitlines()[-1].startswith("train ")


def test_plot_into_a_missing_folder_creates_it(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps({"step": s, "loss": 4 - s / 10}) + "\n" for s in range(1, 5))
                       + json.dumps({"step": 4, "train_loss": 3.6, "val_loss": 3.7}) + "\n")
    out = tmp_path / "new" / "deeper" / "curve.png"
    result = CliRunner().invoke(report, ["plot", str(metrics), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG")


def test_several_runs_plot_side_by_side_with_their_labels(tmp_path, monkeypatch):
    files = []
    for name, offset in (("adamw", 0.0), ("muon", -0.2)):
        (tmp_path / name).mkdir()
        metrics = tmp_path / name / "metrics.jsonl"
        rows = [{"step": s, "loss": 4 - s / 10 + offset} for s in range(1, 5)]
        rows.append({"step": 4, "train_loss": 3.6, "val_loss": 3.7 + offset})
        metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
        files.append(str(metrics))
    labels = []
    import matplotlib.axes

    legend = matplotlib.axes.Axes.legend
    monkeypatch.setattr(matplotlib.axes.Axes, "legend", lambda self, *a, **k: (
        labels.extend(line.get_label() for line in self.get_lines() if not line.get_label().startswith("_")),
        legend(self, *a, **k))[1])
    out = tmp_path / "sweep.png"
    result = CliRunner().invoke(report, ["plot", *files, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes().startswith(b"\x89PNG") and labels == ["adamw: val 3.7000", "muon: val 3.5000"]
    named = CliRunner().invoke(report, ["plot", *files, "--out", str(out), "--label", "a", "--label", "m"])
    assert named.exit_code == 0 and labels[2:] == ["a: val 3.7000", "m: val 3.5000"]
    wrong = CliRunner().invoke(report, ["plot", *files, "--label", "only-one"])
    assert wrong.exit_code == 2
    assert wrong.output.strip() == "Error: 1 --label for 2 metrics files; give one per file, or none"


def test_plot_without_its_optional_extra_names_the_extra(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text(json.dumps({"step": 1, "loss": 4.0}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    result = CliRunner().invoke(report, ["plot", str(metrics), "--out", str(tmp_path / "c.png")])
    said = "plotting needs matplotlib: pip install 'gpt-from-scratch[plot]' (or pip install matplotlib)"
    assert result.exit_code == 1 and result.output == f"Error: {said}\n"
    assert not (tmp_path / "c.png").exists()


def test_a_full_disk_during_an_export_keeps_the_old_file(tiny_ckpt, tmp_path, monkeypatch):
    import onnx

    import export.onnx_export

    class Program:  # what torch.onnx.export returns, without the seconds it takes
        model_proto = onnx.helper.make_model(onnx.helper.make_graph([], "g", [], []))

    def full_disk(proto, f):
        f.write(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export.onnx_export.torch.onnx, "export", lambda *a, **k: Program())
    monkeypatch.setattr(export.onnx_export.onnx, "save_model", full_disk)
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the previous export")
    args = ["onnx", "--ckpt", str(tiny_ckpt), "--out", str(out), "--no-validate"]
    result = CliRunner().invoke(export_cli, args)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == \
        f"Error: could not write {out}: No space left on device; the old file is unchanged"
    assert out.read_bytes() == b"the previous export" and list(tmp_path.iterdir()) == [out]


def test_gpt_tui_flag_bounds_are_the_settings_bounds():
    # tui.cli repeats them so that --help imports no torch; they must not drift apart
    import model.generate.backend
    import tui.cli

    assert tui.cli.MAX_NEW_TOKENS == model.generate.backend.MAX_NEW_TOKENS
    assert tui.cli.MAX_SEED == model.generate.backend.MAX_SEED
