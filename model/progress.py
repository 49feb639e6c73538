"""A rich progress bar for training: step, loss, tokens/s, ETA; plain lines when disabled."""

from __future__ import annotations

from collections.abc import Callable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    def __init__(self, total: int, done: int, enabled: bool = True, log: Callable[[str], None] = print):
        self.enabled = enabled
        self.log = log
        self.progress = Progress(
            TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tok_s]} tok/s"),
            TimeRemainingColumn(), console=Console(stderr=True), disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=done, loss="-", tok_s="-")

    def __enter__(self) -> TrainProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def update(self, step: int, loss: float, tok_s: float) -> None:
        self.progress.update(self.task, completed=step, loss=f"{loss:.4f}", tok_s=f"{tok_s:,.0f}")

    def note(self, message: str) -> None:
        """A line above the bar (or a plain log line without one)."""
        if self.enabled:
            self.progress.console.print(message, markup=False, highlight=False)
        else:
            self.log(message)
