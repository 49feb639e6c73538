"""Export a checkpoint to GGUF, the one-file format llama.cpp, ollama and LM Studio load.

The file is llama.cpp's ``gpt2`` architecture, with the tensor names, hyper-parameters and
tokenizer keys that llama.cpp's own converter (``convert_hf_to_gguf.py``, ``GPT2Model``) writes for
a Hugging Face GPT-2, and that ``src/models/gpt2.cpp`` and ``src/llama-vocab.cpp`` read. Our GPT is
GPT-2's network, so each weight maps to one tensor; ``nn.Linear`` already stores (out, in), the
order GGUF wants, so nothing is transposed (the converter transposes GPT-2's ``Conv1D`` weights).
Where our config leaves a bias out, the architecture still reads one, so it gets zeros.

Precision follows the converter: 1-D tensors (biases, LayerNorm weights) and the position
embeddings stay f32; every other matrix takes the chosen type, quantized by the ``gguf`` package's
reference quantizers (``gguf.quants``, the numpy port of ggml's). With q4_0 the token embedding,
which is also the head when tied, is q8_0: ``llama-quantize`` gives that matrix more bits (q6_k,
which ``gguf.quants`` cannot write; q8_0 is its own fallback). A matrix whose rows do not split
into whole 32-value blocks is written f16, as the converter does.

The tokenizer is llama.cpp's byte-level BPE (``tokenizer.ggml.model = gpt2``, pre-tokenizer
``gpt-2``). Token strings are GPT-2's byte-to-unicode spelling (a space is "Ġ"); llama.cpp splits
a prompt with GPT-2's pattern, spells each piece's UTF-8 bytes that way, merges, and looks the
pieces up; a piece that is not a token falls back to single-byte tokens, and bytes with no token
are dropped. So:

- GPT-2 BPE goes out as its vocabulary and merges (a tiktoken ranks file's merges are recovered
  from the ranks, as for ``gpt-export hf``);
- a character vocabulary becomes one token per character, spelled as its bytes. An ASCII character
  is one byte, one symbol, one token with no merge. A character of several UTF-8 bytes starts as
  several symbols, so it gets the merges that join its bytes left to right; they cannot cross
  characters (every merge's right side is a continuation byte, which only follows bytes of its own
  character), so the character still becomes exactly its token.

llama.cpp requires a merges list, and the ``gguf`` writer refuses an empty one, so a vocabulary
without merges (ASCII characters) gets one that never fires: two 0xff bytes, which UTF-8 never holds.

What llama.cpp does differently from us: a character outside the vocabulary is dropped from a
prompt, where ``gpt-tui`` refuses it (or replaces it, with ``unknown = "replace"``); and its
``gpt2`` graph computes GELU in the tanh form, through an f16 lookup table, so an exact-GELU model
runs slightly differently there (``tanh_gelu_shift`` measures how much).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np
import torch
from torch.nn import functional as F

from model.atomic import atomic_write, writing
from model.bpe import ByteBPETokenizer, bytes_to_unicode
from model.checkpoint import CheckpointError, load, restore_model
from model.gpt import GPT
from model.hf.save import byte_bpe_from_ranks
from model.kv_cache import KVCache
from model.special import EOT
from model.tokenizer import BPETokenizer, CharTokenizer, Tokenizer

ARCH = gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.GPT2]  # "gpt2"
Q = gguf.GGMLQuantizationType
# --type -> the type of the matrices, and the general.file_type llama.cpp reports for the file
GGUF_TYPES: dict[str, tuple[Q, gguf.LlamaFileType]] = {
    "f32": (Q.F32, gguf.LlamaFileType.ALL_F32),
    "f16": (Q.F16, gguf.LlamaFileType.MOSTLY_F16),
    "q8_0": (Q.Q8_0, gguf.LlamaFileType.MOSTLY_Q8_0),
    "q4_0": (Q.Q4_0, gguf.LlamaFileType.MOSTLY_Q4_0),
}
LAYERNORM_EPS = 1e-5  # nn.LayerNorm's default, which every block of ours uses
# the modules of blocks.{i} -> llama.cpp's tensors of blk.{i}
LAYER_TENSORS = {
    "ln_1": gguf.MODEL_TENSOR.ATTN_NORM,
    "attn.c_attn": gguf.MODEL_TENSOR.ATTN_QKV,
    "attn.c_proj": gguf.MODEL_TENSOR.ATTN_OUT,
    "ln_2": gguf.MODEL_TENSOR.FFN_NORM,
    "mlp.c_fc": gguf.MODEL_TENSOR.FFN_UP,
    "mlp.c_proj": gguf.MODEL_TENSOR.FFN_DOWN,
}
NEVER_MERGED = 0xFF  # a byte valid UTF-8 never holds: the no-op merge of a vocabulary without merges


class GgufExportError(ValueError):
    """A checkpoint that cannot be written as GGUF; the message says what and why."""


def tensor_name(tensor: gguf.MODEL_TENSOR, suffix: str, layer: int | None = None) -> str:
    return f"{gguf.TENSOR_NAMES[tensor].format(bid=layer)}.{suffix}"


def gguf_weights(model: GPT) -> dict[str, np.ndarray]:
    """Our weights under llama.cpp's gpt2 names, f32, (out, in) as nn.Linear keeps them; a bias the
    config leaves out is zeros. A tied head is not written: llama.cpp reads token_embd instead."""
    state = {k: v.detach().float() for k, v in model.state_dict().items()}
    T = gguf.MODEL_TENSOR

    def weight_and_bias(prefix: str, tensor: gguf.MODEL_TENSOR, layer: int | None = None) -> Iterator:
        weight = state[f"{prefix}.weight"]  # (out, in) or a LayerNorm's (C,)
        yield tensor_name(tensor, "weight", layer), weight
        yield tensor_name(tensor, "bias", layer), state.get(f"{prefix}.bias", torch.zeros(weight.size(0)))

    out = {tensor_name(T.TOKEN_EMBD, "weight"): state["wte.weight"],
           tensor_name(T.POS_EMBD, "weight"): state["wpe.weight"]}
    for i in range(model.config.n_layer):
        for module, tensor in LAYER_TENSORS.items():
            out.update(weight_and_bias(f"blocks.{i}.{module}", tensor, i))
    out.update(weight_and_bias("ln_f", T.OUTPUT_NORM))
    if not model.config.tie_weights:
        out[tensor_name(T.OUTPUT, "weight")] = state["lm_head.weight"]
    return {name: t.contiguous().numpy() for name, t in out.items()}


def planned_type(name: str, array: np.ndarray, matrices: Q) -> Q:
    """The type a tensor is written in: the converter's rule, plus q4_0's q8_0 embedding."""
    T = gguf.MODEL_TENSOR
    if array.ndim == 1 or name == tensor_name(T.POS_EMBD, "weight"):
        return Q.F32
    embedding_or_head = name in (tensor_name(T.TOKEN_EMBD, "weight"), tensor_name(T.OUTPUT, "weight"))
    if matrices == Q.Q4_0 and embedding_or_head:
        return Q.Q8_0
    return matrices


def encoded(array: np.ndarray, qtype: Q) -> tuple[np.ndarray, Q]:
    """``array`` in ``qtype`` (the reference quantizer's bytes for a quantized type), or in f16
    where its rows do not split into whole blocks, as the converter falls back."""
    try:
        return gguf.quants.quantize(array, qtype), qtype
    except gguf.QuantError:
        return gguf.quants.quantize(array, Q.F16), Q.F16


@dataclass(frozen=True)
class Vocab:
    """What tokenizer.ggml.* holds: one token string and type per id of the model, and the merges."""

    tokens: list[str]
    types: list[int]
    merges: list[str]


def spelled(data: bytes) -> str:
    """Bytes in GPT-2's byte-to-unicode spelling (b" a" -> "Ġa"), how byte-level tokens are written."""
    byte_char = bytes_to_unicode()
    return "".join(byte_char[b] for b in data)


def char_vocab(tok: CharTokenizer) -> tuple[list[str], list[str]]:
    """Each character spelled as its bytes, and the merges that join each multi-byte one."""
    unencodable = [c for c in tok.chars if 0xD800 <= ord(c) <= 0xDFFF]
    if unencodable:
        raise GgufExportError(f"the character vocabulary holds U+{ord(unencodable[0]):04X}, a lone "
                              "surrogate, which is not text in UTF-8 (what llama.cpp reads); no GGUF "
                              "tokenizer can hold it")
    merges: dict[str, None] = {}  # ordered and without repeats: characters share leading bytes
    for c in tok.chars:
        data = c.encode("utf-8")
        for k in range(1, len(data)):  # ((b0 b1) b2) b3: the prefix so far, then the next byte
            merges[f"{spelled(data[:k])} {spelled(data[k:k + 1])}"] = None
    return [spelled(c.encode("utf-8")) for c in tok.chars], list(merges)


def gguf_vocab(tok: Tokenizer, vocab_size: int) -> Vocab:
    """Our tokenizer as llama.cpp's byte-level BPE over the model's ``vocab_size`` ids: ordinary
    tokens NORMAL, special ones (end of text) CONTROL, ids past the tokenizer (a padded embedding)
    UNUSED "[PAD{id}]" placeholders, as the converter writes them."""
    if isinstance(tok, BPETokenizer):
        tok = byte_bpe_from_ranks(tok)
    if isinstance(tok, ByteBPETokenizer):
        ordinary, merges, special = tok.vocab, tok.merges, {i: t for t, i in tok.special.items()}
    elif isinstance(tok, CharTokenizer):
        (ordinary, merges), special = char_vocab(tok), {tok.eot_id: EOT}
    else:
        raise GgufExportError(f"no GGUF form for a {type(tok).__name__}")
    tokens, types = [], []
    for i in range(vocab_size):
        if i in special:
            tokens.append(special[i])
            types.append(gguf.TokenType.CONTROL)
        elif i < len(ordinary):
            tokens.append(ordinary[i])
            types.append(gguf.TokenType.NORMAL)
        else:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
    never = spelled(bytes([NEVER_MERGED]))
    return Vocab(tokens, [int(t) for t in types], merges or [f"{never} {never}"])


@dataclass(frozen=True)
class GeluShift:
    """How much llama.cpp's tanh GELU moves an exact-GELU model's logits, over ``tokens``
    positions of text the model sampled itself."""

    tokens: int
    max_logit: float  # the largest |exact - tanh| over every position and vocabulary entry
    argmax_changed: int  # positions whose most likely next token differs between the two

    def __str__(self) -> str:
        return (f"this model computes exact GELU and llama.cpp's gpt2 the tanh form: over {self.tokens} "
                f"tokens the model sampled, logits move by at most {self.max_logit:.2g}, and the most "
                f"likely next token changes at {self.argmax_changed} of {self.tokens} positions")


@torch.no_grad()
def tanh_gelu_shift(model: GPT, eot_id: int, tokens: int = 256, seed: int = 0) -> GeluShift:
    """Score one sequence with the model as it is and with its GELU in the tanh form. The sequence
    is the model's own text (sampled at temperature 1 from the end-of-text token, seeded), so the
    activations are the ones its real use sees."""
    model = model.eval()
    n = min(tokens, model.config.block_size)
    g = torch.Generator().manual_seed(seed)
    cache = KVCache(model.config)
    ids = torch.full((1, n), eot_id)  # (1, n)
    for t in range(n - 1):
        logits, _ = model(ids[:, t:t + 1], cache=cache)  # (1, 1, V)
        ids[0, t + 1] = torch.multinomial(F.softmax(logits[0, -1], dim=-1), 1, generator=g)
    tanh_model = GPT(model.config.replace(activation="gelu_tanh")).eval()
    tanh_model.load_state_dict(model.state_dict())
    exact, _ = model(ids)  # (1, n, V)
    approx, _ = tanh_model(ids)  # (1, n, V)
    changed = int((exact.argmax(-1) != approx.argmax(-1)).sum())
    return GeluShift(n, float((exact - approx).abs().max()), changed)


@dataclass(frozen=True)
class GgufExport:
    path: Path
    gelu_shift: GeluShift | None  # None: the model's GELU is already llama.cpp's tanh form


def write_gguf(model: GPT, tokenizer: Tokenizer, path: str | Path, gguf_type: str = "f16",
               name: str | None = None) -> None:
    """Write ``model`` and ``tokenizer`` as one GGUF file at ``path`` (atomically, checked by reading
    it back: the tensors llama.cpp will look for are there, in the planned types)."""
    if gguf_type not in GGUF_TYPES:
        raise GgufExportError(f"unknown GGUF type {gguf_type!r}; choose one of {', '.join(GGUF_TYPES)}")
    matrices, file_type = GGUF_TYPES[gguf_type]
    config = model.config
    vocab = gguf_vocab(tokenizer, config.vocab_size)
    path = Path(path)
    writer = gguf.GGUFWriter(None, ARCH)  # general.architecture; the file is opened below
    # what the converter's GPT2Model.set_gguf_parameters and TextModel write, in its order
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name or path.stem)
    writer.add_block_count(config.n_layer)
    writer.add_context_length(config.block_size)
    writer.add_embedding_length(config.n_embd)
    writer.add_feed_forward_length(4 * config.n_embd)
    writer.add_head_count(config.n_head)
    writer.add_layer_norm_eps(LAYERNORM_EPS)
    writer.add_file_type(file_type)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    # the special tokens as the converter's SpecialVocab writes GPT-2's: end of text for all three
    writer.add_bos_token_id(tokenizer.eot_id)
    writer.add_eos_token_id(tokenizer.eot_id)
    writer.add_unk_token_id(tokenizer.eot_id)
    # nothing added around a prompt: it starts with its own first token, as ours do
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    planned = {}
    for tname, array in gguf_weights(model).items():
        data, qtype = encoded(array, planned_type(tname, array, matrices))
        writer.add_tensor(tname, data, raw_dtype=qtype)
        planned[tname] = (qtype, array.shape)
    writer.add_size_label(gguf.size_label(*writer.get_total_parameter_count()))  # as the converter labels it

    def check(tmp: Path) -> None:
        reader = gguf.GGUFReader(tmp)
        found = {t.name: (t.tensor_type, tuple(int(n) for n in reversed(t.shape))) for t in reader.tensors}
        if found != planned:
            raise GgufExportError(f"{path}: the file read back does not hold the tensors written; "
                                  "nothing was replaced")

    with writing(path), atomic_write(path, check=check) as f:
        writer.write_header_to_file(Path(f.name))  # the writer opens the temp file by its name
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()


