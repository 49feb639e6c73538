"""Text for a terminal: whatever came from a file, a flag or a model is shown, never obeyed.

A file name, a JSONL id or a model's output may hold ESC, BEL or C1 controls; written raw they
could set the terminal's title, its clipboard (OSC 52) or worse. Every command prints such text
through ``visible()``; the CLIs' errors do it in ``CommandError``."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import NoReturn

import click

# C0 controls and DEL -> their Unicode "control picture" (ESC -> ␛), keeping newline and tab; C1
# controls (U+0080-U+009F: a terminal may take U+009B as ESC [) and lone surrogates (which no
# terminal encoding can carry) have no picture: they are shown as their escape, \x9b, \ud800
_VISIBLE: dict[int, int | str] = {c: 0x2400 + c for c in range(32) if c not in (9, 10)} | {127: 0x2421}
_VISIBLE |= {c: f"\\x{c:02x}" for c in range(0x80, 0xA0)}
_VISIBLE |= {c: f"\\u{c:04x}" for c in range(0xD800, 0xE000)}


def visible(text: str) -> str:
    """``text`` safe to put on a terminal: no character of it can start a control sequence."""
    return text.translate(_VISIBLE)


class CommandError(click.ClickException):
    """A one-line error for people (exit code 1); the paths and values it quotes are shown visibly."""

    def format_message(self) -> str:
        return visible(self.message)


class CommandUsageError(CommandError):
    """A command line that cannot run as given: click's usage exit code."""

    exit_code = 2


EXIT_INTERRUPTED = 130  # what a shell reports for a process ended by SIGINT
EXIT_READER_GONE = 141  # and by SIGPIPE: `yes | head -1` leaves yes with this


def reader_gone() -> NoReturn:
    """stdout's reader went away (``gpt-tui -p ... | head -2``): end quietly, as a Unix filter that
    SIGPIPE ends does, with its exit code. stdout is pointed at /dev/null first, so that Python's own
    flush at exit finds nothing broken to report."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (AttributeError, OSError, ValueError):  # a captured stdout (tests) has no descriptor
        pass
    sys.exit(EXIT_READER_GONE)


class Interrupted(CommandError):
    """Ctrl+C, told in one line that says what is true of the output (no "Error:": the user asked)."""

    exit_code = EXIT_INTERRUPTED

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True)


class _EndsOnCtrlC:
    """Ctrl+C anywhere in the command (a subcommand included) ends it with one line and exit code
    130, where click would print "Aborted!" and exit 1."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except KeyboardInterrupt:
            raise Interrupted("interrupted") from None


class InterruptibleCommand(_EndsOnCtrlC, click.Command):
    pass


class InterruptibleGroup(_EndsOnCtrlC, click.Group):
    pass


def _use_ranks(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is None:
        return
    from model.gpt2_ranks import RanksError, checked
    from model.paths import RANKS_ENV

    try:
        checked(Path(value), "--ranks")
    except RanksError as e:
        raise CommandError(str(e)) from None  # a refused file: exit 1, before any work
    # The flag becomes $GPT_BPE_RANKS for this process and those it starts (torchrun's ranks, a
    # relaunch): every place that rebuilds GPT-2's tokenizer (a prepared folder's manifest, a resumed
    # checkpoint) then reads this same file, with no path threaded through each of them.
    os.environ[RANKS_ENV] = str(Path(value).resolve())


def ranks_option(command):
    """``--ranks PATH``: GPT-2's BPE ranks file, for a command that may need GPT-2's tokenizer;
    checked (SHA-256) as it is parsed, a wrong file refused in one line."""
    return click.option(
        "--ranks", type=click.Path(exists=True, dir_okay=False), expose_value=False, callback=_use_ranks,
        help="GPT-2's BPE ranks file (tiktoken's r50k_base.tiktoken), where GPT-2's tokenizer is needed; "
             "without it: $GPT_BPE_RANKS, $GPT_DATA_DIR/gpt2.tiktoken, the user cache, tiktoken's cache, "
             "then a download.")(command)
