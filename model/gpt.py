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
    """Where one layer keeps its keys and values between calls (model.kv_cache; the ONNX graph's
    cache in export.graph): one write by position serves a prompt, a decode step and a batch."""

    def update(self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new (B, H, T, D) keys/values at the slots of their positions pos, (T,) or
        (B, T); return every key/value the new queries attend over, (B, H, S, D)."""
        ...


class Cache(Protocol):
    pos: int  # positions already cached (the same for every sequence in the batch)
    span: int  # slots the next pass reads back from its layers: the width of its mask
    layers: list[LayerCache]

    def advance(self, n: int) -> None: ...


class CausalSelfAttention(nn.Module):
    """Every token asks a question (query), offers a label (key) and a message (value); each query
    takes a softmax-weighted mix of the messages whose keys match it. H heads do this side by
    side on D = C / H channels each, so each can attend to something different."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.n_head = config.n_head
        self.explicit = config.attention == "explicit"
        self.dropout = config.dropout
        # query, key and value for all heads in one matmul: one big GEMM beats three small ones
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
        weights: list[torch.Tensor] | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C).

        ``causal``: query i sees keys <= i (needs T == S). ``mask``: bool (.., T, S), True where
        attending is allowed. Neither: every query sees every key (a one-token decode step).
        ``weights``: a list to append this layer's attention softmax (B, H, T, S) to (the attention
        view); it takes the explicit path, the only one that forms the softmax. ``positions`` (T,)
        or (B, T): where the new tokens sit, which is where ``cache`` stores their keys."""
        B, T, C = x.shape
        H, D = self.n_head, C // self.n_head
        q, k, v = self.c_attn(x).split(C, dim=2)  # (B, T, C) each
        # split the channels into heads and make the heads a batch dimension
        q = q.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        v = v.view(B, T, H, D).transpose(1, 2)  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(positions, k, v)  # (B, H, S, D): the cached past and the T new keys
        S = k.size(2)
        if self.explicit or weights is not None:
            # the lecture's attention, step by step
            att = q @ k.transpose(-2, -1)  # (B, H, T, D) @ (B, H, D, S) -> (B, H, T, S) affinities
            # scale by 1/sqrt(D): q.k sums D products, so its variance grows with D; unscaled, the
            # softmax would saturate at init and pass almost no gradient
            att = att * (1.0 / math.sqrt(D))  # (B, H, T, S)
            if mask is not None:
                att = att.masked_fill(~mask, float("-inf"))  # (B, H, T, S) the caller's mask
            elif causal:
                att = att.masked_fill(~self.tril[:T, :S], float("-inf"))  # no peeking at the future
            att = F.softmax(att, dim=-1)  # (B, H, T, S): each query's weights sum to 1
            if weights is not None:
                weights.append(att)
            att = self.attn_dropout(att)  # (B, H, T, S): training only, drops some communication
            y = att @ v  # (B, H, T, S) @ (B, H, S, D) -> (B, H, T, D): weighted sum of the values
        else:
            # the same maths in one fused kernel (flash or memory-efficient attention): the
            # (T, S) matrix is never stored, which is what makes long contexts cheap
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal and mask is None,
                dropout_p=self.dropout if self.training else 0.0,
            )  # (B, H, T, D)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C): the heads side by side again
        return self.resid_dropout(self.c_proj(y))  # mix what the heads found, back into the stream


class MLP(nn.Module):
    """Per token, no communication: think about what attention gathered (4x wider, as GPT-2)."""

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

    def forward(self, x, causal=True, mask=None, cache=None, weights=None, positions=None):
        # residual connections: gradients flow straight down the sum, so deep stacks still train
        x = x + self.attn(self.ln_1(x), causal, mask, cache, weights, positions)  # (B, T, C)
        return x + self.mlp(self.ln_2(x))  # (B, T, C)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean loss over (B, T) targets; in fp32 even under autocast, where a bf16 log-softmax loses
    precision; -1 targets are ignored."""
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)


class GPT(nn.Module):
    """Token and position embeddings, n_layer blocks, a final LayerNorm and a linear head onto the
    vocabulary: GPT-2's layout (pre-LayerNorm blocks), sized by a GPTConfig."""

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)  # token embeddings
        self.wpe = nn.Embedding(config.block_size, config.n_embd)  # learned absolute positions
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layer))
        # pre-LN blocks add to the stream without normalising it: normalise once before the head
        self.ln_f = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # 0..block_size-1 once: a decode step takes its position as a view, not a new tensor
        self.register_buffer("slots", torch.arange(config.block_size), persistent=False)
        if config.tie_weights:
            # one matrix reads and writes tokens (as GPT-2): fewer parameters, and tokens that mean
            # alike are embedded alike and scored alike
            self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)
        # GPT-2: every block adds two projections (attention, MLP) to the residual stream; scale
        # their init by 1/sqrt(2 * n_layer) so the stream's variance does not grow with depth
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
        positions = self.slots[start:start + T]  # (T,)
        # which keys each new token may see: with no past, the lecture's triangle (causal); one new
        # token after a past sees every key, so no mask at all; a chunk after a past needs the
        # triangle shifted right by the past: query i (slot start + i) sees slots 0..start + i
        mask = None
        if start > 0 and T > 1:
            mask = torch.ones(T, start + T, dtype=torch.bool, device=idx.device).tril(diagonal=start)
        layers = None
        if cache is not None:
            cache.span = start + T  # the past and the new tokens: the mask's width
            layers = cache.layers
        logits = self.forward_at(idx, positions, causal=start == 0, mask=mask, caches=layers)
        if cache is not None:
            cache.advance(T)
        loss = None if targets is None else cross_entropy(logits, targets)
        return logits, loss

    def forward_at(
        self,
        idx: torch.Tensor,
        positions: torch.Tensor,
        causal: bool = True,
        mask: torch.Tensor | None = None,
        caches: list[LayerCache] | None = None,
        weights: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """The network on tokens idx (B, T) at the given positions (T,) or (B, T), under the given
        mask -> logits (B, T, V). For callers that manage positions and masks themselves (the
        cache in ``forward``, the ONNX graph, the attention view via ``weights``)."""
        # what a token is plus where it is: positions are learned, one vector per slot
        x = self.drop(self.wte(idx) + self.wpe(positions))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, causal, mask, None if caches is None else caches[i], weights, positions)  # (B, T, C)
        return self.lm_head(self.ln_f(x))  # (B, T, V): a score for every possible next token


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
