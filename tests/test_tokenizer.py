import base64

import pytest

from model.tokenizer import (
    EOT,
    BPETokenizer,
    CharTokenizer,
    TokenizerError,
    UnknownCharactersError,
    tokenizer_from_dict,
)


def test_char_round_trip_and_eot(char_tok):
    text = "ROMEO:\nBut, soft!"
    ids = char_tok.encode(text)
    assert char_tok.decode(ids) == text
    assert char_tok.eot_id == char_tok.vocab_size - 1
    assert char_tok.decode([*ids, char_tok.eot_id]) == text + EOT


def test_char_vocab_is_sorted_corpus_characters():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == " dehlorw"
    assert tok.vocab_size == 9  # 8 characters + end-of-text


def test_unknown_character_is_named_in_the_error():
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(UnknownCharactersError) as e:
        tok.encode("cab é")
    assert e.value.chars == ["é"]
    assert str(e.value) == (
        "1 character(s) not in the vocabulary: 'é'; remove them or use unknown='replace'"
    )


def test_replace_mode_substitutes_a_space():
    tok = CharTokenizer.from_text("abc ")
    assert tok.decode(tok.encode("aéb", unknown="replace")) == "a b"


def test_char_tokenizer_dict_round_trip(char_tok):
    again = tokenizer_from_dict(char_tok.to_dict())
    assert again.encode("Speak, speak.") == char_tok.encode("Speak, speak.")


def write_ranks(path, tokens: list[bytes]) -> None:
    """A tiny .tiktoken ranks file: every byte as a token, then some merges."""
    lines = [f"{base64.b64encode(t).decode()} {rank}" for rank, t in enumerate(tokens)]
    path.write_text("\n".join(lines) + "\n")


def test_bpe_from_local_ranks_file(tmp_path):
    ranks = tmp_path / "tiny.tiktoken"
    write_ranks(ranks, [bytes([b]) for b in range(256)] + [b"he", b"ll", b"hell", b"hello"])
    tok = BPETokenizer(ranks)
    ids = tok.encode("hello hello")
    assert ids[0] == 259  # "hello" merged into one token
    assert tok.decode(ids) == "hello hello"
    assert tok.eot_id == 260 and tok.vocab_size == 261
    assert tok.encode("x" + EOT, special=True) == [ord("x"), 260]  # training text may hold the marker
    assert 260 not in tok.encode("x" + EOT)  # a prompt cannot inject it
    assert tok.decode(tok.encode("x" + EOT)) == "x" + EOT
    assert tok.to_dict() == {"kind": "bpe", "encoding": "gpt2"}


def test_bpe_missing_ranks_file_is_a_clear_error(tmp_path):
    with pytest.raises(TokenizerError, match="GPT-2 BPE ranks file not found at .*missing.tiktoken"):
        BPETokenizer(tmp_path / "missing.tiktoken")


def test_bpe_ranks_path_from_environment(tmp_path, monkeypatch):
    ranks = tmp_path / "env.tiktoken"
    write_ranks(ranks, [bytes([b]) for b in range(256)])
    monkeypatch.setenv("GPT_BPE_RANKS", str(ranks))
    assert tokenizer_from_dict({"kind": "bpe", "encoding": "gpt2"}).decode([104, 105]) == "hi"


def test_a_damaged_ranks_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.tiktoken"
    bad.write_text("not base64!! x\n")
    with pytest.raises(TokenizerError, match="bad.tiktoken is unreadable"):
        BPETokenizer(bad)
    empty = tmp_path / "empty.tiktoken"
    empty.write_text("")
    with pytest.raises(TokenizerError, match="empty.tiktoken is empty"):
        BPETokenizer(empty)
