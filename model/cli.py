"""`gpt-train`: nanoGPT's flags in kebab-case, parsed into a TrainConfig for model.train.train."""

from __future__ import annotations

import os
from pathlib import Path

import click

from model import distributed
from model.checkpoint import CheckpointError
from model.config import PRESETS, preset
from model.data import DATA_DIR_ENV, DataError
from model.train import NonFiniteError, TrainConfig, init_config, train

# model fields a flag may override; None means "keep the preset's value"
MODEL_FLAGS = ("n_layer", "n_head", "n_embd", "block_size", "dropout", "bias", "qkv_bias",
               "tie_weights", "attention", "activation")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--preset", "preset_name", type=click.Choice(list(PRESETS)), default="shakespeare-char",
              help="Model shape to start from; the flags below override its fields.")
@click.option("--n-layer", type=click.IntRange(min=1), help="Transformer blocks.")
@click.option("--n-head", type=click.IntRange(min=1), help="Attention heads per block.")
@click.option("--n-embd", type=click.IntRange(min=1), help="Embedding width (divisible by n-head).")
@click.option("--block-size", type=click.IntRange(min=1), help="Context length in tokens.")
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), help="Dropout probability.")
@click.option("--bias/--no-bias", default=None, help="Biases in Linear layers and LayerNorms.")
@click.option("--qkv-bias/--no-qkv-bias", default=None, help="Bias on the q/k/v projection.")
@click.option("--tie-weights/--no-tie-weights", default=None, help="Share token embedding and lm_head.")
@click.option("--attention", type=click.Choice(["explicit", "fused"]),
              help="Step-by-step attention maths, or F.scaled_dot_product_attention.")
@click.option("--activation", type=click.Choice(["gelu", "gelu_tanh"]),
              help="The MLP's GELU: exact, or GPT-2's tanh approximation.")
@click.option("--data", default="shakespeare",
              help=f"'shakespeare' (downloaded once, checksum verified; ${DATA_DIR_ENV} points at a "
                   "local copy), a UTF-8 text file (both tokenized once into the user cache) or a "
                   "folder written by gpt-prepare.")
@click.option("--out", "out_dir", default="out", type=click.Path(file_okay=False),
              help="Folder for ckpt.pt and metrics.jsonl.")
@click.option("--resume", is_flag=True, help="Continue from OUT/ckpt.pt exactly where it stopped.")
@click.option("--init-from", type=click.Path(dir_okay=False),
              help="Start from this checkpoint's weights, config and tokenizer (an imported GPT-2 or one "
                   "of ours) with a fresh optimizer; --block-size may crop; --dropout, --attention may "
                   "change.")
@click.option("--batch-size", default=64, type=click.IntRange(min=1), help="Sequences per micro-batch.")
@click.option("--gradient-accumulation-steps", "grad_accum", default=1, type=click.IntRange(min=1),
              help="Micro-batches per optimizer step.")
@click.option("--max-iters", default=5000, type=click.IntRange(min=1), help="Optimizer steps in all.")
@click.option("--learning-rate", default=1e-3, type=click.FloatRange(min=0, min_open=True),
              help="Peak learning rate.")
@click.option("--min-lr", default=1e-4, type=click.FloatRange(min=0), help="Final learning rate.")
@click.option("--warmup-iters", default=100, type=click.IntRange(min=0), help="Linear warmup steps.")
@click.option("--lr-decay-iters", type=click.IntRange(min=1), help="Cosine decay steps [default: max-iters].")
@click.option("--weight-decay", default=0.1, type=click.FloatRange(min=0), help="AdamW decay on matrices.")
@click.option("--beta1", default=0.9, type=click.FloatRange(0, 1), help="AdamW beta1.")
@click.option("--beta2", default=0.99, type=click.FloatRange(0, 1), help="AdamW beta2.")
@click.option("--grad-clip", default=1.0, type=click.FloatRange(min=0), help="Clip gradient norm (0: off).")
@click.option("--eval-interval", default=250, type=click.IntRange(min=1), help="Steps between evaluations.")
@click.option("--eval-iters", default=200, type=click.IntRange(min=1), help="Batches per evaluation.")
@click.option("--log-interval", default=10, type=click.IntRange(min=1), help="Steps between metric rows.")
@click.option("--seed", default=1337, type=int, help="Seed for init, dropout and batch sampling.")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda", "mps"]),
              help="Where to train.")
