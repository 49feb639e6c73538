"""`gpt-tui`: open the app on a checkpoint, or run prompts from a file with --batch."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import BinaryIO

import click

from model import checkpoint
from model.backend import MAX_NEW_TOKENS, MAX_SEED, Settings
from model.checkpoint import CheckpointError
from tui.backends import BackendError, factories
from tui.remote import offloaded
from tui.settings import unescape
from tui.widgets import visible


def resolve_ckpt(name: str) -> Path:
    """model.checkpoint.resolve_ckpt, with a miss reported as a usage error (exit code 2)."""
    try:
        return checkpoint.resolve_ckpt(Path(name).expanduser())
    except CheckpointError as e:
        raise click.BadParameter(visible(str(e)), param_hint="'--ckpt'") from None


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--ckpt", default="shakespeare.pt",
              help="Checkpoint: a path, or the name of a shipped one in checkpoints/.")
@click.option("--backend", "backend_name", type=click.Choice(["torch", "onnx"]),
              help="Start on PyTorch or ONNX Runtime [default: onnx with --onnx, else torch].")
@click.option("--onnx", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The .onnx model for the onnx backend [default: export CKPT on first use, cached "
                   "beside it].")
@click.option("--provider", default="auto", type=click.Choice(["auto", "cpu", "cuda"]),
              help="ONNX Runtime provider: auto = CUDA when usable, else CPU; cuda where it cannot "
                   "run is an error.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda", "mps"]),
              help="Device for the PyTorch backend.")
@click.option("--temperature", default=0.8, type=click.FloatRange(min=0), help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(min=1),
              help="Sample from the k likeliest tokens [default: off].")
@click.option("--top-p", default=1.0, type=click.FloatRange(0, 1, min_open=True),
              help="Sample from the smallest set holding this probability (1 = off).")
@click.option("--max-new-tokens", default=500, type=click.IntRange(1, MAX_NEW_TOKENS),
              help="Tokens per generation.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED),
              help="Seed for sampling [default: a fresh one each time, recorded].")
@click.option("--stop", multiple=True,
              help="Stop when the output contains this text (repeatable; \\n for a newline).")
@click.option("--unknown", default="reject", type=click.Choice(["reject", "replace"]),
              help="Prompt characters the model does not know: refuse the prompt, or replace them.")
@click.option("--batch", type=click.File("rb"), metavar="FILE",
              help="Run without the UI: prompts from FILE ('-' for stdin), one per line or as JSONL.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="With --batch: write the JSON lines here [default: stdout].")
@click.option("--format", "fmt", default="auto", type=click.Choice(["auto", "text", "jsonl"]),
              help="With --batch: input format; auto = JSONL if the first line starts with '{'.")
@click.option("--parallel", default=8, show_default=True, type=click.IntRange(min=1),
              help="With --batch: prompts generated at once (1 = one after another).")
@click.option("--session-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where /save and /export write [default: ~/.local/share/gpt-from-scratch/sessions].")
def main(ckpt: str, backend_name: str | None, onnx: Path | None, provider: str, device: str,
         batch: BinaryIO | None, output: Path | None, fmt: str, parallel: int, session_dir: Path | None,
         unknown: str, stop: tuple[str, ...], **knobs) -> None:
    """Generate text from a GPT checkpoint: live in the terminal, or in batch.

    \b
    gpt-tui                                  # the app, on checkpoints/shakespeare.pt
    gpt-tui --ckpt out/ckpt.pt --backend onnx
    gpt-tui --batch prompts.txt --seed 1 > out.jsonl

    Batch exit codes: 0 all items done, 1 the model or the output failed, 2 usage error, 3 some
    items failed (each line carries its error), 130 interrupted (the lines already written are
    complete).
    """
    try:
        _main(ckpt, backend_name, onnx, provider, device, batch, output, fmt, parallel, session_dir, unknown,
              stop, **knobs)
    except KeyboardInterrupt:  # Ctrl+C while loading: no traceback, the usual code
        click.echo("interrupted", err=True)
        sys.exit(130)


def _main(ckpt: str, backend_name: str | None, onnx: Path | None, provider: str, device: str,
          batch: BinaryIO | None, output: Path | None, fmt: str, parallel: int, session_dir: Path | None,
          unknown: str, stop: tuple[str, ...], **knobs) -> None:
    if batch is None and (output is not None or fmt != "auto"):
        raise click.UsageError("--output and --format only apply with --batch")
    if output is not None and not output.expanduser().resolve().parent.is_dir():
        raise click.BadParameter(visible(f"the folder of {output} does not exist; create it first"),
                                 param_hint="'--output'")
    try:
        settings = Settings(stop=tuple(unescape(s) for s in stop), unknown=unknown, **knobs)
    except ValueError as e:
        raise click.UsageError(visible(str(e))) from None
    backend_name = backend_name or ("onnx" if onnx else "torch")
    try:
        ckpt_path = resolve_ckpt(ckpt)
    except click.BadParameter:
        if not (backend_name == "onnx" and onnx):
            raise
        ckpt_path = None  # an .onnx alone is enough; there is just no PyTorch backend to switch to
    makers = factories(ckpt_path, device, onnx, provider)
    if batch is None:  # the app generates in a child process: rendering never stalls the model
        makers = offloaded(makers)

    def progress(message: str) -> None:
        click.echo(visible(message), err=True)  # it may hold file names, ids, a model's text

    try:
        backend = makers[backend_name](progress)
    except (CheckpointError, BackendError, ValueError) as e:
        raise click.ClickException(visible(str(e))) from None

    if batch is None:
        from tui.app import GPTApp, freeze_heap

        app = GPTApp(backend, backend_name, makers, settings, session_dir=session_dir)
        freeze_heap()
        app.run()
        return

    from tui.batch import EXIT_INTERRUPTED, OutputError, read_items, run_batch
    from tui.session import file_sha256

    info = backend.info()
    try:
        out = _output(output)
        summary = run_batch(backend, read_items(batch, fmt), settings, out, progress,
                            checkpoint_sha256=file_sha256(info.path),
                            batch_decoder=backend.batch_decoder(parallel) if parallel > 1 else None)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except (OSError, OutputError) as e:
        raise click.ClickException(visible(str(e) if isinstance(e, OutputError) else
                                           f"cannot write {output}: {e.strerror or e}")) from None
    sys.exit(summary.exit_code)


def _output(path: Path | None):
    """Where the lines go: a LineFile on the --output file or on stdout's descriptor, else (a
    captured stdout, as in tests) sys.stdout itself."""
    from tui.batch import LineFile

    if path is not None:
        return LineFile(os.open(path.expanduser(), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), str(path))
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return sys.stdout
    sys.stdout.flush()
    return LineFile(fd, "stdout")
