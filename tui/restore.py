"""A saved session back on screen: its records (tui.session) become documents and runs again."""

from __future__ import annotations

from model.backend import BackendInfo, Settings
from tui import settings as settings_text
from tui.output import OutputView
from tui.session import documents
from tui.stats import Timing
from tui.transcript import Run


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
