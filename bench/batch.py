"""Prompts of different lengths: one padded batch against a loop over sequences, on this CPU.

    python bench/batch.py [--tokens 150] [--runs 3]

The engine generates a batch one sequence after another (``generate_batch`` below). The
alternative is one left-padded batch: a mask hides the padding, each row keeps its own positions,
and every step runs all rows through one matmul. This measures both, greedy, on the shipped model
(or shakespeare-char with random weights), for batches of 4 and 8 prompts of 4..60 characters,
and checks that both give the same tokens. Last line: loop_tok_s=<f> padded_tok_s=<f> ratio=<f>
for the batch of 8.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch
from common import shipped_or_random

from model.backend import Backend, Settings
from model.gpt import GPT
from model.kv_cache import KVCache
from model.torch_backend import TorchBackend


def generate_batch(backend: Backend, prompts: Sequence[str], settings: Settings) -> list[str]:
    """The generated text for each prompt, one sequence after another: each result is exactly what
    ``backend.stream`` gives for that prompt alone (its seed, stop strings and window)."""
    return ["".join(event.text for event in backend.stream(prompt, settings)) for prompt in prompts]


PROMPTS = ["KING", "ROMEO:\nO", "First Citizen:\nWe", "JULIET:\nWhat light is that",
           "MENENIUS:\nI tell you, friends, most", "DUKE VINCENTIO:\nGood morrow, and what news",
           "QUEEN ELIZABETH:\nMy lord, I pray you, tell me where", "LUCIO:\nHow now, " * 4]


@torch.inference_mode()
def padded_greedy(model: GPT, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """Greedy continuation of left-padded prompts in one batch with a preallocated KV cache."""
    B, T0 = len(prompts), max(len(p) for p in prompts)
    ids = torch.zeros(B, T0, dtype=torch.long)
    real = torch.zeros(B, T0 + new_tokens, dtype=torch.bool)  # which key slots hold real tokens
    for b, p in enumerate(prompts):
        ids[b, T0 - len(p):] = torch.tensor(p)
        real[b, T0 - len(p):] = True
    positions = (real[:, :T0].cumsum(1) - 1).clamp(min=0)  # (B, T0): each row counts its own
    slot = torch.arange(T0)
    causal = slot[None, :] <= slot[:, None]  # (T0, T0)
    mask = (causal & real[:, None, None, :T0]) | torch.eye(T0, dtype=torch.bool)  # (B, 1, T0, T0)
    cache = KVCache(model.config, B)
    logits = model.forward_at(ids, positions, causal=False, mask=mask, caches=cache.layers)
    cache.advance(T0)
    out = []
    for t in range(new_tokens):
        nxt = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
        out.append(nxt)
        real[:, T0 + t] = True
        positions = positions[:, -1:] + 1
        S = T0 + t + 1
        logits = model.forward_at(nxt, positions, causal=False, mask=real[:, None, None, :S],
                                  caches=cache.layers)
        cache.advance(1)
    return torch.cat(out, 1).tolist()


def median_tok_s(fn, tokens: int, runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return tokens / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=150, help="new tokens per prompt")
    parser.add_argument("--runs", type=int, default=3, help="runs per path (median)")
    args = parser.parse_args()
    model, tokenizer, name = shipped_or_random()
    longest = max(len(tokenizer.encode(p)) for p in PROMPTS)
    if longest + args.tokens > model.config.block_size:  # the padded batch has no window handling
        parser.error(f"--tokens {args.tokens} plus the longest prompt ({longest}) exceed block_size "
                     f"{model.config.block_size}; use at most {model.config.block_size - longest}")
    backend = TorchBackend(model, tokenizer)
    greedy = Settings(temperature=0.0, max_new_tokens=args.tokens)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {name}; {args.tokens} new "
          f"tokens per prompt, greedy, median of {args.runs}")
    for B in (4, 8):
        prompts = PROMPTS[-B:]
        ids = [tokenizer.encode(p) for p in prompts]
        texts = generate_batch(backend, prompts, greedy)
        padded = padded_greedy(model, ids, args.tokens)
        same = sum(tokenizer.decode(p) == t for p, t in zip(padded, texts, strict=True))
        total = B * args.tokens
        loop = median_tok_s(lambda ps=prompts: generate_batch(backend, ps, greedy), total, args.runs)
        pad = median_tok_s(lambda i=ids: padded_greedy(model, i, args.tokens), total, args.runs)
        print(f"batch {B}: loop {loop:7.1f} tok/s   padded {pad:7.1f} tok/s   padded/loop {pad / loop:.2f}x"
              f"   same text for {same}/{B} prompts")
    print(f"loop_tok_s={loop:.1f} padded_tok_s={pad:.1f} ratio={pad / loop:.2f}")


if __name__ == "__main__":
    main()
