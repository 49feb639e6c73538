"""`gpt-train` and `gpt-report`: nanoGPT's flags in kebab-case, parsed into a TrainConfig for
model.train.loop.train, and the model-card reports of model.train.report.

Nothing here imports torch at module level: ``--help`` and ``--version`` answer at once, and the
work imports what it needs when it starts.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
from click.core import ParameterSource

from model.config import PRESETS
from model.paths import DATA_DIR_ENV
from model.terminal import CommandError, CommandUsageError, InterruptibleGroup, ranks_option, visible
from model.train.config import (
    MAX_LEARNING_RATE,
    MAX_SEED,
    MODEL_FIELDS,
    OPTIMIZERS,
    SettingsError,
    TrainConfig,
    flag,
    fresh,
    parse_duration,
    preset_values,
)

D = TrainConfig()  # the defaults shown in --help: nanoGPT's train_shakespeare_char
EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT, and as gpt-tui --batch
VERSION = {"package_name": "gpt-from-scratch"}


class Duration(click.ParamType):
    """``2h``, ``150m``, ``1h30m``, ``90s`` or seconds, as seconds."""

    name = "DURATION"

    def convert(self, value, param, ctx) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


class Refused(CommandUsageError):
    """A usage error told in one line: the command line cannot run as given (exit code 2)."""

    exit_code = 2


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(**VERSION, prog_name="gpt-train")
@click.option("--preset", "preset_name", type=click.Choice(list(PRESETS)), default="shakespeare-char",
              help="Model shape and training settings to start from; the flags below override them.")
@click.option("--n-layer", type=click.IntRange(min=1), help="Transformer blocks.")
@click.option("--n-head", type=click.IntRange(min=1), help="Attention heads per block.")
@click.option("--n-embd", type=click.IntRange(min=1), help="Embedding width (divisible by n-head).")
@click.option("--block-size", type=click.IntRange(min=1), help="Context length in tokens.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Dropout probability.")
@click.option("--bias/--no-bias", default=None, help="Biases in Linear layers and LayerNorms.")
@click.option("--qkv-bias/--no-qkv-bias", default=None, help="Bias on the q/k/v projection.")
@click.option("--tie-weights/--no-tie-weights", default=None, help="Share token embedding and lm_head.")
@click.option("--attention", type=click.Choice(["auto", "explicit", "fused"]),
              help="Step-by-step attention maths, F.scaled_dot_product_attention, or auto: time both on "
                   "a few micro-steps at the start and train with the faster [default: the preset's, fused].")
@click.option("--activation", type=click.Choice(["gelu", "gelu_tanh"]),
              help="The MLP's GELU: exact, or GPT-2's tanh approximation.")
@click.option("--data", default=D.data,
              help=f"'shakespeare' (downloaded once, checksum verified; ${DATA_DIR_ENV} points at a "
                   "local copy), a UTF-8 text file (both tokenized once into the user cache) or a "
                   "folder written by gpt-prepare.")
@ranks_option
@click.option("--out", "out_dir", default=D.out_dir, type=click.Path(file_okay=False),
              help="Folder for ckpt.pt and metrics.jsonl; one run at a time.")
@click.option("--resume", is_flag=True,
              help="Continue OUT/ckpt.pt exactly, with its settings; only --max-iters, --eval-interval, "
                   "--log-interval and --progress may change.")
@click.option("--overwrite", is_flag=True, help="Start afresh in an OUT that holds a run, replacing it.")
@click.option("--init-from", type=click.Path(dir_okay=False),
              help="Start from this checkpoint's weights, config and tokenizer (an imported GPT-2 or one "
                   "of ours) with a fresh optimizer; --block-size may crop; --dropout, --attention may "
                   "change.")
@click.option("--batch-size", default=D.batch_size, type=click.IntRange(min=1),
              help="Sequences per micro-batch (per process).")
@click.option("--gradient-accumulation-steps", "grad_accum", default=D.grad_accum, type=click.IntRange(min=1),
              help="Micro-batches per optimizer step.")
@click.option("--max-iters", default=D.max_iters, type=click.IntRange(min=1), help="Optimizer steps in all.")
@click.option("--time-budget", type=Duration(),
              help="Instead of --max-iters: the wall time for the whole run (2h, 150m, 1h30m); a few timed "
                   "steps at the start fix --max-iters so that training and its evaluations fit, with the "
                   "learning-rate schedule laid over them; a machine that slows down stops the run at the "
                   "deadline, evaluated and saved.")
@click.option("--optimizer", default=D.optimizer, type=click.Choice(OPTIMIZERS),
              help="AdamW everywhere, or Muon for the blocks' weight matrices (AdamW for embeddings, "
                   "norms and biases); both follow --learning-rate.")
@click.option("--learning-rate", default=D.learning_rate,
              type=click.FloatRange(0, MAX_LEARNING_RATE, min_open=True), help="Peak learning rate.")
@click.option("--min-lr", default=D.min_lr, type=click.FloatRange(0, MAX_LEARNING_RATE),
              help="Final learning rate.")
@click.option("--warmup-iters", default=D.warmup_iters, type=click.IntRange(min=0),
              help="Linear warmup steps.")
@click.option("--lr-decay-iters", type=click.IntRange(min=1), help="Cosine decay steps [default: max-iters].")
@click.option("--weight-decay", default=D.weight_decay, type=click.FloatRange(0, 1),
              help="AdamW decay on matrices.")
@click.option("--beta1", default=D.beta1, type=click.FloatRange(0, 1, max_open=True), help="AdamW beta1.")
@click.option("--beta2", default=D.beta2, type=click.FloatRange(0, 1, max_open=True), help="AdamW beta2.")
@click.option("--grad-clip", default=D.grad_clip, type=click.FloatRange(min=0),
              help="Clip gradient norm (0: off).")
@click.option("--eval-interval", default=D.eval_interval, type=click.IntRange(min=1),
              help="Steps between evaluations (each writes OUT/ckpt.pt).")
@click.option("--eval-iters", default=D.eval_iters, type=click.IntRange(min=1),
              help="Batches per evaluation.")
@click.option("--log-interval", default=D.log_interval, type=click.IntRange(min=1),
              help="Steps between progress updates and metric rows.")
@click.option("--seed", default=D.seed, type=click.IntRange(0, MAX_SEED),
              help="Seed for init, dropout and batch sampling.")
@click.option("--device", default=D.device, type=click.Choice(["auto", "cpu", "cuda", "mps"]),
              help="Where to train.")
@click.option("--dtype", default=D.dtype, type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Autocast dtype; auto = bf16 on GPUs and CPUs that support it, else fp32.")
@click.option("--compile/--no-compile", default=D.compile, help="torch.compile the model (helps on GPUs).")
@click.option("--fsdp/--no-fsdp", default=D.fsdp,
              help="Under torchrun: shard parameters, gradients and optimizer state over the ranks (FSDP2) "
                   "instead of replicating the model (DDP), computing in --dtype; checkpoints are whole.")
@click.option("--progress/--no-progress", default=D.progress,
              help="A progress bar, or one plain line per log interval.")
@click.option("--threads", type=click.IntRange(min=1), metavar="N",
              help="CPU threads for PyTorch [default: $OMP_NUM_THREADS, else the cores other processes "
                   "leave idle, by the load average at the start].")
def main(preset_name: str, out_dir: str, resume: bool, overwrite: bool, threads: int | None, **flags) -> None:
    """Train a GPT (or the bigram baseline) on Tiny Shakespeare or any text file.

    Writes OUT/ckpt.pt (full state, for --resume and for gpt-tui) at every evaluation and
    OUT/metrics.jsonl. A preset brings its training settings too: the defaults shown are
    shakespeare-char's (nanoGPT's train_shakespeare_char). nanoGPT's CPU recipe:

        gpt-train --preset cpu --data shakespeare

    An OUT that holds a run is refused unless --resume (continue it) or --overwrite (replace it).
    Data parallel on N GPUs (or N CPU processes): the same flags under torchrun, with
    --batch-size per process:

        torchrun --standalone --nproc-per-node N -m model.train.cli --preset shakespeare-char

    Exit codes: 0 done; 1 the run failed (the message says what is saved); 2 a usage error (a bad
    value, a missing file, an OUT in the way, a setting a resumed run may not change); 130
    interrupted.
    """
    from model.threads import set_threads

    set_threads(threads)  # no run setting: a resumed run may use another machine's cores
    ctx = click.get_current_context()
    given = {name: value for name, value in flags.items()
             if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT)}
    preset_given = ctx.get_parameter_source("preset_name") == ParameterSource.COMMANDLINE
    named = None
    # auto is no model setting: it picks one at the start of a fresh run; a resumed run keeps its own
    auto = given.get("attention") == "auto"
    if auto:
        del given["attention"]
    started = time.perf_counter()  # a --time-budget counts from here
    try:
        if "time_budget" in given and "max_iters" in given and not resume:
            raise SettingsError("--time-budget fixes --max-iters from timed steps; pass one of them")
        if resume:
            if preset_given:  # the preset's values count as given, unless a flag says otherwise
                values = {k: v for k, v in preset_values(preset_name).items() if k not in given}
                named = {k: f"--preset {preset_name} (which sets {flag(k)[2:]} {v})"
                         for k, v in values.items()}
                given = values | given
            cfg = TrainConfig(out_dir=out_dir, resume=True, overwrite=overwrite)
        else:
            cfg = fresh(preset_name, given | {"out_dir": out_dir, "overwrite": overwrite,
                                              "attention_auto": auto})
            if cfg.init_from:  # the model is the checkpoint's, with the few changes it allows
                from model.train.init_from import init_config  # reads the checkpoint: needs torch

                changes = {k: v for k, v in given.items() if k in MODEL_FIELDS}
                cfg = cfg.replace(model=init_config(cfg.init_from, changes))
    except ValueError as e:  # a bad value or combination of flags
        raise Refused(str(e)) from None
    run(cfg, given if resume else None, named, started)


def run(cfg: TrainConfig, given: dict | None, named: dict[str, str] | None, started: float) -> None:
    """Train, turning each way a run can end into its message and exit code."""
    try:
        from model.atomic import WriteError
        from model.checkpoint import CheckpointError
        from model.data.corpus import DataError
        from model.train.distributed import lost_peer
        from model.train.loop import NonFiniteError, TrainingInterrupted, train
        from model.train.run_folder import RunLockedError

        try:
            train(cfg, log=lambda m: click.echo(visible(m), err=True), given=given, named=named,
                  started=started)
        except SettingsError as e:
            raise Refused(_on_rank(str(e))) from None
        except (ValueError, DataError, CheckpointError, NonFiniteError, RunLockedError, WriteError) as e:
            raise CommandError(_on_rank(str(e))) from None
        except TrainingInterrupted as e:
            click.echo(visible(str(e)), err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except RuntimeError as e:
            if not lost_peer(e):
                raise
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CommandError(_on_rank(f"lost contact with the other processes ({first}); "
                                                "the first rank to fail says why")) from None
    except KeyboardInterrupt:  # while importing torch: nothing was touched
        click.echo("interrupted before training started; nothing was written", err=True)
        raise click.exceptions.Exit(EXIT_INTERRUPTED) from None


def _on_rank(message: str) -> str:
    """In a distributed run every rank reports; say which one is speaking."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")  # as torchrun sets them
    return f"rank {rank}/{world}: {message}" if rank is not None and world != "1" else message


