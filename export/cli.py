"""`gpt-export`: turn a checkpoint into a file other runtimes load.

Nothing heavy is imported at module level (torch, onnx, rich), so ``--help`` and ``--version``
answer at once.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import click

from model.terminal import CommandError, CommandUsageError, InterruptibleGroup, ranks_option, visible

DEFAULT_CKPT = "shakespeare.pt"  # model.checkpoint.DEFAULT_CKPT, named here without importing torch


def checkpoint_file(ckpt: str) -> Path:
    """--ckpt as a checkpoint file; a folder or a missing file is a usage error (exit code 2)."""
    from model.checkpoint import CheckpointError, resolve_ckpt

    if Path(ckpt).is_dir():
        raise CommandUsageError(f"--ckpt {ckpt} is a directory; pass a checkpoint file (such as "
                                f"{Path(ckpt) / 'ckpt.pt'})")
    try:
        return resolve_ckpt(ckpt)
    except CheckpointError as e:
        raise CommandUsageError(str(e)) from None


@contextlib.contextmanager
def reporting() -> Iterator[tuple[Callable[[str], None], Callable[[str], None]]]:
    """An export's two ways to report on stderr, for the block: ``say`` logs a line that stays (a
    step done, a figure) and shows it on the status line; ``progress`` only updates the status line
    (a step under way). Every message passes through visible()."""
    from rich.console import Console

    console = Console(stderr=True, log_path=False)
    with console.status("exporting") as status:
        def progress(message: str) -> None:
            status.update(visible(message))

        def say(message: str) -> None:
            console.log(visible(message), markup=False, highlight=False)
            progress(message)

        yield say, progress


@click.group(cls=InterruptibleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gpt-from-scratch", prog_name="gpt-export")
def main() -> None:
    """Export a trained GPT for other runtimes.

    Exit codes: 0 done; 1 failed (the message says why; an older output is left as it was); 2 a
    usage error (a bad value, a missing checkpoint)."""


@main.command("onnx")
@click.option("--ckpt", default=DEFAULT_CKPT, show_default=True,
              help="Checkpoint to export (a relative name is also looked up in checkpoints/).")
@click.option("--out", type=click.Path(),
              help="Where to write the .onnx [default: the checkpoint's path with .onnx]; a folder "
                   "(ending in / or existing) gets model.onnx plus what Optimum and ONNX Runtime GenAI read.")
@click.option("--opset", type=click.IntRange(min=18), help="ONNX opset [default: 18].")
@click.option("--no-validate", is_flag=True, help="Skip the checker, parity and greedy checks.")
@click.option("--quantize", type=click.Choice(["int8", "int4"]),
              help="Smaller weights for the CPU: int8 MatMuls, or 4-bit weight-only MatMulNBits; "
                   "checked by validation loss against fp32 [default: off].")
@click.option("--dtype", type=click.Choice(["fp16", "bf16"]),
              help="16-bit weights and activations inside the graph, for GPU runtimes [default: fp32].")
@click.option("--data",
              help="With --quantize or --dtype: what the converted file is judged on, 'shakespeare', a "
                   "UTF-8 text file or a gpt-prepare folder (its validation split) [default: what the "
                   "checkpoint says it was trained on, when that is shakespeare].")
@ranks_option
def onnx(ckpt: str, out: str | None, opset: int | None, no_validate: bool, quantize: str | None,
         dtype: str | None, data: str | None) -> None:
    """Write one self-contained .onnx with a KV cache (prefill and decode in one graph), then
    validate it: onnx.checker with shape inference, logit parity with PyTorch at several batch,
    prompt and past lengths, and identical greedy tokens for a prompt plus 20 steps. With --quantize
    or --dtype, the fp32 file is then converted and kept only if its validation loss on the model's
    own data (--data) is close to fp32's (both printed).

    With --out DIR/ the folder also holds config.json, genai_config.json and the tokenizer files, so
    optimum's ORTModelForCausalLM and onnxruntime_genai.Model load it as it is (--quantize too)."""

    from export.folder import MODEL_FILE, export_folder
    from export.judge import JudgeDataError
    from export.onnx_export import export_onnx
    from export.ort_backend import OnnxModelError
    from export.validate import ValidationError
    from model.atomic import WriteError
    from model.checkpoint import CheckpointError

    path = checkpoint_file(ckpt)
    folder = bool(out) and (out.endswith(("/", os.sep)) or os.path.isdir(out))
    if quantize and dtype:
        raise CommandUsageError("--quantize and --dtype are alternatives; pass one")
    if folder and dtype:
        raise CommandUsageError("--dtype writes one .onnx file (for GPU runtimes); pass --out FILE.onnx, "
                                "not a folder")
    if data is not None and not (quantize or dtype):
        raise CommandUsageError("--data says what a converted file is judged on; pass it with --quantize "
                                "or --dtype")
    start = time.perf_counter()
    try:
        with reporting() as (say, progress):
            if folder:
                written = export_folder(path, out, opset, say, not no_validate, quantize, data,
                                        progress) / MODEL_FILE
            elif quantize or dtype:
                from export.quantize import export_converted

                written = export_converted(path, out and Path(out), quantize or dtype, opset, say,
                                           not no_validate, data, progress)
            else:
                written = export_onnx(path, out, opset, say, validate=not no_validate)
    except JudgeDataError as e:  # decided before any export work: a flag to add, exit 2
        raise CommandUsageError(str(e)) from None
    except (CheckpointError, OnnxModelError, ValidationError, WriteError, ValueError) as e:
        raise CommandError(str(e)) from None
    size = written.stat().st_size / 2**20
    beside = " and the files Optimum and GenAI read beside it" if folder else ""
    click.echo(f"wrote {written} ({size:.1f} MiB){beside} in {time.perf_counter() - start:.0f} s")


