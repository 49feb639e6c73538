"""The ONNX Runtime backend: the same ``Backend`` as the PyTorch one, driven from NumPy.

Everything above the model (sampling, stops, the block-size window, streaming) is model.generate.engine's
``Generation``; this module only supplies the decoders. A file in the cache layout (export.graph;
what ``gpt-export onnx`` writes) gets ``OrtDecoder``: one row of export.ort_batched's ``OrtCache``,
whose fixed-size buffers the graph writes in place through an IOBinding. A file in the concat layout
(the ONNX folder's graph for Optimum and onnxruntime-genai, and every file from before the cache
layout) gets ``OrtConcatDecoder``, which binds each step's present as the next step's past; it has
no batched decoder (batch mode runs its items one at a time).

Providers: ``auto`` takes CUDA when onnxruntime-gpu can actually run on a GPU here, else the CPU;
``cuda`` where CUDA cannot run is an error, not a silent fallback. ONNX Runtime's own complaints
while probing for CUDA (missing libraries) are captured, not printed on the user's terminal.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from export.graph import FORMATS, META_PREFIX, WEIGHT_TYPES, WEIGHTS_KEY, Layout, input_names, output_names
from export.ort_batched import OrtBatchDecoder, OrtCache
from model.config import GPTConfig
from model.generate.backend import BackendInfo, Settings
from model.generate.engine import Generation
from model.tokenizer import CharTokenizer, Tokenizer, tokenizer_from_dict

Provider = Literal["auto", "cpu", "cuda"]
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


class OnnxModelError(ValueError):
    """An .onnx file this backend cannot use; the message names the file and what to do."""


@contextmanager
def _quiet_stderr():
    """Send the process's fd 2 to a temp file (C++ code writes there, below Python); yield a list
    that holds what was written once the block ends."""
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield captured
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def _session(path: Path, provider: Provider, threads: int | None = None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    if threads is not None:  # else ONNX Runtime's default: a thread per core
        options.intra_op_num_threads = threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    want_cuda = provider == "cuda" or (
        provider == "auto" and PROVIDERS["cuda"] in ort.get_available_providers())
    providers = [PROVIDERS["cuda"], PROVIDERS["cpu"]] if want_cuda else [PROVIDERS["cpu"]]
    try:
        with _quiet_stderr() as captured:
            session = ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # ORT raises its own exception types for unreadable models
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxModelError(f"ONNX Runtime cannot load {path} ({first[:200]}); re-export it with "
                             "gpt-export onnx") from None
    if provider == "cuda" and session.get_providers()[0] != PROVIDERS["cuda"]:
        # ORT's log says why, e.g. "... with error: libcublasLt.so.13: cannot open shared object file"
        why = re.search(r"with error: ([^\n\x1b]+)", "".join(captured))
        raise OnnxModelError(
            "--provider cuda: ONNX Runtime cannot use CUDA here ("
            + (why.group(1).strip() if why else "no usable GPU or CUDA libraries")
            + "); use --provider cpu or auto"
        )
    return session


def _read_metadata(session, path: Path) -> tuple[GPTConfig, dict, dict, str, Layout]:
    props = session.get_modelmeta().custom_metadata_map
    mark = props.get(f"{META_PREFIX}format", "")
    layout = next((name for name, fmt in FORMATS.items() if fmt == mark), None)
    if layout is None and mark.startswith(FORMATS["cache"].split("/")[0] + "/"):
        raise OnnxModelError(f"{path} is a gpt-from-scratch ONNX model of another format ({mark[:40]!r}); "
                             "re-export it with this version's gpt-export onnx")
    if layout is None:
        raise OnnxModelError(f"{path} is not a gpt-from-scratch ONNX model (no {FORMATS['cache']} metadata); "
                             "export one with gpt-export onnx")
    try:
        config = GPTConfig.from_dict(json.loads(props[f"{META_PREFIX}config"]))
        tokenizer = json.loads(props[f"{META_PREFIX}tokenizer"])
        meta = json.loads(props.get(f"{META_PREFIX}meta", "{}"))
    except (KeyError, TypeError, ValueError) as e:
        raise OnnxModelError(f"{path} has damaged metadata ({e}); re-export it") from None
    names = [i.name for i in session.get_inputs()]
    if names != input_names(config.n_layer):
        raise OnnxModelError(f"{path}: inputs {names[:4]}... do not match its config; re-export it")
    _check_graph(session, config, path, layout)
    weights = props.get(WEIGHTS_KEY, "")  # none in files from before the key
    # shown to the user as it is: only the names we write, never a file's own text
    return config, tokenizer, meta, weights if weights in WEIGHT_TYPES else "", layout


def _check_graph(session, config: GPTConfig, path: Path, layout: Layout) -> None:
    """The metadata's config against the graph itself: the fixed sizes of the past inputs and the
    logits, then one step at the last position with the last token id, which fails in ONNX Runtime
    if the graph's embeddings hold fewer positions or tokens than the metadata claims."""
    def mismatch(what: str) -> OnnxModelError:
        return OnnxModelError(f"{path}: its metadata does not match the graph ({what}); re-export it "
                              "with gpt-export onnx")

    c = config
    for name, shape in ((i.name, i.shape) for i in session.get_inputs()[3:]):
        for axis, want in ((1, c.n_head), (3, c.head_size)):
            if isinstance(shape[axis], int) and shape[axis] != want:
                raise mismatch(f"{name} has {shape[axis]} on axis {axis}, the config says {want}")
    V = session.get_outputs()[0].shape[2]
    if isinstance(V, int) and V != c.vocab_size:
        raise mismatch(f"logits are {V} wide, the config says vocab_size {c.vocab_size}")
    # the cache layout: a full cache, the token written at its last slot; the concat one: no past
    slots = c.block_size if layout == "cache" else 0
    feeds = {"input_ids": np.asarray([[c.vocab_size - 1]], dtype=np.int64),
             "attention_mask": np.ones((1, max(slots, 1)), dtype=np.int64),
             "position_ids": np.asarray([[c.block_size - 1]], dtype=np.int64)}
    past = np.zeros((1, c.n_head, slots, c.head_size), dtype=np.float32)  # (B, H, slots, D)
    feeds |= {name: past for name in input_names(c.n_layer)[3:]}
    try:
        with _quiet_stderr():
            logits = session.run(["logits"], feeds)[0]
    except Exception as e:  # ORT's own exception types: an index out of range, a shape clash
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise mismatch(f"a step at position {c.block_size - 1} with token {c.vocab_size - 1} fails: "
                       f"{first[:160]}") from None
    if logits.shape != (1, 1, c.vocab_size):
        raise mismatch(f"logits come out {list(logits.shape)}, the config says [1, 1, {c.vocab_size}]")


