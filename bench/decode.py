"""Decode speed at batch 1: the KV cache against nanoGPT-style recompute, and ONNX Runtime.

    python bench/decode.py [--tokens 500] [--runs 3] [--quick] [--compile] [--hf [--hf-shape tiny]]
                           [--llama BIN_DIR] [--genai] [--hog [N]]

For the shipped model (when checkpoints/shakespeare.pt exists) and the shakespeare-char preset with
random weights: tokens/s for `--tokens` new tokens from a short prompt, greedy, through the same
``Generation`` loop the app uses (so sampling, top candidates and the block-size window are paid
for), median of `--runs` runs in one process, for
  cached     model.generate.torch_backend.TorchDecoder: one position per token on a preallocated KV cache
  recompute  RecomputeDecoder (model.generate.torch_backend): the whole window again every token
             (nanoGPT's generate)
  compiled   (--compile) TorchDecoder(step="compile"): the fixed-shape step compiled ahead of time
             (model.generate.compiled_step), timed alternately with cached; the time to build or
             load its package is printed (built once per model and machine, then loaded)
  onnx       export.ort_backend on ONNX Runtime's CPU provider, on as many threads as PyTorch
  int8/int4  the same file quantized by export.quantize (int8 MatMuls; 4-bit weight-only MatMulNBits)
It also states the arithmetic limit: a batch-1 decode step is a chain of mat-vecs, one through
every weight matrix, so the limit is the time of exactly that chain on the model's own weights
(FLOPs and weight bytes per token are printed beside it), and the fraction of it the cached path
reaches; the gap is per-token overhead (Python, dispatch, attention over the cache, sampling).
With --compile the chain is also timed through torch.compile with the decode step's settings
(inductor's own mat-vec kernels where they beat ATen's), and the limit is the faster chain.
On this CPU the chain is bound by memory bandwidth, not by the matmul rate: the recompute path
is compute bound, the cached one bandwidth bound, and their ratio is capped accordingly. ONNX
Runtime's own mat-vec kernels stream the same weights faster, so it can beat this limit.
The ONNX Runtime files (fp32, int8, int4, and onnxruntime-genai's with --genai) are timed
alternately, run by run, so each ratio compares them on the same machine state.

With ``--genai``, onnxruntime-genai runs the ONNX folders of the same weights that ``gpt-export
onnx --out DIR/`` writes (fp32, and ``--quantize int4``): greedy, the same prompt ids and as many
new tokens (end-of-text held off), reading each token back, on as many threads as PyTorch (its
decoder's ``intra_op_num_threads``, overlaid on the folder's genai_config.json). Its graph cannot
slide past the block, so every path of a model then decodes at most block - prompt tokens. The
folder's graph is the concat layout those runtimes expect; ours times the file gpt-export writes by
default (export.graph). Without onnxruntime_genai a line says so and the genai_* keys are left out.

With ``--hog [N]``, everything is timed under a CPU hog (bench/hog.py: N busy processes, default
one per core, ended when the benchmark ends however it ends), on the threads model.threads picks
by default (as the app does; it leaves busy cores alone), and first, model by model, our paths
(cached, onnx fp32 and int4, and onnxruntime-genai's fp32 and int4 with --genai) are timed quiet
and then under the hog, each time on the threads model.threads picks at that moment (printed),
alternately run by run: hog_<path>_vs_quiet keys, and ours against onnxruntime-genai under the
same hog. The goal: at least 0.5x quiet, and at least onnxruntime-genai.

With ``--llama BIN_DIR`` (llama.cpp's bin folder), llama.cpp is the yardstick in the same run: its
own ``llama-bench`` times text generation on GGUF files of the same weights that ``gpt-export
gguf``'s writer makes (f32, f16, q8_0, q4_0), with as many threads as PyTorch uses, for at most a
block of tokens from an empty context (its gpt2 graph has no window to slide: positions past the
block have no embedding), median of ``--runs`` repetitions. Without a llama-bench there the
llama.cpp lines say so and the llama_* keys are left out.

With ``--hf``, Hugging Face transformers' ``generate()`` (greedy, its KV cache) runs the same weights
side by side with our cached path (fp32, and bf16 weights when ``--precision auto`` picks them, as
gpt-tui does; the ratio is for the one it picks) and ONNX Runtime, at the shakespeare-char shape and at GPT-2
124M's (random weights: speed does not depend on them), each for as many tokens as both fit in the
block (transformers cannot slide its window). ``--hf-shape tiny`` swaps 124M for a 2-layer model
of the same vocabulary, to check the script runs. The last two lines, for shakespeare-char:
cached_tok_s=<f> recompute_tok_s=<f> speedup=<f> limit_tok_s=<f> [compiled_tok_s=<f>
  [compiled_bf16_tok_s=<f>] compiled_vs_limit=<f>] onnx_tok_s=<f> onnx_vs_torch=<f>
onnx_int8_tok_s=<f> int8_vs_fp32=<f> onnx_int4_tok_s=<f> int4_vs_fp32=<f>
  [genai_fp32_tok_s=<f> onnx_vs_genai_fp32=<f> genai_int4_tok_s=<f> int4_vs_genai_int4=<f>]   (--genai)
  [hf_tok_s=<f> torch_vs_hf=<f> onnx_vs_hf=<f> onnx_int4_vs_hf=<f>]   (with --hf: GPT-2 124M's;
  with --compile as well, gpt2_compiled_tok_s=<f> [gpt2_compiled_bf16_tok_s=<f>];
  with --genai as well, its genai_gpt2_fp32_tok_s=<f> genai_gpt2_int4_tok_s=<f>)
  [llama_f32_tok_s=<f> llama_f16_tok_s=<f> llama_q8_0_tok_s=<f> llama_q4_0_tok_s=<f>]   (with --llama;
  with --hf as well, GPT-2's as llama_gpt2_<type>_tok_s)
  [hog_cached_vs_quiet=<f> hog_onnx_vs_quiet=<f> hog_int4_vs_quiet=<f>]   (with --hog; with --genai
  as well, hog_genai_fp32_vs_quiet=<f> hog_genai_int4_vs_quiet=<f> hog_onnx_vs_genai=<f>
  hog_int4_vs_genai=<f>)
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from common import SHIPPED, random_gpt2, random_shakespeare_char
from hog import Hog
from torch.nn import functional as F
from yardsticks import genai_run, hf_tok_s, llama_tok_s

from model import checkpoint
from model.device import cpu_has_bf16
from model.generate.backend import Settings
from model.generate.compiled_step import compile_settings
from model.generate.engine import Generation
from model.generate.torch_backend import RecomputeDecoder, TorchDecoder, decode_precision
from model.gpt import GPT
from model.threads import set_threads

PROMPT = "ROMEO:\n"


def tok_s(make_decoder, tokenizer, tokens: int, runs: int) -> float:
    """Median tokens/s of greedy generation of `tokens` tokens, one fresh decoder per run."""
    settings = Settings(temperature=0.0, max_new_tokens=tokens)
    rates = []
    for _ in range(runs):
        gen = Generation(make_decoder(), tokenizer, PROMPT, settings)
        t = time.perf_counter()
        n = sum(1 for _ in gen)
        rates.append(n / (time.perf_counter() - t))
        if n != tokens:
            print(f"  (stopped after {n} tokens: {gen.stop_reason})")
    return statistics.median(rates)


def alternate(timed: dict[str, Callable[[], float]], runs: int) -> dict[str, float]:
    """Median of each path's rates, where calling a path times one run of it (tok/s): the paths are
    run in turn, run by run, so each ratio between them compares runs on the same machine state."""
    rates: dict[str, list[float]] = {name: [] for name in timed}
    for _ in range(runs):
        for name, run in timed.items():
            rates[name].append(run())
    return {name: statistics.median(r) for name, r in rates.items()}


def compiled_vs_eager(model: GPT, tokenizer, args) -> dict[str, float]:
    """The compiled step against the eager one, run by run in turn (one decoder each, reused), and
    on a CPU with native bf16 the step compiled over bf16 weights too (the 16-bit class); returns
    the medians in tok/s: compiled, and compiled_bf16 where timed."""
    models = {"compiled": model}
    if cpu_has_bf16():
        models["compiled_bf16"] = copy.deepcopy(model).to(torch.bfloat16)
    decoders = {"eager": TorchDecoder(model)}
    for name, weights in models.items():
        t = time.perf_counter()
        decoders[name] = TorchDecoder(weights, step="compile")  # builds the package, or loads the kept one
        tok_s(lambda d=decoders[name]: d, tokenizer, 3, 1)
        print(f"  {name:<13} {time.perf_counter() - t:8.1f} s to build, or load when kept", flush=True)
    rates = alternate({name: lambda d=d: tok_s(lambda: d, tokenizer, args.tokens, 1)
                       for name, d in decoders.items()}, args.runs)
    e = rates.pop("eager")
    for name, rate in rates.items():
        print(f"  {name:<13} {rate:8.1f} tok/s   {rate / e:.2f}x eager in the same runs ({e:.1f})",
              flush=True)
    return rates


class MatVecChain(torch.nn.Module):
    """One mat-vec through each weight, in forward order: the arithmetic of a batch-1 decode step
    bar attention over the cache. A module, so that torch.compile's freezing takes the weights as
    constants, as it does the decode step's."""

    def __init__(self, weights: list[torch.Tensor]):
        super().__init__()
        self.weights = torch.nn.ParameterList(weights)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [F.linear(x, w) for x, w in zip(inputs, self.weights, strict=True)]