@main.command("hf")
@click.option("--ckpt", default=DEFAULT_CKPT, show_default=True,
              help="Checkpoint to export (a relative name is also looked up in checkpoints/).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Folder to write (created if missing).")
@ranks_option
def hf(ckpt: str, out: str) -> None:
    """Write a Hugging Face GPT-2 folder: config.json, model.safetensors and the tokenizer files, which
    transformers.AutoModelForCausalLM.from_pretrained(OUT) loads with our logits."""
    from model.atomic import WriteError
    from model.checkpoint import CheckpointError
    from model.hf.save import export_hf

    path = checkpoint_file(ckpt)
    try:
        written = export_hf(path, out)
    except (CheckpointError, WriteError) as e:
        raise CommandError(str(e)) from None
    click.echo(f"wrote {written}/: {', '.join(sorted(p.name for p in written.iterdir()))}")


GGUF_TYPES = ("f32", "f16", "q8_0", "q4_0")  # export.gguf.GGUF_TYPES, named here without importing it


@main.command("gguf")
@click.option("--ckpt", default=DEFAULT_CKPT, show_default=True,
              help="Checkpoint to export (a relative name is also looked up in checkpoints/).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write the .gguf [default: the checkpoint's path with .gguf].")
@click.option("--type", "gguf_type", type=click.Choice(GGUF_TYPES), default="f16", show_default=True,
              help="The matrices' precision: f32, f16, or 8-bit / 4-bit blocks (q8_0, q4_0); biases, "
                   "LayerNorms and position embeddings stay f32.")
@ranks_option
def gguf(ckpt: str, out: str | None, gguf_type: str) -> None:
    """Write one .gguf for llama.cpp, ollama and LM Studio: llama.cpp's gpt2 architecture with the
    model's own tokenizer (GPT-2 BPE, or one token per character), read back before it replaces
    --out. For an exact-GELU model it also prints how much llama.cpp's tanh GELU moves the logits."""
    from export.gguf import GgufExportError, export_gguf
    from model.atomic import WriteError
    from model.checkpoint import CheckpointError

    path = checkpoint_file(ckpt)
    start = time.perf_counter()
    try:
        with reporting() as (say, _):
            result = export_gguf(path, out, gguf_type, say)
    except (CheckpointError, GgufExportError, WriteError) as e:
        raise CommandError(str(e)) from None
    size = result.path.stat().st_size / 2**20
    click.echo(visible(f"wrote {result.path} ({size:.1f} MiB, {gguf_type}) in "
                       f"{time.perf_counter() - start:.0f} s"))
    if result.gelu_shift is not None:
        click.echo(visible(str(result.gelu_shift)))


if __name__ == "__main__":
    main()