def export_gguf(ckpt_path: str | Path, out_path: str | Path | None = None, gguf_type: str = "f16",
                progress: Callable[[str], None] | None = None) -> GgufExport:
    """Write ``out_path`` (default: the checkpoint's path with .gguf) from the checkpoint; for an
    exact-GELU model, also measure how far llama.cpp's tanh GELU moves its logits."""
    say = progress or (lambda message: None)
    ckpt_path = Path(ckpt_path)
    out = Path(out_path) if out_path else ckpt_path.with_suffix(".gguf")
    with writing(out):  # one export into out at a time; taking it removes a killed one's temp file
        say(f"loading {ckpt_path}")
        model, tokenizer = restore_model(load(ckpt_path), ckpt_path)
        if not isinstance(model, GPT):
            raise CheckpointError(f"{ckpt_path} holds a {model.config.kind} model; only the GPT exports")
        model.eval()
        say(f"writing {model.config.n_layer} layers x {model.config.n_embd} as {gguf_type}")
        write_gguf(model, tokenizer, out, gguf_type, name=ckpt_path.stem)
        shift = None
        if model.config.activation == "gelu":
            say("measuring how llama.cpp's tanh GELU moves this exact-GELU model's logits")
            shift = tanh_gelu_shift(model, tokenizer.eot_id)
        return GgufExport(out, shift)
