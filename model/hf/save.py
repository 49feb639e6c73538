"""Export a checkpoint as a Hugging Face GPT-2 folder: config.json, model.safetensors, tokenizer files.

``transformers.AutoModelForCausalLM.from_pretrained(DIR)`` rebuilds it as a ``GPT2LMHeadModel``
with the same logits. Where our config leaves a bias out (``bias``/``qkv_bias`` off), GPT-2 has
one, so it gets zeros: the same function. The tokenizer goes out as ``tokenizer.json`` (the
``tokenizers`` library's format, written here as plain JSON so exporting needs no extra package):

- byte-level BPE: GPT-2's own layout, plus ``vocab.json`` and ``merges.txt``;
- characters: a BPE model with one token per character and no merges, unknown characters
  becoming the same replacement character as our ``unknown="replace"``, and a ``Fuse`` decoder
  (tokens joined without spaces). ``tokenizers`` round-trips the training text through it;
- tiktoken ranks files (our ``gpt2-124m`` preset trained from scratch): the merges are recovered
  from the ranks, as GPT-2's ranks are its merge order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from model.atomic import atomic_write, writing
from model.bpe import ByteBPETokenizer, bytes_to_unicode
from model.checkpoint import CheckpointError, load, restore_model
from model.config import GPTConfig
from model.gpt import GPT
from model.hf.load import CONV1D, hf_config, hf_name
from model.tokenizer import BPETokenizer, CharTokenizer, Tokenizer


def hf_state(model: GPT) -> dict[str, torch.Tensor]:
    """Our weights under GPT2LMHeadModel's names: Conv1D matrices transposed, absent biases as zeros.
    A tied lm_head is left out, as save_pretrained does (safetensors stores no shared tensors)."""
    config = model.config
    state = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and config.tie_weights:
            continue
        state[hf_name(name)] = (tensor.t() if name.endswith(CONV1D) else tensor).float().contiguous()
    C = config.n_embd
    zeros = {"ln_1.bias": C, "ln_2.bias": C, "attn.c_attn.bias": 3 * C, "attn.c_proj.bias": C,
             "mlp.c_fc.bias": 4 * C, "mlp.c_proj.bias": C}
    for i in range(config.n_layer):
        for suffix, width in zeros.items():
            state.setdefault(f"transformer.h.{i}.{suffix}", torch.zeros(width))
    state.setdefault("transformer.ln_f.bias", torch.zeros(C))
    return state


def _added(content: str, i: int) -> dict:
    return {"id": i, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": True}


def _bpe_model(vocab: dict[str, int], merges: list[str], unk: str | None) -> dict:
    return {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
            "vocab": vocab, "merges": merges}


def byte_bpe_from_ranks(tok: BPETokenizer) -> ByteBPETokenizer:
    """A tiktoken ranks file -> vocab + merges: each merged token's parts are where BPE over its own
    bytes, with only the lower ranks, stops (GPT-2's ranks are its merge order)."""
    ranks = tok.ranks
    byte_char = bytes_to_unicode()
    as_str = lambda b: "".join(byte_char[x] for x in b)  # noqa: E731
    merges = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = [bytes([b]) for b in token]
        while len(parts) > 2:
            best = min(range(len(parts) - 1),
                       key=lambda i: ranks.get(parts[i] + parts[i + 1], len(ranks)))
            merged = parts[best] + parts[best + 1]
            if ranks.get(merged, len(ranks)) >= rank:
                break
            parts[best:best + 2] = [merged]
        if len(parts) == 2:
            merges.append(f"{as_str(parts[0])} {as_str(parts[1])}")
    vocab = [as_str(t) for t, _ in sorted(ranks.items(), key=lambda kv: kv[1])]
    return ByteBPETokenizer(vocab, merges, {"<|endoftext|>": tok.eot_id})


def tokenizer_files(tok: Tokenizer, block_size: int) -> dict[str, dict | str]:
    """File name -> content (a dict is written as JSON) for the Hugging Face tokenizer of ``tok``."""
    if isinstance(tok, BPETokenizer):
        tok = byte_bpe_from_ranks(tok)
    eot = tok.eot if isinstance(tok, ByteBPETokenizer) else "<|endoftext|>"
    base = {"version": "1.0", "truncation": None, "padding": None, "normalizer": None}
    if isinstance(tok, ByteBPETokenizer):
        level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        vocab = {t: i for i, t in enumerate(tok.vocab)}
        tokenizer_json = base | {
            "added_tokens": [_added(t, i) for t, i in sorted(tok.special.items(), key=lambda kv: kv[1])],
            "pre_tokenizer": {"type": "ByteLevel", **level},
            "post_processor": {"type": "ByteLevel", **level, "trim_offsets": False},
            "decoder": {"type": "ByteLevel", **level},
            "model": _bpe_model(vocab, tok.merges, None),
        }
        extra = {"vocab.json": vocab, "merges.txt": "#version: 0.2\n" + "\n".join(tok.merges) + "\n"}
        tokenizer_class = "GPT2Tokenizer"
    elif isinstance(tok, CharTokenizer):
        tokenizer_json = base | {
            "added_tokens": [_added(eot, tok.eot_id)],
            "pre_tokenizer": None, "post_processor": None, "decoder": {"type": "Fuse"},
            "model": _bpe_model({c: i for i, c in enumerate(tok.chars)}, [], tok.replacement),
        }
        extra = {}
        tokenizer_class = "PreTrainedTokenizerFast"
    else:
        raise CheckpointError(f"no Hugging Face form for a {type(tok).__name__}")
    config = {"tokenizer_class": tokenizer_class, "model_max_length": block_size, "eos_token": eot,
              "bos_token": eot, "unk_token": eot, "add_prefix_space": False,
              "model_input_names": ["input_ids", "attention_mask"],  # no token_type_ids: GPT-2 has none
              # decoding must give back the text as it was ("a ." stays "a .")
              "clean_up_tokenization_spaces": False}
    special = {"eos_token": eot, "bos_token": eot, "unk_token": eot}
    return {"tokenizer.json": tokenizer_json, "tokenizer_config.json": config,
            "special_tokens_map.json": special, **extra}


def write_files(out: Path, files: dict[str, dict | str]) -> None:
    """Each file written beside its final name, then renamed: a reader never sees half of one."""
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content, indent=2, ensure_ascii=False)
        with atomic_write(out / name, "w", encoding="utf-8") as f:
            f.write(text)


def hf_files(config: GPTConfig, tokenizer: Tokenizer) -> dict[str, dict | str]:
    """config.json, generation_config.json and the tokenizer files."""
    generation = {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}
    return {"config.json": hf_config(config, tokenizer.eot_id), "generation_config.json": generation,
            **tokenizer_files(tokenizer, config.block_size)}


def export_hf(ckpt_path: str | Path, out: str | Path, say: Callable[[str], None] = lambda m: None) -> Path:
    """Write the Hugging Face GPT-2 folder ``out`` for the checkpoint at ``ckpt_path``."""
    from safetensors.torch import save

    ckpt_path, out = Path(ckpt_path), Path(out)
    ckpt = load(ckpt_path)
    model, tokenizer = restore_model(ckpt, ckpt_path)
    if not isinstance(model, GPT):
        raise CheckpointError(f"{ckpt_path} holds a {model.config.kind} model; only the GPT exports")
    say(f"writing {out}")
    with writing(out):  # one export into the folder at a time
        write_files(out, hf_files(model.config, tokenizer))
        with atomic_write(out / "model.safetensors") as f:  # "pt": the format transformers checks for
            f.write(save(hf_state(model), metadata={"format": "pt"}))
    return out
