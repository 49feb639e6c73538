"""What a training run is asked to do: ``TrainConfig``, a preset's settings with the flags on top,
and the rule for what a resumed run may change.

Kept free of torch so that ``gpt-train --help`` answers at once; model.train.loop does the work.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from model.config import PRESET_TRAINING, GPTConfig, preset

if TYPE_CHECKING:
    from model.device import Device, DType

MAX_LEARNING_RATE = 1.0  # AdamW moves every weight by about lr per step: above 1 nothing is learned
MAX_SEED = 2**32 - 1
MAX_DURATION = 366 * 24 * 3600.0
Optimizer = Literal["adamw", "muon"]
OPTIMIZERS: tuple[Optimizer, ...] = ("adamw", "muon")


class SettingsError(ValueError):
    """The run cannot start as asked (bad value, run folder in the way, changed setting on resume);
    the message names the flag and the fix. gpt-train exits with 2, as for any usage error."""


class StoredSettingsError(ValueError):
    """A checkpoint's stored settings are not ones a run could have: the file is refused (exit 1)."""


@dataclass(frozen=True)
class TrainConfig:
    """Every setting of a run; stored in its checkpoint, so ``--resume`` continues the same run.
    The defaults are nanoGPT's train_shakespeare_char (model.config.PRESET_TRAINING has the others)."""

    model: GPTConfig = field(default_factory=GPTConfig)
    data: str = "shakespeare"  # or the path of a UTF-8 text file or of a gpt-prepare folder
    out_dir: str = "out"
    batch_size: int = 64
    grad_accum: int = 1  # micro-batches per optimizer step
    max_iters: int = 5000
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int | None = None  # None: decay until max_iters
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.99
    grad_clip: float = 1.0  # 0 disables clipping
    # adamw everywhere, or muon for the blocks' weight matrices and AdamW for the rest
    # (model.train.optimizers)
    optimizer: Optimizer = "adamw"
    # seconds of wall clock for the whole run: a fresh run measures its steps and fixes max_iters
    # from them (model.train.time_budget); the measurements are kept in budget_plan, and from there the
    # run is an ordinary one (a resumed run keeps its max_iters)
    time_budget: float | None = None
    budget_plan: dict | None = None
    eval_interval: int = 250
    eval_iters: int = 200
    log_interval: int = 10
    seed: int = 1337
    device: Device = "auto"
    dtype: DType = "auto"
    compile: bool = False
    fsdp: bool = False  # shard parameters, gradients and optimizer state over ranks (FSDP2), not DDP
    # start from this checkpoint's weights and tokenizer (fresh optimizer); model comes from
    # model.train.init_from.init_config, so only block_size (cropped), dropout and attention may differ
    init_from: str | None = None
    # time both attention paths at the start (model.train.attention_choice) and train with the faster;
    # the choice replaces model.attention, so checkpoints hold a concrete path
    attention_auto: bool = False
    resume: bool = False  # continue OUT/ckpt.pt
    overwrite: bool = False  # start afresh in an OUT that holds a run, replacing its files
    progress: bool = True

    def __post_init__(self) -> None:
        _check_types(self)
        for name, most in LIMITS.items():
            value = getattr(self, name)
            if value is not None and not (name == "warmup_iters" or value >= 1):
                raise SettingsError(f"{flag(name)} must be at least 1, got {value}")
            if value is not None and value > most:
                raise SettingsError(f"{flag(name)} must be at most {most:,}, got {value:,}")
        _check_range("learning_rate", self.learning_rate, 0, MAX_LEARNING_RATE, low_open=True)
        _check_range("min_lr", self.min_lr, 0, self.learning_rate)
        _check_range("weight_decay", self.weight_decay, 0, 1)
        _check_range("beta1", self.beta1, 0, 1, high_open=True)
        _check_range("beta2", self.beta2, 0, 1, high_open=True)  # beta = 1: Adam divides by zero
        _check_range("grad_clip", self.grad_clip, 0, math.inf, high_open=True)
        if self.warmup_iters < 0:
            raise SettingsError(f"--warmup-iters must be >= 0, got {self.warmup_iters}")
        if not 0 <= self.seed <= MAX_SEED:
            raise SettingsError(f"--seed must be in [0, {MAX_SEED}], got {self.seed}")
        if self.time_budget is not None and not (
                isinstance(self.time_budget, (int, float)) and 0 < self.time_budget <= MAX_DURATION):
            raise SettingsError(f"--time-budget must be a duration up to a year, got {self.time_budget!r}")
        if self.fsdp and self.optimizer == "muon":
            raise SettingsError("--optimizer muon needs whole weight matrices, and --fsdp shards them; "
                                "drop one of them")
        if self.fsdp and self.compile:
            raise SettingsError("--fsdp with --compile is not supported yet; drop one of them")
        if self.resume and self.overwrite:
            raise SettingsError("--resume continues a run and --overwrite replaces it; pass one of them")

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters or self.max_iters

    def replace(self, **changes: object) -> TrainConfig:
        return dataclasses.replace(self, **changes)