def checkpoint_file(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """A checkpoint argument: an existing file, else a usage error naming what it is instead."""
    path = Path(value)
    if path.is_dir():
        raise Refused(f"{param.human_readable_name} {value} is a directory; pass a checkpoint file (such "
                      f"as {path / 'ckpt.pt'})")
    if not path.is_file():
        raise Refused(f"checkpoint {value} not found; train one with gpt-train")
    return value


def data_source(ctx: click.Context, param: click.Parameter, value: str) -> str:
    from model.train.config import check_data

    try:
        check_data(value)
    except SettingsError as e:
        raise Refused(str(e)) from None
    return value


@click.group(cls=InterruptibleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(**VERSION, prog_name="gpt-report")
def report() -> None:
    """Measure a trained model and draw its learning curve, for a model card.

    Exit codes: 0 done; 1 failed (the message says why); 2 a usage error (a bad value, a missing
    file)."""


@report.command("losses")
@click.argument("ckpt", callback=checkpoint_file)
@click.option("--data", default="shakespeare", show_default=True, callback=data_source,
              help="The text it was trained on.")
def report_losses(ckpt: str, data: str) -> None:
    """Loss of CKPT over the whole train and val splits (every target once)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from model.checkpoint import CheckpointError
    from model.data.corpus import DataError
    from model.train.report import split_losses

    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("batches"),
                   TimeRemainingColumn(), console=Console(stderr=True), transient=True)
    tasks: dict[str, int] = {}

    def on_batch(split: str, done: int, total: int) -> None:
        if split not in tasks:
            tasks[split] = bar.add_task(split, total=total)
        bar.update(tasks[split], completed=done)

    try:
        with bar:
            losses = split_losses(ckpt, data, on_batch=on_batch)
    except (ValueError, DataError, CheckpointError) as e:
        raise CommandError(str(e)) from None
    click.echo(f"train {losses['train']:.4f}  val {losses['val']:.4f}")


@report.command("plot")
@click.argument("metrics", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="learning_curve.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG to write (its folder is created if missing).")
@click.option("--title", default="", help="Plot title.")
@click.option("--label", "labels", multiple=True,
              help="With several METRICS: each run's name in the legend, in order [default: its folder].")
def report_plot(metrics: tuple[str, ...], out: str, title: str, labels: tuple[str, ...]) -> None:
    """Plot train and val loss against steps from a gpt-train METRICS jsonl (the last row of
    each step counts, as after a resumed run); several files: their runs side by side."""
    from model.atomic import WriteError
    from model.train.report import PlottingMissingError, compare_curves, plot_learning_curve

    if labels and len(labels) != len(metrics):
        raise Refused(f"{len(labels)} --label for {len(metrics)} metrics files; give one per file, or none")
    try:
        if len(metrics) == 1:
            click.echo(plot_learning_curve(metrics[0], out, title))
        else:
            names = labels or tuple(Path(m).parent.name or m for m in metrics)
            click.echo(compare_curves(list(zip(names, metrics, strict=True)), out, title))
    except PlottingMissingError as e:
        raise CommandError(str(e)) from None
    except (ValueError, KeyError) as e:
        raise CommandError(f"cannot plot {', '.join(metrics)}: {e}") from None
    except WriteError as e:
        raise CommandError(str(e)) from None


@report.command("slim")
@click.argument("ckpt", callback=checkpoint_file)
@ranks_option
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Precision of the stored weights (fp16/bf16 halve the file; they load as fp32).")
def report_slim(ckpt: str, out: str, dtype: str) -> None:
    """Write OUT: the weights, config, tokenizer and training facts of CKPT, without optimizer state.

    What the tools need to generate, about a third of a training checkpoint; written atomically."""
    from model.atomic import WriteError
    from model.checkpoint import CheckpointError, write_slim
    from model.device import DTYPES

    try:
        write_slim(ckpt, out, DTYPES[dtype])
    except (CheckpointError, WriteError) as e:
        raise CommandError(str(e)) from None
    click.echo(f"{out}: {Path(out).stat().st_size / 2**20:.1f} MiB")


def entry() -> None:
    """The gpt-train command: main() in a process whose malloc keeps freed activations (model.allocator)."""
    from model.allocator import relaunch_tuned

    relaunch_tuned()
    main()


if __name__ == "__main__":  # torchrun --nproc-per-node N -m model.train.cli ...
    entry()
