"""Data parallel on CPU: two gloo ranks under torchrun train exactly like one process that sees
both ranks' samples in one doubled batch, and resume inside the distributed run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ACCUM, BATCH, BLOCK, DIST_FLAGS, REPO, STEPS, TEXT, torchrun

from model.checkpoint import CheckpointError
from model.config import GPTConfig
from model.data.corpus import get_batch
from model.train.distributed import SINGLE, Dist, batch_generator, from_env
from model.train.loop import TrainConfig, setup, train_step
from model.train.state import saved_rng


@pytest.fixture(scope="module")
def text(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("text") / "tiny.txt"
    path.write_text(TEXT * 3)
    return path


@pytest.fixture(scope="module")
def straight(text, tmp_path_factory) -> tuple[Path, list[float]]:
    """One uninterrupted 2-rank run of STEPS steps."""
    out = tmp_path_factory.mktemp("straight")
    return out, torchrun(text, out, "--max-iters", str(STEPS))


@pytest.fixture
def one_thread():
    """The reference run as torchrun's ranks run (OMP_NUM_THREADS=1): a 16-wide model gains
    nothing from more threads, and on a busy 2-core machine they wait on each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_ranks_match_one_process_with_the_doubled_batch(text, straight, tmp_path, one_thread):
    _, ddp_losses = straight
    model = GPTConfig(block_size=BLOCK, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    cfg = TrainConfig(model=model, data=str(text), out_dir=str(tmp_path), batch_size=2 * BATCH,
                      grad_accum=ACCUM, max_iters=STEPS, warmup_iters=2, learning_rate=1e-2,
                      device="cpu", dtype="fp32", progress=False)
    tr, _ = setup(cfg, log=lambda m: None)  # same seed: rank 0's initial weights
    rank_gens = [batch_generator(cfg.seed, rank) for rank in range(2)]

    def doubled(split="train", gen=None):  # (2B, T): rank 0's micro-batch, then rank 1's
        x, y = zip(*(get_batch(tr.splits.train, BATCH, BLOCK, g) for g in rank_gens), strict=True)
        return torch.cat(x), torch.cat(y)

    tr.batch = doubled
    reference = [train_step(tr)[0] for _ in range(STEPS)]
    assert len(ddp_losses) == STEPS
    assert reference[0] - reference[-1] > 0.05  # it learns: the comparison is not of constants
    # DDP averages gradients in another order than one big batch sums them: float rounding only
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(reference), rtol=0, atol=1e-5)


@pytest.mark.slow
def test_resume_inside_a_distributed_run(text, straight, tmp_path):
    straight_out, straight_losses = straight
    torchrun(text, tmp_path, "--max-iters", "3", "--lr-decay-iters", str(STEPS))
    resumed = torchrun(text, tmp_path, "--max-iters", str(STEPS), "--resume")  # metrics.jsonl appends
    torch.testing.assert_close(torch.tensor(resumed), torch.tensor(straight_losses), rtol=0, atol=1e-6)

    t = torch.load(straight_out / "ckpt.pt", weights_only=True)["train"]
    assert t["world_size"] == 2 and len(t["rng"]) == 2
    assert not torch.equal(t["rng"][0]["batch"], t["rng"][1]["batch"])  # each rank its own stream
    meta = torch.load(straight_out / "ckpt.pt", weights_only=True)["meta"]
    assert meta["tokens_seen"] == STEPS * 2 * ACCUM * BATCH * BLOCK  # the effective batch

    one = TrainConfig(data=str(text), out_dir=str(tmp_path), resume=True, device="cpu")
    with pytest.raises(CheckpointError, match="written by 2 process.* this run has 1"):
        setup(one, log=lambda m: None)


def test_rank_samplers():
    """Rank 0 samples as a single process always did; other ranks draw other windows."""
    single = torch.Generator().manual_seed(7)
    ids = torch.arange(1000)
    x0, _ = get_batch(ids, 8, 4, batch_generator(7, rank=0))
    x1, _ = get_batch(ids, 8, 4, batch_generator(7, rank=1))
    assert torch.equal(x0, get_batch(ids, 8, 4, single)[0]) and not torch.equal(x0, x1)


def test_rank_comes_from_torchrun_environment(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert from_env() == SINGLE
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert from_env() == Dist(rank=3, local_rank=1, world_size=4)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="outside WORLD_SIZE 4"):
        from_env()


