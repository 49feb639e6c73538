"""The other runtimes our decode paths are timed against, on the same weights (bench/decode.py):
llama.cpp's own llama-bench on GGUF files, onnxruntime-genai on the ONNX folders, and transformers'
generate(), all greedy."""

from __future__ import annotations

import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from model.gpt import GPT

LLAMA_TYPES = ("f32", "f16", "q8_0", "q4_0")


def llama_tok_s(model: GPT, tokenizer, args) -> dict[str, float]:
    """llama.cpp's llama-bench on GGUF files of ``model``'s weights: {type: median tok/s}, printed
    beside our paths (a type whose run fails is printed with llama-bench's last line, and left out)."""
    from export.gguf import write_gguf

    bench = Path(args.llama) / "llama-bench"
    tokens = min(args.tokens, model.config.block_size)
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in LLAMA_TYPES:
            path = Path(tmp) / f"model.{kind}.gguf"
            write_gguf(model, tokenizer, path, kind)
            command = [str(bench), "-m", str(path), "-p", "0", "-n", str(tokens), "-r", str(args.runs),
                       "-t", str(torch.get_num_threads()), "-o", "json"]
            run = subprocess.run(command, capture_output=True, text=True, check=False)
            note = ""
            if run.returncode < 0 or run.returncode > 128:
                # killed by a signal: where the CPU reports AMX that the kernel does not grant, the
                # repacked (AMX) q8_0/q4_0 kernels die with SIGILL, on llama.cpp's own files as on ours
                run = subprocess.run([*command, "--repack", "0"], capture_output=True, text=True, check=False)
                note = ", --repack 0: its repacked kernels died here"
            if run.returncode != 0:
                why = (run.stderr.strip().splitlines() or ["no message"])[-1]
                print(f"  llama.cpp {kind:<5}failed: llama-bench exited {run.returncode} ({why})", flush=True)
                continue
            rates[kind] = statistics.median(json.loads(run.stdout)[0]["samples_ts"])
            print(f"  llama.cpp {kind:<5}{rates[kind]:8.1f} tok/s   (llama-bench, {tokens} tokens from an "
                  f"empty context, {path.stat().st_size / 2**20:.1f} MiB{note})", flush=True)
    return rates


def genai_run(folder: Path, prompt: list[int], tokens: int, threads: int) -> Callable[[], float]:
    """A callable timing one greedy run (tok/s) of onnxruntime-genai on ``folder``: ``tokens`` new
    tokens after ``prompt`` (end-of-text held off, so the count is exact), each read back as a
    caller would. The thread count goes in as an overlay on its genai_config.json (the
    ``session_options`` of the decoder), so the folder itself is left as it was written."""
    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    length = len(prompt) + tokens  # at most the block: its graph has no window to slide

    def run() -> float:
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=length, min_length=length, do_sample=False)
        generator = og.Generator(model, params)
        t = time.perf_counter()
        generator.append_tokens(prompt)
        n = 0
        while not generator.is_done():
            generator.generate_next_token()
            generator.get_next_tokens()
            n += 1
        return n / (time.perf_counter() - t)

    return run


def hf_tok_s(model: GPT, prompt: list[int], tokens: int, runs: int,
             dtype: torch.dtype = torch.float32) -> float:
    """Median tokens/s of transformers' greedy generate() on our weights, as GPT2LMHeadModel."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from model.hf.load import hf_config
    from model.hf.save import hf_state

    hf = GPT2LMHeadModel(GPT2Config(**hf_config(model.config, eot_id=0))).eval()
    hf.load_state_dict(hf_state(model), strict=False)  # strict=False: the tied lm_head is not listed
    hf = hf.to(dtype)
    ids = torch.tensor([prompt])
    rates = []
    with torch.inference_mode():
        for _ in range(runs):
            t = time.perf_counter()
            out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens,
                              min_new_tokens=tokens, do_sample=False, pad_token_id=0)
            rates.append((out.size(1) - ids.size(1)) / (time.perf_counter() - t))
    return statistics.median(rates)