def _check_feed(P: int, ids: list[int], config: GPTConfig) -> None:
    if not ids or P + len(ids) > config.block_size:
        raise ValueError(f"{P} + {len(ids)} positions exceed block_size {config.block_size}; reset() and "
                         "re-feed the last part of the context (model.generate.engine does this)")
    if min(ids) < 0 or max(ids) >= config.vocab_size:
        bad = next(i for i in ids if not 0 <= i < config.vocab_size)
        raise ValueError(f"token id {bad} is outside the vocabulary [0, {config.vocab_size})")


class OrtDecoder:
    """One sequence on a cache-layout graph: model.generate.backend.Decoder over one row of an
    ``OrtCache``, written in place."""

    def __init__(self, session, config: GPTConfig):
        self.cache = OrtCache(session, config, rows=1)
        self.config = config
        self.block_size = config.block_size
        self.pos = 0
        self._ones = np.ones((1, config.block_size), dtype=np.int64)  # every slot up to pos is real

    def reset(self) -> None:
        self.pos = 0  # the slots stay as they are: the next feed rewrites the ones it reads

    def feed(self, ids: list[int]) -> torch.Tensor:
        P, T = self.pos, len(ids)
        _check_feed(P, ids, self.config)
        x = np.asarray([ids], dtype=np.int64)  # (1, T)
        logits = self.cache.run(0, x, np.arange(P, P + T, dtype=np.int64)[None], self._ones[:, :P + T])
        self.pos += T
        return torch.from_numpy(logits[0, -1])  # (V,) float32


