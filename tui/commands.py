"""Typed commands (`/set temperature 0.8`, `/show`, ...): parsing only, so it is pure and tested alone.

The app decides what each command does; here a line of text becomes a ``Command`` or a
``CommandError`` whose message tells the user what to type instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from model.backend import Settings
from tui import settings as settings_text

# name -> (argument usage, what it does); the order is the order /help lists them in
COMMANDS = {
    "set": ("NAME VALUE", "temperature, top-k, top-p, max-new-tokens, seed, stop, unknown"),
    "show": ("[model]", "show the settings, backend and checkpoint; model: layers, vocabulary, training"),
    "clear": ("", "clear the output (Ctrl+L)"),
    "regen": ("", "generate the last part again (Ctrl+R)"),
    "continue": ("", "continue from where the text ends (Ctrl+N)"),
    "copy": ("", "copy the last prompt and its output (Ctrl+O)"),
    "backend": ("torch|onnx", "switch the backend"),
    "save": ("[PATH]", "save the session as JSONL (Ctrl+S)"),
    "export": ("[PATH]", "export the session as Markdown"),
    "step": ("", "step mode on/off: one token at a time (F7)"),
    "pick": ("N", "step mode: take candidate N (1 = most likely) instead of sampling"),
    "undo": ("", "step mode: take back the last token (F9)"),
    "ab": ("[PROMPT]", "the same prompt, seed and settings through torch and onnx, compared"),
    "help": ("", "list the commands and keys"),
}


class CommandError(ValueError):
    """A line that starts with / but is not a valid command; the message says what to type."""


@dataclass(frozen=True)
class Command:
    name: str  # a key of COMMANDS
    args: tuple[str, ...] = ()
    settings: Settings | None = None  # for /set: the settings with the change applied


def is_command(line: str) -> bool:
    """A line starting with one / is a command; `//text` is a prompt that starts with /."""
    return line.startswith("/") and not line.startswith("//")


def prompt_text(line: str) -> str:
    """The prompt a non-command line stands for (`//x` -> `/x`)."""
    return line[1:] if line.startswith("//") else line


def parse(line: str, current: Settings, backends: tuple[str, ...] = ("torch", "onnx")) -> Command:
    """Parse one command line against the current settings; raise CommandError when it is wrong."""
    words = line.strip()[1:].split(maxsplit=2)
    if not words:
        raise CommandError("empty command; /help lists the commands")
    name, args = words[0].lower(), tuple(words[1:])
    if name not in COMMANDS:
        raise CommandError(f"unknown command /{name}; /help lists the commands")
    if name == "set":
        if len(args) < 2:
            raise CommandError("usage: /set NAME VALUE, e.g. /set temperature 0.8 (/show lists them)")
        try:
            return Command(name, args, settings_text.with_text(current, args[0], args[1]))
        except ValueError as e:
            raise CommandError(str(e)) from None
    if name == "backend":
        if len(args) != 1 or args[0].lower() not in backends:
            raise CommandError(f"usage: /backend {'|'.join(backends)}")
        return Command(name, (args[0].lower(),))
    if name == "show":
        if args and (len(args) > 1 or args[0].lower() != "model"):
            raise CommandError("usage: /show or /show model")
        return Command(name, tuple(a.lower() for a in args))
    if name == "pick":
        if len(args) != 1 or not args[0].isdigit() or int(args[0]) < 1:
            raise CommandError("usage: /pick N, N a rank in the next-token panel (1 = most likely)")
        return Command(name, args)
    if name in ("save", "export", "ab"):
        # a path or a prompt may hold spaces: keep the rest of the line as one argument
        rest = line.strip()[1 + len(words[0]):].strip()
        return Command(name, (rest,) if rest else ())
    if args:
        raise CommandError(f"/{name} takes no arguments")
    return Command(name)


def help_text() -> str:
    lines = [f"/{name} {usage}".rstrip().ljust(22) + what for name, (usage, what) in COMMANDS.items()]
    lines.append("//text".ljust(22) + "send a prompt that starts with /")
    return "\n".join(lines)
