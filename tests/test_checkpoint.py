import os

import pytest
import torch

from model import checkpoint
from model.checkpoint import CheckpointError, load, load_model, write_slim


class Exploit:
    """Unpickling this would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"format": checkpoint.FORMAT, "model": Exploit(marker)}, path)
    with pytest.raises(CheckpointError, match=r"refusing to load .*evil.pt: it needs arbitrary Python"):
        load(path)
    assert not marker.exists()


def test_truncated_and_foreign_files_are_refused(tiny_ckpt, tmp_path):
    data = tiny_ckpt.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt is truncated or not a PyTorch checkpoint"):
        load(cut)
    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt is truncated or not a PyTorch checkpoint"):
        load(text)
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="other.pt is not a gpt-from-scratch checkpoint"):
        load(other)
    with pytest.raises(CheckpointError, match="missing.pt not found"):
        load(tmp_path / "missing.pt")


def test_failed_write_leaves_the_old_checkpoint_intact(tiny_ckpt, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    path.write_bytes(tiny_ckpt.read_bytes())

    def dies_half_way(obj, f):
        f.write(b"partial bytes")
        raise KeyboardInterrupt  # e.g. Ctrl+C during the write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save({"model": {}}, path)
    assert path.read_bytes() == tiny_ckpt.read_bytes()
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


def test_slim_half_precision_round_trip(tiny_ckpt, tmp_path):
    model, tok, _ = load_model(tiny_ckpt)
    write_slim(tiny_ckpt, tmp_path / "slim.pt", torch.float16)
    slim, tok2, _ = load_model(tmp_path / "slim.pt")
    assert tok2.to_dict() == tok.to_dict()
    idx = torch.tensor([tok.encode("ROMEO:")])
    torch.testing.assert_close(slim(idx)[0], model(idx)[0], rtol=0, atol=2e-3)


def test_weights_that_do_not_match_the_config_are_refused(tiny_ckpt, tmp_path):
    ckpt = load(tiny_ckpt)
    ckpt["config"]["n_layer"] = 3
    bad = tmp_path / "bad.pt"
    checkpoint.save(ckpt, bad)
    with pytest.raises(CheckpointError, match="weights do not match its config"):
        load_model(bad)


def test_gpt_report_slim_drops_training_state(tiny_ckpt, tmp_path):
    from click.testing import CliRunner

    from model.cli import report

    full = load(tiny_ckpt) | {"train": {"step": 7, "optimizer": {"state": {0: torch.zeros(1000)}}}}
    full["meta"] = {"steps": 7, "train_config": {"out_dir": "/home/someone/runs/x", "batch_size": 4}}
    checkpoint.save(full, tmp_path / "full.pt")
    result = CliRunner().invoke(report, ["slim", str(tmp_path / "full.pt"), str(tmp_path / "slim.pt")])
    assert result.exit_code == 0, result.output
    slim = load(tmp_path / "slim.pt")
    assert "train" not in slim  # no optimizer state, and no path of the training machine:
    assert slim["meta"] == {"steps": 7, "train_config": {"batch_size": 4}}
    assert all(torch.equal(slim["model"][k], v) for k, v in full["model"].items())

    args = ["slim", str(tmp_path / "full.pt"), str(tmp_path / "h.pt"), "--dtype", "fp16"]
    half = CliRunner().invoke(report, args)
    assert half.exit_code == 0, half.output
    weights = load(tmp_path / "h.pt")["model"].values()
    assert {w.dtype for w in weights if w.is_floating_point()} == {torch.float16}

    missing = CliRunner().invoke(report, ["slim", str(tmp_path / "nope.pt"), str(tmp_path / "x.pt")])
    assert missing.exit_code == 2 and "checkpoint" in missing.output and "nope.pt not found" in missing.output
    assert not (tmp_path / "x.pt").exists()
