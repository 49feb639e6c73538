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