def weight_pass_seconds(weights: list[torch.Tensor], reps: int = 20, compiled: bool = False) -> float:
    """Median time of one mat-vec through every weight matrix of the model, in forward order, in
    eager PyTorch or (``compiled``) through torch.compile with the CPU decode step's settings.

    It reads every weight once: when the weights do not stay in cache (10.7M fp32 parameters are
    43 MB, more than this CPU's L3), it runs at memory bandwidth, not at the matmul rate."""
    inputs = [torch.randn(1, w.size(1), dtype=w.dtype) for w in weights]
    chain = MatVecChain(weights).eval()
    with torch.inference_mode():
        if compiled:
            compiled_chain = torch.compile(chain, dynamic=False)
            with compile_settings(torch.device("cpu")):
                compiled_chain(inputs)  # compiles
            chain = compiled_chain
        times = []
        for _ in range(reps + 2):
            t = time.perf_counter()
            chain(inputs)
            times.append(time.perf_counter() - t)
    return statistics.median(times[2:])


def arithmetic_limit(model: GPT, avg_context: float, compiled: bool = False) -> tuple[float, float, float]:
    """(FLOPs per decoded token, weight bytes per token, tokens/s if a step cost only its mat-vecs):
    the eager chain's, or with ``compiled`` the faster of the eager and the compiled chain."""
    cfg = model.config
    attention_flops = 4 * cfg.n_embd * avg_context  # q.k scores and the weighted sum of v, per layer
    weights = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    flops = sum(2 * w.numel() for w in weights) + cfg.n_layer * attention_flops
    weight_bytes = sum(w.numel() * w.element_size() for w in weights)
    seconds = weight_pass_seconds(weights)
    if compiled:
        fast = weight_pass_seconds(weights, compiled=True)
        print(f"  chain      eager {1 / seconds:8.1f} tok/s, compiled {1 / fast:8.1f}: the limit is the "
              "faster", flush=True)
        seconds = min(seconds, fast)
    return flops, weight_bytes, 1.0 / seconds