# Upper bounds on counts: beyond them a run is a mistake (or a crafted checkpoint), not a plan; a
# batch of 10^9 windows asked for gigabytes before its first step.
LIMITS = {"batch_size": 2**16, "grad_accum": 2**16, "max_iters": 10**9, "warmup_iters": 10**9,
          "lr_decay_iters": 10**9, "eval_interval": 10**9, "eval_iters": 10**6, "log_interval": 10**9}
_CHOICES = {"device": ("auto", "cpu", "cuda", "mps"), "dtype": ("auto", "fp32", "bf16", "fp16"),
            "optimizer": OPTIMIZERS}
_PLAN = {"budget_s": float, "startup_s": float, "step_s": float, "eval_s": float, "max_iters": int}


def _check_types(cfg: TrainConfig) -> None:
    """Each field holds its declared type: a stored config (a checkpoint's, read back on resume)
    gets the same checks as the command line, before any value is used."""
    for f in dataclasses.fields(cfg):
        value, kind = getattr(cfg, f.name), str(f.type)
        if f.name == "model":
            ok = isinstance(value, GPTConfig)
        elif f.name in _CHOICES:
            if value not in _CHOICES[f.name]:
                raise SettingsError(f"{flag(f.name)} must be one of {', '.join(_CHOICES[f.name])}, got "
                                    f"{value!r:.40}")
            ok = True
        elif f.name == "budget_plan":
            ok = value is None or (isinstance(value, dict) and set(value) == set(_PLAN) and all(
                _is_number(value[k], t is int) and value[k] >= 0 for k, t in _PLAN.items()))
        elif value is None:
            ok = "None" in kind
        elif kind.startswith("int"):
            ok = _is_number(value, integer=True)
        elif kind.startswith("float"):
            ok = _is_number(value, integer=False)
        elif kind.startswith("bool"):
            ok = isinstance(value, bool)
        else:  # str
            ok = isinstance(value, str) and "\0" not in value
        if not ok:
            raise SettingsError(f"{flag(f.name)}: {value!r:.60} is not a valid value for it")


def _is_number(value: object, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    # a float may be inf or NaN here: the range checks name the field's range
    return isinstance(value, int) if integer else isinstance(value, (int, float))


TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name != "model")
MODEL_FIELDS = tuple(f.name for f in dataclasses.fields(GPTConfig))
# Where and how a run is started, not what it computes: never compared on resume.
RUN_ACTIONS = ("out_dir", "resume", "overwrite")
# What a resumed run may change: none alters a step's maths (max_iters moves the end, with the
# learning-rate schedule pinned; evaluation draws from its own generator).
MAY_CHANGE_ON_RESUME = ("max_iters", "eval_interval", "log_interval", "progress")
_FLAGS = {"grad_accum": "gradient-accumulation-steps", "out_dir": "out"}


