"""Preparing data: tokenizing throughput, and a training process's memory against corpus size.

    python bench/prepare.py [--text-mb 50] [--tokens-gb 1] [--runs 3] [--quick]

1. Throughput (MB of text per second) on the same corpus (Tiny Shakespeare cut into documents of
   ~8 KB, repeated to --text-mb, one file each): GPT-2 BPE through model.data.prepare (pieces encoded on
   every core) beside nanoGPT's way (tiktoken ``encode_ordinary`` per document, EOT appended,
   ``np.array(uint16).tofile``); and the character tokenizer through model.data.prepare beside
   nanoGPT's shakespeare_char way (a Python list of ids for the whole text); --runs of each, in turn,
   medians.
2. Peak resident memory of a process that opens the data and runs training steps (the ``cpu``
   preset, batch 16), each in its own child process: the in-memory path this replaced (read the
   text, a Python list of ids, an int64 tensor) on --text-mb of text, then memory-mapped prepared
   folders of 50 MB and --tokens-gb of uint16 tokens.

BPE is GPT-2's own: its real ranks, found as every command finds them (--ranks PATH here, else
$GPT_BPE_RANKS, $GPT_DATA_DIR/gpt2.tiktoken, the user cache, tiktoken's cache, a download; see
model/gpt2_ranks.py), and both ways use the same loaded tokenizer. Last line:
bpe_mb_s=<f> vs_nanogpt=<f> rss_small_mb=<f> rss_large_mb=<f>
(rss_small_mb: the prepared 50 MB folder; rss_large_mb: the prepared --tokens-gb folder.)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from model.config import preset
from model.data.corpus import Splits, shakespeare_path
from model.data.prepare import PrepareConfig, ShardWriter, prepare
from model.data.shards import FORMAT, MANIFEST, dtype_for, open_prepared
from model.gpt import build_model
from model.tokenizer import BPETokenizer, CharTokenizer, TokenizerError
from model.train.loop import TrainConfig, make_optimizer, train_step
from model.train.state import Trainer

DOC_CHARS = 8_000
BATCH, STEPS = 16, 3


def make_corpus(folder: Path, mb: float) -> int:
    """Tiny Shakespeare in ~8 KB documents, repeated to ``mb`` MB, one file each -> bytes written."""
    text = shakespeare_path().read_text(encoding="utf-8")
    docs = [text[i:i + DOC_CHARS] for i in range(0, len(text), DOC_CHARS)]
    folder.mkdir(parents=True)
    total, n = 0, 0
    while total < mb * 1e6:
        doc = docs[n % len(docs)]
        (folder / f"{n:07d}.txt").write_text(doc, encoding="utf-8")
        total, n = total + len(doc.encode()), n + 1
    return total


def nanogpt_bpe(folder: Path, out: Path, tok: BPETokenizer) -> None:
    """nanoGPT's prepare: encode_ordinary per document, EOT after each, one uint16 array, tofile."""
    ids: list[int] = []
    for path in sorted(folder.glob("*.txt")):
        ids.extend(tok.encoding.encode_ordinary(path.read_text(encoding="utf-8")))
        ids.append(tok.eot_id)
    np.array(ids, dtype=np.uint16).tofile(out)


