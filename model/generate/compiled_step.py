"""The one-token decode step compiled ahead of time and kept, so that later processes load it in a
moment instead of compiling again.

On a CPU a batch-1 token is a chain of small mat-vecs, and the eager step pays Python and operator
dispatch around each of them. Inductor compiles the fixed-shape step (``step_forward``: every slot
of the cache, masked past the position) into one C++
function with the weights frozen in and packed for the CPU's matmul kernels. Compiled by
``torch.compile`` that costs tens of seconds in every process: with frozen weights inductor's own
cache is bypassed. AOTInductor compiles the same step once into a package (a shared library and its
weights) that any later process loads.

One package per (weights, dtype, model shape, torch version, processor): the key hashes all of
them, so another model, a retrained one or an upgraded torch never loads a stale step. Packages live
in the user's cache and are loaded only from there, only when the folder and the file belong to the
user and no one else may write them: loading a package runs its code, so it is never read from a
path a model folder or a command line names. The step's caches are inputs it writes in place
(torch.export records the mutation and the package applies it), so one package serves every decoder
of its model, each over its own KVCache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import stat
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from model import measured
from model.atomic import OutputBusyError, writing
from model.device import machine
from model.gpt import GPT, LayerCache
from model.kv_cache import KVCache
from model.paths import cache_dir

# inductor on a CPU: weights frozen in as constants (packed for the matmul kernels), each matmul's
# kernel picked by timing inductor's C++ kernels against ATen's, quietly
CPU_DECODE_COMPILE = {"freezing": True, "cpp_wrapper": True, "max_autotune_gemm": True,
                      "max_autotune_gemm_backends": "CPP,ATEN", "autotune_num_choices_displayed": 0,
                      "max_autotune_report_choices_stats": False}
FORMAT = 1  # bump when the exported step's inputs or maths change: old packages are then not found
FASTER = 0.9  # the package is used only when its step takes < 90% of the eager step's time

log = logging.getLogger(__name__)


def step_forward(model: GPT, idx: torch.Tensor, slot: torch.Tensor, slots: torch.Tensor,
                 layers: list[LayerCache]) -> torch.Tensor:
    """The fixed-shape step: token idx (1, 1) at position slot (1,), attending to the slots <= it."""
    mask = (slots <= slot)[None, None, None, :]  # (1, 1, 1, S)
    return model.forward_at(idx, slot, causal=False, mask=mask, caches=layers)


@contextlib.contextmanager
def compile_settings(device: torch.device) -> Iterator[dict]:
    """inductor's settings (``CPU_DECODE_COMPILE`` on a CPU) around a call that compiles; yields
    them. Patched around the call rather than passed as torch.compile's options, which (torch 2.13)
    do not reach the freezing passes."""
    options = CPU_DECODE_COMPILE if device.type == "cpu" else {}
    with torch._inductor.config.patch(options), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "TypedStorage is deprecated")  # inductor's autotuner's
        yield dict(options)


class _Step(torch.nn.Module):
    """The fixed-shape step as a module over the whole cache: (idx (1, 1), slot (1,), slots (S,),
    k, v (L, 1, H, S, D)) -> logits (1, 1, V); writes this token's keys and values at slot."""

    def __init__(self, model: GPT):
        super().__init__()
        self.model = model

    def forward(self, idx, slot, slots, k, v):
        cache = KVCache.over(k, v)
        cache.span = cache.block_size
        return step_forward(self.model, idx, slot, slots, cache.layers)


def package_path(model: GPT) -> Path:
    """Where ``model``'s compiled step is kept: named by a hash of everything its code depends on."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy())
    weight = next(model.parameters())
    key = {"format": FORMAT, "weights": digest.hexdigest(), "dtype": str(weight.dtype),
           "config": model.config.to_dict(), **machine(weight.device), "flags": _cpu_flags()}
    name = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:32]
    return folder() / f"step-{name}.pt2"


def folder() -> Path:
    """The user's folder of compiled steps."""
    return cache_dir() / "compiled"


