"""A training run is never lost or silently changed: the run folder's rules (refuse, overwrite, lock,
leftovers), exact resume with the stored settings, metrics cut back, no non-finite checkpoint,
full disks, Ctrl+C and the exit codes of gpt-train."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import REPO, TEXT, TINY, stored

import model.train.loop as train_module
from model.config import GPTConfig
from model.train import run_folder
from model.train.cli import main
from model.train.config import SettingsError, StoredSettingsError, TrainConfig, fresh, resumed
from model.train.report import read_metrics


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT * 3)
    return path


def gpt_train(*args: str):
    return CliRunner().invoke(main, list(args))


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- the run folder -------------------------------------------------------------------------------

def test_an_existing_run_is_refused_and_left_alone(text, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"the old checkpoint")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0}\n')
    result = gpt_train("--data", str(text), "--out", str(out), *TINY)
    assert result.exit_code == 2
    assert result.output == (f"Error: {out} already holds a run (ckpt.pt, metrics.jsonl): continue it "
                             "with --resume, or pass --overwrite to replace it\n")
    assert (out / "ckpt.pt").read_bytes() == b"the old checkpoint"
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "loss": 4.0}\n'


def test_overwrite_starts_afresh(text, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "ckpt.pt").write_bytes(b"the old checkpoint")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0}\n{"step": 9, "loss": 3.0}\n')
    result = gpt_train("--data", str(text), "--out", str(out), "--overwrite", *TINY)
    assert result.exit_code == 0, result.output
    assert [r["step"] for r in rows(out) if "loss" in r] == [1, 2, 3, 4]  # only the new run's
    assert stored(out)["train"]["step"] == 4
    assert f"done: {out / 'ckpt.pt'} holds step 4, val loss" in result.output


def test_resume_and_overwrite_together_are_refused(tmp_path):
    result = gpt_train("--out", str(tmp_path), "--resume", "--overwrite")
    assert result.exit_code == 2
    assert "--resume continues a run and --overwrite replaces it; pass one of them" in result.output


def test_resume_without_a_checkpoint_is_a_usage_error(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 4.0}\n')
    result = gpt_train("--out", str(tmp_path), "--resume")
    assert result.exit_code == 2
    assert result.output.strip() == (f"Error: --resume: {tmp_path / 'ckpt.pt'} does not exist (its run "
                                     "stopped before its first evaluation); start a new run with --overwrite")


def test_a_second_run_into_a_locked_folder_is_refused_naming_the_holder(text, tmp_path):
    out = tmp_path / "run"
    with run_folder.locked(out):  # another open file description: flock treats it as another holder
        result = gpt_train("--data", str(text), "--out", str(out), *TINY)
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {out} is in use by another gpt-train (PID {os.getpid()}); "
                                     "wait for it to finish, or pass another --out")
    assert not (out / "metrics.jsonl").exists()


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from model.train.run_folder import locked\nwith locked(Path(sys.argv[1])):\n"
         "    print('locked', flush=True); time.sleep(60)",
         str(tmp_path)],
        cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(run_folder.RunLockedError, match=f"PID {holder.pid}\\)"):
            with run_folder.locked(tmp_path):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (tmp_path / ".lock").read_text().strip() == str(holder.pid)  # the stale file stays...
    with run_folder.locked(tmp_path):  # ...and does not block
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())


# --- resume ---------------------------------------------------------------------------------------

def test_resume_restores_every_setting_and_cuts_the_metrics(text, tmp_path):
    out = tmp_path / "run"
    first = gpt_train("--data", str(text), "--out", str(out), "--grad-clip", "0.5", "--beta2", "0.95", *TINY)
    assert first.exit_code == 0, first.output
    before = stored(out)["train"]["config"]
    # what a killed run leaves: rows after the checkpoint's step, a torn line, half-written temp files
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "loss": 2.0}\n{"step": 6, "lo')
    (out / ".ckpt.pt.k1ll3d.tmp").write_bytes(b"half")
    (out / ".metrics.jsonl.k1ll3d.tmp").write_text("half")
    (out / ".notes.tmp").write_text("not ours")

    result = gpt_train("--resume", "--out", str(out), "--data", str(text), "--max-iters", "6")
    assert result.exit_code == 0, result.output
    after = stored(out)["train"]["config"]
    assert after == before | {"max_iters": 6, "lr_decay_iters": 4, "resume": True}  # nothing else moved
    assert result.output.count("resuming with --max-iters 6 (was 4)") == 1
    assert "cosine to step 4, then 0.0001" in result.output
    assert "removed 2 temp file(s) a killed run left in" in result.output
    left = sorted(p.name for p in out.iterdir())
    assert left == [".lock", ".notes.tmp", "best.pt", "ckpt.pt", "metrics.jsonl"]
    assert "dropped 2 row(s) logged after step 4" in result.output
    train_steps = [r["step"] for r in rows(out) if "loss" in r]
    eval_steps = [r["step"] for r in rows(out) if "val_loss" in r]
    assert train_steps == [1, 2, 3, 4, 5, 6] and eval_steps == [2, 4, 6]


def test_resume_refuses_a_changed_setting_naming_the_stored_value(text, tmp_path):
    out = tmp_path / "run"
    assert gpt_train("--data", str(text), "--out", str(out), *TINY).exit_code == 0
    ckpt_before = (out / "ckpt.pt").read_bytes()
    result = gpt_train("--resume", "--out", str(out), "--data", str(text), "--batch-size", "64")
    assert result.exit_code == 2
    assert result.output.startswith(
        f"Error: --batch-size 64: this run's batch-size is 3 (stored in {out / 'ckpt.pt'}); a resumed run "
        "keeps its settings (only --max-iters, --eval-interval, --log-interval, --progress may change)")
    preset = gpt_train("--resume", "--out", str(out), "--data", str(text), "--preset", "cpu")
    assert preset.exit_code == 2 and "--preset cpu (which sets" in preset.output
    shape = gpt_train("--resume", "--out", str(out), "--data", str(text), "--n-layer", "3")
    assert shape.exit_code == 2 and "--n-layer 3: this run's n-layer is 2" in shape.output
    assert (out / "ckpt.pt").read_bytes() == ckpt_before
    same = gpt_train("--resume", "--out", str(out), "--data", str(text), "--batch-size", "3", "--max-iters",
                     "5")  # equal: fine
    assert same.exit_code == 0, same.output


def test_resumed_config_rules():
    model = GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=16, vocab_size=50)
    run = TrainConfig(model=model, batch_size=3, max_iters=10, warmup_iters=2)
    saved = json.loads(json.dumps({k: v for k, v in vars(run).items() if k != "model"}))
    cfg, notes = resumed(saved, model, {}, "out", 6, "out/ckpt.pt")
    assert cfg == run.replace(resume=True) and notes == []
    cfg, notes = resumed(saved, model, {"eval_interval": 3, "log_interval": 2, "progress": False,
                                        "batch_size": 3}, "out", 6, "x")
    assert (cfg.eval_interval, cfg.log_interval, cfg.progress, cfg.batch_size) == (3, 2, False, 3)
    assert notes == ["resuming with --eval-interval 3 (was 250)", "resuming with --log-interval 2 (was 10)",
                     "resuming with --no-progress (was True)"]
    with pytest.raises(SettingsError, match="--max-iters 6: x is already at step 6; pass a larger"):
        resumed(saved, model, {"max_iters": 6}, "out", 6, "x")
    with pytest.raises(SettingsError, match="--compile: this run's compile is False"):
        resumed(saved, model, {"compile": True}, "out", 6, "x")
    with pytest.raises(SettingsError, match="--lr-decay-iters 20: this run's lr-decay-iters is 10"):
        resumed(saved, model, {"lr_decay_iters": 20}, "out", 6, "x")
    assert resumed(saved, model, {"lr_decay_iters": 10}, "out", 6, "x")[1] == []  # the same schedule
    assert resumed(saved | {"overwrite": True}, model, {}, "out", 6, "x")[0].resume  # started afresh: fine
    with pytest.raises(StoredSettingsError, match="newer gpt-from-scratch"):
        resumed(saved | {"flash": True}, model, {}, "out", 6, "x")


def test_metrics_are_cut_back_to_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / s}) for s in range(1, 9)] + ['{"step": 9, "lo']
    path.write_text("\n".join(lines))
    assert run_folder.cut_metrics(path, 5) == 4
    assert path.read_text() == "".join(line + "\n" for line in lines[:5])
    assert run_folder.cut_metrics(path, 5) == 0 and run_folder.cut_metrics(tmp_path / "none", 3) == 0


def test_the_plot_keeps_the_last_row_of_each_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    logged = [(1, 4.0), (2, 3.0), (3, 2.5), (2, 3.1), (3, 2.6), (4, 2.4)]  # resumed from step 1, old style
    path.write_text("".join(json.dumps({"step": s, "loss": v}) + "\n" for s, v in logged)
                    + json.dumps({"step": 2, "train_loss": 3, "val_loss": 3.5}) + "\n"
                    + json.dumps({"step": 2, "train_loss": 3, "val_loss": 3.4}) + "\n" + '{"step"')
    train_rows, eval_rows = read_metrics(path)
    assert [(r["step"], r["loss"]) for r in train_rows] == [(1, 4.0), (2, 3.1), (3, 2.6), (4, 2.4)]
    assert [(r["step"], r["val_loss"]) for r in eval_rows] == [(2, 3.4)]


# --- nothing non-finite is saved ------------------------------------------------------------------

def test_a_non_finite_evaluation_keeps_the_last_good_checkpoint(text, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real = train_module.evaluate

    def poisoned(tr, iters=None):
        losses = real(tr, iters)
        return losses if tr.step < 4 else {"train": float("nan"), "val": float("nan")}

    monkeypatch.setattr(train_module, "evaluate", poisoned)
    result = gpt_train("--data", str(text), "--out", str(out), *TINY)
    assert result.exit_code == 1
    val = stored(out)["meta"]["val_loss"]
    assert result.output.splitlines()[-1] == (
        f"Error: step 4: evaluation gave val loss nan (train nan); stopped without saving: {out / 'ckpt.pt'} "
        f"still holds step 2 (val loss {val:.4f}) (try a lower --learning-rate or --dtype fp32)")
    assert stored(out)["train"]["step"] == 2


def test_non_finite_weights_are_not_saved(text, tmp_path, monkeypatch):
    real = train_module.evaluate

    def poisoned(tr, iters=None):
        with torch.no_grad():
            tr.model.lm_head.weight[0, 0] = float("inf")
        return real(tr, iters) | {"train": 1.0, "val": 1.0}  # an evaluation that missed it

    monkeypatch.setattr(train_module, "evaluate", poisoned)
    result = gpt_train("--data", str(text), "--out", str(tmp_path / "run"), *TINY)
    assert result.exit_code == 1
    assert "step 2: the weights hold values that are not finite; stopped without saving: nothing was saved" \
        in result.output
    assert not (tmp_path / "run" / "ckpt.pt").exists()


def fp16_trainer(text, tmp_path):
    model = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    cfg = TrainConfig(model=model, data=str(text), out_dir=str(tmp_path), batch_size=2, max_iters=50,
                      device="cpu", dtype="fp16", progress=False)
    tr, _ = train_module.setup(cfg, log=lambda m: None)
    assert tr.scaler is not None
    return tr


def test_fp16_stops_after_consecutive_skipped_steps(text, tmp_path):
    tr = fp16_trainer(text, tmp_path)
    tr.model.lm_head.weight.register_hook(lambda g: torch.full_like(g, float("inf")))  # loss stays finite
    for _ in range(train_module.MAX_SKIPPED_STEPS - 1):
        loss, _ = train_module.train_step(tr)  # skipped by the scaler, as at an fp16 run's start
        assert loss == loss
    with pytest.raises(train_module.NonFiniteError, match="step 7: the fp16 gradients overflowed 8 steps in"):
        train_module.train_step(tr)


def test_fp16_stops_at_once_on_a_non_finite_loss(text, tmp_path):
    tr = fp16_trainer(text, tmp_path)
    with torch.no_grad():
        tr.model.ln_f.weight[0] = float("nan")
    with pytest.raises(train_module.NonFiniteError, match="step 0: loss nan"):
        train_module.train_step(tr)


@pytest.mark.parametrize("args, message", [
    (["--learning-rate", "1e39"], "Invalid value for '--learning-rate': 1e+39 is not in the range 0<x<=1."),
    (["--learning-rate", "nan"], "Error: --learning-rate must be a number in (0, 1], got nan"),
    (["--min-lr", "0.5", "--learning-rate", "0.1"], "Error: --min-lr must be a number in [0, 0.1], got 0.5"),
    (["--seed", "-1"], "Invalid value for '--seed': -1 is not in the range 0<=x<=4294967295."),
    (["--beta2", "1"], "Invalid value for '--beta2': 1.0 is not in the range 0<=x<1."),
])
def test_out_of_range_values_are_usage_errors(args, message, tmp_path):
    result = gpt_train("--out", str(tmp_path), *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output


def test_library_config_ranges():
    with pytest.raises(SettingsError, match=r"--learning-rate must be a number in \(0, 1\], got 1e\+39"):
        TrainConfig(learning_rate=1e39)
    with pytest.raises(SettingsError, match=r"--grad-clip must be a number in \[0, inf\), got inf"):
        TrainConfig(grad_clip=float("inf"))


# --- full disks, Ctrl+C ---------------------------------------------------------------------------

def test_a_full_disk_on_save_keeps_the_old_checkpoint(text, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real, saves = torch.save, []

    def save(obj, f, *args, **kwargs):
        saves.append(Path(f.name).name.startswith(".ckpt.pt."))  # best.pt may be written too
        if sum(saves) == 2 and saves[-1]:
            f.write(b"half a checkpoint")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    result = gpt_train("--data", str(text), "--out", str(out), *TINY)
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"Error: step 4: could not write {out / 'ckpt.pt'}: No space left on device; the old file is "
        f"unchanged; free some space, then continue with gpt-train --resume --out {out} --data {text}")
    assert stored(out)["train"]["step"] == 2
    assert sorted(p.name for p in out.iterdir()) == [".lock", "best.pt", "ckpt.pt", "metrics.jsonl"]


def test_ctrl_c_says_what_is_saved_and_exits_130(text, tmp_path, monkeypatch):
    real = train_module.train_step

    def interrupt_at(step):
        def train_step(tr):
            if tr.step == step:
                raise KeyboardInterrupt
            return real(tr)
        return train_step

    monkeypatch.setattr(train_module, "train_step", interrupt_at(1))
    early = gpt_train("--data", str(text), "--out", str(tmp_path / "a"), *TINY)
    assert early.exit_code == 130
    assert early.output.splitlines()[-1] == (
        "interrupted at step 1; nothing saved yet (the first checkpoint comes at step 2): start again with "
        "the same flags and --overwrite")
    monkeypatch.setattr(train_module, "train_step", interrupt_at(3))
    late = gpt_train("--data", str(text), "--out", str(tmp_path / "b"), *TINY)
    assert late.exit_code == 130
    val = stored(tmp_path / "b")["meta"]["val_loss"]
    assert late.output.splitlines()[-1] == (
        f"interrupted at step 3; {tmp_path / 'b' / 'ckpt.pt'} holds step 2 (val loss {val:.4f}): continue "
        f"with gpt-train --resume --out {tmp_path / 'b'} --data {text}")


# --- presets, progress, usage errors --------------------------------------------------------------

def test_the_cpu_preset_is_nanogpts_cpu_recipe():
    cfg = fresh("cpu", {})
    m = cfg.model
    assert (m.n_layer, m.n_head, m.n_embd, m.block_size, m.dropout) == (4, 4, 128, 64, 0.0)
    assert (cfg.batch_size, cfg.eval_iters, cfg.log_interval, cfg.max_iters, cfg.decay_iters) == \
        (12, 20, 1, 2000, 2000)
    assert (cfg.learning_rate, cfg.min_lr, cfg.warmup_iters, cfg.beta2, cfg.device, cfg.compile) == \
        (1e-3, 1e-4, 100, 0.99, "cpu", False)
    assert cfg.dtype == "fp32"  # nanoGPT on a CPU: no autocast
    assert fresh("cpu", {"batch_size": 8, "n_layer": 2}).batch_size == 8  # still overridable
    assert fresh("shakespeare-char", {}).batch_size == 64


def test_the_cli_passes_the_presets_training_settings(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr("model.train.cli.run", lambda cfg, given, named, started: seen.append(cfg))
    assert gpt_train("--preset", "cpu", "--out", str(tmp_path), "--eval-iters", "5").exit_code == 0
    assert (seen[0].batch_size, seen[0].eval_iters, seen[0].model.block_size) == (12, 5, 64)


def test_progress_lines_name_the_numbers(text, tmp_path):
    result = gpt_train("--data", str(text), "--out", str(tmp_path / "run"), *TINY)
    assert result.exit_code == 0, result.output
    assert "MFU is per process, relative to this CPU's float32 matmul rate, " in result.output
    assert "GFLOP/s (measured once on this machine and kept in " in result.output
    line = next(line for line in result.output.splitlines() if line.startswith("step 3/4"))
    for part in ("loss ", "lr ", " ms/step", " tok/s", "MFU ", "% ", "ETA "):
        assert part in line
    row = next(r for r in rows(tmp_path / "run") if "loss" in r)
    assert {"ms_per_step", "tokens_per_s", "mfu", "lr"} <= set(row)


@pytest.mark.parametrize("args, message", [
    (["--data", "{dir}"], "Error: --data {dir} is a directory without manifest.json; prepare it with "
     "gpt-prepare SRC --out {dir}, or pass a UTF-8 text file or shakespeare"),
    (["--data", "{dir}/none.txt"], "Error: --data {dir}/none.txt does not exist"),
])
def test_data_that_is_not_a_file_is_a_usage_error(args, message, tmp_path):
    args = [a.format(dir=tmp_path) for a in args]
    result = gpt_train("--out", str(tmp_path / "run"), *args)
    assert result.exit_code == 2
    assert result.output.startswith(message.format(dir=tmp_path))


def test_the_commands_import_no_torch_until_work_starts():
    code = ("import sys, model.train.cli, export.cli; heavy = {'torch', 'onnx', 'rich', 'matplotlib'} & "
            "set(sys.modules); print(sorted(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=os.environ | {"PYTHONPATH": str(REPO)},
                          capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stderr


@pytest.mark.slow  # starts several gpt-train processes, seconds each
def test_kill_9_then_plain_resume_equals_an_uninterrupted_run(tmp_path):
    """bench/kill_resume.py with fewer kills: SIGKILL at random moments, then `--resume` alone."""
    from bench.kill_resume import measure

    result = measure(kills=3, steps=60, seed=3, work=tmp_path, say=lambda m: None)
    assert result["kills"] >= 1  # a process that ends before its kill moment is simply not killed
    assert result["weights_equal"] and result["each_step_once"] and result["losses_equal"], result
