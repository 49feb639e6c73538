"""What the tests share: tiny models and tokenizers built in the test, the shared Tiny Shakespeare copy,
tiny training runs, the app under a Pilot, decoding by ids, the docs' fenced commands, and Hugging Face
inputs built without a network. Test modules import helpers from here only (``from conftest import``)."""

from __future__ import annotations

import asyncio
import atexit
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import click
import pytest
import torch
from fake_backend import FakeBackend, FakeClock

from model import checkpoint, measured
from model.config import GPTConfig
from model.data.corpus import text_source
from model.generate import compiled_step
from model.generate.backend import Settings
from model.generate.engine import Generation
from model.gpt import GPT
from model.paths import RANKS_FILE
from model.tokenizer import BPETokenizer, CharTokenizer
from tui.app import GPTApp

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
    # the timings and compiled decode steps kept per machine too (not the whole cache folder: the
    # tokenized corpus stays shared), so no test finds what another one left
    monkeypatch.setattr(measured, "path", lambda: home / "measured.json")
    monkeypatch.setattr(compiled_step, "folder", lambda: home / "compiled")
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


# --- the app under a Pilot, with a fake deterministic backend and a frozen clock ---------------------

SIZE = (120, 30)


def run_async(test):
    """Run an async test with asyncio.run (no asyncio plugin needed); fixtures still apply."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))
    return wrapper


def make_app(backend=None, tmp_path=None, **kwargs) -> GPTApp:
    kwargs.setdefault("settings", Settings(max_new_tokens=30, seed=1))
    app = GPTApp(backend or FakeBackend(), session_dir=tmp_path, clock=FakeClock(), **kwargs)
    app.notices = []  # every notification's text, in order
    app.notify = lambda message, **kw: app.notices.append(message)
    return app


async def send(pilot, text: str) -> None:
    """Put text in the prompt box and press Enter (typing key by key is slow; one test does it)."""
    pilot.app.query_one("#prompt").load_text(text)
    await pilot.press("enter")


async def until(pilot, condition, timeout: float = 10.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if condition():
            await pilot.pause()
            return
        await pilot.pause(0.02)
    raise AssertionError("timed out")


def done(app: GPTApp):
    return lambda: app.current is not None and app.current.done


def shown(app: GPTApp) -> str:
    """The transcript's text, as on screen."""
    return "\n".join(str(view.content) for view in app.query(".document"))


def no_blink(pilot):
    pilot.app.query_one("#prompt").cursor_blink = False  # a blinking cursor makes screenshots differ


# --- decoding by ids -----------------------------------------------------------------------------

def decode_logits(decoder, prompt: list[int], tokens: list[int]) -> list[torch.Tensor]:
    """Logits for each step of feeding a fixed token sequence through a Generation-style window."""
    gen = Generation(decoder, _IdTok(), "", Settings(temperature=0.0, max_new_tokens=len(tokens) + 1))
    gen.prompt_ids = prompt
    out = []
    for t in tokens:
        out.append(gen.next_logits())
        gen.accept(t)
    return out


class _IdTok:
    """A tokenizer stand-in for tests that drive ids directly."""

    eot_id = -1  # no token ends the text: every id is accepted
    vocab_size = 1

    def encode(self, text, unknown="reject"):
        return []

    def decode(self, ids):
        return "".join(chr(65 + i % 26) for i in ids)

    def unknown_chars(self, text):
        return []


# --- the fenced bash blocks of README and docs/ ---------------------------------------------------

FENCE = re.compile(r"^```bash\n(.*?)^```", re.M | re.S)


def split_commands(words: list[str]) -> list[list[str]]:
    parts, part = [], []
    for w in words:
        if w in ("&&", "||", "|", ";"):
            parts.append(part)
            part = []
        else:
            part.append(w)
    return [*parts, part]