def bench_model(name: str, model: GPT, tokenizer, ckpt_path: Path, args, hog: Hog | None) -> dict:
    cfg = model.config
    if args.genai:  # onnxruntime-genai cannot slide its window: every path decodes what fits in it
        args = argparse.Namespace(**{**vars(args), "tokens": min(args.tokens, cfg.block_size - len(
            tokenizer.encode(PROMPT)))})
    print(f"\n{name}: {cfg.n_layer} layers x {cfg.n_embd}, block {cfg.block_size}, "
          f"{args.tokens} new tokens from {PROMPT!r}, median of {args.runs}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        files = onnx_files(ckpt_path, Path(tmp), args.genai)
        result = hog_vs_quiet(model, tokenizer, files, args, hog) if hog is not None else {}
        print(f"  {'under the hog, ' if hog is not None else ''}on {torch.get_num_threads()} thread(s)",
              flush=True)
        result |= timed_paths(model, tokenizer, files, args)
    if args.llama:
        result |= {f"llama_{kind}_tok_s": rate for kind, rate in llama_tok_s(model, tokenizer, args).items()}
    return result


def timed_paths(model: GPT, tokenizer, files: dict[str, Path], args) -> dict:
    """Our PyTorch paths, the arithmetic limit and the ONNX ``files``, on PyTorch's thread count."""
    cfg = model.config
    cached = tok_s(lambda: TorchDecoder(model), tokenizer, args.tokens, args.runs)
    print(f"  cached     {cached:8.1f} tok/s", flush=True)
    compiled = compiled_vs_eager(model, tokenizer, args) if args.compile else None
    recompute = tok_s(lambda: RecomputeDecoder(model), tokenizer, args.tokens, args.runs)
    print(f"  recompute  {recompute:8.1f} tok/s   cached is {cached / recompute:.1f}x", flush=True)
    # with the re-prefill at block_size, the context averages 3/4 of the window
    flops, weight_bytes, limit = arithmetic_limit(model, avg_context=0.75 * cfg.block_size,
                                                  compiled=args.compile)
    reached = f"cached reaches {cached / limit:.0%} of it"
    if compiled is not None:
        reached += f", compiled {compiled['compiled'] / limit:.0%}"
    print(f"  limit      {limit:8.1f} tok/s   ({flops / 1e6:.1f} MFLOP and {weight_bytes / 1e6:.1f} MB of "
          f"weights per token: {limit * weight_bytes / 1e9:.1f} GB/s); {reached}", flush=True)
    result = dict(cached_tok_s=cached, recompute_tok_s=recompute, speedup=cached / recompute,
                  limit_tok_s=limit)
    if compiled is not None:
        result |= {f"{name}_tok_s": rate for name, rate in compiled.items()}
        result |= dict(compiled_vs_limit=compiled["compiled"] / limit)
    onnx = onnx_tok_s(files, tokenizer, args)
    fp32 = onnx["fp32"]
    print(f"  onnx (CPU) {fp32:8.1f} tok/s   {fp32 / cached:.2f}x the PyTorch cached path", flush=True)
    result |= dict(onnx_tok_s=fp32, onnx_vs_torch=fp32 / cached)
    for kind in ("int8", "int4"):
        print(f"  onnx {kind}  {onnx[kind]:8.1f} tok/s   {onnx[kind] / fp32:.2f}x ONNX Runtime fp32",
              flush=True)
        result |= {f"onnx_{kind}_tok_s": onnx[kind], f"{kind}_vs_fp32": onnx[kind] / fp32}
    if "genai_fp32" in onnx:
        for kind, key in (("fp32", "onnx_vs_genai_fp32"), ("int4", "int4_vs_genai_int4")):
            genai = onnx[f"genai_{kind}"]
            print(f"  genai {kind} {genai:8.1f} tok/s   (onnxruntime-genai on the ONNX folder); ONNX Runtime "
                  f"{kind} is {onnx[kind] / genai:.2f}x it", flush=True)
            result |= {f"genai_{kind}_tok_s": genai, key: onnx[kind] / genai}
    return result


# the paths --hog times quiet and under the hog, by their names in onnx_files, and the names their
# keys and lines give them
HOG_PATHS = {"cached": "cached", "fp32": "onnx", "int4": "int4", "genai_fp32": "genai_fp32",
             "genai_int4": "genai_int4"}


def quiet_and_hogged(make_timed: Callable[[int], dict[str, Callable[[], float]]], hog: Hog, runs: int
                     ) -> tuple[tuple[int, int], dict[str, tuple[float, float]]]:
    """Each path's median tok/s quiet (``hog`` stopped), then under ``hog`` (left running): ((quiet
    threads, hogged threads), {path: (quiet, hogged)}). Each time the threads are model.threads'
    default at that moment, as the app picks them at start-up, and ``make_timed(threads)`` makes
    the paths on them (calling a path times one run of it); the paths alternate run by run."""
    threads, medians = [], []
    for hogged in (False, True):
        if hogged:
            hog.start()
            print(f"  hog: {hog.n} busy process(es), pids {' '.join(map(str, hog.pids))}", flush=True)
        else:
            hog.stop()
        threads.append(set_threads())  # PyTorch's; make_timed gives ONNX Runtime's as many
        medians.append(alternate(make_timed(threads[-1]), runs))
    return (threads[0], threads[1]), {name: (medians[0][name], medians[1][name]) for name in medians[0]}


def hog_vs_quiet(model: GPT, tokenizer, files: dict[str, Path], args, hog: Hog) -> dict:
    """``--hog``: our cached PyTorch path, the ONNX Runtime fp32 and int4 files and (with --genai)
    onnxruntime-genai's folders, quiet and then under the hog (quiet_and_hogged), printed path by
    path; hog_<path>_vs_quiet keys, and ours against onnxruntime-genai's under the same hog."""
    onnx = {kind: path for kind, path in files.items() if kind in HOG_PATHS}

    def make_timed(threads: int) -> dict[str, Callable[[], float]]:
        cached = partial(tok_s, partial(TorchDecoder, model), tokenizer, args.tokens, 1)
        return {"cached": cached, **onnx_runs(onnx, tokenizer, args.tokens, threads)}

    print(f"  quiet, then under {hog.n} busy process(es), on model.threads' default each time "
          "(the goal: >= 0.50x quiet, and >= onnxruntime-genai under the same hog)", flush=True)
    (quiet_threads, hog_threads), rates = quiet_and_hogged(make_timed, hog, args.runs)
    result = {}
    for path, (quiet, hogged) in rates.items():
        name = HOG_PATHS[path]
        print(f"  {name:<10} quiet {quiet:8.1f} tok/s on {quiet_threads} thread(s), under the hog "
              f"{hogged:8.1f} on {hog_threads}: {hogged / quiet:.2f}x quiet", flush=True)
        result[f"hog_{name}_vs_quiet"] = hogged / quiet
    for ours, key in (("fp32", "hog_onnx_vs_genai"), ("int4", "hog_int4_vs_genai")):
        if f"genai_{ours}" in rates:
            result[key] = rates[ours][1] / rates[f"genai_{ours}"][1]
            print(f"  under the hog, ONNX Runtime {ours} is {result[key]:.2f}x onnxruntime-genai {ours}",
                  flush=True)
    return result


def onnx_files(ckpt_path: Path, tmp: Path, genai: bool) -> dict[str, Path]:
    """The ONNX paths' files, written into ``tmp``: fp32 (the file gpt-export writes), int8 and int4
    (converted from it by export.quantize), and with ``genai`` the ONNX folders onnxruntime-genai
    loads, genai_fp32 and genai_int4 (``gpt-export onnx [--quantize int4] --out DIR/``, unchecked)."""
    from export.folder import export_folder
    from export.onnx_export import export_onnx
    from export.quantize import convert

    files = {"fp32": export_onnx(ckpt_path, tmp / "model.onnx", validate=False)}
    for kind in ("int8", "int4"):
        files[kind] = tmp / f"model.{kind}.onnx"
        convert(files["fp32"], files[kind], kind)
    if genai:
        files["genai_fp32"] = export_folder(ckpt_path, tmp / "genai-fp32", validate=False)
        files["genai_int4"] = export_folder(ckpt_path, tmp / "genai-int4", validate=False, kind="int4")
    return files


def onnx_runs(files: dict[str, Path], tokenizer, tokens: int, threads: int) -> dict[str, Callable[[], float]]:
    """For each of ``files``, a callable that times one greedy run of ``tokens`` tokens (tok/s): a
    file through export.ort_backend on ONNX Runtime's CPU provider, a genai_* folder through
    onnxruntime-genai; both on ``threads`` intra-op threads."""
    from export.ort_backend import load_ort_backend

    runs = {}
    for kind, path in files.items():
        if kind.startswith("genai_"):
            runs[kind] = genai_run(path, tokenizer.encode(PROMPT), tokens, threads)
        else:
            backend = load_ort_backend(path, provider="cpu", threads=threads)
            runs[kind] = partial(tok_s, backend.decoder, tokenizer, tokens, 1)
    return runs


def onnx_tok_s(files: dict[str, Path], tokenizer, args) -> dict[str, float]:
    """Median tok/s of each of ``files`` on as many threads as PyTorch uses, timed in turn run by run."""
    return alternate(onnx_runs(files, tokenizer, args.tokens, torch.get_num_threads()), args.runs)


def bench_hf(name: str, model: GPT, tokenizer, ckpt_path: Path, args) -> dict:
    """Our cached path, ONNX Runtime and transformers on the same weights and the same prompt."""
    prompt = tokenizer.encode(PROMPT)
    tokens = min(args.tokens, model.config.block_size - len(prompt))
    print(f"\n{name} beside transformers: {model.config.n_layer} layers x {model.config.n_embd}, vocab "
          f"{model.config.vocab_size}, {tokens} new tokens, median of {args.runs}", flush=True)
    sub = argparse.Namespace(**{**vars(args), "tokens": tokens})
    # what gpt-tui decodes with: --precision auto times fp32 and bf16 weights and keeps the faster
    decode_model, why = decode_precision(model, "auto")
    cached = tok_s(lambda: TorchDecoder(model), tokenizer, tokens, args.runs)
    hf = hf_tok_s(model, prompt, tokens, args.runs)
    print(f"  cached fp32  {cached:8.1f} tok/s   {cached / hf:.2f}x transformers", flush=True)
    chosen = cached
    if decode_model is not model:
        chosen = tok_s(lambda: TorchDecoder(decode_model), tokenizer, tokens, args.runs)
        print(f"  cached bf16  {chosen:8.1f} tok/s   {chosen / hf:.2f}x transformers", flush=True)
        # for scale, not for the ratio: transformers does not pick bf16 by itself
        hf_half = hf_tok_s(model, prompt, tokens, args.runs, torch.bfloat16)
        print(f"  transformers on bf16 weights {hf_half:8.1f} tok/s", flush=True)
    print(f"  auto chose   {why}", flush=True)
    print(f"  transformers {hf:8.1f} tok/s", flush=True)
    compiled = compiled_vs_eager(model, tokenizer, sub) if args.compile else {}
    for name, rate in compiled.items():  # fp32, and bf16 where the CPU has it natively
        print(f"  {name:<14} {rate:8.1f} tok/s   {rate / hf:.2f}x transformers", flush=True)
    _, weight_bytes, limit = arithmetic_limit(model, avg_context=len(prompt) + tokens / 2)
    print(f"  limit        {limit:8.1f} tok/s   (one pass over {weight_bytes / 1e6:.0f} MB of fp32 weights "
          f"in PyTorch; 2x transformers would be {2 * hf:.1f})", flush=True)
    result = dict(hf_tok_s=hf, torch_vs_hf=chosen / hf) | {f"gpt2_{k}_tok_s": v for k, v in compiled.items()}
    with tempfile.TemporaryDirectory() as tmp:
        onnx = onnx_tok_s(onnx_files(ckpt_path, Path(tmp), args.genai), tokenizer, sub)
    for kind, rate in onnx.items():  # fp32, int8, int4, and genai_fp32, genai_int4 with --genai
        label = kind.replace("_", " ") if kind.startswith("genai_") else f"onnx {kind}"
        print(f"  {label:<12} {rate:8.1f} tok/s   {rate / hf:.2f}x transformers", flush=True)
    result |= dict(onnx_vs_hf=onnx["fp32"] / hf, onnx_int4_vs_hf=onnx["int4"] / hf)
    result |= {f"genai_gpt2_{kind.removeprefix('genai_')}_tok_s": rate
               for kind, rate in onnx.items() if kind.startswith("genai_")}
    if args.llama:
        llama = llama_tok_s(model, tokenizer, sub)
        result |= {f"llama_gpt2_{kind}_tok_s": rate for kind, rate in llama.items()}
    return result


def positive(text: str) -> int:
    """argparse type: a whole number >= 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, not {text!r}")
    return int(text)


def bench_all(args, hog: Hog | None) -> dict:
    """Every model's measurements (bench_model, bench_hf); the last model's keys."""
    with tempfile.TemporaryDirectory() as tmp:
        models = []
        if SHIPPED.is_file():
            model, tokenizer, _ = checkpoint.load_model(SHIPPED)
            models.append(("shipped (checkpoints/shakespeare.pt)", model, tokenizer, SHIPPED))
        model, tokenizer = random_shakespeare_char()
        path = Path(tmp) / "shakespeare-char.pt"
        checkpoint.save(checkpoint.payload(model, tokenizer), path)
        models.append(("shakespeare-char (random weights)", model, tokenizer, path))
        for name, model, tokenizer, path in models:
            result = bench_model(name, model, tokenizer, path, args, hog)
        if args.hf:
            bench_hf(*models[-1], args)  # shakespeare-char, printed only
            model, tokenizer = random_gpt2(args.hf_shape)
            path = Path(tmp) / "gpt2.pt"
            checkpoint.save(checkpoint.payload(model, tokenizer), path)
            result |= bench_hf(f"GPT-2 {args.hf_shape} (random weights)", model, tokenizer, path, args)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per run")
    parser.add_argument("--runs", type=int, default=3, help="runs per path (median)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 20 tokens, 1 run")
    parser.add_argument("--compile", action="store_true",
                        help="also time TorchDecoder(step='compile'), compile time included in its output")
    parser.add_argument("--hf", action="store_true", help="also transformers' generate() on the same weights")
    parser.add_argument("--hf-shape", choices=["124m", "tiny"], default="124m",
                        help="the GPT-2 shape for --hf (tiny: check the script runs)")
    parser.add_argument("--llama", metavar="BIN_DIR",
                        help="also llama.cpp's llama-bench from this bin folder, on GGUF files of the "
                             "same weights")
    parser.add_argument("--genai", action="store_true",
                        help="also onnxruntime-genai on the ONNX folders (fp32, int4) of the same weights")
    parser.add_argument("--hog", type=positive, nargs="?", const=os.cpu_count() or 1, metavar="N",
                        help="time everything under N busy processes (default: one per core), and our "
                             "paths quiet as well")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.runs = 20, 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    if args.hog:
        print(f"hog: {args.hog} busy process(es); threads: model.threads' default, chosen quiet and "
              "again under the hog")
    if args.llama and not (Path(args.llama) / "llama-bench").is_file():
        print(f"llama.cpp: skipped, no llama-bench in {args.llama} (pass llama.cpp's bin folder)")
        args.llama = None
    elif not args.llama:
        print("llama.cpp: skipped (pass --llama BIN_DIR to time it on the same weights)")
    if not args.genai:
        print("onnxruntime-genai: skipped (pass --genai to time it on the same weights)")
    else:
        try:  # here, so that a missing one is this line rather than a traceback after minutes of work
            import onnxruntime_genai  # noqa: F401
        except ImportError as e:
            print(f"onnxruntime-genai: skipped, onnxruntime_genai does not import ({e}; it is in the dev "
                  "extra: pip install -e '.[dev]')")
            args.genai = False
    hog = Hog(args.hog) if args.hog else None
    try:
        result = bench_all(args, hog)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    finally:
        if hog is not None:
            hog.stop()
    last = ("onnx_int8_tok_s", "int8_vs_fp32", "onnx_int4_tok_s", "int4_vs_fp32", "genai_fp32_tok_s",
            "onnx_vs_genai_fp32", "genai_int4_tok_s", "int4_vs_genai_int4",
            "hf_tok_s", "torch_vs_hf", "onnx_vs_hf", "onnx_int4_vs_hf")
    last += tuple(k for prefix in ("genai_gpt2_", "llama_", "hog_") for k in result if k.startswith(prefix))
    print(" ".join(f"{k}={v:.2f}" for k, v in result.items() if k not in last))
    print(" ".join(f"{k}={result[k]:.2f}" for k in last if k in result))


if __name__ == "__main__":
    main()
