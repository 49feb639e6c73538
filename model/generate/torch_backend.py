"""The PyTorch backend: decoders over a GPT (with the KV cache, or nanoGPT's recompute), the batched
decoder model.generate.batched drives, and the ``Backend`` that streams through
model.generate.engine.Generation."""

from __future__ import annotations

import copy
import logging
import statistics
import time
from pathlib import Path
from typing import Literal

import torch

from model import measured
from model.checkpoint import load_model
from model.device import Device, cpu_has_bf16, resolve_device
from model.generate import compiled_step
from model.generate.backend import BackendInfo, Settings
from model.generate.compiled_step import CompiledStep, step_forward
from model.generate.engine import Generation
from model.gpt import GPT, Bigram
from model.kv_cache import KVCache
from model.tokenizer import CharTokenizer, Tokenizer


def _ready(model: GPT | Bigram, device: torch.device | str | None) -> GPT | Bigram:
    """The model on device (default: where its weights are), in eval mode: dropout off."""
    device = device if device is not None else next(model.parameters()).device
    return model.to(device).eval()


Step = Literal["auto", "eager", "static", "cuda_graph", "compile"]
# inductor's settings for the CPU step. freezing: the weights become constants, prepacked once.
# max_autotune_gemm with the CPP backend: per matmul shape, time inductor's own C++ GEMM kernels against
# ATen's (MKL) and keep the faster; MKL's mat-vec is not the fastest on every CPU. cpp_wrapper: the
# kernels are called from C++, not one Python line each.
Precision = Literal["auto", "fp32", "bf16"]
BF16_MARGIN = 0.95  # decode_precision keeps bf16 weights only when a step takes < 95% of fp32's time


class CompileError(RuntimeError):
    """torch.compile could not build the one-token step (on a CPU it needs a working C++ compiler)."""


class TorchDecoder:
    """A PyTorch GPT or bigram with a KV cache: the prompt in one pass, then one position a token.

    ``step`` chooses how a one-token step runs. ``eager``: the model's forward over the cached
    slots. ``cuda_graph`` (CUDA only): the step with fixed shapes (``_StaticStep``: every slot,
    masked past the position; ``static`` runs it as it is, which is how a CPU checks the maths)
    captured once as a CUDA graph and replayed, so a token costs one
    graph launch instead of a few hundred kernel launches from Python. ``compile``: the same
    fixed-shape step compiled ahead of time (model.generate.compiled_step), ``compiled`` if given,
    else loaded from the user's cache or built there first. ``auto``: ``cuda_graph`` on CUDA, else
    ``compiled`` where the backend found one, else ``eager``. The prompt and the window's re-prefill
    always run eagerly, into the same cache."""

    def __init__(self, model: GPT | Bigram, device: torch.device | str | None = None, step: Step = "auto",
                 compiled: CompiledStep | None = None):
        self.model = _ready(model, device)
        weight = next(self.model.parameters())
        self.device = weight.device
        self.block_size = model.config.block_size
        self.cache = KVCache(model.config, 1, self.device, weight.dtype)
        self._one = torch.zeros(1, 1, dtype=torch.long, device=self.device)  # a decode step's input
        if step == "auto":
            step = "cuda_graph" if self.device.type == "cuda" else "compile" if compiled else "eager"
        if step == "cuda_graph" and self.device.type != "cuda":
            raise ValueError(f"step='cuda_graph' needs a CUDA device, not {self.device}; use 'eager'")
        if step not in ("eager", "static", "cuda_graph", "compile"):
            raise ValueError(f"step must be auto, eager, static, cuda_graph or compile, not {step!r}")
        if not isinstance(self.model, GPT):
            step = "eager"  # a bigram's step is one table lookup
        self.step = step
        self._static = None
        self._compiled = None
        if step == "compile":
            self._compiled = compiled or compiled_step.load(self.model, build_if_missing=True,
                                                            if_faster=False)
            if self._compiled is None:
                raise CompileError(f"no compiled step for this model on {self.device}")
        if step != "eager":
            # the fixed-shape step reads every slot and masks those past pos: zeros once, then only
            # finite keys (see model.kv_cache)
            self.cache.zero_()
        if step in ("static", "cuda_graph"):
            self._static = _StaticStep(self.model, self.cache, graphed=step == "cuda_graph")

    @property
    def pos(self) -> int:
        return self.cache.pos

    def reset(self) -> None:
        self.cache.reset()

    @torch.inference_mode()
    def feed(self, ids: list[int]) -> torch.Tensor:
        if self.step != "eager" and len(ids) == 1 and 0 < self.cache.pos < self.block_size:
            if self._compiled is not None:
                logits = self._compiled.run(self.cache, ids[0], self.cache.pos)  # (1, 1, V)
            else:
                logits = self._static.run(ids[0], self.cache.pos)
            self.cache.advance(1)
        else:
            if len(ids) == 1:  # a decode step: fill the preallocated (1, 1), no new tensor
                idx = self._one.fill_(ids[0])
            else:
                idx = torch.tensor([ids], device=self.device)  # (1, T)
            logits, _ = self.model(idx, cache=self.cache)  # (1, T, V); the cache advances by T
        return logits[0, -1].float().cpu()  # sampling runs on the CPU, the same on every device


