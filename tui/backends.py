"""Making backends for the app and batch mode: PyTorch from a checkpoint, ONNX Runtime from an `.onnx`.

A factory takes a progress callback (for slow steps such as exporting) and returns a Backend. The
app keeps one factory per backend name, so tests inject fakes and the ONNX code is imported only
when someone switches to it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from model.generate.backend import Backend
from model.paths import onnx_cache_dir

Progress = Callable[[str], None]
BackendFactory = Callable[[Progress], Backend]


class BackendError(RuntimeError):
    """A backend that cannot be made; the message says why and what to do."""


def onnx_cache_path(ckpt: Path) -> Path:
    """Where the export of ``ckpt`` goes: beside it (shakespeare.pt -> shakespeare.onnx), or in the
    user cache when that folder is read-only (an installed package)."""
    beside = ckpt.with_suffix(".onnx")
    if _writable(ckpt.parent):
        return beside
    tag = hashlib.sha256(str(ckpt.resolve()).encode()).hexdigest()[:8]  # one cache file per checkpoint
    return onnx_cache_dir() / f"{ckpt.stem}-{tag}.onnx"


def _writable(folder: Path) -> bool:
    return folder.is_dir() and os.access(folder, os.W_OK)


@dataclass(frozen=True)
class TorchFactory:
    """PyTorch on a checkpoint. Factories are dataclasses, not closures, so they pickle: the app's
    generation process (tui.remote) makes its own copy of the backend from the same one."""

    ckpt: Path
    device: str = "cpu"
    threads: int | None = None  # CPU threads for PyTorch in this process (None: leave as is)
    precision: str = "fp32"  # the decoding weights' type: fp32, bf16 or auto (model.generate.torch_backend)
    # how a one-token step runs (model.generate.torch_backend): auto (the compiled step where one is
    # kept and faster), eager, compile (build it if missing, else fail), or build (the same, falling
    # back to auto where it cannot be built: the app's default)
    step: str = "auto"

    def __call__(self, progress: Progress) -> Backend:
        from model.generate.torch_backend import CompileError, load_backend

        if self.threads is not None:
            torch.set_num_threads(self.threads)

        where = "" if self.device == "auto" else f" on {self.device}"
        progress(f"loading {self.ckpt.name} with PyTorch{where}")
        if self.step in ("compile", "build"):
            progress("compiling its one-token decode step if it is not yet kept (the first time: a minute)")
        step = "compile" if self.step == "build" else self.step
        try:
            return load_backend(self.ckpt, self.device, self.precision, step)  # type: ignore[arg-type]
        except CompileError as e:
            if self.step == "build":
                progress(f"{e}; decoding without it")
                return load_backend(self.ckpt, self.device, self.precision, "auto")  # type: ignore[arg-type]
            raise BackendError(f"{e}; the compiled step needs a working C++ compiler on a CPU (g++), or "
                               "pass --no-compile") from None

    def for_ui(self) -> TorchFactory:
        """This factory for the app's own process, which decodes in step mode, the views, and the
        streams that start before its generation process (tui.remote) is ready: it decodes eagerly,
        so the app starts as fast as ever, and loads or compiles nothing."""
        return replace(self, step="eager")

    def settled(self, backend: Backend) -> TorchFactory:
        """This factory with ``auto`` precision replaced by what ``backend`` (made by it) chose, so
        another process that rebuilds it (tui.remote's child) decodes the same way, untimed."""
        weight = next(backend.decode_model.parameters())  # type: ignore[attr-defined]
        return replace(self, precision="bf16" if weight.dtype == torch.bfloat16 else "fp32")


@dataclass(frozen=True)
class OnnxFactory:
    """ONNX Runtime on ``onnx`` if given, else on the cached export of ``ckpt`` (made on first use,
    and again when the checkpoint is newer than its export)."""

    ckpt: Path | None
    onnx: Path | None = None
    provider: str = "auto"
    threads: int | None = None  # ONNX Runtime's CPU threads (None: one per core)

    def __call__(self, progress: Progress) -> Backend:
        ckpt, onnx = self.ckpt, self.onnx
        if onnx is not None and not onnx.is_file():
            raise BackendError(f"ONNX model {onnx} not found; pass an existing file to --onnx or "
                               "leave it out to export the checkpoint")
        from export.ort_backend import load_ort_backend  # here: ONNX loads only when someone asks
        path = onnx
        if path is None:
            if ckpt is None:
                raise BackendError("the onnx backend needs --onnx PATH or a checkpoint to export")
            path = onnx_cache_path(ckpt)
            if not path.is_file() or path.stat().st_mtime < ckpt.stat().st_mtime:
                from export.onnx_export import export_onnx
                progress(f"exporting {ckpt.name} to {path} (first use; this takes a while)")
                try:
                    export_onnx(ckpt, path, progress=progress)
                except Exception as e:
                    raise BackendError(f"exporting {ckpt.name} to ONNX failed: {e}") from None
        progress(f"loading {path.name} with ONNX Runtime")
        try:
            return load_ort_backend(path, provider=self.provider, threads=self.threads)  # type: ignore[arg-type]
        except Exception as e:
            raise BackendError(f"cannot load {path} with ONNX Runtime: {e}") from None

    def settled(self, backend: Backend) -> OnnxFactory:
        """Nothing to settle: the file fixes how ONNX Runtime decodes."""
        return self

    def for_ui(self) -> OnnxFactory:
        return self


class Backends:
    """The app's backends by name: the active one, the ones loaded so far (reused on a switch,
    shared with the A/B and attention views) and the factories for the rest."""

    def __init__(self, name: str, backend: Backend, factories: dict[str, BackendFactory] | None = None):
        self.active = name
        self.loaded: dict[str, Backend] = {name: backend}
        self.factories = dict(factories or {})

    @property
    def current(self) -> Backend:
        return self.loaded[self.active]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys([*self.loaded, *self.factories]))

    def replace(self, name: str, backend: Backend, factories: dict[str, BackendFactory]) -> None:
        """Another model: ``backend`` becomes the active one and the only one loaded (the others
        are closed: their generation processes end)."""
        from tui.remote import RemoteBackend  # the one kind that holds a process

        for old in self.loaded.values():
            if isinstance(old, RemoteBackend) and old is not backend:
                old.close()
        self.active, self.loaded, self.factories = name, {name: backend}, dict(factories)

    def get(self, name: str, progress: Progress = lambda message: None) -> Backend:
        """The backend called ``name``, made on first use (slow: call it from a worker thread)."""
        if name in self.loaded:
            return self.loaded[name]
        if name not in self.factories:
            raise BackendError(f"no {name} backend here; available: {', '.join(self.names)}")
        return self.loaded.setdefault(name, self.factories[name](progress))


