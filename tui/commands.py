"""Typed commands (`/set temperature 0.8`, `/show`, ...): the table of them, and parsing, so it is
pure and tested alone.

``COMMANDS`` is the one table: each command's arguments, help text and the app action it runs
(``GPTApp.action_<action>``, the method a key bound to that action runs too). ``/help`` is built
from it and from the app's key bindings, so commands, keys and help cannot drift apart. Here a
line of text becomes a ``Command`` or a ``CommandError`` whose message says what to type instead.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from model.generate.backend import Settings
from tui import settings as settings_text


@dataclass(frozen=True)
class Spec:
    usage: str  # its arguments, as /help shows them
    help: str  # what it does
    action: str  # the app runs action_<action>(*arguments); a key bound to the same action does the same


# the order is the order /help lists them in
COMMANDS: dict[str, Spec] = {
    "set": Spec("NAME VALUE", f"change a setting: {', '.join(settings_text.NAMES)} (top-k, seed and stop "
                              "take `off`; stop: comma-separated, a quoted one may hold a comma, `\\n` is a "
                              "newline)", "set"),
    "show": Spec("[model]", "show the settings, backend and checkpoint; model: layers, vocabulary, training, "
                 "where the weights came from", "show"),
    "clear": Spec("", "clear the output", "clear"),
    "regen": Spec("", "generate the last part again", "regen"),
    "continue": Spec("", "continue from where the text ends", "continue"),
    "copy": Spec("", "copy the selected (clicked) or last document", "copy_output"),
    "backend": Spec("torch|onnx", "switch the backend", "backend"),
    "model": Spec("PATH", "open another checkpoint, or an .onnx (on ONNX Runtime)", "model"),
    "tokens": Spec("", "the exact tokens and ids the model saw for the last text", "tokens"),
    "save": Spec("[PATH]", "save the session as JSONL (it is also saved after each generation)", "save"),
    "load": Spec("[PATH]", "reopen a saved session (default: the latest other one)", "load"),
    "export": Spec("[PATH]", "export the session as Markdown", "export"),
    "step": Spec("", "step mode on/off: one token at a time", "toggle_step"),
    "pick": Spec("N", "step mode: take candidate N (1 = most likely) instead of sampling", "pick"),
    "undo": Spec("", "step mode: take back the last token", "undo"),
    "ab": Spec("[PROMPT]", "the same prompt, seed and settings through torch and onnx, compared", "ab"),
    "help": Spec("", "list the commands and keys", "help"),
    "quit": Spec("", "quit, saving the session first (`/exit` and `/bye` too, as in ollama)", "quit"),
}
ALIASES = {"exit": "quit", "bye": "quit"}
# keys no binding of the app lists, (key, what, docs/app.md's longer text): the prompt box's own
# (tui.widgets.PromptArea) and Textual's command palette
FIXED_KEYS = (
    ("Enter", "send", "send the prompt (an empty prompt starts from the model's start-of-text token); in a "
                      '`"""` block, a new line until a line ends with `"""`'),
    ("Ctrl+J", "newline", "new line in the prompt (Shift+Enter too, where the terminal reports it)"),
    ("↑/↓", "earlier prompts", "on the prompt's first / last line: earlier prompts and commands, kept "
                               "across restarts in `~/.local/share/gpt-from-scratch/history.jsonl`"),
    ("Tab", "complete a /command", "in a `/command`: complete the command, a setting name after `/set`, a "
                                   "backend after `/backend`, a path after `/model`, `/load`, `/save`, "
                                   "`/export`; when it cannot add more, list what fits. Elsewhere move "
                                   "between prompt, output and controls (Shift+Tab back)"),
    ("Ctrl+D", "quit", "on an empty prompt: quit, saving the session first (as at a shell or in ollama)"),
    ("Ctrl+P", "palette", "the command palette: every command and key, searchable"),
)
# what a key bound to an action does, for docs/app.md's key table (else the binding's label)
KEY_DOCS = {
    "stop": "stop now; the text so far stays, marked `⏹ stopped`",
    "interrupt": "stop now, as in llama.cpp and ollama (idle: copies the prompt's selection, as usual)",
    "toggle_panel('controls')": "show or hide the controls panel (hidden at first below 100 columns)",
    "toggle_panel('next-token')": "show or hide the next-token panel",
    "toggle_panel('attention')": "show or hide the attention panel",
    "toggle_panel('ab')": "show or hide the A/B panel (`/ab` fills it)",
    "toggle_colours": "confidence colouring on/off",
    "toggle_step": "step mode on/off",
    "step": "step mode: take the next token",
    "undo": "step mode: take back the last token",
    "regen": "regenerate the last part (a new seed unless one is set)",
    "continue": "continue from where the text ends",
    "copy_output": "copy the selected document (click it; again to unselect), else the last one: sent "
                   "with OSC 52 and written to `~/.local/share/gpt-from-scratch/sessions/clipboard.txt`",
    "save": "save the session now (it is also saved after every generation and on quit)",
    "clear": "clear the output",
    "token_cursor(-1)": "move back over past tokens (colouring on): the next-token panel shows each "
                        "one's alternatives",
    "token_cursor(1)": "move forward over past tokens",
    "quit": "quit (stops a running generation and saves the session first)",
}
# how /help writes a key: "ctrl+r" -> "Ctrl+R", "alt+left" -> "Alt+←"
KEY_NAMES = {"escape": "Esc", "left": "←", "right": "→", "up": "↑", "down": "↓", "enter": "Enter"}


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
    name = ALIASES.get(name, name)
    if name not in COMMANDS:
        raise CommandError(f"unknown command /{name}; /help lists the commands")
    if name == "set":
        if len(args) == 1 and args[0].lower() == "stop":
            raise CommandError('usage: /set stop TEXT (several: comma-separated, "a, b" quoted), or '
                               "/set stop off")
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
    if name == "model" and not args:
        raise CommandError("usage: /model PATH, a checkpoint file (or the name of a shipped one)")
    if name in ("save", "export", "ab", "load", "model"):
        # a path or a prompt may hold spaces: keep the rest of the line as one argument
        rest = line.strip()[1 + len(words[0]):].strip()
        return Command(name, (rest,) if rest else ())
    if args:
        raise CommandError(f"/{name} takes no arguments")
    return Command(name)


# commands whose argument is a path, and the files Tab offers for it (folders always; None: any file)
PATH_ARGUMENTS: dict[str, tuple[str, ...] | None] = {
    "model": (".pt", ".onnx"), "load": (".jsonl",), "save": None, "export": None}
MAX_CANDIDATES = 200  # a folder of thousands of files: Tab lists the first, sorted


def candidates(line: str, backends: tuple[str, ...] = ("torch", "onnx")) -> list[str]:
    """What the last word of a command line may become, whole: a command name, a setting name after
    /set, a backend after /backend, a file or folder (with its trailing /) after /model, /load,
    /save and /export. Empty for text that is not a command being typed."""
    if not is_command(line) or "\n" in line:
        return []
    head, _, word = line[1:].partition(" ")
    if not _:
        head, word = "", head
    head = head.lower()
    if head in PATH_ARGUMENTS:
        return _paths(word, PATH_ARGUMENTS[head])
    if " " in word:  # past the argument Tab completes (a /set value)
        return []
    choices = {"": tuple(COMMANDS), "set": settings_text.NAMES, "backend": backends}.get(head, ())
    return [c for c in choices if c.startswith(word.lower())]


def complete(line: str, backends: tuple[str, ...] = ("torch", "onnx")) -> str | None:
    """Tab in the prompt: ``line`` with its last word completed as far as the ``candidates`` agree
    (a space after a whole command or setting name that takes an argument); None when Tab adds
    nothing, and the prompt box lists the candidates instead."""
    found = candidates(line, backends)
    if not found:
        return None
    head, space, word = line[1:].partition(" ")
    common = os.path.commonprefix(found)
    if not space:  # a command name
        done = "/" + common + (" " if len(found) == 1 and COMMANDS[common].usage else "")
    elif head.lower() in PATH_ARGUMENTS:  # a path: a folder ends in /, a file takes nothing after it
        done = f"/{head} {common}"
    else:
        done = f"/{head} {common}" + (" " if len(found) == 1 else "")
    return done if done != line else None


def _paths(word: str, suffixes: tuple[str, ...] | None) -> list[str]:
    """The files and folders whose path starts with ``word`` (~ expanded for the lookup, kept as typed);
    dot-files only when the name typed starts with a dot."""
    folder, stem = os.path.split(word)
    try:
        with os.scandir(os.path.expanduser(folder) or ".") as entries:
            found = []
            for entry in entries:
                hidden = entry.name.startswith(".") and not stem.startswith(".")
                if hidden or not entry.name.startswith(stem):
                    continue
                is_dir = entry.is_dir()
                if is_dir or suffixes is None or entry.name.endswith(suffixes):
                    found.append(os.path.join(folder, entry.name) + ("/" if is_dir else ""))
    except OSError:  # a folder that is not there or not readable: nothing to offer
        return []
    return sorted(found)[:MAX_CANDIDATES]


def key_name(key: str) -> str:
    return "+".join(KEY_NAMES.get(part, part.upper() if len(part) == 1 else part.capitalize())
                    for part in key.split("+"))


def _lower(label: str) -> str:
    """A binding's label inside a sentence: "Next token" -> "next token", "A/B" stays."""
    return label if label[:2].isupper() else label[:1].lower() + label[1:]


