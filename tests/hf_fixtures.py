"""Hugging Face inputs built in the test, no network: a byte-level BPE trained on Tiny Shakespeare with
the `tokenizers` library and a random GPT2LMHeadModel (gelu_new, non-zero biases and LayerNorm
weights) saved with save_pretrained."""

from __future__ import annotations

from pathlib import Path

import torch

from model.data.corpus import text_source

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