class OrtConcatDecoder:
    """One sequence on a concat-layout graph: each step's present (past + new, a new buffer from
    the graph's Concat) is bound as the next step's past, as ONNX Runtime values: no NumPy copies."""

    def __init__(self, session, config: GPTConfig):
        self.session, self.config = session, config
        self.block_size = config.block_size
        self.names = input_names(config.n_layer)
        self.outputs = output_names(config.n_layer)
        self.reset()

    @property
    def pos(self) -> int:
        return self.past[0].shape()[2]

    def reset(self) -> None:
        from onnxruntime import OrtValue

        c = self.config
        empty = np.zeros((1, c.n_head, 0, c.head_size), dtype=np.float32)  # (B, H, P=0, D)
        self.past = [OrtValue.ortvalue_from_numpy(empty)] * (2 * c.n_layer)

    def feed(self, ids: list[int]) -> torch.Tensor:
        P, T = self.pos, len(ids)
        _check_feed(P, ids, self.config)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([ids], dtype=np.int64))  # (1, T)
        binding.bind_cpu_input("attention_mask", np.ones((1, P + T), dtype=np.int64))
        binding.bind_cpu_input("position_ids", np.arange(P, P + T, dtype=np.int64)[None])
        for name, value in zip(self.names[3:], self.past, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, "cpu")  # ONNX Runtime allocates: the present grows each step
        self.session.run_with_iobinding(binding)
        logits, *self.past = binding.get_outputs()
        return torch.from_numpy(logits.numpy()[0, -1])  # (V,) float32


class OrtBackend:
    """model.generate.backend.Backend over an exported .onnx file."""

    def __init__(self, session, config: GPTConfig, tokenizer: Tokenizer, path: str, meta: dict,
                 weights: str, layout: Layout = "cache"):
        self.session, self.config, self.tokenizer = session, config, tokenizer
        self.path, self.meta, self.weights, self.layout = path, meta, weights, layout

    @property
    def provider(self) -> str:
        return self.session.get_providers()[0]

    def info(self) -> BackendInfo:
        return BackendInfo(
            backend="onnx", path=self.path, vocab_size=self.config.vocab_size,
            block_size=self.config.block_size, device=self.provider,
            vocab=self.tokenizer.chars if isinstance(self.tokenizer, CharTokenizer) else None,
            config=self.config.to_dict(), meta=self.meta,
            precision=f"{self.weights} weights (as exported)" if self.weights else "",
        )

    def unknown_chars(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown_chars(prompt)

    def decoder(self) -> OrtDecoder | OrtConcatDecoder:
        if self.layout == "cache":
            return OrtDecoder(self.session, self.config)
        return OrtConcatDecoder(self.session, self.config)

    def batch_decoder(self, rows: int) -> OrtBatchDecoder | None:
        """Up to ``rows`` sequences decoded together (model.generate.batched.Batch drives it); None
        for a concat-layout file, whose items run one at a time."""
        return OrtBatchDecoder(self.session, self.config, rows) if self.layout == "cache" else None

    def window_logits(self, ids: np.ndarray) -> np.ndarray:
        """Logits (B, T, V) for B whole windows of ids (B, T) int64, each from position 0, in one
        pass and with no state kept: what a validation loss needs (export.quantize)."""
        c = self.config
        B, T = ids.shape
        slots = c.block_size if self.layout == "cache" else 0  # a cache to write in, or no past
        past = np.zeros((B, c.n_head, slots, c.head_size), dtype=np.float32)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "position_ids": np.broadcast_to(np.arange(T, dtype=np.int64), ids.shape).copy()}
        feeds |= {name: past for name in input_names(c.n_layer)[3:]}
        return self.session.run(["logits"], feeds)[0]

    def torch_model(self) -> None:
        return None  # no PyTorch model here: the attention view needs the checkpoint

    def stream(self, prompt: str, settings: Settings) -> Generation:
        return Generation(self.decoder(), self.tokenizer, prompt, settings)


def load_ort_backend(path: str | Path, provider: Provider = "auto", threads: int | None = None) -> OrtBackend:
    """An .onnx file from gpt-export -> a backend on the chosen ONNX Runtime provider (on
    ``threads`` CPU threads; default: one per core)."""
    path = Path(path)
    if provider not in ("auto", "cpu", "cuda"):
        raise ValueError(f"provider must be auto, cpu or cuda, not {provider!r}")
    if not path.is_file():
        raise OnnxModelError(f"{path} not found; export one with gpt-export onnx --ckpt CKPT --out {path}")
    session = _session(path, provider, threads)
    config, tokenizer_dict, meta, weights, layout = _read_metadata(session, path)
    try:
        tokenizer = tokenizer_from_dict(tokenizer_dict)
    except (ValueError, OSError, RuntimeError) as e:
        raise OnnxModelError(f"{path}: its tokenizer cannot be rebuilt here ({e})") from None
    return OrtBackend(session, config, tokenizer, str(path), meta, weights, layout)
