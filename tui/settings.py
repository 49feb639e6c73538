"""Sampling settings as people type them: one parser for `/set`, the controls panel and batch items.

``model.generate.backend.Settings`` validates values; this module turns names and text into them and back.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import secrets
from collections.abc import Mapping

from model.generate.backend import Settings


def fresh_seed() -> int:
    """A seed for a run the user did not seed; recorded with the run so it can be repeated (31
    bits: short to read back and type)."""
    return secrets.randbelow(2**31)

# what a user may type -> the Settings field (the CLI flag spelling and the field name both work)
ALIASES = {
    "temperature": "temperature", "temp": "temperature", "t": "temperature",
    "top-k": "top_k", "top_k": "top_k", "topk": "top_k", "k": "top_k",
    "top-p": "top_p", "top_p": "top_p", "topp": "top_p", "p": "top_p",
    "max-new-tokens": "max_new_tokens", "max_new_tokens": "max_new_tokens", "max-tokens": "max_new_tokens",
    "max_tokens": "max_new_tokens", "max": "max_new_tokens", "n": "max_new_tokens",
    "seed": "seed",
    "stop": "stop",
    "unknown": "unknown",
    "min-p": "min_p", "min_p": "min_p", "minp": "min_p",
    "repetition-penalty": "repetition_penalty", "repetition_penalty": "repetition_penalty",
    "repeat-penalty": "repetition_penalty", "rep": "repetition_penalty",
    "repetition-window": "repetition_window", "repetition_window": "repetition_window",
    "repeat-last-n": "repetition_window",
    "frequency-penalty": "frequency_penalty", "frequency_penalty": "frequency_penalty",
    "frequency": "frequency_penalty", "freq": "frequency_penalty",
    "presence-penalty": "presence_penalty", "presence_penalty": "presence_penalty",
    "presence": "presence_penalty",
}
FIELDS = ("temperature", "top_k", "top_p", "max_new_tokens", "seed", "stop", "unknown", "min_p",
          "repetition_penalty", "repetition_window", "frequency_penalty", "presence_penalty")
NAMES = tuple(f.replace("_", "-") for f in FIELDS)  # as /set and Tab completion spell them
_FLOATS = ("temperature", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty")
OFF = ("none", "off", "random", "")  # for top_k and seed: no limit / fresh randomness
UNKNOWN = {"reject": "reject", "replace": "replace"}
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def field_name(name: str) -> str:
    """The Settings field a typed name means; ValueError listing the names otherwise."""
    try:
        return ALIASES[name.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown setting {name!r}; use one of {', '.join(NAMES)}"
        ) from None


def parse_value(field: str, raw: str) -> object:
    """Text -> the typed value of a Settings field (not yet range-checked: Settings does that)."""
    text = raw.strip()
    try:
        if field in _FLOATS:
            return float(text)
        if field in ("top_k", "seed"):
            return None if text.lower() in OFF else int(text)
        if field in ("max_new_tokens", "repetition_window"):
            return int(text)
    except ValueError:
        kind = "a number" if field in _FLOATS else "a whole number"
        extra = " or 'off'" if field in ("top_k", "seed") else ""
        raise ValueError(f"{field.replace('_', '-')} must be {kind}{extra}, not {raw!r}") from None
    if field == "stop":
        return split_stops(text) if text.lower() not in OFF else ()
    if field == "unknown":
        try:
            return UNKNOWN[text.lower()]
        except KeyError:
            raise ValueError(f"unknown must be 'reject' or 'replace', not {raw!r}") from None
    raise ValueError(f"unknown setting {field!r}")


def split_stops(text: str) -> tuple[str, ...]:
    """Comma-separated stop strings; one holding a comma is quoted: `"a, b",\\n` -> ('a, b', '\\n')."""
    parts = next(csv.reader([text]), [])  # spaces are kept: " ROMEO" is a stop string of its own
    return tuple(unescape(p) for p in parts if p)


def unescape(text: str) -> str:
    """\\n, \\t and \\\\ to characters: a stop string often holds a newline, which one
    line of a command or a shell argument cannot."""
    return re.sub(r"\\([nt\\])", lambda m: _ESCAPES[m.group(1)], text)


def with_text(settings: Settings, name: str, raw: str) -> Settings:
    """``settings`` with one value changed from text; ValueError with a message for people."""
    field = field_name(name)
    return replace(settings, {field: parse_value(field, raw)})


def replace(settings: Settings, changes: Mapping[str, object]) -> Settings:
    """``settings`` with typed changes (JSON values: numbers, null, a string or list for stop)."""
    changes = dict(changes)
    if isinstance(changes.get("stop"), (list, str)):  # anything else is left for Settings to refuse
        stop = changes["stop"]
        changes["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
    if isinstance(changes.get("unknown"), str):
        changes["unknown"] = UNKNOWN.get(changes["unknown"], changes["unknown"])
    for key in ("top_k", "max_new_tokens", "seed", "repetition_window"):
        value = changes.get(key)
        if isinstance(value, str) and value.strip().lower() in OFF:
            changes[key] = None
    for key, value in changes.items():  # a huge int cannot even be compared with a float
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _HUGE:
            raise ValueError(f"{key.replace('_', '-')} is out of range (a {value.bit_length()}-bit number)")
    try:
        return dataclasses.replace(settings, **changes)
    except (TypeError, OverflowError) as e:  # a wrong type that Settings' comparisons choke on
        raise ValueError(f"bad setting value: {e}") from None


# far above every bound a setting has (seed < 2^63); past it a number is named by its size, as its
# repr in Settings' message could run to thousands of digits (or fail: str() stops at 4300)
_HUGE = 10**30


def to_dict(settings: Settings) -> dict:
    """Settings as JSON (seed included; stop as a list)."""
    d = dataclasses.asdict(settings)
    d["stop"] = list(settings.stop)
    return d


def show(settings: Settings, field: str) -> str:
    """One setting's value for people: `off`, `random`, the stop strings quoted."""
    value = getattr(settings, field)
    if field in ("top_k", "seed") and value is None:
        return "off" if field == "top_k" else "random"
    if field == "stop":
        return ", ".join(repr(s) for s in value) or "none"
    if field == "min_p" and not value or field == "repetition_penalty" and value == 1.0 \
            or field in ("frequency_penalty", "presence_penalty") and not value:
        return f"{value} (off)"
    return str(value)


def describe(settings: Settings) -> str:
    """One line per setting, as `/show` prints them."""
    return "\n".join(f"{f.replace('_', '-'):>18}  {show(settings, f)}" for f in FIELDS)
