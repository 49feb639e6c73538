"""Saved default settings for gpt-tui: a TOML file in the user's config folder whose keys are the
command's flags (`temperature = 0.7`, `top-k = 40`, `stop = ["\\n\\n"]`, `backend = "onnx"`). Flags
given on the command line override it; `gpt-tui --help` shows the defaults it sets."""

from __future__ import annotations

import sys
from pathlib import Path

from model.paths import config_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, before it joined the standard library
    import tomli as tomllib

# the flags a config file may set (the rest name files or modes of one run), by their option names
SETTABLE = ("ckpt", "backend", "onnx", "provider", "device", "temperature", "top_k", "top_p", "min_p",
            "repetition_penalty", "repetition_window", "frequency_penalty", "presence_penalty",
            "max_new_tokens", "seed", "stop", "unknown", "keep_stop", "session_dir", "threads")
PARAMS = {"backend": "backend_name"}  # option name -> the command's parameter, where they differ


class ConfigError(ValueError):
    """A config file that cannot be used; the message names the file and what to fix."""


def config_path() -> Path:
    """$XDG_CONFIG_HOME/gpt-from-scratch/config.toml (~/.config by default)."""
    return config_dir() / "config.toml"


def load_defaults(path: Path | None = None) -> dict[str, object]:
    """The file's values as click's default_map (parameter name -> value); {} without a file."""
    path = path or config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}; fix its permissions or remove it") from None
    try:
        data = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid TOML ({e}); fix or remove it") from None
    defaults: dict[str, object] = {}
    for key, value in data.items():
        name = key.replace("-", "_")
        if name not in SETTABLE:
            allowed = ", ".join(s.replace("_", "-") for s in SETTABLE)
            raise ConfigError(f"{path}: unknown key {key!r}; allowed: {allowed}")
        if name == "stop" and isinstance(value, str):
            value = [value]  # one stop string, as `--stop` once
        defaults[PARAMS.get(name, name)] = value
    return defaults
