"""`gpt-tui`: open the app on a checkpoint, complete one prompt with -p, or run prompts from a file
with --batch.

Nothing heavy is imported at module level (PyTorch, Textual): `gpt-tui --help` and `--version`
answer at once, and each mode imports what it needs when it runs. Defaults come from the config file
(tui.config) where it sets them; flags override it.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import BinaryIO, NoReturn

import click

from model.terminal import ranks_option
from tui.config import ConfigError, config_path, load_defaults
from tui.typeahead import typeahead

# model.generate.backend's bounds, repeated so that --help imports no torch
# (tests/test_cli.py holds them equal)
MAX_NEW_TOKENS = 100_000
MAX_SEED = 2**63 - 1
MAX_LOGPROBS = 20  # tui.logprobs's


class ConfiguredCommand(click.Command):
    """A command whose defaults are read from the user's config file when it is invoked, and which
    ends on Ctrl+C with one line and exit code 130 wherever it comes: PyTorch is first imported
    while the options are parsed (a callback), where click would print "Aborted!" and exit 1."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            if "default_map" not in extra:
                from model.terminal import CommandUsageError

                try:
                    extra["default_map"] = self.checked(load_defaults())
                except ConfigError as e:  # part of the command line: a usage error, as a flag's would be
                    raise CommandUsageError(str(e)) from None  # it quotes the file's keys: shown visibly
            return super().make_context(info_name, args, parent, **extra)
        except KeyboardInterrupt:
            interrupted()

    def checked(self, defaults: dict[str, object]) -> dict[str, object]:
        """The config file's values, each through its flag's type (a range, a choice), so that a bad
        one is blamed on the file and its key rather than on a flag nobody typed."""
        ctx = click.Context(self)
        for param in self.params:
            if param.name in defaults:
                try:
                    param.type_cast_value(ctx, defaults[param.name])
                except click.BadParameter as e:
                    key = param.opts[-1].removeprefix("--") if param.opts else param.name
                    why = e.message.rstrip(".")
                    raise ConfigError(f"{config_path()}: {key} = {defaults[param.name]!r}: {why}; fix or "
                                      "remove it") from None
        return defaults

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:  # while importing PyTorch or loading the model
            interrupted()


def interrupted() -> NoReturn:
    """Ctrl+C: one line, no traceback, the shell's code for it."""
    click.echo("interrupted", err=True)
    sys.exit(130)


def resolve_ckpt(name: str) -> Path:
    """model.checkpoint.resolve_ckpt, with a miss reported as a usage error (exit code 2)."""
    from model import checkpoint
    from model.terminal import visible

    try:
        return checkpoint.resolve_ckpt(Path(name).expanduser())
    except checkpoint.CheckpointError as e:
        raise click.BadParameter(visible(str(e)), param_hint="'--ckpt'") from None


def unescaped(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    from tui.settings import unescape

    return tuple(unescape(v) for v in values)


@click.command(cls=ConfiguredCommand, context_settings={"help_option_names": ["-h", "--help"],
                                                        "show_default": True})
@click.version_option(package_name="gpt-from-scratch", prog_name="gpt-tui")
@click.option("--ckpt", default="shakespeare.pt",
              help="Checkpoint: a path, or the name of a shipped one in checkpoints/.")
@click.option("-p", "--prompt", help="Complete this prompt, print the text to stdout and exit (no app).")
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
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16"]), envvar="GPT_TUI_PRECISION",
              help="Weights' type for PyTorch decoding: auto times fp32 and bf16 on the model at load "
                   "(where the hardware has native bf16) and keeps the faster. [default: auto; fp32 "
                   "with --batch, so a seed replays exactly] [env var: GPT_TUI_PRECISION]")
@click.option("--compile/--no-compile", "compile_step", default=None,
              help="PyTorch's one-token decode step compiled ahead of time (C++ through inductor) and "
                   "kept in the user's cache for every later run of the model. Default: the app builds "
                   "it the first time in its generation process (decoding eagerly meanwhile); -p and "
                   "--batch use it once it is there, where it is faster. --compile builds it now and "
                   "waits (needs a C++ compiler); --no-compile decodes eagerly.")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="CPU threads for decoding (the app's generation process; -p and batch) [default: "
                   "$OMP_NUM_THREADS, else the cores other processes leave idle, by the load average; "
                   "the app keeps one of them for its screen].")
