"""Kill -9 a training run at random moments, continue it each time with `gpt-train --resume` alone,
and compare the end with a run that was never interrupted.

    python bench/kill_resume.py [--kills 10] [--steps 300] [--seed 0] [--shape tiny|small]
                                [--threads N]

A tiny model (2 layers, 16 wide, dropout on, so the random streams matter; ``--shape small``: 4
layers, 128 wide, whose matmuls are large enough to be split over threads) trains on a generated
text, on one thread (``--threads``: another count, 0 for torch's default). The uninterrupted run
goes first and gives the time a run takes; then the same command is killed (SIGKILL) at a random
moment, again and again (one kill in five during a process's start-up, the others at a random
step still to come, spread so that the kills share the run, plus a random part of ten steps'
time, so that evaluations and saves are hit too): after each kill the next command is
`gpt-train --resume --out OUT --data TEXT` (the data named again, as a resumed run never reads a
path out of its checkpoint) with no other flags, or, when the kill came before the first
checkpoint, the first command with --overwrite. The last command runs to the end. Checks: the
final weights are torch.equal to the uninterrupted run's, and metrics.jsonl holds each step once
with the same losses. The last line:
kills=<n> before_first_save=<n> weights_equal=<bool> each_step_once=<bool> losses_equal=<bool>
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
TRAINING_STARTS = "tokens per step ("  # gpt-train's last line before its first step
WORDS = "the king shall speak of love and death to all his lords while rome burns at night".split()


SHAPES = {
    "tiny": ["--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--block-size", "16",
             "--batch-size", "4"],
    "small": ["--n-layer", "4", "--n-head", "4", "--n-embd", "128", "--block-size", "64",
              "--batch-size", "8"],
}


def flags(steps: int, shape: str = "tiny") -> list[str]:
    return [*SHAPES[shape], "--dropout", "0.1", "--max-iters", str(steps), "--eval-interval", "10",
            "--eval-iters", "2", "--log-interval", "1", "--warmup-iters", "5", "--learning-rate", "3e-3",
            "--device", "cpu", "--dtype", "fp32", "--no-progress"]


def gpt_train(args: list[str], log: Path, threads: int = 1) -> subprocess.Popen:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    if threads:  # every run the same threads
        env["OMP_NUM_THREADS"] = str(threads)
    with open(log, "a") as f:
        return subprocess.Popen([sys.executable, "-m", "model.train.cli", *args], cwd=REPO, env=env,
                                stdout=f, stderr=subprocess.STDOUT)


def last_step(out: Path) -> int:
    """The step of the last complete row of a run's metrics (0 before any)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(lines):
        try:
            return json.loads(line)["step"]
        except ValueError:
            continue
    return 0


def rows(out: Path) -> tuple[list[tuple[int, float]], list[int]]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [(r["step"], r["loss"]) for r in lines if "loss" in r]
    return train, [r["step"] for r in lines if "val_loss" in r]


def measure(kills: int, steps: int, seed: int, work: Path, say=print, shape: str = "tiny",
            threads: int = 1) -> dict:
    rng = random.Random(seed)
    text = work / "text.txt"
    text.write_text(" ".join(rng.choice(WORDS) for _ in range(20_000)))
    first = ["--data", str(text), *flags(steps, shape)]
    log = work / "log.txt"

    start = time.perf_counter()
    ref = gpt_train([*first, "--out", str(work / "ref")], log, threads)
    while TRAINING_STARTS not in log.read_text() and ref.poll() is None:
        time.sleep(0.01)
    startup = time.perf_counter() - start  # importing torch, reading the text, building the model
    if ref.wait() != 0:
        raise SystemExit(f"the uninterrupted run failed; see {log}")
    took = time.perf_counter() - start
    say(f"uninterrupted run: {took:.1f} s, of which {startup:.1f} s start-up")

    out = work / "killed"
    command, done, killed, early, step = [*first, "--out", str(out)], False, 0, 0, 0
    while not done:
        proc = gpt_train(command, log, threads)
        if killed < kills and step < steps:
            # a random moment of this process's life: one kill in five during start-up (importing,
            # loading, cutting metrics), the others while it trains, evaluates or saves
            if rng.random() < 0.2:
                delay = rng.uniform(0, startup)
            else:  # a random step still to come, then a random part of a step's time or an evaluation's
                # spread: on average the kills left share the steps left
                reach = max(1, 2 * (steps - step) // (kills - killed + 1))
                target = min(steps - 1, step + rng.randint(1, reach))
                while last_step(out) < target and proc.poll() is None:
                    time.sleep(0.005)
                delay = rng.uniform(0, 2 * (took - startup) / steps * 10)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                killed += 1
                saved = (out / "ckpt.pt").exists()
                early += not saved
                step = torch.load(out / "ckpt.pt", weights_only=True)["train"]["step"] if saved else 0
                say(f"kill {killed}: {f'checkpoint at step {step}' if saved else 'no checkpoint yet'}")
                command = (["--resume", "--out", str(out), "--data", str(text)] if saved
                           else [*first, "--out", str(out), "--overwrite"])
                continue
        if proc.wait() != 0:
            tail = "\n".join(log.read_text().splitlines()[-5:])
            raise SystemExit(f"gpt-train {' '.join(command)} failed:\n{tail}")
        done = True

    a = torch.load(work / "ref" / "ckpt.pt", weights_only=True)
    b = torch.load(out / "ckpt.pt", weights_only=True)
    weights_equal = a["model"].keys() == b["model"].keys() and all(
        torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    (ref_train, ref_eval), (got_train, got_eval) = rows(work / "ref"), rows(out)
    each_once = ([s for s, _ in got_train] == list(range(1, steps + 1))
                 and got_eval == sorted(set(got_eval)) == ref_eval)
    return {"kills": killed, "before_first_save": early, "weights_equal": weights_equal,
            "each_step_once": each_once, "losses_equal": got_train == ref_train}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=SHAPES, default="tiny")
    parser.add_argument("--threads", type=int, default=1, help="Threads per run; 0: torch's default.")
    parser.add_argument("--work", type=Path, help="Keep the runs and their log here [default: a temp dir].")
    args = parser.parse_args()
    if args.work:
        args.work.mkdir(parents=True, exist_ok=True)
        result = measure(args.kills, args.steps, args.seed, args.work, shape=args.shape,
                         threads=args.threads)
    else:
        with tempfile.TemporaryDirectory() as work:
            result = measure(args.kills, args.steps, args.seed, Path(work), shape=args.shape,
                             threads=args.threads)
    print(" ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
