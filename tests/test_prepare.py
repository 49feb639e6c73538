"""gpt-prepare: documents joined by end-of-text, tokens identical to encoding the whole text, the
manifest's counts and checksums, re-runs that do nothing, and one-line errors."""

import dataclasses
import random
import sys
import types

import numpy as np
import pytest
from click.testing import CliRunner
from conftest import TEXT

from model.data import encoders
from model.data.cli import main
from model.data.prepare import PrepareConfig, bpe_cut, prepare
from model.data.shards import MANIFEST, DataError, dtype_for, open_prepared, read_manifest
from model.tokenizer import CharTokenizer

quiet = dict(log=lambda m: None)


def run(tmp_path, *sources, **changes):
    cfg = PrepareConfig(sources=tuple(str(s) for s in sources), out=str(tmp_path / "out"), progress=False,
                        **changes)
    manifest, built = prepare(cfg, **quiet)
    return manifest, built, open_prepared(tmp_path / "out")


def stream(data) -> list[int]:
    return data.train[:].tolist() + data.val[:].tolist()


@pytest.fixture
def docs(tmp_path):
    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    texts = ["First doc.\n", "Second, with é.\r\n", "Third and last\n"]
    for name, text in zip(["a.txt", "b.txt", "sub/c.txt"], texts, strict=True):
        (folder / name).write_bytes(text.encode())
    (folder / "notes.md").write_text("not a .txt: left out")
    return folder, [t.replace("\r\n", "\n") for t in texts]


def test_documents_are_joined_by_end_of_text(tmp_path, docs):
    folder, texts = docs
    manifest, built, data = run(tmp_path, folder)
    tok = CharTokenizer.from_text("".join(texts))  # the vocabulary of all of it, sorted
    eot = [tok.eot_id]
    assert built and manifest["tokenizer"] == tok.to_dict()
    assert stream(data) == tok.encode(texts[0]) + eot + tok.encode(texts[1]) + eot + tok.encode(texts[2])
    n = len(stream(data))
    assert manifest["splits"]["train"] == {"start": 0, "tokens": int(0.9 * n), "documents": 3}
    assert manifest["splits"]["val"] == {"start": int(0.9 * n), "tokens": n - int(0.9 * n)}
    assert manifest["dtype"] == "uint16" and manifest["tokens"] == n
    assert [s["tokens"] for s in manifest["shards"]] == [n]
    names = [f["path"].rsplit("/", 1)[1] for f in manifest["fingerprint"]["train"]]
    assert names == ["a.txt", "b.txt", "c.txt"]  # folders: every *.txt below, sorted


def test_a_separate_val_source_and_globs(tmp_path, docs):
    folder, texts = docs
    manifest, _, data = run(tmp_path, folder / "*.txt", val_sources=(str(folder / "sub" / "c.txt"),))
    tok = CharTokenizer.from_text("".join(texts))
    assert data.train[:].tolist() == tok.encode(texts[0]) + [tok.eot_id] + tok.encode(texts[1])
    assert data.val[:].tolist() == tok.encode(texts[2])
    assert manifest["splits"]["val"]["documents"] == 1


def test_running_again_on_unchanged_input_does_nothing(tmp_path, docs):
    folder, _ = docs
    run(tmp_path, folder)
    shard = tmp_path / "out" / "tokens_000000.bin"
    written = shard.stat().st_mtime_ns
    _, built, _ = run(tmp_path, folder)
    assert not built and shard.stat().st_mtime_ns == written
    _, built, _ = run(tmp_path, folder, shard_tokens=5)  # other settings: prepared again
    assert built and len(read_manifest(tmp_path / "out")["shards"]) > 1
    (folder / "a.txt").write_text("First doc, edited.\n")
    _, built, _ = run(tmp_path, folder, shard_tokens=5)
    assert built
    # no temp folders left behind; the lock stays (removing it would race a run starting)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.lock", "docs", "out"]


