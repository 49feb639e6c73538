"""The models: a bigram baseline and the decoder-only GPT of "Let's build GPT".

Pure modules: no printing, file IO or device choice here. Shapes use B batch, T new tokens,
S keys attended to (past + new), C = n_embd, H = n_head, D = head size, V = vocab size.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
import torch.nn as nn
from torch.nn import functional as F

from model.config import GPTConfig


class LayerCache(Protocol):
    """Where one layer keeps its keys and values between calls (see model.kv_cache)."""

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, H, T, D) keys/values; return all of them so far, (B, H, S, D)."""
        ...


class Cache(Protocol):
    pos: int  # positions already cached (the same for every sequence in the batch)
    layers: list[LayerCache]

    def advance(self, n: int) -> None: ...


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.explicit = config.attention == "explicit"
        self.dropout = config.dropout
        # query, key and value for all heads in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.qkv_bias)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.attn_dropout = nn.Dropout(config.dropout)
        self.resid_dropout = nn.Dropout(config.dropout)
        # the lecture's lower-triangular mask; not saved, so both paths share checkpoints
        tril = torch.tril(torch.ones(config.block_size, config.block_size, dtype=torch.bool))
        self.register_buffer("tril", tril, persistent=False)

    def forward(
        self,
        x: torch.Tensor,
        causal: bool = True,
        mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """``causal``: query i sees keys <= i (needs T == S). ``mask``: bool (.., T, S), True
        where attending is allowed. Neither: every query sees every key (one-token decode)."""
        B, T, C = x.shape
        q, k, v = self.heads(x)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, H, S, D) with the past in front
        if self.explicit:
            y = self._explicit(q, k, v, causal, mask)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                dropout_p=self.dropout if self.training else 0.0,
            )
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # concatenate the heads again
        return self.resid_dropout(self.c_proj(y))

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (B, T, C) -> q, k, v, each (B, H, T, D): heads become a batch dimension."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return tuple(t.view(B, T, self.n_head, -1).transpose(1, 2) for t in (q, k, v))

    def weights(self, q, k, causal=True, mask=None) -> torch.Tensor:
        """The attention softmax (B, H, T, S): how much each query takes from each key."""
        T, S = q.size(-2), k.size(-2)
        # affinities between every query and key, scaled so the softmax stays soft at init
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))  # (B, H, T, S)
        if causal and mask is None:
            att = att.masked_fill(~self.tril[:T, :S], float("-inf"))  # no peeking ahead
        if mask is not None:
            att = att.masked_fill(~mask, float("-inf"))
        return F.softmax(att, dim=-1)

    def _explicit(self, q, k, v, causal, mask):
        att = self.attn_dropout(self.weights(q, k, causal, mask))
        return att @ v  # (B, H, T, S) @ (B, H, S, D) -> (B, H, T, D)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        # both attention paths share this MLP, so both honour the activation
        self.gelu = nn.GELU(approximate="tanh" if config.activation == "gelu_tanh" else "none")
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Communication (attention) then computation (MLP), each pre-LayerNorm and residual."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x, causal=True, mask=None, cache=None):
        x = x + self.attn(self.ln_1(x), causal, mask, cache)
        return x + self.mlp(self.ln_2(x))


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned absolute positions
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            self.lm_head.weight = self.wte.weight  # one matrix reads and writes tokens
        self.apply(self._init_weights)
        # GPT-2: scale the init of projections into the residual stream by 1/sqrt(2 * n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, cache: Cache | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V), and the mean cross-entropy when targets are given.

        With a cache, idx holds only the new tokens: they take positions cache.pos.. and attend
        to everything cached before them."""
        T = idx.size(1)
        start = 0 if cache is None else cache.pos
        if start + T > self.config.block_size:
            raise ValueError(
                f"{start + T} positions exceed block_size {self.config.block_size}; crop the context"
            )
        positions = torch.arange(start, start + T, device=idx.device)
        mask = None
        if start > 0 and T > 1:  # a chunk after a cached prefix: causal, shifted by start
            mask = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(diagonal=start)
        layers = None if cache is None else cache.layers
        logits = self.logits(idx, positions, causal=start == 0, mask=mask, caches=layers)
        if cache is not None:
            cache.advance(T)
        loss = None if targets is None else cross_entropy(logits, targets)
        return logits, loss

    def logits(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor,
        causal: bool = True,
        mask: torch.Tensor | None = None,
        caches: list[LayerCache] | None = None,
    ) -> torch.Tensor:
        """The network itself, for callers that manage positions and masks (ONNX export)."""
        x = self.drop(self.wte(idx) + self.wpe(positions))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, causal, mask, None if caches is None else caches[i])
        return self.lm_head(self.ln_f(x))  # (B, T, V)


class Bigram(nn.Module):
    """The lecture's baseline: the next token's logits depend only on the current token."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.table = nn.Embedding(config.vocab_size, config.vocab_size)

    def forward(self, idx, targets=None, cache=None):
        logits = self.table(idx)  # (B, T, V)
        if cache is not None:
            cache.advance(idx.size(1))
        loss = None if targets is None else cross_entropy(logits, targets)
        return logits, loss


def build_model(config: GPTConfig) -> GPT | Bigram:
    return Bigram(config) if config.kind == "bigram" else GPT(config)


def count_params(model: nn.Module) -> int:
    """Distinct parameters (a tied matrix counts once)."""
    return sum(p.numel() for p in model.parameters())