def nanogpt_char(folder: Path, out: Path) -> None:
    """nanoGPT's shakespeare_char prepare: the whole text, a vocabulary, a list comprehension."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt")))
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    np.array([stoi[c] for c in text], dtype=np.uint16).tofile(out)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def fake_prepared(folder: Path, n_tokens: int, vocab: int) -> None:
    """A prepared folder of random ids (written directly: tokenizing a GB of text is not the point)."""
    folder.mkdir(parents=True)
    writer = ShardWriter(folder, dtype_for(vocab), 100_000_000)
    rng = np.random.default_rng(0)
    for start in range(0, n_tokens, 1 << 24):
        writer.write(rng.integers(0, vocab - 1, min(1 << 24, n_tokens - start), dtype=np.uint16))
    n_train = int(0.9 * n_tokens)
    tok = CharTokenizer("".join(chr(65 + i) for i in range(vocab - 1)))
    manifest = {"format": FORMAT, "tokenizer": tok.to_dict(), "vocab_size": vocab, "eot_id": vocab - 1,
                "dtype": dtype_for(vocab).name, "tokens": n_tokens, "shards": writer.close(),
                "splits": {"train": {"start": 0, "tokens": n_train},
                           "val": {"start": n_train, "tokens": n_tokens - n_train}}}
    (folder / MANIFEST).write_text(json.dumps(manifest))


def child_rss(kind: str, path: str) -> None:
    """In a child process: open the data as training would, run STEPS steps, print peak RSS (MB)."""
    torch.set_num_threads(1)
    if kind == "memory":  # the path this replaced: the text, a list of ids, an int64 tensor
        text = Path(path).read_text(encoding="utf-8")
        tok = CharTokenizer.from_text(text)
        splits = Splits.from_ids(torch.tensor(tok.encode(text), dtype=torch.long))
        del text
        vocab = tok.vocab_size
    else:
        splits = open_prepared(path)
        vocab = splits.manifest["vocab_size"]
    cfg = preset("cpu").replace(vocab_size=vocab)
    torch.manual_seed(0)
    model = build_model(cfg)
    train_cfg = TrainConfig(model=cfg, batch_size=BATCH, max_iters=10**6, warmup_iters=0)
    device = torch.device("cpu")
    tr = Trainer(train_cfg, model, model, make_optimizer(model, train_cfg, device), splits, device,
                 torch.float32, torch.Generator().manual_seed(0))
    for _ in range(STEPS):
        train_step(tr)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)  # Linux: KiB


def peak_rss(kind: str, path: Path) -> float:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(path)], check=True,
                         capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO)})
    return float(out.stdout.strip().splitlines()[-1])


REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--text-mb", type=float, default=50, help="text: throughput, in-memory path")
    parser.add_argument("--tokens-gb", type=float, default=1, help="the large prepared folder")
    parser.add_argument("--small-mb", type=float, default=50, help="the small prepared folder")
    parser.add_argument("--runs", type=int, default=3, help="throughput runs of each way, in turn (median)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 1 MB of text, 20 MB of tokens, 1 run")
    parser.add_argument("--work", help="scratch folder (default: a temp folder, removed at the end)")
    parser.add_argument("--ranks", help="GPT-2's ranks file (default: found as gpt-prepare finds it)")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child_rss(*args.child)
    if args.quick:
        args.text_mb, args.tokens_gb, args.small_mb, args.runs = 1, 0.02, 5, 1
    try:  # before any work: without GPT-2's own ranks there is nothing to measure
        tok = BPETokenizer(args.ranks)
    except TokenizerError as e:
        sys.exit(f"error: {e}")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        run(args, work, tok)
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)


def run(args, work: Path, tok: BPETokenizer) -> None:
    print(f"{os.cpu_count()} cores, torch {torch.__version__}, numpy {np.__version__}")
    corpus = work / "corpus"
    nbytes = make_corpus(corpus, args.text_mb)
    mb = nbytes / 1e6
    print(f"corpus: {mb:.1f} MB in {len(list(corpus.iterdir())):,} documents")
    print(f"GPT-2's ranks: {tok.ranks_path} (sha256 {tok.ranks_sha256[:16]}...)")

    def ours(tokenizer: str, name: str) -> None:
        # BPE gets the loaded tokenizer, as nanoGPT's way does: both time encoding, not loading ranks
        cfg = PrepareConfig(sources=(str(corpus),), out=str(work / name), tokenizer=tokenizer, progress=False)
        prepare(cfg, log=lambda m: None, tokenizer=tok if tokenizer == "gpt2" else None)

    times: dict[str, list[float]] = {"bpe": [], "nano": [], "char": [], "nano_char": []}
    for _ in range(args.runs):  # in turn, so each pair sees the same machine; medians
        for name in ("bpe", "char"):
            shutil.rmtree(work / name, ignore_errors=True)  # else the second run is a no-op
        times["bpe"].append(timed(lambda: ours("gpt2", "bpe")))
        times["nano"].append(timed(lambda: nanogpt_bpe(corpus, work / "nanogpt_bpe.bin", tok)))
        times["char"].append(timed(lambda: ours("char", "char")))
        times["nano_char"].append(timed(lambda: nanogpt_char(corpus, work / "nanogpt_char.bin")))
    t_bpe, t_nano, t_char, t_nano_char = (statistics.median(times[k]) for k in times)
    bpe_tokens = open_prepared(work / "bpe").manifest["tokens"]
    nano_tokens = (work / "nanogpt_bpe.bin").stat().st_size // 2
    print(f"GPT-2 BPE: model.data.prepare {mb / t_bpe:.2f} MB/s, nanoGPT's way {mb / t_nano:.2f} MB/s "
          f"({t_nano / t_bpe:.2f}x; each run's ratio: "
          f"{', '.join(f'{n / b:.2f}' for n, b in zip(times['nano'], times['bpe'], strict=True))}); "
          f"{bpe_tokens:,} and {nano_tokens:,} tokens (nanoGPT ends the last document with one too)")
    print(f"characters: model.data.prepare {mb / t_char:.2f} MB/s, nanoGPT's way {mb / t_nano_char:.2f} MB/s "
          f"({t_nano_char / t_char:.2f}x)")
    for name in ("bpe", "char"):
        shutil.rmtree(work / name)

    text = work / "all.txt"
    with open(text, "w", encoding="utf-8") as f:
        for p in sorted(corpus.glob("*.txt")):
            f.write(p.read_text(encoding="utf-8"))
    shutil.rmtree(corpus)
    rss_memory = peak_rss("memory", text)
    small, large = work / "small", work / "large"
    fake_prepared(small, int(args.small_mb * 1e6 / 2), 66)
    rss_small = peak_rss("prepared", small)
    shutil.rmtree(small)
    fake_prepared(large, int(args.tokens_gb * 1e9 / 2), 66)
    rss_large = peak_rss("prepared", large)
    print(f"peak RSS, {STEPS} training steps of the cpu preset, batch {BATCH}: in memory ({mb:.0f} MB of "
          f"text) {rss_memory:.0f} MB; memory-mapped {args.small_mb:.0f} MB of tokens {rss_small:.0f} MB, "
          f"{args.tokens_gb:g} GB of tokens {rss_large:.0f} MB ({rss_large / rss_small - 1:+.1%})")
    print(f"bpe_mb_s={mb / t_bpe:.2f} vs_nanogpt={t_nano / t_bpe:.2f} rss_small_mb={rss_small:.1f} "
          f"rss_large_mb={rss_large:.1f}")


if __name__ == "__main__":
    main()
