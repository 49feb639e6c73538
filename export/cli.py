"""`gpt-export`: turn a checkpoint into a file other runtimes load."""

from __future__ import annotations

import time
from pathlib import Path

import click
from rich.console import Console

from model.checkpoint import DEFAULT_CKPT, CheckpointError, resolve_ckpt


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Export a trained GPT for other runtimes."""


@main.command("onnx")
@click.option("--ckpt", default=DEFAULT_CKPT, show_default=True,
              help="Checkpoint to export (a relative name is also looked up in checkpoints/).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write the .onnx [default: the checkpoint's path with .onnx].")
@click.option("--opset", type=click.IntRange(min=18), help="ONNX opset [default: 18].")
@click.option("--no-validate", is_flag=True, help="Skip the checker, parity and greedy checks.")
@click.option("--quantize", type=click.Choice(["int8", "int4"]),
              help="Smaller weights for the CPU: int8 MatMuls, or 4-bit weight-only MatMulNBits; "
                   "checked by validation loss against fp32 [default: off].")
@click.option("--dtype", type=click.Choice(["fp16", "bf16"]),
              help="16-bit weights and activations inside the graph, for GPU runtimes [default: fp32].")
def onnx(ckpt: str, out: str | None, opset: int | None, no_validate: bool, quantize: str | None,
         dtype: str | None) -> None:
    """Write one self-contained .onnx with a KV cache (prefill and decode in one graph), then
    validate it: onnx.checker with shape inference, logit parity with PyTorch at several batch,
    prompt and past lengths, and identical greedy tokens for a prompt plus 20 steps. With --quantize
    or --dtype, the fp32 file is then converted and kept only if its validation loss on Tiny
    Shakespeare is close to fp32's (both printed)."""
    from export.onnx_export import export_onnx
    from export.ort_backend import OnnxModelError
    from export.validate import ValidationError

    console = Console(stderr=True, log_path=False)
    start = time.perf_counter()
    try:
        with console.status("exporting") as status:
            def say(message: str) -> None:
                console.log(message, markup=False, highlight=False)
                status.update(message)

            if quantize and dtype:
                raise click.UsageError("--quantize and --dtype are alternatives; pass one")
            if quantize or dtype:
                from export.quantize import export_converted

                path = export_converted(resolve_ckpt(ckpt), out and Path(out), quantize or dtype, opset,
                                        say, validate=not no_validate)
            else:
                path = export_onnx(resolve_ckpt(ckpt), out, opset, say, validate=not no_validate)
    except (CheckpointError, OnnxModelError, ValidationError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    size = path.stat().st_size / 2**20
    click.echo(f"wrote {path} ({size:.1f} MiB) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
