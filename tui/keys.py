"""The app's key bindings: one table, from which the footer, /help, the palette and docs/app.md's key
table (tui.commands.key_table, with what each key does in tui.commands.KEY_DOCS) are made."""

from __future__ import annotations

from textual.binding import Binding

# the footer shows the F-keys, Ctrl+C and Ctrl+Q as far as they fit; every key is in /help and
# the palette (Ctrl+P)
BINDINGS: list[Binding] = [
    Binding("escape", "stop", "Stop", show=False),
    # priority, so it reaches a generation from anywhere; idle, it falls through (SkipAction)
    Binding("ctrl+c", "interrupt", "Stop", priority=True),
    Binding("f2", "toggle_panel('controls')", "Controls", priority=True),
    Binding("f3", "toggle_panel('next-token')", "Next token", priority=True),
    Binding("f4", "toggle_panel('attention')", "Attention", priority=True),
    Binding("f5", "toggle_panel('ab')", "A/B", priority=True),
    # priority: the prompt box (a TextArea) binds F6 and F7 to selecting
    Binding("f6", "toggle_colours", "Confidence", priority=True),
    Binding("f7", "toggle_step", "Step mode", priority=True),
    Binding("f8", "step", "Step", priority=True),
    Binding("f9", "undo", "Undo step", priority=True),
    Binding("ctrl+r", "regen", "Regenerate", show=False, priority=True),
    Binding("ctrl+n", "continue", "Continue", show=False, priority=True),
    Binding("ctrl+o", "copy_output", "Copy", show=False, priority=True),
    Binding("ctrl+s", "save", "Save", show=False, priority=True),
    Binding("ctrl+l", "clear", "Clear", show=False, priority=True),
    Binding("alt+left", "token_cursor(-1)", "Previous token", show=False, priority=True),
    Binding("alt+right", "token_cursor(1)", "Next token", show=False, priority=True),
    Binding("ctrl+q", "quit", "Quit", priority=True),
]
