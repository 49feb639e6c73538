"""Training throughput as gpt-train runs it: every path in a fresh gpt-train process, one at a time.

    python bench/train.py [--steps 8] [--quick] [--nanogpt PATH]

A step timed inside a long-lived benchmark process is not the step a run takes: the allocator's
state, warmed by the measurements before it, made the same step up to 40% faster there than in
gpt-train. So each path here is a whole `gpt-train` process (its malloc relaunch, data pipeline,
optimizer, clipping, logging), started afresh on a random corpus of Tiny Shakespeare's characters,
and timed by its own metrics.jsonl: the median ms/step of steps 3..N (the first two pay for
allocation and kernel selection). Paths, for the shipped model's shape and batch and for the
shakespeare-char preset (6 x 384, batch 64 x 256):

  fp32 fused            nanoGPT's path on a CPU (no autocast, F.scaled_dot_product_attention)
  bf16 fused / explicit where the CPU does bf16 natively (AVX-512 BF16, AMX)
  fastest + malloc as-is  the fastest path with glibc's malloc untouched: the allocator's share
  fastest + muon        --optimizer muon: Muon's cost per step

and reports tokens/s and the share of the matmul rate measured here in the same dtype. With
``--nanogpt PATH`` (a checkout of karpathy/nanoGPT) it also runs nanoGPT's own train.py, config
train_shakespeare_char on the CPU (fp32, no compile, as its README says for CPUs), against
`gpt-train --attention auto` with the same flags, 10 steps each, both timed as whole processes.
The last line is for shakespeare-char:
fp32_tok_s=<f> fast_tok_s=<f> speedup=<f> peak_fraction=<f> [vs_nanogpt=<f>]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import SHAKESPEARE_CHARS, SHIPPED

from model.checkpoint import load
from model.config import GPTConfig, preset
from model.device import cpu_has_bf16
from model.gpt import build_model, count_params
from model.train.progress import flops_per_token

REPO = Path(__file__).resolve().parent.parent
NANOGPT_BATCH = 64  # train_shakespeare_char's
CORPUS_CHARS = 1_115_394  # Tiny Shakespeare's length: the same split sizes
# a malloc tunable set to its default: gpt-train leaves a user's own malloc tunables alone, so this
# runs it with glibc's malloc as it comes (model.allocator)
MALLOC_AS_IS = {"GLIBC_TUNABLES": "glibc.malloc.tcache_count=7"}


def matmul_flops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    """Measured FLOP/s of a square matmul: the arithmetic ceiling for this dtype."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times)


def write_corpus(folder: Path) -> Path:
    """Random text over Tiny Shakespeare's characters: the same vocabulary and split sizes, no data
    set needed (speed does not depend on what the text says)."""
    rng = np.random.default_rng(0)
    chars = np.array(list(SHAKESPEARE_CHARS))
    path = folder / "corpus.txt"
    path.write_text("".join(rng.choice(chars, CORPUS_CHARS)), encoding="utf-8")
    return path


def shape_flags(cfg: GPTConfig, batch: int) -> list[str]:
    return ["--n-layer", str(cfg.n_layer), "--n-head", str(cfg.n_head), "--n-embd", str(cfg.n_embd),
            "--block-size", str(cfg.block_size), "--dropout", str(cfg.dropout), "--batch-size", str(batch)]


def gpt_train(flags: list[str], data: Path, out: Path, steps: int, env: dict | None = None) -> dict:
    """One fresh `gpt-train` process -> its median ms/step after two, its log, and its wall time."""
    command = [sys.executable, "-m", "model.train.cli", "--data", str(data), "--out", str(out), "--overwrite",
               "--max-iters", str(steps), "--eval-interval", str(steps), "--eval-iters", "1",
               "--log-interval", "1", "--no-progress", *flags]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=os.environ | (env or {}))
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"gpt-train failed ({' '.join(flags)}):\n{done.stderr}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    times = [r["ms_per_step"] for r in rows if "ms_per_step" in r and r["step"] > 2]
    return {"ms": statistics.median(times), "wall_s": wall, "log": done.stderr}


def bench_shape(name: str, cfg: GPTConfig, batch: int, steps: int, data: Path, work: Path,
                peaks: dict) -> dict:
    n = count_params(build_model(cfg))
    fpt = flops_per_token(cfg, n)
    tokens = batch * cfg.block_size
    print(f"\n{name}: {n / 1e6:.2f}M params, batch {batch} x block {cfg.block_size}, "
          f"{fpt / 1e6:.0f} MFLOP/token, {steps} steps a process", flush=True)
    base = shape_flags(cfg, batch)
    paths = {"fp32 fused": (torch.float32, ["--dtype", "fp32", "--attention", "fused"], None)}
    if torch.bfloat16 in peaks:
        paths["bf16 fused"] = (torch.bfloat16, ["--dtype", "bf16", "--attention", "fused"], None)
        paths["bf16 explicit"] = (torch.bfloat16, ["--dtype", "bf16", "--attention", "explicit"], None)
    results: dict[str, float] = {}

    def run(label: str, dtype: torch.dtype, flags: list[str], env: dict | None) -> None:
        ms = gpt_train(base + flags, data, work / "run", steps, env)["ms"]
        tok_s = tokens / (ms / 1000)
        results[label] = tok_s
        print(f"  {label:28s} {ms:8.0f} ms/step {tok_s:8,.0f} tok/s  {tok_s * fpt / peaks[dtype]:5.1%} of "
              f"{str(dtype).removeprefix('torch.')} matmul rate", flush=True)

    for label, (dtype, flags, env) in paths.items():
        run(label, dtype, flags, env)
    fast = max(results, key=results.get)
    dtype, flags, _ = paths[fast]
    run(f"{fast} + malloc as-is", dtype, flags, MALLOC_AS_IS)
    run(f"{fast} + muon", dtype, flags + ["--optimizer", "muon"], None)
    print(f"  fastest: {fast}, {results[fast] / results['fp32 fused']:.2f}x fp32 fused; the tuned malloc "
          f"{results[fast] / results[f'{fast} + malloc as-is']:.2f}x malloc as-is; muon's step "
          f"{results[fast] / results[f'{fast} + muon']:.2f}x adamw's time", flush=True)
    return dict(fp32_tok_s=results["fp32 fused"], fast_tok_s=results[fast],
                speedup=results[fast] / results["fp32 fused"],
                peak_fraction=results[fast] * fpt / peaks[dtype])