class _StaticStep:
    """The one-token step with fixed shapes, over the decoder's KVCache: the token and its position
    live in device tensors, the cache writes the new key at the slot the position tensor holds, and
    attention spans all block_size slots under a mask of those <= pos. Masked slots get exactly
    zero weight, so the logits are the eager step's up to summation order."""

    def __init__(self, model: GPT, cache: KVCache, graphed: bool = False):
        device = cache.k.device
        self.graphed = graphed
        self.model = model
        self.idx = torch.zeros(1, 1, dtype=torch.long, device=device)  # (1, 1)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)  # (1,)
        self.slots = torch.arange(cache.block_size, device=device)  # (S,)
        self.cache = cache
        self.layers = cache.layers
        self.graph = None
        self.out: torch.Tensor | None = None  # the captured graph's output buffer

    def forward(self) -> torch.Tensor:
        return step_forward(self.model, self.idx, self.slot, self.slots, self.layers)

    def run(self, token: int, pos: int) -> torch.Tensor:
        """Logits (1, 1, V) for token at position pos; its key/value land in slot pos."""
        self.idx.fill_(token)
        self.slot.fill_(pos)
        self.cache.span = self.cache.block_size  # every slot, always: the shapes never change
        if not self.graphed:
            return self.forward()
        if self.graph is None:
            try:
                self._capture()
            except RuntimeError as e:  # a capture the driver refuses: the same step, uncaptured
                logging.getLogger(__name__).warning("CUDA graph capture failed (%s); decoding without", e)
                self.graphed = False
                return self.forward()
        self.graph.replay()
        return self.out

    def _capture(self) -> None:
        # warm up on a side stream (as torch.cuda.graphs asks), then capture. Each run writes this
        # token's key/value to slot pos, which the real step writes the same way: no harm done
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                self.forward()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.out = self.forward()


class RecomputeDecoder:
    """No cache: every feed re-runs the model over the whole window, as nanoGPT's ``generate``.

    The reference the cached decoder is tested against, and the benchmark's baseline."""

    def __init__(self, model: GPT | Bigram, device: torch.device | str | None = None):
        self.model = _ready(model, device)
        self.device = next(self.model.parameters()).device
        self.block_size = model.config.block_size
        self.window: list[int] = []

    @property
    def pos(self) -> int:
        return len(self.window)

    def reset(self) -> None:
        self.window = []

    @torch.inference_mode()
    def feed(self, ids: list[int]) -> torch.Tensor:
        if self.pos + len(ids) > self.block_size:
            raise ValueError(
                f"{self.pos} + {len(ids)} positions exceed block_size {self.block_size}; "
                "reset() and re-feed the last part of the context (model.generate.engine does this)"
            )
        self.window += ids
        logits, _ = self.model(torch.tensor([self.window], device=self.device))  # (1, pos, V)
        return logits[0, -1].float().cpu()