@click.option("--dtype", default="auto", type=click.Choice(["auto", "fp32", "bf16", "fp16"]),
              help="Autocast dtype; auto = bf16 on GPUs and CPUs that support it, else fp32.")
@click.option("--compile", is_flag=True, help="torch.compile the model (helps on GPUs).")
@click.option("--fsdp", is_flag=True,
              help="Under torchrun: shard parameters, gradients and optimizer state over the ranks (FSDP2) "
                   "instead of replicating the model (DDP), computing in --dtype; checkpoints are whole.")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
def main(preset_name: str, data: str, out_dir: str, resume: bool, grad_accum: int, init_from: str | None,
         **flags) -> None:
    """Train a GPT (or the bigram baseline) on Tiny Shakespeare or any text file.

    Writes OUT/ckpt.pt (full state, for --resume and for gpt-tui) at every evaluation and
    OUT/metrics.jsonl. Example, nanoGPT's CPU recipe:

        gpt-train --preset cpu --data shakespeare --max-iters 2000

    Data parallel on N GPUs (or N CPU processes): the same flags under torchrun, with
    --batch-size per process:

        torchrun --standalone --nproc-per-node N -m model.cli --preset shakespeare-char
    """
    model_changes = {k: flags.pop(k) for k in MODEL_FLAGS if flags.get(k) is not None}
    for k in MODEL_FLAGS:
        flags.pop(k, None)
    try:
        if init_from:
            model = init_config(init_from, model_changes)
        else:
            model = preset(preset_name).replace(**model_changes)
        cfg = TrainConfig(model=model, data=data, out_dir=out_dir, resume=resume, grad_accum=grad_accum,
                          init_from=init_from, **flags)
        train(cfg, log=lambda m: click.echo(m, err=True))
    except (ValueError, DataError, CheckpointError, NonFiniteError) as e:
        raise click.ClickException(_on_rank(str(e))) from None
    except RuntimeError as e:
        if not distributed.lost_peer(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise click.ClickException(_on_rank(f"lost contact with the other processes ({first}); "
                                            "the first rank to fail says why")) from None
    except KeyboardInterrupt:
        raise click.ClickException(f"interrupted; the last evaluation's state is in {out_dir}/ckpt.pt "
                                   "(continue with --resume)") from None


def _on_rank(message: str) -> str:
    """In a distributed run every rank reports; say which one is speaking."""
    rank, world = os.environ.get("RANK"), os.environ.get("WORLD_SIZE", "1")  # as torchrun sets them
    return f"rank {rank}/{world}: {message}" if rank is not None and world != "1" else message


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def report() -> None:
    """Measure a trained model and draw its learning curve, for a model card."""


@report.command("losses")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--data", default="shakespeare", show_default=True, help="The text it was trained on.")
def report_losses(ckpt: str, data: str) -> None:
    """Loss of CKPT over the whole train and val splits (every target once)."""
    from model.report import split_losses

    try:
        losses = split_losses(ckpt, data)
    except (ValueError, DataError, CheckpointError) as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"train {losses['train']:.4f}  val {losses['val']:.4f}")


@report.command("plot")
@click.argument("metrics", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", default="learning_curve.png", show_default=True, type=click.Path(dir_okay=False),
              help="PNG to write.")
@click.option("--title", default="", help="Plot title.")
def report_plot(metrics: str, out: str, title: str) -> None:
    """Plot train and val loss against steps from a gpt-train METRICS jsonl."""
    from model.report import plot_learning_curve

    try:
        click.echo(plot_learning_curve(metrics, out, title))
    except (ValueError, KeyError) as e:
        raise click.ClickException(f"cannot plot {metrics}: {e}") from None


@report.command("slim")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Precision of the stored weights (fp16/bf16 halve the file; they load as stored).")
def report_slim(ckpt: str, out: str, dtype: str) -> None:
    """Write OUT: the weights, config, tokenizer and training facts of CKPT, without optimizer state.

    What the tools need to generate, about a third of a training checkpoint; written atomically."""
    import torch

    from model.checkpoint import write_slim

    try:
        write_slim(ckpt, out, {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype])
    except CheckpointError as e:
        raise click.ClickException(str(e)) from None
    click.echo(f"{out}: {Path(out).stat().st_size / 2**20:.1f} MiB")


if __name__ == "__main__":  # torchrun --nproc-per-node N -m model.cli ...
    main()