@click.option("--temperature", default=0.8, type=click.FloatRange(min=0), help="0 = greedy.")
@click.option("--top-k", type=click.IntRange(min=1),
              help="Sample from the k likeliest tokens [default: off].")
@click.option("--top-p", default=1.0, type=click.FloatRange(0, 1, min_open=True),
              help="Sample from the smallest set holding this probability (1 = off).")
@click.option("--min-p", default=0.0, type=click.FloatRange(0, 1, max_open=True),
              help="Drop tokens less likely than this times the likeliest (0 = off).")
@click.option("--repetition-penalty", default=1.0, type=click.FloatRange(min=1),
              help="Make tokens seen in the last --repetition-window tokens less likely (1 = off; "
                   "1.1-1.3 breaks loops).")
@click.option("--repetition-window", default=64, type=click.IntRange(min=1),
              help="How many of the latest tokens the repetition penalty looks at.")
@click.option("--frequency-penalty", default=0.0, type=click.FloatRange(-2, 2),
              help="OpenAI's: lower a generated token's logit by this times its count so far (0 = "
                   "off; negative favours repeats).")
@click.option("--presence-penalty", default=0.0, type=click.FloatRange(-2, 2),
              help="OpenAI's: lower the logit of every token generated so far by this, once (0 = off).")
@click.option("-n", "--max-new-tokens", default=500, type=click.IntRange(1, MAX_NEW_TOKENS),
              help="Tokens per generation.")
@click.option("--seed", type=click.IntRange(0, MAX_SEED),
              help="Seed for sampling [default: a fresh one each time, recorded].")
@click.option("--stop", multiple=True, callback=unescaped,
              help="Stop when the output contains this text (repeatable, each one whole, commas "
                   "included; \\n for a newline).")
@click.option("--keep-stop", is_flag=True, help="Keep the stop string at the end of the output.")
@click.option("--unknown", default="reject", type=click.Choice(["reject", "replace"]),
              help="Prompt characters the model does not know: refuse the prompt, or replace them.")
@click.option("--batch", type=click.File("rb"), metavar="FILE",
              help="Run without the UI: prompts from FILE ('-' for stdin), one per line or as JSONL.")
@click.option("--output", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="With --batch: write the JSON lines here [default: stdout].")
@click.option("--format", "fmt", default="auto", type=click.Choice(["auto", "text", "jsonl"]),
              help="With --batch: input format; auto = JSONL if the first line starts with '{'.")
@click.option("--parallel", default=16, type=click.IntRange(min=1),
              help="With --batch: prompts generated at once (1 = one after another).")
@click.option("--logprobs", type=click.IntRange(0, MAX_LOGPROBS), metavar="N",
              help="With -p or --batch: each token's log-probability under the model (before any "
                   "sampling knob) and the N likeliest alternatives' (-p: a table on stderr; batch: "
                   "a \"logprobs\" field in each line, as OpenAI's completions API).")
@click.option("--logprobs-json", type=click.Path(dir_okay=False, path_type=Path), metavar="FILE",
              help="With -p and --logprobs: write them to FILE as JSON instead of stderr.")
@click.option("--session", "session_file", type=click.Path(dir_okay=False, path_type=Path),
              help="Reopen a saved session (JSONL) and keep saving to it.")
@click.option("--session-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where sessions are saved [default: ~/.local/share/gpt-from-scratch/sessions].")
@ranks_option
def main(ckpt: str, prompt: str | None, backend_name: str | None, onnx: Path | None, provider: str,
         device: str, precision: str | None, compile_step: bool | None, threads: int | None,
         batch: BinaryIO | None, output: Path | None, fmt: str, parallel: int, logprobs: int | None,
         logprobs_json: Path | None, session_file: Path | None, session_dir: Path | None, unknown: str,
         stop: tuple[str, ...], keep_stop: bool, **knobs) -> None:
    """Generate text from a GPT checkpoint: live in the terminal, one prompt, or in batch.

    \b
    gpt-tui                                  # the app, on checkpoints/shakespeare.pt
    gpt-tui --ckpt out/ckpt.pt --backend onnx
    gpt-tui -p "ROMEO:" -n 100               # one completion to stdout
    gpt-tui --batch prompts.txt --seed 1 > out.jsonl

    Defaults can be saved in ~/.config/gpt-from-scratch/config.toml (the flags' names as keys, e.g.
    `top-k = 40`); flags override it. Batch and -p exit codes: 0 done, 1 the model could not be
    loaded or the output failed, 2 usage error, 3 some items failed (each line carries its error),
    130 interrupted (the lines already written are complete).
    """
    # the app: keys typed from here on, while the model loads, wait for its prompt box (tui.typeahead)
    with typeahead() if batch is None and prompt is None else contextlib.nullcontext():
        _main(ckpt, prompt, backend_name, onnx, provider, device, precision, compile_step, threads, batch,
              output, fmt, parallel, logprobs, logprobs_json, session_file, session_dir, unknown, stop,
              keep_stop, **knobs)  # ^C: invoke()