def command_table() -> str:
    """docs/app.md's command table, from COMMANDS (tests/test_commands.py checks the guide holds it)."""
    rows = ["| command | does |", "|---|---|"]
    rows += [f"| `{f'/{name} {spec.usage}'.rstrip()}` | {spec.help} |".replace("|onnx", "\\|onnx")
             for name, spec in COMMANDS.items()]
    rows.append("| `//text` | send a prompt that starts with `/` |")
    return "\n".join(rows)


def key_table(keys: Sequence[tuple[str, str, str]]) -> str:
    """docs/app.md's key table: the fixed keys, then the app's bindings ((key, action, label) as in
    help_text), described by KEY_DOCS."""
    rows = ["| key | does |", "|---|---|"] + [f"| {key} | {doc} |" for key, _, doc in FIXED_KEYS]
    rows += [f"| {key_name(key)} | {KEY_DOCS.get(action, _lower(label))} |" for key, action, label in keys]
    return "\n".join(rows)


def help_text(keys: Sequence[tuple[str, str, str]] = (),
              fixed: tuple[tuple[str, ...], ...] = FIXED_KEYS) -> str:
    """/help: every command (with the key for the same action), then every key. ``keys`` are the
    app's bindings as (key, action, description); ``fixed`` are (key, what) of keys no binding lists
    (the prompt box's own, and the palette's)."""
    key_for: dict[str, str] = {}
    for key, action, _ in keys:
        key_for.setdefault(action, key_name(key))
    lines = [f"/{name} {spec.usage}".rstrip().ljust(22) + spec.help
             + (f" ({key_for[spec.action]})" if spec.action in key_for else "")
             for name, spec in COMMANDS.items()]
    lines.append("//text".ljust(22) + "send a prompt that starts with /")
    listed = [*((key, what) for key, what, *_ in fixed),
              *((key_name(key), _lower(description)) for key, _, description in keys)]
    if listed:
        lines += ["", "keys: " + " · ".join(f"{key} {what}" for key, what in listed)]
    return "\n".join(lines)
