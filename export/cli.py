"""`gpt-export`: turn a checkpoint into a file other runtimes load.

Nothing heavy is imported at module level (torch, onnx, rich), so ``--help`` and ``--version``
answer at once.
"""

from __future__ import annotations

import time
from pathlib import Path

import click

DEFAULT_CKPT = "shakespeare.pt"  # model.checkpoint.DEFAULT_CKPT, named here without importing torch


class UsageError(click.ClickException):
    """A usage error (a missing checkpoint) told in one line, with click's usage exit code."""

    exit_code = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gpt-from-scratch", prog_name="gpt-export")
def main() -> None:
    """Export a trained GPT for other runtimes.

    Exit codes: 0 done; 1 failed (the message says why; an older output is left as it was); 2 a
    usage error (a bad value, a missing checkpoint)."""


@main.command("onnx")
@click.option("--ckpt", default=DEFAULT_CKPT, show_default=True,
              help="Checkpoint to export (a relative name is also looked up in checkpoints/).")
@click.option("--out", type=click.Path(dir_okay=False),
              help="Where to write the .onnx [default: the checkpoint's path with .onnx].")
@click.option("--opset", type=click.IntRange(min=18), help="ONNX opset [default: 18].")
@click.option("--no-validate", is_flag=True, help="Skip the checker, parity and greedy checks.")
def onnx(ckpt: str, out: str | None, opset: int | None, no_validate: bool) -> None:
    """Write one self-contained .onnx with a KV cache (prefill and decode in one graph), then
    validate it: onnx.checker with shape inference, logit parity with PyTorch at several batch,
    prompt and past lengths, and identical greedy tokens for a prompt plus 20 steps."""
    from rich.console import Console

    from export.onnx_export import export_onnx
    from export.ort_backend import OnnxModelError
    from export.validate import ValidationError
    from model.atomic import WriteError
    from model.checkpoint import CheckpointError, resolve_ckpt

    if Path(ckpt).is_dir():
        raise UsageError(f"--ckpt {ckpt} is a directory; pass a checkpoint file (such as "
                         f"{Path(ckpt) / 'ckpt.pt'})")
    try:
        path = resolve_ckpt(ckpt)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    console = Console(stderr=True, log_path=False)
    start = time.perf_counter()
    try:
        with console.status("exporting") as status:
            def say(message: str) -> None:
                console.log(message, markup=False, highlight=False)
                status.update(message)

            written = export_onnx(path, out, opset, say, validate=not no_validate)
    except (CheckpointError, OnnxModelError, ValidationError, WriteError) as e:
        raise click.ClickException(str(e)) from None
    size = written.stat().st_size / 2**20
    click.echo(f"wrote {written} ({size:.1f} MiB) in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
