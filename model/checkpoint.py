"""All checkpoint IO: one plain-data format, atomic writes, safe loads, errors that say what to do.

A checkpoint is a dict of plain data (``torch.load(weights_only=True)`` can read it):
  format     "gpt-from-scratch/2" ("/1" files, written before the digest, still load)
  digest     "sha256:..." over everything else in the file, tensors included (``digest``)
  config     GPTConfig as a dict
  tokenizer  tokenizer as a dict
  model      state dict
  train      (full checkpoints only) optimizer state, step, best val loss, settings, the number
             of processes and one RNG state per process (model.train.state.save_training)
  meta       free-form facts for people: steps trained, val loss, data checksum
A slim checkpoint is the same without ``train``, optionally with half-precision weights.

A file that cannot be used is refused with one of three plain reasons: it is *damaged* (cut short,
changed since it was written: the digest differs, or weights that make no sense), it is *not a
checkpoint of ours* (another program's file), or it *needs code to load* (a pickle of Python
objects, which could run anything: never loaded).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import zipfile
from pathlib import Path

import torch

from model.atomic import atomic_write
from model.config import GPTConfig
from model.gpt import GPT, Bigram, build_model
from model.tokenizer import Tokenizer, tokenizer_from_dict

FORMAT = "gpt-from-scratch/2"
FORMATS = (FORMAT, "gpt-from-scratch/1")  # /1 has no digest
WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# A model may take more memory than its stored weights (fp32 from a half-precision file, the causal
# masks), but not unboundedly more: a small file must not be able to ask for gigabytes.
EXTRA_BYTES = 1 << 28
# the shipped model, which every tool opens by default
SHIPPED_DIR = Path(__file__).resolve().parents[1] / "checkpoints"
DEFAULT_CKPT = "shakespeare.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the fix."""


def save(payload: dict, path: str | Path) -> None:
    """Write atomically: a temp file in the same folder, fsync, then rename over the target.
    A crash at any moment leaves either the old file or the new one, never half of one."""
    body = {"format": FORMAT, **{k: v for k, v in payload.items() if k not in ("format", "digest")}}
    body["digest"] = digest(body)
    with atomic_write(path) as f:
        torch.save(body, f)


