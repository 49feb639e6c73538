"""gpt-serve under load: N concurrent streaming clients on loopback against one client at a time.

    python bench/serving.py [--parallel 16] [--sizes 16,64] [--backends torch,onnx] [--ckpt PATH] [--quick]

For each backend a `gpt-serve` process is started on 127.0.0.1 and a free port, on the shipped
model (or shakespeare-char with random weights, or --ckpt). The work is bench/batch.py's: 16 and
64 prompts of varied lengths and settings (greedy and sampled with a seed each, top-k, top-p, a stop
string on some, 40..200 new tokens), sent as streamed /v1/completions requests, first one after
another by one client, then all at once by as many clients. Tokens/s count completion tokens over
the wall time; time to first token is from sending a request to its first chunk with text (p50
and p99 over the concurrent run); errors are answers that are not a 200 stream ending in [DONE]
(must be 0). Every request has a timeout and the whole run a deadline (--deadline). Last line,
torch at the first size: sequential_tok_s=<f> concurrent_tok_s=<f> speedup=<f> ttft_p50_ms=<f>
ttft_p99_ms=<f> errors=<n>
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import torch
from batch import jobs
from common import SHIPPED, shipped_or_random

from model import checkpoint
from model.generate.backend import Settings

REPO = Path(__file__).resolve().parents[1]


def request_body(prompt: str, settings: Settings, cap: int | None) -> dict:
    body = {"model": "bench", "prompt": prompt, "temperature": settings.temperature, "top_p": settings.top_p,
            "max_tokens": min(settings.max_new_tokens, cap or settings.max_new_tokens),
            "seed": settings.seed, "stream": True, "stream_options": {"include_usage": True}}
    if settings.top_k is not None:
        body["top_k"] = settings.top_k
    if settings.stop:
        body["stop"] = list(settings.stop)
    return body


class Server:
    """A gpt-serve process on a free loopback port; its log is read (and dropped) as it comes."""

    def __init__(self, args: list[str], timeout: float = 600):
        command = [sys.executable, "-c", "from serve.cli import main; main()", "--port", "0", "--model-name",
                   "bench", *args]
        self.proc = subprocess.Popen(command, cwd=REPO, stderr=subprocess.PIPE, text=True,
                                     env=os.environ | {"PYTHONPATH": str(REPO)})
        self.url = ""
        started = threading.Event()

        def read() -> None:
            for line in self.proc.stderr:
                found = re.search(r" on (http://127\.0\.0\.1:\d+)/v1 ", line)
                if found:
                    self.url = found.group(1)
                    started.set()
            started.set()  # ended without serving

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(timeout) or not self.url:
            self.stop()
            raise SystemExit(f"gpt-serve did not start (exit {self.proc.poll()})")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def one(client: httpx.AsyncClient, url: str, body: dict) -> tuple[int, float | None, bool]:
    """(completion tokens, seconds to the first text, ok) of one streamed request."""
    start = time.perf_counter()
    first, tokens, done = None, 0, False
    try:
        async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
            if response.status_code != 200:
                return 0, None, False
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line.removeprefix("data: "))
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                elif first is None and chunk["choices"] and chunk["choices"][0]["text"]:
                    first = time.perf_counter() - start
    except (httpx.HTTPError, json.JSONDecodeError):
        return tokens, first, False
    return tokens, first, done


async def run(url: str, bodies: list[dict], concurrent: bool, timeout: float) -> tuple[float, list, int]:
    """(completion tokens/s over the wall time, seconds to first text of each, errors)."""
    limits = httpx.Limits(max_connections=len(bodies) if concurrent else 1)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        start = time.perf_counter()
        if concurrent:
            results = await asyncio.gather(*(one(client, url, b) for b in bodies))
        else:
            results = [await one(client, url, b) for b in bodies]
        wall = time.perf_counter() - start
    tokens = sum(r[0] for r in results)
    return tokens / wall, [r[1] for r in results if r[1] is not None], sum(not r[2] for r in results)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=16, help="gpt-serve --parallel (rows)")
    parser.add_argument("--sizes", default="16,64", help="comma-separated request counts")
    parser.add_argument("--backends", default="torch,onnx", help="comma-separated: torch, onnx")
    parser.add_argument("--ckpt", type=Path, help="checkpoint [default: the shipped one, else random "
                                                  "weights]")
    parser.add_argument("--threads", type=int, help="gpt-serve --threads")
    parser.add_argument("--deadline", type=float, default=1800, help="seconds the whole run may take")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 and 8 requests of <= 20 tokens")
    args = parser.parse_args()
    sizes = [4, 8] if args.quick else [int(s) for s in args.sizes.split(",")]
    cap = 20 if args.quick else None
    ends = time.monotonic() + args.deadline
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, name = args.ckpt, str(args.ckpt)
        if ckpt is None:
            model, tokenizer, name = shipped_or_random()
            ckpt = SHIPPED
            if not SHIPPED.is_file():
                ckpt = Path(tmp) / "model.pt"
                checkpoint.save(checkpoint.payload(model, tokenizer), ckpt)
        print(f"torch {torch.__version__}; {name}; {args.parallel} rows", flush=True)
        flags = ["--parallel", str(args.parallel), "--queue", str(max(sizes))]
        flags += ["--threads", str(args.threads)] if args.threads else []
        first = None
        for backend in args.backends.split(","):
            if backend == "onnx":
                from export.onnx_export import export_onnx

                onnx = export_onnx(ckpt, Path(tmp) / "model.onnx", validate=False)
                server = Server(["--onnx", str(onnx), "--provider", "cpu", *flags])
            else:
                server = Server(["--ckpt", str(ckpt), "--device", "cpu", *flags])
            try:
                for n in sizes:
                    bodies = [request_body(p, s, cap) for p, s in jobs(n)]
                    left = lambda: max(1.0, ends - time.monotonic())  # seconds before the deadline
                    seq_rate, _, seq_errors = asyncio.run(run(server.url, bodies, False, left()))
                    rate, ttft, errors = asyncio.run(run(server.url, bodies, True, left()))
                    p50, p99 = percentile(ttft, 0.5) * 1e3, percentile(ttft, 0.99) * 1e3
                    print(f"{backend:6} {n:3} requests: one at a time {seq_rate:8.1f} tok/s   {n} concurrent "
                          f"{rate:8.1f} tok/s   {rate / seq_rate:.2f}x   first token p50 {p50:.0f} ms, p99 "
                          f"{p99:.0f} ms   errors {seq_errors + errors}", flush=True)
                    first = first or (seq_rate, rate, p50, p99, seq_errors + errors)
            finally:
                server.stop()
    seq_rate, rate, p50, p99, errors = first
    print(f"sequential_tok_s={seq_rate:.1f} concurrent_tok_s={rate:.1f} speedup={rate / seq_rate:.2f} "
          f"ttft_p50_ms={p50:.1f} ttft_p99_ms={p99:.1f} errors={errors}")


if __name__ == "__main__":
    main()
