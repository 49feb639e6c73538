"""Byte-level BPE carried as data (model.bpe), and its recovery from a tiktoken ranks file."""

import pytest
from conftest import tiny_bpe

from model.bpe import ByteBPETokenizer, bytes_to_unicode
from model.hf.save import byte_bpe_from_ranks, tokenizer_files
from model.tokenizer import EOT, tokenizer_from_dict

BYTES = [bytes_to_unicode()[b] for b in range(256)]
# " the": "h e" (rank 0) comes first, so " the" is made as "Ġt" + "he", as BPE over the ranks makes it
MERGES = ["h e", "l l", "he ll", "hell o", "Ġ t", "t h", "Ġt h", "Ġt he"]
VOCAB = BYTES + ["he", "ll", "hell", "hello", "Ġt", "th", "Ġth", "Ġthe"]
TEXTS = ["hello the world", "hell's bells, then the thistle", "a\nb  c\t", "café 😀", f"x{EOT}hello"]


@pytest.fixture
def tok() -> ByteBPETokenizer:
    return ByteBPETokenizer(VOCAB, MERGES, {EOT: len(VOCAB)})


def test_merges_apply_by_priority_and_text_round_trips(tok):
    assert tok.encode("hello the") == [259, 263]  # "hello", " the"
    assert tok.encode("that") == [261, ord("a"), ord("t")]  # "th"; "Ġth" needs the space
    for text in TEXTS:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode(f"a{EOT}", special=True) == [ord("a"), tok.eot_id] and tok.vocab_size == len(VOCAB) + 1
    assert tok.eot_id not in tok.encode(f"a{EOT}")  # a prompt's text stays text


def test_a_character_split_across_tokens_decodes_whole_or_as_replacement(tok):
    ids = tok.encode("é")  # two bytes, no merge: two tokens
    assert len(ids) == 2 and tok.decode(ids) == "é" and tok.decode(ids[:1]) == "\ufffd"


def test_dict_round_trip_is_plain_data(tok):
    d = tok.to_dict()
    assert all(isinstance(v, (str, list, dict)) for v in d.values())
    again = tokenizer_from_dict(d)
    assert isinstance(again, ByteBPETokenizer)
    assert [again.encode(t) for t in TEXTS] == [tok.encode(t) for t in TEXTS]


def test_bad_data_is_refused_with_the_reason():
    with pytest.raises(ValueError, match="BPE merge 0 'x q' does not make a token"):
        ByteBPETokenizer(BYTES, ["x q"], {EOT: 256})
    with pytest.raises(ValueError, match="has no '<|endoftext|>' special token"):
        ByteBPETokenizer(BYTES, [], {})


def test_merges_recovered_from_ranks_encode_as_tiktoken():
    ranks = tiny_bpe(b"he", b"ll", b"hell", b"hello", b" t", b"th", b" th", b" the")
    data = byte_bpe_from_ranks(ranks)
    assert data.merges == MERGES
    for text in TEXTS:
        assert data.encode(text) == ranks.encode(text), text
    assert set(tokenizer_files(ranks, 1024)) >= {"tokenizer.json", "vocab.json", "merges.txt"}
