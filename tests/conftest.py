"""Shared fixtures: tiny models and tokenizers built in the test, the shared Tiny Shakespeare copy."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from model import checkpoint, measured
from model.config import GPTConfig
from model.gpt import GPT
from model.paths import RANKS_FILE
from model.tokenizer import BPETokenizer, CharTokenizer

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# CI and this machine have no network: read Tiny Shakespeare from ../shared/data when it is there.
if "GPT_DATA_DIR" not in os.environ and (SHARED_DATA / "tinyshakespeare.txt").is_file():
    os.environ["GPT_DATA_DIR"] = str(SHARED_DATA)
elif os.environ.get("GPT_DATA_DIR"):
    # README's relative ../shared/data, resolved once from the repository root before any child
    # process or notebook kernel starts in another folder
    os.environ["GPT_DATA_DIR"] = str(Path(os.environ["GPT_DATA_DIR"]).resolve())

# Tests never write into the user's cache: texts that training prepares into token shards on first
# use (model.data.corpus.open_corpus) go to a temp folder of this session. Nor into tiktoken's, a
# folder of the machine's temp dir that GPT-2's ranks are also looked for in (model.gpt2_ranks).
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="gpt-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)
os.environ["TIKTOKEN_CACHE_DIR"] = str(Path(os.environ["XDG_CACHE_HOME"]) / "tiktoken")

# The app's --precision auto times fp32 against bf16 weights at load; on a native-bf16 CPU noise
# could pick either for a tiny model, and the tests compare tokens with fp32 references. The tests
# of the choice itself pass the precision they test.
os.environ["GPT_TUI_PRECISION"] = "fp32"

# The tests' models are 16 wide: a second thread gains nothing, and on a busy machine the threads
# of one matmul wait on each other (the fast tier ran twice as long with two threads under load).
torch.set_num_threads(1)
# and so do the commands the tests run, in this process or a child (model.threads follows it)
os.environ["OMP_NUM_THREADS"] = "1"

# A small text with every printable ASCII character the tests type, so prompts encode.
TEXT = "".join(chr(c) for c in range(32, 127)) + "\n" + (
    "First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
    "All:\nSpeak, speak.\n\nROMEO:\nBut, soft! what light through yonder window breaks?\n"
) * 4


@pytest.fixture(scope="session")
def char_tok() -> CharTokenizer:
    return CharTokenizer.from_text(TEXT)


@pytest.fixture(scope="session")
def tiny_config(char_tok) -> GPTConfig:
    return GPTConfig(vocab_size=char_tok.vocab_size, block_size=32, n_layer=2, n_head=2, n_embd=16,
                     dropout=0.0)


@pytest.fixture
def tiny_model(tiny_config) -> GPT:
    torch.manual_seed(0)
    return GPT(tiny_config).eval()


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, tiny_config, char_tok) -> Path:
    """A slim checkpoint of a random-weight 2-layer, 16-wide GPT (block 32)."""
    torch.manual_seed(0)
    model = GPT(tiny_config)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    checkpoint.save(checkpoint.payload(model, char_tok, {"steps": 0}), path)
    return path


@pytest.fixture(scope="session")
def shakespeare_available() -> bool:
    if not (Path(os.environ.get("GPT_DATA_DIR", ".")) / "tinyshakespeare.txt").is_file():
        pytest.skip("Tiny Shakespeare not found; set GPT_DATA_DIR")
    return True


@pytest.fixture(scope="session")
def gpt2_ranks() -> Path:
    """GPT-2's real ranks file: $GPT_BPE_RANKS, else gpt2.tiktoken in $GPT_DATA_DIR (../shared/data
    here and in CI)."""
    path = Path(os.environ.get("GPT_BPE_RANKS") or Path(os.environ.get("GPT_DATA_DIR", ".")) / RANKS_FILE)
    if not path.is_file():
        pytest.skip("GPT-2's ranks (gpt2.tiktoken) not found; set GPT_DATA_DIR to a folder holding them")
    return path


@pytest.fixture(scope="session")
def gpt2_bpe(gpt2_ranks) -> BPETokenizer:
    """GPT-2's own tokenizer, on the real ranks."""
    return BPETokenizer(gpt2_ranks)


def tiny_bpe(*merged: bytes) -> BPETokenizer:
    """A byte-level BPE built in the test: the 256 bytes, then ``merged`` tokens in rank order."""
    tokens = [bytes([b]) for b in range(256)] + list(merged)
    return BPETokenizer.from_ranks({t: i for i, t in enumerate(tokens)})


@pytest.fixture(autouse=True)
def user_folders(tmp_path_factory, monkeypatch):
    """Every test gets its own data and config folders: the app's history, autosaved sessions and
    config file never touch the user's."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    # the timings kept per machine too (not the whole cache folder: the tokenized corpus stays shared)
    monkeypatch.setattr(measured, "path", lambda: home / "measured.json")
    return home


@pytest.fixture
def text_file(tmp_path) -> Path:
    """A small text to train on."""
    path = tmp_path / "tiny.txt"
    path.write_text(TEXT * 3)
    return path


def tiny_run(text_file: Path, out: Path, **changes):
    """A TrainConfig for a 2-layer, 16-wide run of 20 steps on ``text_file``, with ``changes``."""
    from model.train.config import TrainConfig

    model = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.1)
    base = dict(model=model, data=str(text_file), out_dir=str(out), batch_size=4, max_iters=20,
                eval_interval=5, eval_iters=2, log_interval=1, warmup_iters=3, device="cpu",
                dtype="fp32", progress=False)
    return TrainConfig(**(base | changes))


# --- gpt-train as a command: tiny runs, their checkpoints, two ranks under torchrun ------------------

# the flags of a 2-layer, 16-wide run of 4 steps on the CPU
TINY = ["--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--batch-size", "3",
        "--max-iters", "4", "--eval-interval", "2", "--eval-iters", "1", "--log-interval", "1",
        "--warmup-iters", "2", "--learning-rate", "5e-3", "--seed", "7", "--device", "cpu", "--dtype", "fp32",
        "--no-progress"]


def stored(out) -> dict:
    """The checkpoint a run wrote into ``out``."""
    return torch.load(out / "ckpt.pt", weights_only=True)


# two ranks of a 2-layer, 16-wide GPT without dropout (each rank draws its own masks: one process
# could not match them)
STEPS, BATCH, ACCUM, BLOCK = 6, 4, 2, 16
DIST_FLAGS = ["--n-layer", "2", "--n-head", "2", "--n-embd", "16", "--block-size", str(BLOCK), "--dropout",
              "0", "--batch-size", str(BATCH), "--gradient-accumulation-steps", str(ACCUM), "--warmup-iters",
              "2", "--learning-rate", "1e-2", "--eval-interval", "3", "--eval-iters", "2", "--log-interval",
              "1", "--device", "cpu", "--dtype", "fp32", "--no-progress"]


def torchrun(text: Path, out: Path, *flags: str) -> list[float]:
    """gpt-train as two gloo ranks on this machine -> rank 0's logged training losses."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--monitor-interval", "0.1", "-m", "model.train.cli", "--data", str(text), "--out", str(out),
           *DIST_FLAGS, *flags]
    env = os.environ | {"PYTHONPATH": str(REPO)}  # this checkout, not an installed copy
    # seconds normally; the limit leaves room for a slow, busy CI machine
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if "loss" in r]
