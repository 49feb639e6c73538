"""Byte-level BPE carried as data (model.bpe), its recovery from tiktoken ranks, and GPT-2's real
tokenizer (both ours) against tiktoken's own on a wide, varied corpus."""

import pytest
import regex
from conftest import REPO, tiny_bpe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from model.bpe import GPT2_SPLIT, ByteBPETokenizer, bytes_to_unicode
from model.data.corpus import read_text
from model.gpt2_ranks import R50K_SHA256
from model.hf.save import byte_bpe_from_ranks, tokenizer_files
from model.tokenizer import EOT, GPT2_PATTERN, tokenizer_from_dict

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


# -- GPT-2's real ranks against tiktoken's own encoding, over a wide, varied corpus ---------------

FRAGMENTS = [
    "It's", "we'll", "they're", "I'd", "you've", "DON'T", "'s", "''", "'ll've", "   ", "\t\t", "\n\n\n",
    " \n ", "\r\n", "\u00a0", "\u3000", "\u2003 ", "1234567890", "3.14159", "1,000,000", "٣٤٥", "½",
    "😀", "👩‍👩‍👧", "🏳️‍🌈", "🎭🎭", "café", "naïve", "e\u0301", "Ελληνικά", "日本語のテキスト", "русский",
    "עברית", "हिन्दी", "한국어", "def f(x):\n    return x**2  # square", "for (int i = 0; i < n; ++i) {}",
    "<|endoftext|>", "<|", "|>", " SolidGoldMagikarp", "\x00", "\x7f", "\ufeff", "ſ", "ﬁ", "𝔘𝔫𝔦",
]
TEXT_CHARS = st.characters(exclude_categories=["Cs"])  # lone surrogates are not UTF-8 text
VARIED = st.lists(st.one_of(
    st.sampled_from(FRAGMENTS),
    st.text(TEXT_CHARS, max_size=8),
    st.text(st.sampled_from(" \t\n\r\u00a0\u2003\u3000\x0b\x0c"), min_size=1, max_size=8),  # whitespace runs
    st.from_regex(r"[0-9]{1,12}", fullmatch=True),
    st.from_regex(r" ?[A-Za-z]{1,10}('(s|t|re|ve|m|ll|d))?", fullmatch=True),
), max_size=24).map("".join)
SETTLE = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def corpus_files() -> list[str]:
    """Real text of many kinds: this repository's code and docs (Unicode, tables, shell), and a
    stretch of Tiny Shakespeare."""
    files = [*sorted(REPO.glob("model/**/*.py")), *sorted(REPO.glob("docs/*.md")), REPO / "README.md"]
    texts = [p.read_text(encoding="utf-8") for p in files]
    return texts + [read_text("shakespeare")[:100_000]]


@pytest.fixture(scope="module")
def tiktoken_gpt2(gpt2_ranks):
    """tiktoken's GPT-2 encoding, built as tiktoken_ext.openai_public builds r50k_base (its pattern,
    its loader with the hash it expects), from the real file instead of the download."""
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    ranks = load_tiktoken_bpe(str(gpt2_ranks), expected_hash=R50K_SHA256)
    return tiktoken.Encoding(name="r50k_base", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256}, explicit_n_vocab=50257)


@pytest.fixture(scope="module")
def gpt2_as_data(gpt2_bpe):
    """Our pure-Python BPE (model.bpe) with GPT-2's 50,000 merges recovered from the ranks: the
    tokenizer `gpt-export hf` writes for a GPT-2 trained here, and imported models carry."""
    return byte_bpe_from_ranks(gpt2_bpe)


def test_our_split_patterns_are_tiktokens(tiktoken_gpt2):
    from tiktoken_ext.openai_public import r50k_pat_str

    assert GPT2_PATTERN == r50k_pat_str


@SETTLE
@given(VARIED)
def test_split_spellings_cut_text_alike(text):
    """GPT-2's pattern as tiktoken spells it and as tokenizers' ByteLevel spells it (model.bpe)."""
    assert regex.findall(GPT2_PATTERN, text) == regex.findall(GPT2_SPLIT, text)


@pytest.mark.slow  # 400 varied texts, a few seconds
@settings(SETTLE, max_examples=400)
@given(VARIED)
def test_gpt2_bpe_encodes_as_tiktoken_on_varied_text(gpt2_bpe, tiktoken_gpt2, text):
    assert gpt2_bpe.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2_bpe.encode(text, special=True) == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2_bpe.decode(gpt2_bpe.encode(text)) == text


def test_gpt2_bpe_encodes_as_tiktoken_on_code_docs_and_shakespeare(gpt2_bpe, tiktoken_gpt2):
    for text in corpus_files():
        assert gpt2_bpe.encode(text, special=True) == tiktoken_gpt2.encode(text, allowed_special="all")


@pytest.mark.slow  # GPT-2's merges recovered (seconds), then BPE in pure Python
@settings(SETTLE, max_examples=300)
@given(VARIED)
def test_bpe_as_data_encodes_as_tiktoken_on_varied_text(gpt2_as_data, tiktoken_gpt2, text):
    assert gpt2_as_data.encode(text) == tiktoken_gpt2.encode_ordinary(text)
    assert gpt2_as_data.encode(text, special=True) == tiktoken_gpt2.encode(text, allowed_special="all")
    assert gpt2_as_data.decode(gpt2_as_data.encode(text)) == text


@pytest.mark.slow
def test_bpe_as_data_encodes_as_tiktoken_on_code_docs_and_shakespeare(gpt2_as_data, tiktoken_gpt2):
    assert len(gpt2_as_data.merges) == 50_000 and gpt2_as_data.tokens_not_made_by_merges() == []
    for text in corpus_files():
        assert gpt2_as_data.encode(text, special=True) == tiktoken_gpt2.encode(text, allowed_special="all")