def test_bpe_tokens_equal_encoding_each_document_whole(tmp_path, monkeypatch, gpt2_bpe):
    """Documents are cut into pieces for the workers only where GPT-2's pre-tokenizer cannot join
    text across the cut, so the tokens are those of each document encoded whole."""
    rng = random.Random(0)
    words = ["the", "other", "there", "é", "'s", "42", "!!", "<|endoftext|>"]
    gaps = [" ", "  ", "\n", "\n\n", " \n", "\n ", "\t"]
    texts = ["".join(rng.choice(words) + rng.choice(gaps) for _ in range(3000)) for _ in range(2)]
    for i, text in enumerate(texts):
        (tmp_path / f"{i}.txt").write_text(text)
    monkeypatch.setattr("model.data.encoders.PIECE_CHARS", 500)  # many cuts per document
    manifest, _, data = run(tmp_path, tmp_path / "0.txt", tmp_path / "1.txt", tokenizer="gpt2", workers=2)
    tok = gpt2_bpe  # GPT-2's real ranks, found by gpt-prepare in GPT_DATA_DIR as here
    whole = [tok.encoding.encode_ordinary(t) for t in texts]  # the spelled-out EOT is ordinary text
    assert stream(data) == whole[0] + [tok.eot_id] + whole[1]
    assert manifest["tokenizer"] == {"kind": "bpe", "encoding": "gpt2"} and manifest["vocab_size"] == 50257
    assert bpe_cut("ab  cd") is None and bpe_cut("ab cd ef") == 5 and bpe_cut("ab\ncd") == 3


def test_short_bpe_documents_joined_into_one_piece_encode_each_on_its_own(tmp_path, monkeypatch,
                                                                          gpt2_bpe):
    """Short documents share a piece, joined by the end-of-text marker, yet each encodes as it would
    alone: text at a document's edge does not merge across (one of only whitespace included), and a
    document that spells the marker keeps it as text (it is never joined)."""
    rng = random.Random(1)
    words = ["the", "other", "there", "é", "'s", "42", "!!"]
    gaps = [" ", "  ", "\n", "\n\n", " \n", "\n ", "\t"]
    texts = [rng.choice(gaps) + "".join(rng.choice(words) + rng.choice(gaps)
                                        for _ in range(rng.randrange(1, 30))) for _ in range(60)]
    texts[7] = "  \n"
    texts[30] = "spelled <|endoftext|> here"
    folder = tmp_path / "docs"
    folder.mkdir()
    for i, text in enumerate(texts):
        (folder / f"{i:03d}.txt").write_text(text)
    monkeypatch.setattr("model.data.encoders.PIECE_CHARS", 300)  # a few documents a piece
    joined = []
    real_pieces = encoders.pieces
    monkeypatch.setattr("model.data.prepare.pieces", lambda *a, **k: (joined.append(p.documents) or p
                                                                 for p in real_pieces(*a, **k)))
    manifest, _, data = run(tmp_path, folder, tokenizer="gpt2", workers=2)
    tok = gpt2_bpe  # GPT-2's real ranks, found by gpt-prepare in GPT_DATA_DIR as here
    want = []
    for text in texts:
        want += tok.encoding.encode_ordinary(text) + [tok.eot_id]
    assert stream(data) == want[:-1]
    assert manifest["splits"]["train"]["documents"] == 60
    assert max(joined) > 1 and sum(joined) == 60  # documents were joined, and each counted once


def test_a_checkpoints_tokenizer_replaces_unknown_characters(tmp_path, tiny_ckpt, char_tok):
    (tmp_path / "t.txt").write_text("First Citizen: ñ\n" * 20)
    manifest, _, data = run(tmp_path, tmp_path / "t.txt", tokenizer=str(tiny_ckpt))
    assert manifest["tokenizer"] == char_tok.to_dict()
    assert stream(data) == char_tok.encode("First Citizen: ñ\n" * 20, unknown="replace")


def test_large_vocabularies_get_uint32(tmp_path):
    assert dtype_for(65_536) == np.uint16 and dtype_for(65_537) == np.uint32
    chars = "".join(chr(c) for c in range(0x100, 0x100 + 70_000) if not 0xD800 <= c < 0xE000)
    (tmp_path / "wide.txt").write_text(chars)
    manifest, _, data = run(tmp_path, tmp_path / "wide.txt")
    assert manifest["dtype"] == "uint32" and manifest["vocab_size"] == len(chars) + 1
    assert data.val[-1:].item() == len(chars) - 1  # the largest code point has the largest id


def test_hugging_face_rows_are_documents(tmp_path, monkeypatch):
    rows = [{"text": "one row"}, {"text": "two"}, {"text": "three rows here"}]
    fake = types.SimpleNamespace(load_dataset=lambda name, config, split, streaming: iter(rows))
    monkeypatch.setitem(sys.modules, "datasets", fake)
    manifest, _, data = run(tmp_path, "hf:someone/corpus:sample@train", max_documents=2)
    tok = CharTokenizer.from_text("one rowtwo")
    assert stream(data) == tok.encode("one row") + [tok.eot_id] + tok.encode("two")
    assert manifest["fingerprint"]["train"][0] == {
        "dataset": "someone/corpus", "config": "sample", "split": "train", "text_field": "text",
        "max_documents": 2}