def test_resume_needs_the_same_number_of_processes():
    state = torch.Generator().get_state()
    saved = {"world_size": 1, "rng": [{"batch": state, "torch": state, "cuda": None}]}
    (rng,) = saved_rng(saved, 1, Path("ckpt.pt"))
    assert rng["batch"] is state and rng["torch"] is state and rng["cuda"] is None
    with pytest.raises(CheckpointError, match="ckpt.pt was written by 1 process"):
        saved_rng(saved, 2, Path("ckpt.pt"))
    with pytest.raises(CheckpointError, match="ckpt.pt holds no per-process random state"):
        saved_rng({"step": 3}, 1, Path("ckpt.pt"))


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _listening(pids: list[int]) -> set[str]:
    """host:port of every TCP socket in LISTEN state that these processes hold (from /proc)."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").glob("*"):
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                addr, port = cols[1].split(":")
                if len(addr) == 8:
                    host = ".".join(str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0))
                else:
                    host = "::1" if addr == "0" * 24 + "01000000" else ("::" if set(addr) == {"0"} else addr)
                found.add(f"{host}:{int(port, 16)}")
    return found


def _launch(text: Path, out: Path, extra_env: dict, *flags: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "model.train.distributed", "--nproc-per-node", "2", "-m", "model.train.cli",
           "--data", str(text), "--out", str(out), *DIST_FLAGS, *flags]
    env = os.environ | {"PYTHONPATH": str(REPO)} | extra_env
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_steps(proc: subprocess.Popen, out: Path, steps: int, limit: float = 90) -> None:
    import time

    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        metrics = out / "metrics.jsonl"
        if metrics.exists() and sum('"loss"' in line for line in metrics.read_text().splitlines()) >= steps:
            return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.1)
    raise AssertionError("training did not start")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads sockets from Linux's /proc")
def test_the_local_launcher_listens_only_on_loopback(text, tmp_path):
    proc = _launch(text, tmp_path, {}, "--max-iters", "100000", "--eval-interval", "100000")
    try:
        _wait_for_steps(proc, tmp_path, 2)
        tree = [proc.pid, *_children(proc.pid)]
        assert len(tree) == 3  # the launcher and two ranks
        sockets = _listening(tree)
        assert sockets and all(s.startswith("127.0.0.1:") for s in sockets), sockets
    finally:
        proc.terminate()  # the launcher stops its ranks
        proc.communicate(timeout=60)
    assert proc.returncode == 130 and not any(Path(f"/proc/{p}").exists() for p in tree[1:])


@pytest.mark.slow
def test_a_stopped_rank_ends_the_run_within_the_timeout(text, tmp_path):
    """SIGSTOP one rank: the other gives up after GPT_DIST_TIMEOUT seconds, says so in one line, and
    the launcher ends the stopped one."""
    import signal
    import time

    proc = _launch(text, tmp_path, {"GPT_DIST_TIMEOUT": "4"}, "--max-iters", "100000",
                   "--eval-interval", "100000")
    try:
        _wait_for_steps(proc, tmp_path, 2)
        ranks = sorted(_children(proc.pid))
        rank1 = next(p for p in ranks if "RANK=1\0" in Path(f"/proc/{p}/environ").read_text())
        os.kill(rank1, signal.SIGSTOP)
        stopped = time.monotonic()
        _, err = proc.communicate(timeout=90)
        took = time.monotonic() - stopped
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0 and took < 4 + 40, took  # the timeout, plus start-up slack
    assert "rank 0/2: lost contact with the other processes" in err
    assert not Path(f"/proc/{rank1}").exists() or "zombie" in Path(f"/proc/{rank1}/status").read_text()


def test_the_timeout_comes_from_the_environment(monkeypatch):
    from datetime import timedelta

    from model.train.distributed import TIMEOUT, timeout

    monkeypatch.delenv("GPT_DIST_TIMEOUT", raising=False)
    assert timeout() == TIMEOUT == timedelta(minutes=10)
    monkeypatch.setenv("GPT_DIST_TIMEOUT", "2.5")
    assert timeout() == timedelta(seconds=2.5)
    monkeypatch.setenv("GPT_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="GPT_DIST_TIMEOUT must be a number of seconds above 0, not 'soon'"):
        timeout()


@pytest.mark.slow
def test_attention_auto_under_torchrun_stores_one_concrete_path(text, tmp_path):
    """Rank 0 measures and broadcasts: the run ends (the ranks ran the same path) with a concrete choice."""
    out = tmp_path / "auto"
    losses = torchrun(text, out, "--max-iters", "3", "--attention", "auto")
    assert len(losses) == 3
    assert torch.load(out / "ckpt.pt", weights_only=True)["config"]["attention"] in ("explicit", "fused")