def flag(name: str) -> str:
    """The command-line flag of a TrainConfig or GPTConfig field."""
    return "--" + _FLAGS.get(name, name.replace("_", "-"))


def _check_range(name: str, value: float, low: float, high: float,
                 low_open: bool = False, high_open: bool = False) -> None:
    ok = math.isfinite(value) and (low < value if low_open else low <= value) and (
        value < high if high_open else value <= high)
    if not ok:
        shown = f"{'(' if low_open else '['}{low:g}, {'inf' if math.isinf(high) else f'{high:g}'}" \
                f"{')' if high_open else ']'}"
        raise SettingsError(f"{flag(name)} must be a number in {shown}, got {value:g}")


def resume_command(cfg: TrainConfig) -> str:
    """The command that continues ``cfg``'s run: a text file or folder is named again, as a resumed
    run never reads a data path out of its checkpoint (``resumed``)."""
    data = "" if cfg.data == "shakespeare" else f" --data {cfg.data}"
    return f"gpt-train --resume --out {cfg.out_dir}{data}"


def check_data(data: str) -> None:
    """A --data that names no readable file is a usage error, said before any work starts."""
    if data == "shakespeare":
        return
    path = Path(data)
    if path.is_dir():
        if (path / "manifest.json").is_file():
            return  # a gpt-prepare folder: model.data.corpus checks it in full
        raise SettingsError(f"--data {data} is a directory without manifest.json; prepare it with "
                            f"gpt-prepare SRC --out {data}, or pass a UTF-8 text file or shakespeare")
    if not path.is_file():
        raise SettingsError(f"--data {data} does not exist; pass --data shakespeare or a text file")


def fresh(preset_name: str, given: dict[str, object]) -> TrainConfig:
    """A new run: the preset's model and training settings, with the given fields on top."""
    model = preset(preset_name).replace(**{k: v for k, v in given.items() if k in MODEL_FIELDS})
    training = PRESET_TRAINING.get(preset_name, {}) | {k: v for k, v in given.items() if k in TRAIN_FIELDS}
    if "time_budget" in given and "lr_decay_iters" not in given:
        training["lr_decay_iters"] = None  # a budget's schedule decays over its steps, not the preset's
    return TrainConfig(model=model, **training)


def preset_values(preset_name: str) -> dict[str, object]:
    """Every field a preset sets (model shape and training), as given fields."""
    model = {k: v for k, v in preset(preset_name).to_dict().items() if k != "vocab_size"}
    return model | PRESET_TRAINING.get(preset_name, {})


