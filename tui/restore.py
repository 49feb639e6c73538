"""The session's records of the app's runs: kept up to date as texts are generated or stepped, and
read back (/load, --session) into documents and runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from model.generate.backend import BackendInfo, Settings
from tui import settings as settings_text
from tui.output import OutputView
from tui.session import Session, SessionError, documents, record
from tui.stats import Timing
from tui.transcript import Run


class Recorder:
    """Writes each run into the session (a stepped text's record is replaced as it grows) and saves
    the session after each; opens a saved one. ``notify(message, severity)`` tells the user."""

    def __init__(self, session: Session, notify: Callable[..., None]):
        self.session, self.notify = session, notify
        self._last: Run | None = None  # the run whose record is the session's last

    def record(self, run: Run, fixed_seed: bool) -> None:
        settings = run.generation.settings if run.generation is not None else run.settings
        rec = record(run.context, run.text, run.stop_reason, settings, run.info, run.timing)
        rec |= {"document": run.document.number, "run": run.document.runs.index(run),
                "fixed_seed": fixed_seed}
        self.session.put(rec, replace_last=run.generation is None and self._last is run)
        self._last = run
        if (failed := self.session.autosave()) is not None:  # after each generation and each step
            self.notify(f"autosave failed: {failed}", "warning")

    def open(self, path: str | None) -> list[dict] | None:
        """The records of the session at ``path`` (default: the latest other one), which becomes
        this one (this one is saved first); None, with a notice, when there is none to read."""
        target = Path(path).expanduser() if path else self.session.latest_other()
        if target is None:
            self.notify(f"no other session in {self.session.folder}; /load PATH", "warning")
            return None
        self.session.autosave()
        try:
            records = self.session.open(target)
        except SessionError as e:
            self.notify(str(e), "error")
            return None
        self._last = None
        self.notify(f"loaded {len(records)} generation(s) from {target}")
        return records


def restore_documents(output: OutputView, records: list[dict], settings: Settings,
                      info: BackendInfo) -> tuple[Settings, str | None]:
    """Add the documents of ``records`` to ``output``; the settings in force at the last record (its
    seed only if it was set, not drawn) and its backend. ``settings``: those of a record that
    cannot be read, and the result when there is none."""
    last_backend = None
    for prompt, parts in documents(records):
        document = output.add_document(prompt)
        for rec in parts:
            run_settings = _settings(rec, settings)
            timing = Timing(lambda: 0.0)
            timing.tokens = rec.get("tokens") or 0
            timing.finish()
            document.runs.append(Run(rec["prompt"], run_settings, info, timing, None, document,
                                     text=rec.get("completion") or "", stop_reason=rec.get("stop_reason"),
                                     error=rec.get("error"), done=True))
            fixed = rec.get("fixed_seed")
            settings = settings_text.replace(run_settings, {"seed": rec.get("seed") if fixed else None})
            last_backend = rec.get("backend")
        output.show(document)
    return settings, last_backend


def _settings(rec: dict, fallback: Settings) -> Settings:
    saved = rec.get("settings")
    try:
        saved = saved if isinstance(saved, dict) else {}
        changes = {k: v for k, v in saved.items() if k in settings_text.FIELDS}
        return settings_text.replace(fallback, changes | {"seed": rec.get("seed")})
    except (ValueError, TypeError):
        return fallback
