"""A resumed run trusts nothing its checkpoint says beyond what a run could have written (issue 34):
crafted training states are refused in one line with exit 1, a stored data path is never followed,
and token ids beyond the vocabulary stop training in one line. Each crafted file carries a valid
digest: the digest shows a file is whole, not who wrote it."""

from __future__ import annotations

import shutil

import pytest
import torch
from click.testing import CliRunner
from conftest import TEXT

from model import checkpoint
from model.data.corpus import DataError, Splits
from model.train.cli import main
from model.train.config import TrainConfig
from model.train.loop import setup

TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "3",
        "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--log-interval", "1",
        "--warmup-iters", "2", "--device", "cpu", "--dtype", "fp32", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 4-step run on a text file: (its folder, the text file, its checkpoint as loaded)."""
    folder = tmp_path_factory.mktemp("run")
    text = folder / "tiny.txt"
    text.write_text(TEXT * 3)
    out = folder / "out"
    result = CliRunner().invoke(main, ["--data", str(text), "--out", str(out), *TINY])
    assert result.exit_code == 0, result.output
    return out, text, checkpoint.load(out / "ckpt.pt")


def crafted(run, tmp_path, change) -> tuple:
    """A copy of the run whose checkpoint ``change`` edited (and re-signed with a valid digest)."""
    out, text, ckpt = run
    state = {k: v for k, v in ckpt.items()}
    state["train"] = {**ckpt["train"], "config": dict(ckpt["train"]["config"])}
    change(state)
    folder = tmp_path / "crafted"
    folder.mkdir()
    checkpoint.save(state, folder / "ckpt.pt")
    (folder / "metrics.jsonl").write_text("")
    return folder, text


def resume(folder, text, *extra: str):
    return CliRunner().invoke(main, ["--resume", "--out", str(folder), "--data", str(text), "--max-iters",
                                     "6", *extra])


def _set(path: str, value):
    """A change that sets ckpt[a][b]... = value."""
    keys = path.split(".")

    def change(state):
        node = state
        for key in keys[:-1]:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[keys[-1]] = value
    return change


def _moment(state, value_of):
    """Replace the first AdamW moment (exp_avg of the first parameter) by value_of(moment)."""
    optimizer = {**state["train"]["optimizer"]}
    per_param = dict(optimizer["state"])
    first = dict(per_param[0])
    first["exp_avg"] = value_of(first["exp_avg"])
    per_param[0] = first
    optimizer["state"] = per_param
    state["train"]["optimizer"] = optimizer


def _rng(state, value):
    rngs = [dict(state["train"]["rng"][0])]
    rngs[0]["batch"] = value
    state["train"]["rng"] = rngs


CASES = {
    "negative step (the schedule backwards: gradient ascent)": (_set("train.step", -5), "step -5"),
    "a string step": (_set("train.step", "3"), "step '3'"),
    "a boolean step": (_set("train.step", True), "step True"),
    "a step past any run": (_set("train.step", 10**12), "step 1000000000000"),
    "no process": (_set("train.world_size", 0), "world size 0"),
    "a NaN best loss": (_set("train.best_val", float("nan")), "best val loss nan"),
    "negative training time": (_set("train.seconds", -1.0), "training seconds -1.0"),
    "a random state of the wrong size": (lambda s: _rng(s, torch.zeros(7, dtype=torch.uint8)),
                                         "a random state of the wrong kind or size"),
    "a random state of floats": (lambda s: _rng(s, torch.zeros(5056)), "a random state of the wrong kind"),
    "an optimizer state that is a list": (_set("train.optimizer", [1, 2]), "not a dict"),
    "a moment of the wrong shape": (lambda s: _moment(s, lambda m: torch.zeros(3)), "has shape (3,)"),
    "a moment of NaNs": (lambda s: _moment(s, lambda m: torch.full_like(m, torch.nan)), "values unlike"),
    "a moment of integers": (lambda s: _moment(s, lambda m: m.long()), "values unlike"),
    "a batch of 10^9 windows": (_set("train.config.batch_size", 10**9), "--batch-size must be at most 65,5"),
    "a batch size that is a string": (_set("train.config.batch_size", "64"), "--batch-size: '64' is not a"),
    "a negative learning rate": (_set("train.config.learning_rate", -1.0), "--learning-rate must be a num"),
    "an unknown device": (_set("train.config.device", "tpu"), "--device must be one of auto, cpu, cuda, mps"),
    "a budget plan of the wrong shape": (_set("train.config.budget_plan", {"max_iters": "x"}),
                                         "--budget-plan: {'max_iters': 'x'} is not a valid value"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_crafted_training_state_is_refused_in_one_line(run, tmp_path, case):
    change, says = CASES[case]
    folder, text = crafted(run, tmp_path, change)
    before = (folder / "ckpt.pt").read_bytes()
    result = resume(folder, text)
    assert result.exit_code == 1, result.output
    # one line of error, the last (before it, at most what resuming said it would change)
    error = result.output.strip().splitlines()[-1]
    assert error.startswith(f"Error: {folder / 'ckpt.pt'}"), result.output
    assert "Traceback" not in result.output
    assert says in error and "cannot be resumed" in error, error
    assert (folder / "ckpt.pt").read_bytes() == before  # nothing written


def test_the_data_path_a_checkpoint_names_is_never_followed(run, tmp_path):
    """A crafted run folder pointing its data at another file does not get that file read: the data
    of a resumed run comes from the command line."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for training " * 100)
    folder, text = crafted(run, tmp_path, _set("train.config.data", str(secret)))
    result = CliRunner().invoke(main, ["--resume", "--out", str(folder), "--max-iters", "6"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        f"Error: {folder / 'ckpt.pt'} trained on {secret}: a resumed run reads data only from a path given "
        f"on the command line, never from one stored in a file; continue with gpt-train --resume --out "
        f"{folder} --data {secret}")
    other = resume(folder, text)  # naming another file is a changed setting, refused as any other
    assert other.exit_code == 2 and f"this run's data is {secret}" in other.output


def test_the_data_may_be_named_another_way(run, tmp_path, monkeypatch):
    out, text, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    monkeypatch.chdir(text.parent)
    result = CliRunner().invoke(main, ["--resume", "--out", str(copy), "--data", f"./{text.name}",
                                       "--max-iters", "5"])
    assert result.exit_code == 0, result.output
    assert "resuming with --data" not in result.output


def test_plain_resume_of_a_text_run_says_to_name_the_data(run, tmp_path):
    out, text, _ = run
    result = CliRunner().invoke(main, ["--resume", "--out", str(out), "--max-iters", "6"])
    assert result.exit_code == 2
    assert result.output.strip().endswith(f"continue with gpt-train --resume --out {out} --data {text}")


def test_ids_beyond_the_vocabulary_stop_training_in_one_line(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text(TEXT * 3)
    cfg = TrainConfig(data=str(text), out_dir=str(tmp_path / "out"), batch_size=2, device="cpu", dtype="fp32",
                      progress=False, model=TrainConfig().model.replace(block_size=16, n_layer=1, n_head=2,
                                                                          n_embd=16))
    tr, _ = setup(cfg, log=lambda m: None)
    vocab = tr.model.config.vocab_size
    tr.splits = Splits(torch.full((100,), vocab), torch.full((100,), vocab))  # what a tampered shard holds
    with pytest.raises(DataError, match=rf"{text}: token id {vocab} is outside the vocabulary "
                                        rf"\(0..{vocab - 1}\).*gpt-prepare --verify"):
        tr.batch()
