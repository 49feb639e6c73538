"""The command palette (Ctrl+P): the app's commands and keys, searchable, beside Textual's own.

Built from the same tables as /help (tui.commands.COMMANDS and the app's key bindings). Choosing a
command that needs arguments puts it in the prompt box to finish; the others run at once."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from textual.command import DiscoveryHit, Hit, Hits, Provider
from textual.content import Content

from tui import commands
from tui.widgets import PromptArea

Entry = tuple[str, str, Callable[[], object]]  # title, help, what choosing it does


class AppCommands(Provider):
    def entries(self) -> Iterator[Entry]:
        app = self.app
        for name, spec in commands.COMMANDS.items():
            title = f"/{name} {spec.usage}".rstrip()
            if spec.usage and not spec.usage.startswith("["):  # arguments needed: finish it in the box
                yield title, spec.help, lambda name=name: self.finish_in_prompt(f"/{name} ")
            else:
                yield title, spec.help, lambda action=spec.action: app.run_action(action)
        for binding in app.BINDINGS:
            key, action, description = binding.key, binding.action, binding.description  # type: ignore[union-attr]
            yield f"{commands.key_name(key)}  {description}", f"key: {description}", \
                lambda action=action: app.run_action(action)

    def finish_in_prompt(self, text: str) -> None:
        prompt = self.app.query_one(PromptArea)
        prompt.load_text(text)
        prompt.move_cursor(prompt.document.end)
        prompt.focus()

    async def discover(self) -> Hits:
        for title, help_text, run in self.entries():
            yield DiscoveryHit(Content(title), run, text=title, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, run in self.entries():
            score = matcher.match(title + " " + help_text)
            if score > 0:  # shown as plain Content: matcher.highlight would read "[PATH]" as markup
                yield Hit(score, Content(title), run, text=title, help=help_text)