def digest(ckpt: dict) -> str:
    """sha256 over every value of a checkpoint but its digest: tensors by dtype, shape and bytes,
    plain values by type and repr, dicts in their (saved) order."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ckpt.items() if k != "digest"})
    return "sha256:" + h.hexdigest()


def _feed(h, obj: object) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}:".encode())
        for k, v in obj.items():
            _feed(h, k)
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}:".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode(errors="surrogatepass"))


def resolve_ckpt(name: str | Path = DEFAULT_CKPT) -> Path:
    """The checkpoint a user means: the path as given if it exists, else the same relative path
    inside the shipped checkpoints/ folder (so ``--ckpt shakespeare.pt`` works from anywhere)."""
    path = Path(name)
    if path.is_file():
        return path
    shipped = SHIPPED_DIR / path
    if not path.is_absolute() and shipped.is_file():
        return shipped
    where = str(path) if path.is_absolute() else f"{path} (nor {shipped})"
    raise CheckpointError(f"checkpoint {where} not found; train one with gpt-train or pass --ckpt PATH")


def load(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint with ``weights_only=True``, check its layout and digest; CheckpointError
    (damaged / not ours / needs code to load) otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; train one with gpt-train or pass --ckpt")
    _check_container(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        needs = re.search(r"GLOBAL (\S+)|reduce for unrecognized function (\S+)", str(e))
        if needs:
            raise CheckpointError(
                f"refusing to load {path}: it needs code to load ({(needs[1] or needs[2]).rstrip('.')}), "
                "which could do anything; checkpoints of ours hold only weights and plain data. "
                "It was not loaded"
            ) from None
        raise _damaged(path, "its contents do not unpickle") from None
    except Exception as e:  # the weights-only unpickler fails in many ways on damaged bytes
        raise _damaged(path, f"unreadable: {type(e).__name__}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") not in FORMATS:
        raise CheckpointError(f"{path} is not a checkpoint of ours (no {FORMAT} format mark); "
                              "pass a file written by gpt-train or gpt-report slim")
    missing = sorted({"config", "tokenizer", "model"} - set(ckpt))
    if missing:
        raise _damaged(path, f"it lacks {missing}")
    for key in ("config", "tokenizer", "model", "meta", "train"):
        if key in ckpt and not isinstance(ckpt[key], dict):
            raise _damaged(path, f"its {key!r} is a {type(ckpt[key]).__name__}, not a dict")
    if ckpt["format"] == FORMAT and ckpt.get("digest") != digest(ckpt):
        raise _damaged(path, "its contents differ from the digest stored when it was written")
    return ckpt


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(f"{path} is damaged ({why}); use another copy, or an earlier checkpoint")


def _check_container(path: Path) -> None:
    """torch.save writes a zip archive: anything else is not ours; a broken zip is damaged."""
    with path.open("rb") as f:
        magic = f.read(4)
    if magic == b"GGUF":  # what gpt-export gguf writes: for llama.cpp, never read back as a model here
        raise CheckpointError(f"{path} is a GGUF file (for llama.cpp and ollama), not a checkpoint of "
                              "ours; pass the .pt it was exported from")
    if magic != b"PK\x03\x04":
        what = "an empty file" if not magic else "not a PyTorch zip archive"
        raise CheckpointError(f"{path} is not a checkpoint of ours ({what}); "
                              "pass a .pt file written by gpt-train or gpt-report slim")
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise _damaged(path, "cut short or overwritten: its zip directory is unreadable") from None
    if not any(n.endswith("/data.pkl") for n in names):
        raise CheckpointError(f"{path} is not a checkpoint of ours (a zip archive, but not one "
                              "written by torch.save); pass a file written by gpt-train")


def payload(model: torch.nn.Module, tokenizer: Tokenizer, meta: dict | None = None) -> dict:
    """What a slim checkpoint holds."""
    return {
        "config": model.config.to_dict(),
        "tokenizer": tokenizer.to_dict(),
        "model": {k: v for k, v in model.state_dict().items()},
        "meta": dict(meta or {}),
    }


def restore_model(ckpt: dict, path: str | Path = "<checkpoint>") -> tuple[GPT | Bigram, Tokenizer]:
    """Rebuild the model from the saved config (strict load, fp32) and its tokenizer. The config is
    checked against the stored tensors (names, shapes, dtypes, finite values) before any memory
    is allocated for the model."""
    try:
        config = GPTConfig.from_dict(ckpt["config"])
        tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path} has an unusable config or tokenizer: {e}") from None
    if tokenizer.vocab_size > config.vocab_size:
        raise CheckpointError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model only {config.vocab_size}"
        )
    check_weights(ckpt["model"], config, path)
    model = build_model(config)
    state = {k: v.float() for k, v in ckpt["model"].items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match its config ({str(e).splitlines()[0]})") from None
    return model, tokenizer


def check_weights(state: dict, config: GPTConfig, path: str | Path = "<checkpoint>") -> None:
    """The stored tensors are the ones ``config`` builds: same names and shapes, float dtypes,
    finite values, and the model needs little more memory than they hold. CheckpointError if not."""
    with torch.device("meta"):  # shapes and sizes only: nothing is allocated
        expected = build_model(config)
    shapes = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    odd = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise _damaged(Path(path), f"its weights hold {odd[0]!r:.40}, which is not a named tensor")
    missing, unexpected = sorted(set(shapes) - set(state)), sorted(set(state) - set(shapes))
    if missing or unexpected:
        what = f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}"
        raise CheckpointError(f"{path}: weights do not match its config ({what})")
    for name, want in shapes.items():
        got = state[name]
        if tuple(got.shape) != want:
            raise CheckpointError(f"{path}: weights do not match its config ({name} is "
                                  f"{tuple(got.shape)} in the file, the config needs {want})")
        if got.dtype not in WEIGHT_DTYPES:
            raise _damaged(Path(path), f"{name} is {got.dtype}, not a float32/16 or bfloat16 weight")
    stored = sum(v.numel() * v.element_size() for v in state.values())
    needs = sum(t.numel() * 4 for t in expected.parameters()) + sum(
        b.numel() * b.element_size() for b in expected.buffers())
    if needs > 2 * stored + EXTRA_BYTES:
        raise CheckpointError(f"{path}: its config needs {needs / 1e9:.1f} GB for a model whose "
                              f"weights take {stored / 1e6:.1f} MB; the config is damaged or hostile")
    for name, t in state.items():
        bad = int((~torch.isfinite(t)).sum())
        if bad:
            raise _damaged(Path(path), f"{bad} value(s) of {name} are NaN or infinite")


def load_model(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[GPT | Bigram, Tokenizer, dict]:
    """A slim or full checkpoint -> (model in eval mode on device, tokenizer, meta)."""
    ckpt = load(path)
    model, tokenizer = restore_model(ckpt, path)
    return model.to(device).eval(), tokenizer, ckpt.get("meta", {})


def write_slim(src: str | Path, dst: str | Path, dtype: torch.dtype = torch.float32) -> dict:
    """Copy weights, config, tokenizer and meta of ``src`` into an inference-only checkpoint."""
    ckpt = load(src)
    restore_model(ckpt, src)  # refuse to ship something that does not load
    weights = {k: v.to(dtype) if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    slim = {k: ckpt[k] for k in ("config", "tokenizer", "meta") if k in ckpt} | {"model": weights}
    train_config = slim.get("meta", {}).get("train_config")
    if train_config is not None:  # where the run wrote its files means nothing on another machine
        local = {k: v for k, v in train_config.items() if k != "out_dir"}
        slim["meta"] = slim["meta"] | {"train_config": local}
    save(slim, dst)
    return slim