def test_hugging_face_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(DataError, match=r"^hf:openwebtext needs the datasets package: pip install "):
        run(tmp_path, "hf:openwebtext")

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openwebtext' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(DataError) as e:
        run(tmp_path, "hf:openwebtext")
    assert str(e.value) == ("cannot stream Hugging Face dataset openwebtext (Couldn't reach 'openwebtext' "
                            "on the Hub (LocalEntryNotFoundError)); check the name and that this machine "
                            "is online, or prepare local text files")

    def dropped(*args, **kwargs):
        yield {"text": "one"}
        yield {"text": "two"}
        raise ConnectionError("Read timed out.")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=dropped))
    with pytest.raises(DataError, match=r"^the stream of openwebtext failed after 2 documents \(Read timed "
                                        r"out.\); run the command again \(the output folder is as it was\)$"):
        run(tmp_path, "hf:openwebtext")
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == [".out.lock"]


def test_cli_prepares_verifies_and_explains(tmp_path):
    (tmp_path / "t.txt").write_text(TEXT * 400)  # about 150 KB: shards longer than the edge checks
    out = tmp_path / "out"
    runner = CliRunner()
    result = runner.invoke(main, [str(tmp_path / "t.txt"), "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"{out}: {len(TEXT) * 400:,} tokens in 1 shard(s)" in result.output
    result = runner.invoke(main, [str(tmp_path / "t.txt"), "--out", str(out), "--no-progress"])
    assert "is up to date" in result.output
    assert runner.invoke(main, ["--verify", str(out)]).output.startswith(f"{out}: 1 shard(s)")
    shard = out / "tokens_000000.bin"
    ids = np.fromfile(shard, dtype=np.uint16)
    ids[len(ids) // 2] ^= 1  # the middle: only the full checksum sees it
    ids.tofile(shard)
    open_prepared(out)
    result = runner.invoke(main, ["--verify", str(out)])
    assert result.exit_code == 1 and "tokens_000000.bin does not match its checksum" in result.output
    result = runner.invoke(main, [str(tmp_path / "missing*.txt"), "--out", str(out)])
    assert result.exit_code == 1
    assert result.output.strip().endswith("missing*.txt matches no text file; give files, folders of "
                                          "*.txt, globs or hf:DATASET")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "keep.me").write_text("x")
    result = runner.invoke(main, [str(tmp_path / "t.txt"), "--out", str(tmp_path / "mine")])
    assert result.exit_code == 1 and "holds files gpt-prepare did not write" in result.output
    assert (tmp_path / "mine" / MANIFEST).exists() is False


@pytest.mark.slow  # two short training runs
def test_training_reads_a_prepared_folder_and_resumes_from_it(tmp_path, gpt2_ranks):
    from model.config import GPTConfig
    from model.train.loop import TrainConfig, train

    (tmp_path / "t.txt").write_text(TEXT * 3)
    run(tmp_path, tmp_path / "t.txt", tokenizer="gpt2", shard_tokens=300)
    cfg = TrainConfig(model=GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=16, dropout=0.0),
                      data=str(tmp_path / "out"), out_dir=str(tmp_path / "run"), batch_size=4, max_iters=2,
                      eval_interval=2, eval_iters=1, device="cpu", dtype="fp32", progress=False)
    tr = train(cfg, log=lambda m: None)
    assert tr.model.config.vocab_size == 50257 and tr.splits.folder == tmp_path / "out"
    tr = train(dataclasses.replace(cfg, max_iters=3, resume=True), log=lambda m: None)
    assert tr.step == 3


@pytest.mark.parametrize("args, says", [
    (["--val-fraction", "2"], "2.0 is not in the range 0<x<1"),
    ([], "give at least one source"),
])
def test_bad_values_are_usage_errors(args, says, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("hello world")
    sources = [] if not args else [str(text)]
    result = CliRunner().invoke(main, [*sources, "--out", str(tmp_path / "out"), *args])
    assert result.exit_code == 2 and says in result.output, result.output
    assert not (tmp_path / "out").exists()