def against_nanogpt(nanogpt: Path, data: Path, work: Path, steps: int = 10) -> float:
    """nanoGPT's train.py and gpt-train, 10 steps of train_shakespeare_char each, whole processes ->
    nanoGPT's wall time over ours."""
    run = work / "nanogpt"
    run.mkdir()
    for name in ("train.py", "model.py", "configurator.py"):
        shutil.copy(nanogpt / name, run / name)
    shutil.copytree(nanogpt / "config", run / "config")
    # its data/shakespeare_char/prepare.py, without the download: the same corpus as gpt-train gets
    text = data.read_text(encoding="utf-8")
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.array([stoi[c] for c in text], dtype=np.uint16)
    folder = run / "data" / "shakespeare_char"
    folder.mkdir(parents=True)
    cut = int(len(ids) * 0.9)
    ids[:cut].tofile(folder / "train.bin")
    ids[cut:].tofile(folder / "val.bin")
    with open(folder / "meta.pkl", "wb") as f:  # written here for its train.py, never read by us
        pickle.dump({"vocab_size": len(chars), "itos": dict(enumerate(chars)), "stoi": stoi}, f)
    started = time.perf_counter()
    # its loop runs iterations 0..max_iters: max_iters one less gives as many steps as ours
    done = subprocess.run([sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu",
                           "--compile=False", f"--max_iters={steps - 1}", "--eval_iters=1",
                           "--log_interval=1", f"--out_dir={run / 'out'}"],
                          capture_output=True, text=True, cwd=run)
    theirs = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"nanoGPT's train.py failed:\n{done.stderr[-2000:]}")
    iters = [float(line.split("time ")[1].split("ms")[0]) for line in done.stdout.splitlines()
             if line.startswith("iter ") and "time " in line]
    ours = gpt_train(shape_flags(preset("shakespeare-char"), NANOGPT_BATCH) + ["--attention", "auto"], data,
                     work / "ours", steps)
    print(f"\nnanoGPT train.py vs gpt-train --attention auto, train_shakespeare_char, {steps} steps, whole "
          f"process: {theirs:.1f} s vs {ours['wall_s']:.1f} s (**{theirs / ours['wall_s']:.2f}x**); steps "
          f"3..{steps}: {statistics.median(iters[3:]):.0f} vs {ours['ms']:.0f} ms", flush=True)
    picked = [line for line in ours["log"].splitlines() if line.startswith("attention auto")]
    print(f"  ({picked[0].split(': ', 1)[1] if picked else 'no attention choice logged'})")
    return theirs / ours["wall_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="steps per gpt-train process (median of 3..N)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny batch, 3 steps")
    parser.add_argument("--nanogpt", type=Path, help="a checkout of karpathy/nanoGPT to time side by side")
    args = parser.parse_args()
    steps = 3 if args.quick else max(3, args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, bf16 native: {cpu_has_bf16()}")
    dtypes = (torch.float32, torch.bfloat16) if cpu_has_bf16() else (torch.float32,)
    peaks = {dt: matmul_flops(dt) for dt in dtypes}
    print("matmul 2048^3: " + ", ".join(f"{str(k).removeprefix('torch.')} {v / 1e9:.0f} GFLOP/s"
                                        for k, v in peaks.items()))
    shapes = []
    if SHIPPED.is_file():
        ckpt = load(SHIPPED)
        batch = ckpt["meta"].get("train_config", {}).get("batch_size", NANOGPT_BATCH)
        shapes.append(("shipped (checkpoints/shakespeare.pt)", GPTConfig.from_dict(ckpt["config"]), batch))
    shapes.append(("shakespeare-char", preset("shakespeare-char"), NANOGPT_BATCH))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_corpus(work)
        for name, cfg, batch in shapes:
            result = bench_shape(name, cfg, 2 if args.quick else batch, steps, data, work, peaks)
        if args.nanogpt:
            result["vs_nanogpt"] = against_nanogpt(args.nanogpt.resolve(), data, work)
    print(" ".join(f"{k}={v:.4f}" if k == "peak_fraction" else f"{k}={v:.2f}" if k == "vs_nanogpt" else
                   f"{k}={v:.1f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
