"""Batch mode: prompts one at a time against model.generate.batched (rows sharing each forward pass).

    python bench/batch.py [--parallel 16] [--runs 3] [--backends torch,onnx] [--quick]

16 and 64 prompts of 4..60 characters with varied settings (greedy and sampled with a seed each,
top-k, top-p, a stop string on some, 40..200 new tokens), on the shipped model (or shakespeare-char
with random weights), through each backend: the loop (``backend.stream`` per prompt, what
``gpt-tui --batch --parallel 1`` does) and ``model.generate.batched.generate_all`` with ``--parallel`` rows
and continuous refill (what ``gpt-tui --batch`` does). The two alternate, ``--runs`` times each, in
one process; tokens/s are medians. It also counts the prompts whose completions differ (none
expected; a floating-point tie could flip a token). Last line, torch at 16 prompts:
loop_tok_s=<f> batched_tok_s=<f> speedup=<f>
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import SHIPPED, shipped_or_random

from model import checkpoint
from model.generate.backend import Settings
from model.generate.batched import generate_all

STARTS = ["KING", "ROMEO:\nO", "First Citizen:\nWe", "JULIET:\nWhat light is that",
          "MENENIUS:\nI tell you, friends, most", "DUKE VINCENTIO:\nGood morrow, and what news",
          "QUEEN ELIZABETH:\nMy lord, I pray you, tell me where", "LUCIO:\nHow now, " * 4]


def jobs(n: int, seed: int = 0) -> list[tuple[str, Settings]]:
    """n prompts with varied lengths and settings, the same for a given seed."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        kind = i % 4
        settings = Settings(
            temperature=0.0 if kind == 0 else rng.choice([0.7, 0.8, 1.0]),
            top_k=40 if kind == 2 else None, top_p=0.9 if kind == 3 else 1.0,
            max_new_tokens=rng.randrange(40, 201), seed=rng.randrange(2**31),
            stop=("\n\n",) if i % 3 == 0 else ())
        out.append((rng.choice(STARTS), settings))
    return out


def loop(backend, work) -> list[list[int]]:
    out = []
    for prompt, settings in work:
        g = backend.stream(prompt, settings)
        out.append([e.id for e in g])
    return out


def batched(backend, work, rows: int) -> list[list[int]]:
    return [g.ids for g in generate_all(backend.batch_decoder(rows), backend.tokenizer, work)]


def compare(name: str, backend, n: int, args) -> tuple[float, float]:
    work = jobs(n)
    rates: dict[str, list[float]] = {"loop": [], "batched": []}
    results = {}
    for _ in range(args.runs):  # alternate, so both see the same machine
        for path, fn in (("loop", lambda: loop(backend, work)),
                         ("batched", lambda: batched(backend, work, args.parallel))):
            t = time.perf_counter()
            results[path] = fn()
            rates[path].append(sum(map(len, results[path])) / (time.perf_counter() - t))
    loop_rate, batched_rate = statistics.median(rates["loop"]), statistics.median(rates["batched"])
    differ = sum(a != b for a, b in zip(results["loop"], results["batched"], strict=True))
    tokens = sum(map(len, results["loop"]))
    print(f"{name:6} {n:3} prompts ({tokens} tokens): loop {loop_rate:8.1f} tok/s   batched "
          f"{batched_rate:8.1f} tok/s   {batched_rate / loop_rate:.2f}x   completions differing: "
          f"{differ}/{n}", flush=True)
    return loop_rate, batched_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=16, help="rows of the batched path")
    parser.add_argument("--runs", type=int, default=3, help="runs per path, alternating (median)")
    parser.add_argument("--backends", default="torch,onnx", help="comma-separated: torch, onnx")
    parser.add_argument("--sizes", default="16,64", help="comma-separated prompt counts")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 and 8 prompts, 1 run")
    args = parser.parse_args()
    sizes = [4, 8] if args.quick else [int(s) for s in args.sizes.split(",")]
    if args.quick:
        args.runs = 1
    from model.generate.torch_backend import TorchBackend

    model, tokenizer, name = shipped_or_random()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {name}; {args.parallel} rows; "
          f"median of {args.runs}", flush=True)
    backends = {}
    names = args.backends.split(",")
    if "torch" in names:
        backends["torch"] = TorchBackend(model, tokenizer)
    with tempfile.TemporaryDirectory() as tmp:
        if "onnx" in names:
            from export.onnx_export import export_onnx
            from export.ort_backend import load_ort_backend

            ckpt = SHIPPED
            if not SHIPPED.is_file():
                ckpt = Path(tmp) / "model.pt"
                checkpoint.save(checkpoint.payload(model, tokenizer), ckpt)
            backends["onnx"] = load_ort_backend(export_onnx(ckpt, Path(tmp) / "model.onnx", validate=False),
                                                provider="cpu")
        first = None
        for backend_name, backend in backends.items():
            for n in sizes:
                rates = compare(backend_name, backend, n, args)
                first = first or rates
    loop_rate, batched_rate = first
    speedup = batched_rate / loop_rate
    print(f"loop_tok_s={loop_rate:.1f} batched_tok_s={batched_rate:.1f} speedup={speedup:.2f}")


if __name__ == "__main__":
    main()