def exported_from(onnx: Path, ckpt: Path | None) -> tuple[Path | None, str]:
    """The checkpoint PyTorch should run beside the ``onnx`` file, and how to say which it is:
    the one it was exported from when it lies beside it under the name gpt-export and the app
    give the export (X.pt -> X.onnx, or X.int8.onnx and the other weight types), else the
    session's ``ckpt`` (--ckpt), else none. Only that folder is looked in."""
    from export.graph import WEIGHT_TYPES  # the names export.quantize gives its files

    stem = onnx.name.removesuffix(".onnx")
    names = [stem, *(stem.removesuffix(f".{kind}") for kind in WEIGHT_TYPES if stem.endswith(f".{kind}"))]
    for name in names:
        beside = onnx.with_name(f"{name}.pt")
        if beside.is_file():
            return beside, f"{beside}, the checkpoint {onnx.name} was exported from"
    if ckpt is not None:
        return ckpt, f"{ckpt}, the session's --ckpt ({onnx.name} has no {names[-1]}.pt beside it)"
    return None, ""


def factories(
    ckpt: Path | None, device: str = "cpu", onnx: Path | None = None, provider: str = "auto",
    precision: str = "fp32", step: str = "auto", threads: int | None = None,
) -> dict[str, BackendFactory]:
    """The backends these files allow: PyTorch needs the checkpoint; ONNX needs the .onnx or the
    checkpoint to export. ``threads``: each one's CPU threads (None: as they are)."""
    made: dict[str, BackendFactory] = {}
    if ckpt is not None:
        made["torch"] = TorchFactory(ckpt, device, threads, precision=precision, step=step)
    if ckpt is not None or onnx is not None:
        made["onnx"] = OnnxFactory(ckpt, onnx, provider, threads)
    return made