def resumed(stored: dict, model: GPTConfig, given: dict[str, object], out_dir: str, step: int,
            where: Path | str, named: dict[str, str] | None = None) -> tuple[TrainConfig, list[str]]:
    """The config of a resumed run -> (config, one line per allowed change).

    ``stored`` is the checkpoint's TrainConfig as a dict, ``model`` its model's config, ``step``
    the step it holds. ``given`` holds only the fields the caller chose (the flags on the command
    line); everything else comes from the checkpoint. A given field that differs is applied if it
    is in MAY_CHANGE_ON_RESUME, else refused with the stored value named. ``named`` says how the
    user asked for a field when it was not its own flag (``--preset cpu``)."""
    unknown = set(stored) - set(TRAIN_FIELDS) - {"model"}
    if unknown:
        raise StoredSettingsError(f"{where} has unknown training settings {sorted(unknown)[:5]!r:.200}; "
                                  "it was written by a newer gpt-from-scratch")
    try:  # how the stored run was started (--overwrite, say) is no part of it
        kept = {k: v for k, v in stored.items() if k not in ("model", *RUN_ACTIONS)}
        base = TrainConfig(model=model, **kept)
    except SettingsError as e:
        raise StoredSettingsError(f"{where} holds training settings no run could have ({e}); it cannot "
                                  "be resumed") from None
    if base.data != "shakespeare" and "data" not in given:
        raise SettingsError(f"{where} trained on {base.data}: a resumed run reads data only from a path "
                            f"given on the command line, never from one stored in a file; continue with "
                            f"{resume_command(base.replace(out_dir=out_dir))}")
    changes: dict[str, object] = {}
    notes: list[str] = []
    for name, value in given.items():
        if name in RUN_ACTIONS:
            continue
        if name in MODEL_FIELDS:
            current = getattr(model, name)
        elif name in TRAIN_FIELDS:
            current = getattr(base, name)
        else:
            raise SettingsError(f"unknown setting {name!r}")
        if name == "lr_decay_iters":  # None means "until max_iters": compare the schedules
            value, current = value or base.max_iters, base.decay_iters
        if value == current:
            continue
        if name == "data" and _same_file(value, current):  # ./t.txt for t.txt: the path given is read
            changes[name] = value
            continue
        asked = (named or {}).get(name, _as_flag(name, value))
        if name not in MAY_CHANGE_ON_RESUME:
            allowed = ", ".join(flag(n) for n in MAY_CHANGE_ON_RESUME)
            raise SettingsError(
                f"{asked}: this run's {flag(name)[2:]} is {_shown(current, name)} (stored in {where}); a "
                f"resumed run keeps its settings (only {allowed} may change): drop the flag, or "
                "start a new run in another --out")
        changes[name] = value
        notes.append(f"resuming with {asked} (was {_shown(current, name)})")
    new_max = changes.get("max_iters")
    if new_max is not None:
        if new_max <= step:
            raise SettingsError(f"--max-iters {new_max}: {where} is already at step {step}; pass a "
                                "larger --max-iters to extend the run")
        # the learning rate keeps the run's schedule: the steps before the old end stay exactly
        # as an uninterrupted run would take them
        changes["lr_decay_iters"] = base.decay_iters
        notes.append(f"the learning rate keeps this run's schedule: cosine to step {base.decay_iters}, "
                     f"then {base.min_lr:g}")
    return base.replace(out_dir=out_dir, resume=True, **changes), notes


_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")


def parse_duration(text: str) -> float:
    """``2h``, ``150m``, ``1h30m``, ``90s`` or plain seconds -> seconds; a ValueError says the form."""
    cleaned = text.strip().lower()
    match = _DURATION.fullmatch(cleaned)
    if cleaned and match and any(match.groups()):
        seconds = sum(float(v) * _UNITS[u] for v, u in zip(match.groups(), "hms", strict=True) if v)
    else:
        try:
            seconds = float(cleaned)
        except ValueError:
            seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_DURATION):
        raise ValueError(f"{text!r} is not a duration up to a year; write it as 2h, 150m, 1h30m, 90s "
                         "or seconds")
    return seconds


def format_duration(seconds: float) -> str:
    """Seconds as the shortest of ``2h30m``, ``12m5s``, ``40s`` (``0.5s`` under a second)."""
    if seconds < 0.5:
        return f"{seconds:.2g}s"
    if seconds < 1:
        return f"{seconds:.1f}s"
    s = round(seconds)
    h, m, s = s // 3600, s % 3600 // 60, s % 60
    return "".join(f"{v}{u}" for v, u in ((h, "h"), (m, "m"), (s, "s")) if v) or "0s"


def _same_file(a: object, b: object) -> bool:
    """Two spellings of one existing file or folder (names are compared, never contents)."""
    if not (isinstance(a, str) and isinstance(b, str)) or "shakespeare" in (a, b):
        return False
    try:
        return Path(a).exists() and Path(a).resolve() == Path(b).resolve()
    except (OSError, ValueError):
        return False


def _as_flag(name: str, value: object) -> str:
    if isinstance(value, bool):
        return flag(name) if value else f"--no-{flag(name)[2:]}"
    return f"{flag(name)} {_shown(value, name)}"


def _shown(value: object, name: str = "") -> str:
    if name == "time_budget" and isinstance(value, (int, float)):
        return format_duration(value)
    return f"{value:g}" if isinstance(value, float) else str(value)
