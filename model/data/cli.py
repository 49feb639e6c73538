"""`gpt-prepare`: tokenize text once into memory-mapped shards that `gpt-train --data DIR` reads."""

from __future__ import annotations

import click

from model.terminal import (
    CommandError,
    CommandUsageError,
    Interrupted,
    InterruptibleCommand,
    ranks_option,
    visible,
)

# PyTorch and NumPy are imported when the command runs, so that --help and --version answer at once


@click.command(cls=InterruptibleCommand,
               context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="gpt-from-scratch", prog_name="gpt-prepare")
@click.argument("sources", nargs=-1)
@click.option("--tokenizer", default="char",
              help="char (a vocabulary built from the text), gpt2 (GPT-2's BPE; its ranks are found as "
                   "--ranks says) or the path of a checkpoint whose tokenizer to use.")
@ranks_option
@click.option("--out", type=click.Path(file_okay=False), help="Folder to write (created or replaced).")
@click.option("--val", "val_sources", multiple=True,
              help="A separate validation source (repeatable); without it val is the last --val-fraction.")
@click.option("--val-fraction", default=0.1, type=click.FloatRange(0, 1, min_open=True, max_open=True),
              help="Share of the token stream, from its end, kept for validation.")
@click.option("--shard-tokens", default=100_000_000, type=click.IntRange(min=1),
              help="Tokens per shard file.")
@click.option("--workers", default=0, type=click.IntRange(min=0), help="Encoding threads (0: every core).")
@click.option("--text-field", default="text", help="Column holding the text in a Hugging Face dataset.")
@click.option("--max-documents", type=click.IntRange(min=1),
              help="Take only the first N documents of each Hugging Face source (a sample).")
@click.option("--progress/--no-progress", default=True, help="Show the progress bar.")
@click.option("--verify", "verify", type=click.Path(file_okay=False, exists=True),
              help="Instead of preparing: check every shard of this folder against its full SHA-256.")
def main(sources: tuple[str, ...], out: str | None, val_sources: tuple[str, ...], verify: str | None,
         **options) -> None:
    """Tokenize SOURCES (text files, folders of *.txt, globs, or hf:ID[:CONFIG][@SPLIT] to stream a
    Hugging Face dataset) into token shards and a manifest in OUT. Running it again on unchanged
    input does nothing.

    \b
        gpt-prepare books/ --tokenizer gpt2 --out data/books
        gpt-prepare hf:HuggingFaceFW/fineweb-edu:sample-10BT --tokenizer gpt2 --out data/fineweb
    """
    from model.atomic import WriteError
    from model.data.prepare import PrepareConfig, prepare
    from model.data.shards import DataError, open_prepared

    try:
        if verify:
            data = open_prepared(verify, full_check=True)
            click.echo(f"{verify}: {len(data.manifest['shards'])} shard(s), {data.manifest['tokens']:,} "
                       "tokens, every SHA-256 matches")
            return
        if out is None:
            raise CommandUsageError("give --out DIR (or --verify DIR)")
        try:  # a bad value or a missing source is a usage error, said before any work
            cfg = PrepareConfig(sources=sources, out=out, val_sources=val_sources, **options)
        except ValueError as e:
            raise CommandUsageError(str(e)) from None
        prepare(cfg, log=lambda m: click.echo(visible(m), err=True))
    except (ValueError, DataError, WriteError) as e:  # WriteError: a full disk
        raise CommandError(str(e)) from None
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; {out} is as it was before this run") from None


if __name__ == "__main__":
    main()