def _main(ckpt: str, prompt: str | None, backend_name: str | None, onnx: Path | None, provider: str,
          device: str, precision: str | None, compile_step: bool | None, threads: int | None,
          batch: BinaryIO | None, output: Path | None, fmt: str, parallel: int, logprobs: int | None,
          logprobs_json: Path | None, session_file: Path | None, session_dir: Path | None, unknown: str,
          stop: tuple[str, ...], keep_stop: bool, **knobs) -> None:
    if batch is None and (output is not None or fmt != "auto"):
        raise click.UsageError("--output and --format only apply with --batch")
    if logprobs is not None and batch is None and prompt is None:
        raise click.UsageError("--logprobs applies with -p or --batch (the app shows them in its "
                               "next-token panel, F3)")
    if logprobs_json is not None and (prompt is None or logprobs is None):
        raise click.UsageError("--logprobs-json goes with -p and --logprobs N")
    for path, flag in ((output, "--output"), (logprobs_json, "--logprobs-json")):
        if path is not None and not path.expanduser().resolve().parent.is_dir():
            raise click.BadParameter(f"the folder of {path} does not exist; create it first",
                                     param_hint=f"'{flag}'")
    if prompt is not None and (batch is not None or session_file is not None):
        raise click.UsageError("-p/--prompt runs one prompt: leave out --batch and --session")
    from model.checkpoint import CheckpointError
    from model.generate.backend import Settings
    from model.terminal import CommandError, visible
    from tui.backends import BackendError, factories

    if session_file is not None:  # refused before the model loads, in one line (the app reads it again)
        from tui.session import SessionError, read_session

        try:
            read_session(session_file.expanduser())
        except SessionError as e:
            raise CommandError(str(e)) from None

    try:
        settings = Settings(stop=stop, unknown=unknown, **knobs)  # type: ignore[arg-type]
    except ValueError as e:  # from the config file: flags are checked by their types already
        raise click.UsageError(visible(f"{e} (check {config_path()})")) from None
    backend_name = backend_name or ("onnx" if onnx else "torch")
    try:
        ckpt_path = resolve_ckpt(ckpt)
    except click.BadParameter:
        if not (backend_name == "onnx" and onnx):
            raise
        ckpt_path = None  # an .onnx alone is enough; there is just no PyTorch backend to switch to
    # auto's choice is timed, so two runs may choose differently, and bf16 rounds a batched row
    # otherwise than the same row alone: a script's output must not depend on either
    batch_default = precision is None and batch is not None
    precision = precision or ("fp32" if batch is not None else "auto")
    app = batch is None and prompt is None
    step = {True: "compile", False: "eager", None: "build" if app else "auto"}[compile_step]
    if app:  # the app generates in a child process: rendering never stalls the model
        from tui.remote import offloaded

        makers = offloaded(factories(ckpt_path, device, onnx, provider, precision, step), threads)
    else:  # this process decodes: on the threads asked for, else on the cores left idle (model.threads)
        from model.threads import set_threads

        makers = factories(ckpt_path, device, onnx, provider, precision, step, set_threads(threads))

    def progress(message: str) -> None:
        click.echo(visible(message), err=True)  # it may hold file names, ids, a model's text

    try:
        backend = makers[backend_name](progress if not prompt else lambda m: None)
    except (CheckpointError, BackendError, ValueError) as e:
        raise click.ClickException(visible(str(e))) from None

    if app:
        from tui.app import GPTApp, freeze_heap
        from tui.backends import exported_from
        from tui.switch import OpenedModel

        def open_model(path: str) -> OpenedModel:
            """/model PATH: a checkpoint on the active backend, or an .onnx on ONNX Runtime with
            PyTorch on the checkpoint it came from (else the session's)."""
            onnx_file = Path(path).expanduser()
            if onnx_file.suffix != ".onnx":
                return OpenedModel(offloaded(factories(resolve_ckpt(path), device, None, provider, precision,
                                                       step), threads))
            source, why = exported_from(onnx_file, ckpt_path)
            made = offloaded(factories(source, device, onnx_file, provider, precision, step), threads)
            return OpenedModel(made, "onnx", {"torch": why} if source is not None else {})

        gpt_app = GPTApp(backend, backend_name, makers, settings, session_dir=session_dir,
                         session_file=session_file, keep_stop=keep_stop, open_model=open_model)
        freeze_heap()
        gpt_app.run()
        return

    from tui.batch import EXIT_INTERRUPTED

    if prompt is not None:
        run_prompt(backend, prompt, settings, keep_stop, progress, logprobs, logprobs_json)
        return

    from model.terminal import reader_gone
    from tui.batch import OutputError, read_items, run_batch
    from tui.session import file_sha256

    info = backend.info()
    if batch_default and info.precision.startswith("fp32 weights (asked for)"):
        # nobody asked: batch mode chose fp32 so that a seed replays exactly; the lines say so
        info = replace(info, precision=info.precision.replace("(asked for)", "(batch default)", 1))
    try:
        out = _output(output)
        summary = run_batch(backend, read_items(batch, fmt), settings, out, progress,
                            checkpoint_sha256=file_sha256(info.path), keep_stop=keep_stop,
                            batch_decoder=backend.batch_decoder(parallel) if parallel > 1 else None,
                            logprobs=logprobs, info=info)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # `gpt-tui --batch f | head -1`
        reader_gone()
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