def _cpu_flags() -> str:
    """The processor's feature flags: the package's kernels use the instructions they name."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith("flags"):
                return hashlib.sha256(line.encode()).hexdigest()[:16]
    except OSError:
        pass
    return ""


def build(model: GPT, path: Path) -> bool:
    """Compile ``model``'s step into a package at ``path`` (written whole or not at all). False when
    another process is building it now. Raises what inductor raises (no C++ compiler, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        with writing(path):  # which also removes what killed builds left: folders named as temps
            if path.exists():  # another process built it while this one waited for nothing
                return True
            # inductor writes only to a name ending .pt2: a file in a temp folder of atomic.py's naming
            temp = path.parent / f".{path.name}.{os.getpid()}.tmp"
            temp.mkdir(mode=0o700)
            weight = next(model.parameters())
            cache = KVCache(model.config, 1, weight.device, weight.dtype).zero_()
            args = (torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, dtype=torch.long),
                    torch.arange(model.config.block_size), cache.k, cache.v)
            try:
                with torch.no_grad(), compile_settings(weight.device) as options:
                    program = torch.export.export(_Step(model).eval(), args, strict=False)
                    options.pop("cpp_wrapper", None)  # what AOTInductor always writes
                    torch._inductor.aoti_compile_and_package(program, package_path=str(temp / path.name),
                                                             inductor_configs=options)
                os.replace(temp / path.name, path)
            finally:
                shutil.rmtree(temp, ignore_errors=True)
    except OutputBusyError:
        return False
    return True


def trusted(path: Path) -> bool:
    """Whether ``path`` may be loaded: a file of this user's, in a folder of this user's, neither
    writable by anyone else (loading runs the package's code)."""
    try:
        for p in (path.parent, path):
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
                return False
    except (OSError, AttributeError):  # absent, or no uid on this platform
        return False
    return True


class CompiledStep:
    """A loaded package: ``run(cache, token, pos)`` is the step on a decoder's own cache."""

    def __init__(self, path: Path, device: torch.device):
        self.path = path
        # the package's own loader (torch._C._aoti), not torch._inductor.aoti_load_package: that
        # wrapper imports inductor, which would add more to every start than loading the package
        self._loader = torch._C._aoti.AOTIModelPackageLoader(str(path), "model", False, 1, -1)
        self.idx = torch.zeros(1, 1, dtype=torch.long, device=device)
        self.slot = torch.zeros(1, dtype=torch.long, device=device)
        self.slots: torch.Tensor | None = None

    def run(self, cache: KVCache, token: int, pos: int) -> torch.Tensor:
        """Logits (1, 1, V) for ``token`` at position ``pos``; its key and value land in slot pos of
        ``cache`` (which must hold only finite values past its position: KVCache.zero_())."""
        if self.slots is None or self.slots.numel() != cache.block_size:
            self.slots = torch.arange(cache.block_size, device=self.idx.device)
        self.idx.fill_(token)
        self.slot.fill_(pos)
        return self._loader.boxed_run([self.idx, self.slot, self.slots, cache.k, cache.v])[0]


def load(model: GPT, build_if_missing: bool = False, if_faster: bool = True) -> CompiledStep | None:
    """``model``'s compiled step from the cache (loaded once a process), built first when asked and
    missing. With ``if_faster`` it is used only where it is measured faster than the eager step (the
    timing is remembered per machine, model.measured). None where there is none to use: a GPU (CUDA
    graphs serve it), no package yet, a package that cannot be trusted or loaded, or a slower one."""
    weight = next(model.parameters())
    if weight.device.type != "cpu":
        return None
    if not build_if_missing and not any(folder().glob("step-*.pt2")):
        return None  # nothing kept: spare the start the hash of every weight that names a package
    path = package_path(model)
    if not path.exists() and build_if_missing:
        build(model, path)
    if not path.exists() or not trusted(path):
        return None
    step = _loaded.get(path)
    if step is None:
        try:
            step = _loaded[path] = CompiledStep(path, weight.device)
        except Exception as e:  # a damaged or foreign package: decode eagerly
            log.warning("not using the compiled step %s: %s", path.name, (str(e) or repr(e)).splitlines()[0])
            return None
    if not if_faster:
        return step
    timing, _ = measured.remembered("compiled step", {"package": path.name}, weight.device,
                                    lambda: _race(model, step))
    return step if timing["compiled"] < FASTER * timing["eager"] else None


_loaded: dict[Path, CompiledStep] = {}


@torch.inference_mode()
def _race(model: GPT, step: CompiledStep, steps: int = 16) -> dict[str, float]:
    """Seconds a token, the eager step (the model's forward over the cached slots, as TorchDecoder
    runs it) against the compiled one, median of alternating rounds of ``steps`` tokens."""
    weight = next(model.parameters())
    token = torch.zeros(1, 1, dtype=torch.long, device=weight.device)
    times: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(3):
        for name in times:
            cache = KVCache(model.config, 1, weight.device, weight.dtype).zero_()
            start = time.perf_counter()
            for pos in range(min(steps, model.config.block_size)):
                if name == "eager":
                    model(token, cache=cache)
                else:
                    step.run(cache, 0, pos)
                    cache.advance(1)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: sorted(t)[1] for name, t in times.items()}
