"""Training throughput on this machine: fp32 against our fastest path, side by side in one run.

    python bench/train.py [--steps 3] [--quick]

For the shipped model's config and the shakespeare-char preset (nanoGPT's train_shakespeare_char),
times real optimizer steps (model.train.train_step: forward, backward, clipping, AdamW) on random
tokens and reports tokens/s, the fast/fp32 ratio, and the model FLOP rate as a fraction of the
matmul rate measured here in the same dtype. For each dtype it also runs what
`gpt-train --attention auto` runs at the start of a run, and says how long that took and whether
its choice agrees with the longer measurement. The last line is for shakespeare-char:
fp32_tok_s=<f> fast_tok_s=<f> speedup=<f> peak_fraction=<f>
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import SHIPPED

from model.attention_choice import ROWS, choose_attention, describe
from model.checkpoint import load
from model.config import GPTConfig, preset
from model.data import Splits
from model.device import cpu_has_bf16
from model.gpt import build_model, count_params
from model.train import TrainConfig, make_optimizer, train_step
from model.train_state import Trainer

# nanoGPT's batch for train_shakespeare_char; the shipped run's batch comes from its checkpoint
NANOGPT_BATCH = 64


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


def flops_per_token(cfg: GPTConfig, n_params: int) -> float:
    """Forward + backward: 6 per parameter, plus attention scores and weighted sums (PaLM's formula)."""
    return 6 * n_params + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size


def tokens_per_s(cfg: GPTConfig, batch_size: int, amp: torch.dtype, steps: int) -> float:
    torch.manual_seed(0)
    model = build_model(cfg)
    train_cfg = TrainConfig(model=cfg, batch_size=batch_size, max_iters=10**6, warmup_iters=0)
    device = torch.device("cpu")
    ids = torch.randint(0, cfg.vocab_size, (200_000,))
    tr = Trainer(train_cfg, model, model, make_optimizer(model, train_cfg, device), Splits(ids, ids),
                 device, amp, torch.Generator().manual_seed(0))
    model.train()
    train_step(tr)  # warm-up: allocator, oneDNN kernels
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        train_step(tr)
        times.append(time.perf_counter() - t)
    return batch_size * cfg.block_size / statistics.median(times)


def auto_pick(cfg: GPTConfig, batch_size: int, amp: torch.dtype, results: dict) -> None:
    """What gpt-train --attention auto would choose here, how long it took, and whether the longer
    measurement above agrees."""
    torch.manual_seed(0)
    device, gen = torch.device("cpu"), torch.Generator().manual_seed(0)
    rows = min(batch_size, ROWS)  # as gpt-train times it
    ids = torch.randint(0, cfg.vocab_size, (rows, cfg.block_size + 1), generator=gen)
    started = time.perf_counter()
    choice, medians = choose_attention(lambda path: build_model(cfg.replace(attention=path)),
                                       (ids[:, :-1], ids[:, 1:]), device, amp)
    took = time.perf_counter() - started
    name = str(amp).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16")
    best = max(("fused", "explicit"), key=lambda a: results[f"{name} {a}"][0])
    print(f"  auto ({name}): {describe(choice, medians, ids[:, :-1], device, amp).split(': ', 1)[1]}; "
          f"took {took:.1f} s; {'agrees with' if choice == best else 'differs from'} the steps above "
          f"({best})", flush=True)


def bench_config(name: str, cfg: GPTConfig, batch_size: int, steps: int, peaks: dict) -> dict:
    n = count_params(build_model(cfg))
    fpt = flops_per_token(cfg, n)
    print(f"\n{name}: {n / 1e6:.2f}M params, batch {batch_size} x block {cfg.block_size}, "
          f"{fpt / 1e6:.0f} MFLOP/token")
    paths = {  # (autocast dtype, attention); fp32 fused is nanoGPT's path, the baseline
        "fp32 fused": (torch.float32, "fused"),
        "fp32 explicit": (torch.float32, "explicit"),
    }
    if torch.bfloat16 in peaks:  # only where the CPU does bf16 natively; emulated it is ~20x slower
        paths |= {"bf16 fused": (torch.bfloat16, "fused"), "bf16 explicit": (torch.bfloat16, "explicit")}
    results = {}
    for label, (amp, attention) in paths.items():
        tok_s = tokens_per_s(cfg.replace(attention=attention), batch_size, amp, steps)
        frac = tok_s * fpt / peaks[amp]
        results[label] = (tok_s, frac)
        print(f"  {label:14s} {tok_s:9,.0f} tok/s  {tok_s * fpt / 1e9:6.1f} GFLOP/s  "
              f"{frac:5.1%} of {str(amp).removeprefix('torch.')} matmul peak", flush=True)
    for amp in dict.fromkeys(amp for amp, _ in paths.values()):
        auto_pick(cfg, batch_size, amp, results)
    fast = max(results, key=lambda k: results[k][0])  # the baseline itself when nothing beats it
    fp32_tok_s, fast_tok_s = results["fp32 fused"][0], results[fast][0]
    print(f"  fastest: {fast}, {fast_tok_s / fp32_tok_s:.2f}x fp32")
    return dict(fp32_tok_s=fp32_tok_s, fast_tok_s=fast_tok_s, speedup=fast_tok_s / fp32_tok_s,
                peak_fraction=results[fast][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="timed steps per path (median)")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny batch, 1 step")
    args = parser.parse_args()
    steps = 1 if args.quick else args.steps
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    dtypes = (torch.float32, torch.bfloat16) if cpu_has_bf16() else (torch.float32,)
    peaks = {dt: matmul_flops(dt) for dt in dtypes}
    print("matmul 2048^3: " + ", ".join(f"{str(k).removeprefix('torch.')} {v / 1e9:.0f} GFLOP/s"
                                        for k, v in peaks.items()))
    configs = []
    if SHIPPED.is_file():
        ckpt = load(SHIPPED)
        cfg = GPTConfig.from_dict(ckpt["config"])
        batch = ckpt["meta"].get("train_config", {}).get("batch_size", NANOGPT_BATCH)
        configs.append(("shipped (checkpoints/shakespeare.pt)", cfg, batch))
    configs.append(("shakespeare-char", preset("shakespeare-char"), NANOGPT_BATCH))
    for name, cfg, batch in configs:
        result = bench_config(name, cfg, 2 if args.quick else batch, steps, peaks)
    print(" ".join(f"{k}={v:.4f}" if k == "peak_fraction" else f"{k}={v:.1f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