def unknown_flags(command: click.Command, args: list[str]) -> list[str]:
    """The flags in ``args`` that ``command`` (or the subcommand ``args`` names) does not take."""
    if isinstance(command, click.Group):
        sub = next((a for a in args if not a.startswith("-")), None)
        if sub is None:
            return []
        if sub not in command.commands:
            return [f"subcommand {sub}"]
        return unknown_flags(command.commands[sub], args[args.index(sub) + 1:])
    known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    known |= {"--help", "-h", "--version"}
    flags = [a.split("=")[0] for a in args  # not "-" (stdin) nor a negative number
             if a.startswith("-") and a != "-" and not re.fullmatch(r"-\d.*", a)]
    return [f for f in flags if f not in known]


# --- Hugging Face inputs built in the test, no network: a byte-level BPE trained on Tiny Shakespeare
# with the `tokenizers` library and a random GPT2LMHeadModel (gelu_new, non-zero biases and LayerNorm
# weights) saved with save_pretrained ---------------------------------------------------------------

EOT = "<|endoftext|>"
BPE_VOCAB = 400  # 256 bytes + 144 merges: small, and still merges common words


def train_bpe(text: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=BPE_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([text], trainer)
    tok.add_special_tokens([EOT])  # id 400, after the merges, as GPT-2's 50256
    return tok


def randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Every weight random, biases and LayerNorm weights included, so a wrong mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name.endswith("ln_f.weight"):
                p.copy_(1.0 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise if p.dim() == 1 else 0.5 * noise)  # large: greedy text varies


def gpt2_folder(folder: Path, block_size: int = 96) -> Path:
    """A Hugging Face GPT-2 folder as save_pretrained writes it (model and fast tokenizer)."""
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    tok = train_bpe(text_source("shakespeare").read_text(encoding="utf-8"))
    eot_id = tok.token_to_id(EOT)
    config = GPT2Config(vocab_size=tok.get_vocab_size(), n_positions=block_size, n_embd=16, n_layer=2,
                        n_head=2, activation_function="gelu_new", resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=eot_id, eos_token_id=eot_id)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    randomize(model)
    model.save_pretrained(folder)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT, bos_token=EOT,
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(folder)
    tok.model.save(str(folder))  # vocab.json + merges.txt as well, as GPT-2's hub folder has them
    return folder


VARIED_TEXT = [
    "ROMEO:\nBut, soft! what light through yonder window breaks?",
    "It's we'll they're I'd you've   three spaces\tand a tab\n\n\nnewlines",
    "Numbers 1234567 and 3.14159, symbols #$%&*()[]{}<>@~`^|\\",
    "Unicode: café naïve Ünïcödé Ελληνικά 日本語 emoji 😀🎭 and a lone combining e\u0301",
    f"two documents{EOT}the second one",
    "   leading spaces and trailing ones   ",
]


# the same text greedily, through each runtime

PROMPT = "ROMEO:\nBut, soft! what light through yonder window breaks?"


def hf_greedy(model, prompt: list[int], steps: int) -> list[int]:
    ids = torch.tensor([prompt])
    # eos_token_id=None: no early stop; an explicit mask, else generate masks every pad_token_id
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, do_sample=False,
                         eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def greedy_ort(backend, prompt: list[int], steps: int) -> list[int]:
    decoder, out = backend.decoder(), []
    logits = decoder.feed(prompt)
    for _ in range(steps):
        out.append(int(logits.argmax()))
        logits = decoder.feed(out[-1:])
    return out


def genai_greedy(folder, prompt: list[int], steps: int) -> list[int]:
    import onnxruntime_genai as og

    model = og.Model(str(folder))
    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + steps, do_sample=False)
    generator = og.Generator(model, params)
    generator.append_tokens(prompt)
    out = []
    while not generator.is_done():
        generator.generate_next_token()
        out.append(int(generator.get_next_tokens()[0]))
    return out[:-1] if out and out[-1] == model_eot(folder) else out


def model_eot(folder) -> int:
    return json.loads((folder / "genai_config.json").read_text())["model"]["eos_token_id"]
