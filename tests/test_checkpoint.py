import os
from pathlib import Path

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
    with pytest.raises(CheckpointError) as e:
        load(path)
    assert not marker.exists()
    assert str(e.value).endswith("evil.pt: it needs code to load (posix.system), which could do "
                                 "anything; checkpoints of ours hold only weights and plain data. "
                                 "It was not loaded")
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


def test_truncated_and_foreign_files_are_refused(tiny_ckpt, tmp_path):
    data = tiny_ckpt.read_bytes()

    def refusal(name: str, content: bytes) -> str:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as e:
            load(path)
        return str(e.value)

    damaged = "is damaged (cut short or overwritten: its zip directory is unreadable); use another copy"
    assert damaged in refusal("cut.pt", data[: len(data) // 2])
    assert damaged in refusal("one-byte-short.pt", data[:-1])
    not_ours = "is not a checkpoint of ours (not a PyTorch zip archive)"
    assert not_ours in refusal("notes.pt", b"hello")
    assert not_ours in refusal("random.pt", bytes(range(256)) * 4)
    assert "empty.pt is not a checkpoint of ours (an empty file)" in refusal("empty.pt", b"")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    with pytest.raises(CheckpointError, match="other.pt is not a checkpoint of ours"):
        load(other)
    with pytest.raises(CheckpointError, match="missing.pt not found"):
        load(tmp_path / "missing.pt")


def flip_bytes_in(path, member_part: str, count: int = 64) -> None:
    """Invert ``count`` bytes in the middle of the first zip member whose name contains ``member_part``
    (stored uncompressed by torch.save, so the bytes are the tensor's)."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if member_part in i.filename)
    data = bytearray(path.read_bytes())
    name_len, extra_len = (int.from_bytes(data[info.header_offset + o: info.header_offset + o + 2], "little")
                           for o in (26, 28))
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2 - count // 2
    for i in range(start, start + count):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_anywhere_make_the_file_damaged(tiny_ckpt, tmp_path):
    full = load(tiny_ckpt) | {"train": {"step": 7, "optimizer": {"state": {0: {"exp_avg": torch.ones(500)}}}}}
    path = tmp_path / "full.pt"
    checkpoint.save(full, path)
    assert load(path)["digest"].startswith("sha256:")
    sizes = {}
    import zipfile

    with zipfile.ZipFile(path) as z:
        sizes = {i.filename: i.file_size for i in z.infolist() if "/data/" in i.filename}
    optimizer_member = max(sizes, key=sizes.get)  # the 500 floats of optimizer state
    flip_bytes_in(path, optimizer_member)
    with pytest.raises(CheckpointError, match=r"full.pt is damaged \(its contents differ from the digest "
                                              r"stored when it was written\)"):
        load(path)


def test_files_without_a_digest_from_before_it_still_load(tiny_ckpt, tmp_path):
    old = {k: v for k, v in load(tiny_ckpt).items() if k != "digest"} | {"format": "gpt-from-scratch/1"}
    torch.save(old, tmp_path / "old.pt")
    load_model(tmp_path / "old.pt")


def saved_with(tiny_ckpt, tmp_path, change) -> Path:
    ckpt = load(tiny_ckpt)
    change(ckpt)
    path = tmp_path / "changed.pt"
    checkpoint.save(ckpt, path)  # with a fresh digest: these are the writer's mistakes, not damage
    return path


@pytest.mark.parametrize("change, message", [
    (lambda c: c["config"].update(block_size=20000),
     r"weights do not match its config \(wpe.weight is \(32, 16\) in the file, "
     r"the config needs \(20000, 16\)\)"),
    (lambda c: c["config"].update(block_size=200000), "block_size must be at most 32768, got 200000"),
    (lambda c: c["config"].update(vocab_size=1e9), "vocab_size must be a positive integer, got 1000000000.0"),
    (lambda c: c["config"].update(bias="yes"), "bias must be true or false, got 'yes'"),
    (lambda c: c.update(config=[1, 2]), r"is damaged \(its 'config' is a list, not a dict\)"),
    (lambda c: c["model"].update({"wte.weight": c["model"]["wte.weight"].long()}),
     r"is damaged \(wte.weight is torch.int64, not a float32/16 or bfloat16 weight\)"),
    (lambda c: c["model"]["ln_f.weight"].fill_(float("nan")),
     r"is damaged \(16 value\(s\) of ln_f.weight are NaN or infinite\)"),
    (lambda c: c["model"].update({"extra": torch.zeros(1)}), r"weights do not match its config \(unexpected"),
    (lambda c: c.update(tokenizer=["a", "b"]), r"is damaged \(its 'tokenizer' is a list, not a dict\)"),
    (lambda c: c["tokenizer"].update(kind="sentencepiece"), "unknown tokenizer kind 'sentencepiece'"),
    (lambda c: c["tokenizer"].update(chars=""),
     "unusable config or tokenizer: a character vocabulary must be a non-empty string"),
    (lambda c: c["tokenizer"].update(chars=list("abc")),
     "unusable config or tokenizer: a character vocabulary must be a non-empty string"),
    (lambda c: c.update(tokenizer={"kind": "bpe", "encoding": "gpt2"}),
     r"unusable config or tokenizer: GPT-2's BPE ranks at .*nope.tiktoken \(\$GPT_BPE_RANKS\): absent"),
    (lambda c: c.update(meta=["steps", 3]), r"is damaged \(its 'meta' is a list, not a dict\)"),
])
def test_bad_contents_are_refused_in_one_line(tiny_ckpt, tmp_path, monkeypatch, change, message):
    monkeypatch.setenv("GPT_BPE_RANKS", str(tmp_path / "nope.tiktoken"))
    path = saved_with(tiny_ckpt, tmp_path, change)
    with pytest.raises(CheckpointError, match=message) as e:
        load_model(path)
    assert "\n" not in str(e.value) and "changed.pt" in str(e.value)


def test_a_small_file_cannot_ask_for_gigabytes(tiny_ckpt, tmp_path, monkeypatch):
    """Weights that match a config of 64 layers, 1 wide, 16384 positions: a few hundred KB on disk,
    but 17 GB of causal masks. Refused before the model is built."""
    from model.config import GPTConfig
    from model.gpt import GPT

    config = GPTConfig(vocab_size=97, block_size=16384, n_layer=64, n_head=1, n_embd=1, dropout=0.0)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in GPT(config).state_dict().items()}
    weights = {k: torch.zeros(s) for k, s in shapes.items()}
    checkpoint.save(load(tiny_ckpt) | {"config": config.to_dict(), "model": weights}, tmp_path / "big.pt")
    build = checkpoint.build_model

    def only_on_meta(c):
        assert torch.get_default_device().type == "meta", "the model was built for real"
        return build(c)

    monkeypatch.setattr(checkpoint, "build_model", only_on_meta)
    with pytest.raises(CheckpointError, match=r"big.pt: its config needs 17.2 GB for a model whose weights"):
        load_model(tmp_path / "big.pt")


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

    from model.train.cli import report

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
