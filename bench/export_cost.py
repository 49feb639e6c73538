"""What a quantized export costs: wall time and peak memory of `gpt-export onnx --quantize`, and its size.

    python bench/export_cost.py [--kinds int4,int8] [--shape 124m|tiny]

GPT-2 124M's shape with seeded random weights (bench/common.random_gpt2; what is measured does not
depend on what the weights learned), its tokenizer GPT-2's real BPE where ``$GPT_BPE_RANKS`` or
``$GPT_DATA_DIR/gpt2.tiktoken`` is found, else a stand-in of the same vocabulary size. Each kind is
one ``gpt-export onnx --ckpt M.pt --quantize KIND --data shakespeare`` in its own process, the
whole command (fp32 export and its checks, conversion, both judged losses, the write), so its peak
resident memory is that process's own (``os.wait4``). Tiny Shakespeare is read from ``$GPT_DATA_DIR``
or the user cache. ``--shape tiny`` keeps the vocabulary and shrinks the rest, to check the script
runs. The int4 file's size is set beside llama.cpp's q4_0 of the same weights (``LLAMA_Q4_0_MIB``,
made by llama.cpp's own converter and quantizer at 124M; the ratio is printed only there).
Last line:
  <kind>_seconds=<f> <kind>_peak_mib=<f> <kind>_file_mib=<f> ... [int4_vs_q4_0=<f>]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import random_gpt2

from model import checkpoint
from model.paths import DATA_DIR_ENV, RANKS_ENV

LLAMA_Q4_0_MIB = 81.8  # llama.cpp's q4_0 GGUF of GPT-2 124M (llama-quantize, issue 39)


def gpt2_tokenizer(stand_in):
    """GPT-2's real BPE where its ranks file is found, else ``stand_in``; and which it is."""
    from model.tokenizer import BPETokenizer

    ranks = os.environ.get(RANKS_ENV) or (Path(os.environ.get(DATA_DIR_ENV, "")) / "gpt2.tiktoken")
    if Path(ranks).is_file():
        os.environ[RANKS_ENV] = str(Path(ranks).resolve())  # the export process rebuilds it from there
        return BPETokenizer(ranks), "GPT-2's BPE"
    return stand_in, "a stand-in BPE of GPT-2's vocabulary size"


def timed_export(ckpt: Path, out: Path, kind: str) -> tuple[float, float]:
    """(seconds, peak resident MiB) of one ``gpt-export onnx --quantize`` in a process of its own."""
    command = [sys.executable, "-m", "export.cli", "onnx", "--ckpt", str(ckpt), "--out", str(out),
               "--quantize", kind, "--data", "shakespeare"]
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    process.returncode = os.waitstatus_to_exitcode(status)
    lines = output.strip().splitlines()
    print("\n".join(f"  {line.strip()}" for line in lines if "val loss fp32" in line or "wrote" in line))
    if process.returncode != 0:
        sys.exit(f"gpt-export failed (exit {process.returncode}): {lines[-1] if lines else ''}")
    return seconds, usage.ru_maxrss / 1024  # Linux reports kilobytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default="int4,int8", help="comma-separated: int4, int8")
    parser.add_argument("--shape", choices=["124m", "tiny"], default="124m",
                        help="GPT-2 124M, or a 2-layer model of its vocabulary (check the script runs)")
    args = parser.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if not kinds or set(kinds) - {"int4", "int8"}:
        parser.error("--kinds takes int4 and/or int8")
    model, stand_in = random_gpt2(args.shape)
    tokenizer, which = gpt2_tokenizer(stand_in)
    print(f"GPT-2 {args.shape} shape, random weights, {which}; {os.cpu_count()} CPUs")
    result: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "gpt2.pt"
        checkpoint.save(checkpoint.payload(model, tokenizer, {"steps": 0}), ckpt)
        del model
        for kind in kinds:
            out = Path(tmp) / f"gpt2.{kind}.onnx"
            seconds, peak = timed_export(ckpt, out, kind)
            size = out.stat().st_size / 2**20
            print(f"{kind}: {seconds:.1f} s, peak {peak:,.0f} MiB, file {size:.1f} MiB")
            result |= {f"{kind}_seconds": seconds, f"{kind}_peak_mib": peak, f"{kind}_file_mib": size}
    if "int4" in kinds and args.shape == "124m":
        result["int4_vs_q4_0"] = result["int4_file_mib"] / LLAMA_Q4_0_MIB
    print(" ".join(f"{k}={v:.2f}" for k, v in result.items()))


if __name__ == "__main__":
    main()
