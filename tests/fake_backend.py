"""A deterministic stand-in for a model backend, for the app and batch tests.

It uses the real ``model.generate.engine.Generation`` (sampling, stopping, settings read per token) over a
fake decoder whose logits favour the next character of a script, so tests see exact text.
"""

from __future__ import annotations

import math
import threading
import time

import torch

from model.generate.backend import BackendInfo, Settings
from model.generate.engine import Generation
from model.gpt import GPT, Bigram
from model.tokenizer import CharTokenizer

CHARS = "\n !',.:?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


class ScriptDecoder:
    """Logits (V,) with ``margin`` on the script's next character, 0 elsewhere; ``delay`` s a feed."""

    def __init__(self, tokenizer: CharTokenizer, script: str, margin: float, block_size: int,
                 delay: float, gate: threading.Semaphore | None = None, probs: dict[str, float] | None = None,
                 feeds: list[int] | None = None):
        self.tokenizer, self.script, self.margin = tokenizer, script, margin
        self.block_size, self.delay, self.gate = block_size, delay, gate
        self.probs, self.feeds = probs, feeds if feeds is not None else [0]
        self.pos = 0
        self.fed = 0  # tokens generated: where we are in the script, across window resets

    def reset(self) -> None:
        self.pos = 0

    def feed(self, ids: list[int]) -> torch.Tensor:
        self.feeds[0] += 1
        if self.gate is not None and not self.gate.acquire(timeout=10):
            raise TimeoutError("the test did not allow this token")
        if self.delay:
            time.sleep(self.delay)
        self.pos += len(ids)
        if self.probs is not None:  # a scripted distribution, the same every step
            logits = torch.full((self.tokenizer.vocab_size,), -30.0)
            for char, p in self.probs.items():  # "" stands for end-of-text
                logits[self.tokenizer.stoi[char] if char else self.tokenizer.eot_id] = math.log(p)
            self.fed += 1
            return logits
        logits = torch.zeros(self.tokenizer.vocab_size)
        logits[self.tokenizer.stoi[self.script[self.fed % len(self.script)]]] = self.margin
        self.fed += 1
        return logits


class FakeBackend:
    def __init__(self, script: str = "To be, or not to be: that is the question.\n", margin: float = 30.0,
                 block_size: int = 64, delay: float = 0.0, name: str = "fake.pt", kind: str = "torch",
                 device: str = "cpu", fail_on: str | None = None, gated: bool = False,
                 probs: dict[str, float] | None = None):
        self.tokenizer = CharTokenizer(CHARS)
        self.script, self.margin, self.block_size, self.delay = script, margin, block_size, delay
        self.name, self.kind, self.device, self.fail_on = name, kind, device, fail_on
        # gated: every token waits for the test to allow() it, so a test can act mid-generation
        self.gate = threading.Semaphore(0) if gated else None
        self.prompts: list[str] = []
        self.probs = probs  # scripted: every step gives these probabilities, whatever the script
        self._feeds = [0]  # forward passes, counted across decoders

    @property
    def feeds(self) -> int:
        return self._feeds[0]

    def allow(self, tokens: int) -> None:
        self.gate.release(tokens)

    def info(self) -> BackendInfo:
        return BackendInfo(backend=self.kind, path=self.name, vocab_size=self.tokenizer.vocab_size,  # type: ignore[arg-type]
                           block_size=self.block_size, device=self.device, vocab=CHARS)

    def unknown_chars(self, prompt: str) -> list[str]:
        return self.tokenizer.unknown_chars(prompt)

    def decoder(self) -> ScriptDecoder:
        return ScriptDecoder(self.tokenizer, self.script, self.margin, self.block_size, self.delay,
                             self.gate, self.probs, self._feeds)

    def torch_model(self) -> GPT | Bigram | None:
        return None  # no model to look inside: the attention view stays empty

    def stream(self, prompt: str, settings: Settings) -> Generation:
        if self.fail_on is not None and self.fail_on in prompt:
            raise RuntimeError(f"backend failure on {self.fail_on!r}")
        self.prompts.append(prompt)
        return Generation(self.decoder(), self.tokenizer, prompt, settings)


class FakeClock:
    """A clock that advances ``step`` seconds each time it is read: timings become exact."""

    def __init__(self, step: float = 0.01):
        self.t, self.step = 100.0, step
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.t += self.step
            return self.t
