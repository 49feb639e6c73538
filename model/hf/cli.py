"""`gpt-import`: bring a model from another ecosystem in as one of our checkpoints."""

from __future__ import annotations

from pathlib import Path

import click

from model.terminal import CommandError, InterruptibleGroup, visible

# PyTorch is imported when a command runs, so that --help and --version answer at once


@click.group(cls=InterruptibleGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="gpt-from-scratch", prog_name="gpt-import")
def main() -> None:
    """Import a model trained elsewhere."""


@main.command("hf")
@click.argument("src")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Checkpoint to write.")
@click.option("--progress/--no-progress", default=True, help="Show the download's progress bar.")
def hf(src: str, out: str, progress: bool) -> None:
    """Import the Hugging Face GPT-2 at SRC: a local folder (config.json, model.safetensors, the
    tokenizer files) or, when online, a hub id such as openai-community/gpt2.

    The checkpoint holds the weights, the config and the BPE tokenizer, so it runs offline:

        gpt-import hf openai-community/gpt2 --out gpt2.pt
    """
    from model.atomic import WriteError
    from model.checkpoint import CheckpointError
    from model.hf.load import HFImportError, import_hf

    try:
        ckpt = import_hf(src, out, progress, say=lambda m: click.echo(visible(m), err=True))
    except (HFImportError, CheckpointError, WriteError) as e:  # WriteError: a full disk, in one line
        raise CommandError(str(e)) from None
    c, size = ckpt["config"], Path(out).stat().st_size / 2**20
    # the paths are the user's and the folder's own names: shown, never obeyed by the terminal
    click.echo(visible(f"wrote {out} ({size:.1f} MiB): {c['n_layer']} layers x {c['n_embd']}, vocab "
                       f"{c['vocab_size']}, block {c['block_size']}, from {ckpt['meta']['source']}"))


if __name__ == "__main__":
    main()