class TorchBatchDecoder:
    """model.generate.batched.BatchDecoder over a PyTorch GPT: rows prefilled alone into their slice of
    a ``KVCache`` of ``rows`` rows, then decode steps for rows [0, B) in one pass, each row writing
    at its own position and masked to its own slots."""

    def __init__(self, model: GPT, rows: int, device: torch.device | str | None = None):
        if not isinstance(model, GPT):
            raise ValueError("batched decoding needs a GPT; the bigram has nothing to batch")
        self.model = _ready(model, device)
        weight = next(self.model.parameters())
        self.device = weight.device
        self.rows = rows
        self.block_size = model.config.block_size
        # zeros: a step reads slots [0, width) of every row and masks those a row has not written
        self.cache = KVCache(model.config, rows, self.device, weight.dtype).zero_()
        self.lengths = [0] * rows  # positions cached per row

    @torch.inference_mode()
    def prefill(self, row: int, ids: list[int]) -> torch.Tensor:
        cache = self.cache.row(row)
        logits, _ = self.model(torch.tensor([ids], device=self.device), cache=cache)  # (1, T, V)
        self.lengths[row] = cache.pos
        return logits[0, -1].float().cpu()

    @torch.inference_mode()
    def step(self, tokens: dict[int, int]) -> dict[int, torch.Tensor]:
        lengths = self.lengths
        B = max(tokens) + 1  # rows [0, B): a free or prefilling row in between takes a dummy token
        # a row not stepping writes its dummy key at a slot nobody reads before it is rewritten:
        # its next free one (it is prefilled after the step, from slot 0)
        positions = [lengths[b] if b in tokens else min(lengths[b], self.block_size - 1) for b in range(B)]
        if max(positions) >= self.block_size:
            raise ValueError(f"a row is at position {max(positions)}, past block_size {self.block_size}; "
                             "re-prefill it with the last part of its context")
        pos = torch.tensor(positions, device=self.device)[:, None]  # (B, 1)
        idx = torch.tensor([tokens.get(b, 0) for b in range(B)], device=self.device)[:, None]  # (B, 1)
        self.cache.span = max(positions) + 1  # up to the furthest row's new slot
        slots = self.model.slots[:self.cache.span]  # (width,)
        mask = (slots[None, :] <= pos)[:, None, None, :]  # (B, 1, 1, width): each row its own past
        layers = self.cache.layers
        logits = self.model.forward_at(idx, pos, causal=False, mask=mask, caches=layers)  # (B, 1, V)
        logits = logits[:, -1].float().cpu()
        for b in tokens:
            lengths[b] += 1
        return {b: logits[b] for b in tokens}

    def release(self, row: int) -> None:
        self.lengths[row] = 0

    @torch.inference_mode()
    def move(self, src: int, dst: int) -> None:
        self.cache.move(src, dst, self.lengths[src])
        self.lengths[dst], self.lengths[src] = self.lengths[src], 0


