"""A byte-level BPE checkpoint (a GPT-2 import's kind) in the app: legible pieces, where the weights
came from, attention over a 1024-token window. The tokenizer is a tiny one built here by hand."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import SIZE, done, make_app, run_async, send, until

from model import checkpoint
from model.bpe import ByteBPETokenizer, bytes_to_unicode
from model.generate.backend import Settings
from model.generate.insight import piece
from model.generate.torch_backend import load_backend
from model.gpt import GPT
from model.special import EOT
from model.tokenizer import CharTokenizer
from tui.panels import ATTENTION_CELLS, AttentionPanel, NextTokenPanel
from tui.show import describe_origin

BLOCK = 1024


def tiny_bpe() -> ByteBPETokenizer:
    """The 256 byte tokens, then "Ġt", "he", "Ġthe" (GPT-2 spells a leading space Ġ), then EOT."""
    chars = bytes_to_unicode()
    vocab = [chars[b] for b in range(256)] + ["Ġt", "he", "Ġthe"]
    return ByteBPETokenizer(vocab, ["Ġ t", "h e", "Ġt he"], {EOT: len(vocab)})


@pytest.fixture(scope="module")
def bpe_ckpt(tmp_path_factory, tiny_config):
    tokenizer = tiny_bpe()
    torch.manual_seed(0)
    model = GPT(dataclasses.replace(tiny_config, vocab_size=tokenizer.vocab_size, block_size=BLOCK))
    path = tmp_path_factory.mktemp("bpe") / "gpt2-tiny.pt"
    meta = {"source": "openai-community/gpt2", "imported_from": "huggingface"}  # as model.hf.load writes it
    checkpoint.save(checkpoint.payload(model, tokenizer, meta), path)
    return path


def test_pieces_show_spaces_whitespace_and_partial_characters():
    tok = tiny_bpe()
    assert tok.encode(" the") == [258]
    assert piece(tok, 258) == "␣the" and piece(tok, 257) == "he"
    assert piece(tok, ord("\n")) == "⏎" and piece(tok, ord("\t")) == "⇥" and piece(tok, 0x1B) == "␛"
    dash = tok.encode("—")  # U+2014: three bytes, three tokens, none a character on its own
    assert [piece(tok, i) for i in dash] == ["<0xE2>", "<0x80>", "<0x94>"]
    assert tok.decode(dash[:1]) == "\ufffd"  # what decoding it alone would show
    assert piece(tok, tok.eot_id) == EOT
    assert tok.token_bytes(258) == b" the" and tok.token_bytes(tok.eot_id) is None
    chars = CharTokenizer("ab \n")  # the character models use the same convention
    assert chars.token_bytes(0) is None  # its ids stand for characters, not bytes
    assert [piece(chars, i) for i in range(4)] == ["a", "b", "␣", "⏎"]


def test_pieces_of_tiktokens_gpt2_encoding(gpt2_bpe):
    """GPT-2's own BPE (model.tokenizer.BPETokenizer, the real ranks) is shown the same way, from
    tiktoken's bytes: a character split over tokens shows each token's bytes."""
    tok = gpt2_bpe
    assert tok.encode(" the") == [262] and piece(tok, 262) == "␣the"
    assert [piece(tok, i) for i in tok.encode("ⱥ")] == ["<0xE2>", "<0xB1>", "<0xA5>"]
    assert piece(tok, tok.eot_id) == EOT
    assert tok.token_bytes(262) == b" the" and tok.token_bytes(tok.eot_id) is None


@run_async
async def test_next_token_panel_shows_bpe_pieces(bpe_ckpt):
    backend = load_backend(bpe_ckpt)
    app = make_app(backend, settings=Settings(max_new_tokens=3, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "to the")
        await until(pilot, done(app))
        await pilot.press("f3")  # the next-token panel
        panel = app.query_one(NextTokenPanel)
        logits = torch.full((backend.tokenizer.vocab_size,), -10.0)
        logits[258], logits[0xE2] = 3.0, 2.0  # " the" first, then the first byte of "—"
        panel.show_next(logits, "next")
        await pilot.pause()
        body = str(app.query_one("#next-token-body").content)
        assert [r.text for r in panel.view.rows[:2]] == ["␣the", "<0xE2>"]
        assert "␣the" in body and "<0xE2>" in body and "\ufffd" not in body
        await send(pilot, "/tokens")
        note = str(app.query("Note").last().content)
        assert note.startswith("fed 3 token(s) (id:text): 116:t 111:o 258:␣the")


@run_async
async def test_show_model_names_the_import(bpe_ckpt):
    app = make_app(load_backend(bpe_ckpt))
    async with app.run_test(size=SIZE) as pilot:
        await send(pilot, "/show model")
        note = str(app.query("Note").last().content)
        assert "weights  imported from huggingface: openai-community/gpt2" in note
        assert f"block size  {BLOCK}" in note and "260 tokens, byte-level BPE" in note


def test_origin_of_a_fine_tune_and_of_a_model_trained_here():
    origin = {"path": "gpt2.pt", "source": "openai-community/gpt2", "steps": None}
    assert describe_origin({"init_from": origin, "steps": 20}) == \
        "fine-tuned from gpt2.pt (itself from openai-community/gpt2)"
    assert describe_origin({"init_from": {"path": "a.pt", "source": None, "steps": 300}}) == \
        "fine-tuned from a.pt after its 300 steps"
    assert describe_origin({"steps": 5000}) == "trained from random initialisation"


@run_async
async def test_attention_panel_on_a_full_1024_token_window(bpe_ckpt):
    app = make_app(load_backend(bpe_ckpt), settings=Settings(max_new_tokens=2, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f4")
        await send(pilot, "to be or not to be, " * 60)  # 1200 bytes, no merges: past the window
        await until(pilot, done(app), timeout=30)
        panel = app.query_one(AttentionPanel)
        panel.update_now()
        assert panel.weights.shape == (2, 2, 1, BLOCK) and len(panel.pieces) == BLOCK
        assert panel.row().sum().item() == pytest.approx(1.0, abs=1e-5)
        body = str(app.query_one("#attention-body").content)
        assert body.startswith(f"the last {ATTENTION_CELLS} of {BLOCK} tokens")
        assert body.count("␣") < 2 * ATTENTION_CELLS  # only the window's cells (and the top 5) are drawn


@run_async
async def test_step_mode_and_the_token_cursor_show_pieces(bpe_ckpt):
    backend = load_backend(bpe_ckpt)
    tok = backend.tokenizer
    app = make_app(backend, settings=Settings(max_new_tokens=3, seed=0))
    async with app.run_test(size=SIZE) as pilot:
        await pilot.press("f7")
        await send(pilot, "to the")
        panel = app.query_one(NextTokenPanel)
        await until(pilot, lambda: panel.view is not None)
        rows = panel.view.rows  # random weights over 260 ids: most candidates are single bytes
        assert [r.text for r in rows] == [piece(tok, r.id) for r in rows]
        assert any(r.text.startswith("<0x") for r in rows)
        assert "\ufffd" not in str(app.query_one("#next-token-body").content)
        await send(pilot, f"/pick {next(r.rank for r in rows if r.text.startswith('<0x'))}")
        app.output.move_cursor(-1)  # the token cursor on the byte just taken: its alternatives
        await pilot.pause()
        body = str(app.query_one("#next-token-body").content)
        assert body.startswith("token 1/1") and "took <0x" in body and "\ufffd" not in body