def run_prompt(backend, prompt: str, settings, keep_stop: bool, progress, logprobs: int | None = None,
               logprobs_json: Path | None = None) -> None:
    """-p: the completion on stdout; a refused prompt is a one-line error (exit 1). With ``logprobs``,
    the tokens' log-probabilities after it: a table on stderr, or JSON in ``logprobs_json``."""
    from model.terminal import CommandUsageError, reader_gone
    from model.tokenizer import UnknownCharactersError
    from tui.batch import EXIT_INTERRUPTED
    from tui.logprobs import Logprobs
    from tui.oneshot import run_oneshot
    from tui.settings import fresh_seed, replace

    if settings.seed is None:
        settings = replace(settings, {"seed": fresh_seed()})
    out = sys.stdout
    gathered = None if logprobs is None else Logprobs(backend.tokenizer, logprobs)
    try:
        run_oneshot(backend, prompt, settings, out, progress, keep_stop, gathered)
    except KeyboardInterrupt:
        click.echo("\ninterrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # `gpt-tui -p ... | head -2`
        reader_gone()
    except UnknownCharactersError as e:  # the prompt given: a usage error, said in the command's words
        raise CommandUsageError(f"{len(e.chars)} character(s) of the prompt are not in the model's "
                                f"vocabulary: {', '.join(repr(c) for c in e.chars)}; remove them, or pass "
                                "--unknown replace") from None
    except Exception as e:  # a failing backend: one line, not a traceback
        from model.terminal import visible

        raise click.ClickException(visible(str(e) or type(e).__name__)) from None
    if out.isatty():
        out.write("\n")
    if gathered is not None:
        write_logprobs(gathered, logprobs_json)


def write_logprobs(gathered, path: Path | None) -> None:
    """-p's log-probabilities: JSON (the batch lines' "logprobs" object) written atomically to
    ``path``, else the table on stderr (token pieces shown visibly)."""
    if path is None:
        out = sys.stdout
        out.flush()  # the completion first, where both streams go to one terminal
        click.echo(gathered.table(), err=True)
        return
    from model.atomic import atomic_write
    from model.terminal import visible
    from tui.batch import json_line

    try:
        with atomic_write(path.expanduser(), "w", encoding="utf-8") as f:
            f.write(json_line(gathered.to_dict()))
    except OSError as e:
        raise click.ClickException(visible(str(e))) from None