def step_seconds(model: GPT | Bigram, steps: int = 8, prompt: int = 16) -> float:
    """Median time of a one-token cached step after a short prompt: what a decoded token costs."""
    decoder = TorchDecoder(model)
    decoder.feed([0] * min(prompt, model.config.block_size - steps))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        decoder.feed([0])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bf16_worth_timing(device: torch.device) -> bool:
    """bf16 weights can only win where the hardware multiplies bf16 natively; emulated, they lose."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_bf16()


def decode_precision(model: GPT | Bigram, precision: Precision = "auto") -> tuple[GPT | Bigram, str]:
    """The model to decode with and why. A batch-1 step streams every weight once, so halving their
    bytes can pay, but whether it does depends on the shape and the CPU (bf16 mat-vecs have their
    own kernels), so ``auto`` times both copies on this model, twice each in turn, and keeps bf16
    only if it is clearly faster. A model already stored in a 16-bit type is decoded as it is."""
    weight = next(model.parameters())
    if weight.dtype != torch.float32 or isinstance(model, Bigram):
        return model, f"{str(weight.dtype).removeprefix('torch.')} weights (as loaded)"
    if precision == "fp32":
        return model, "fp32 weights (asked for)"
    if precision == "bf16":
        return copy.deepcopy(model).to(torch.bfloat16), "bf16 weights (asked for)"
    if not bf16_worth_timing(weight.device):
        return model, "fp32 weights (no native bf16 here)"

    def race() -> dict[str, float]:
        half = copy.deepcopy(model).to(torch.bfloat16)
        times: dict[str, list[float]] = {"fp32": [], "bf16": []}
        for _ in range(2):
            times["fp32"].append(step_seconds(model))
            times["bf16"].append(step_seconds(half))
        return {"fp32_s": min(times["fp32"]), "bf16_s": min(times["bf16"])}

    # timed once per machine and model shape, then remembered: the same command decodes alike
    shape = {k: v for k, v in model.config.to_dict().items() if k not in ("dropout", "attention")}
    times, kept = measured.remembered("decode precision", shape, weight.device, race)
    fp32, bf16 = times["fp32_s"], times["bf16_s"]
    # bf16 costs precision, so it must win by more than timing noise
    name = "bf16" if bf16 < BF16_MARGIN * fp32 else "fp32"
    chosen = copy.deepcopy(model).to(torch.bfloat16) if name == "bf16" else model
    when = "as timed earlier on this machine" if kept else "timed now, and kept for later runs"
    return chosen, f"{name} weights (a step: fp32 {fp32 * 1e3:.1f} ms, bf16 {bf16 * 1e3:.1f} ms; {when})"


class TorchBackend:
    """model.generate.backend.Backend over a PyTorch model: each stream gets its own decoder and cache.

    ``precision`` is the weights' type for decoding (``decode_precision``); the insight views
    (``torch_model()``) keep the model as loaded. ``step`` is how its decoders run a one-token step
    (``TorchDecoder``). The compiled step is found here, once, not in each generation: ``auto``
    uses the one kept in the user's cache where it is faster than the eager step; ``compile`` also
    builds it first when there is none (the first time: tens of seconds) and uses it."""

    def __init__(
        self, model: GPT | Bigram, tokenizer: Tokenizer, path: str = "<model>", meta: dict | None = None,
        precision: Precision = "fp32", step: Step = "auto",
    ):
        self.model = _ready(model, None)
        self.decode_model, self.precision = decode_precision(self.model, precision)
        self.compiled = None
        if step in ("auto", "compile") and isinstance(self.model, GPT):
            try:
                self.compiled = compiled_step.load(self.decode_model, build_if_missing=step == "compile",
                                                   if_faster=step == "auto")
            except Exception as e:  # inductor raises many kinds; the first line says what failed
                first = (str(e).strip() or type(e).__name__).splitlines()[0]
                raise CompileError(f"compiling the one-token decode step failed: {first}") from None
            if step == "compile" and self.compiled is None:
                raise CompileError("the compiled one-token decode step could not be loaded from "
                                   f"{compiled_step.package_path(self.decode_model).parent}")
        self.step = "compile" if self.compiled is not None else step  # a bigram's decoders run eagerly
        self.tokenizer = tokenizer
        self.path = path
        self.meta = dict(meta or {})

    def info(self) -> BackendInfo:
        config = self.model.config
        return BackendInfo(
            backend="torch",
            path=self.path,
            vocab_size=config.vocab_size,
            block_size=config.block_size,
            device=str(next(self.model.parameters()).device),
            vocab=self.tokenizer.chars if isinstance(self.tokenizer, CharTokenizer) else None,
            config=config.to_dict(),
            meta=self.meta,
            precision=self.precision + ("; compiled one-token step" if self.compiled is not None else ""),
        )

    def unknown_chars(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown_chars(prompt)

    def decoder(self) -> TorchDecoder:
        # a fresh cache per decoder (a few MB): streams never share state, and closing one frees it
        return TorchDecoder(self.decode_model, step=self.step, compiled=self.compiled)

    def batch_decoder(self, rows: int) -> TorchBatchDecoder | None:
        """Up to ``rows`` sequences decoded together (model.generate.batched.Batch drives it); None for the
        bigram, whose step is one table lookup: nothing to share."""
        return TorchBatchDecoder(self.decode_model, rows) if isinstance(self.model, GPT) else None

    def torch_model(self) -> GPT | Bigram:
        return self.model

    def stream(self, prompt: str, settings: Settings) -> Generation:
        return Generation(self.decoder(), self.tokenizer, prompt, settings)


def load_backend(path: str | Path, device: Device = "cpu", precision: Precision = "fp32",
                 step: Step = "auto") -> TorchBackend:
    """A slim or full training checkpoint -> a PyTorch backend on cpu, cuda, mps (or auto), decoding
    with the weights' precision ``decode_precision`` picks (gpt-tui asks for ``auto``) and the
    one-token ``step`` asked for."""
    model, tokenizer, meta = load_model(path, resolve_device(device))
    return TorchBackend(model, tokenizer, path=str(path), meta=meta, precision=precision, step=step)
