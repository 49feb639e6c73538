"""GPT-2's byte-pair ranks: where they are looked for, the check they pass, and the download.

The ranks are tiktoken's ``r50k_base.tiktoken`` (what ``tiktoken.get_encoding("gpt2")`` encodes
with): one ``base64(token) rank`` line for each of 50,256 tokens, the rank being both the token's
id and its merge priority. A copy is trusted only when its SHA-256 is the one tiktoken itself
expects, and it is parsed from the very bytes that were hashed: a truncated download, another
encoding's file or a file swapped into a shared temporary folder is refused, never tokenized with.

The places, in order (model.paths names each folder and variable):

1. the path given (``--ranks PATH``); then ``$GPT_BPE_RANKS``: a wrong file there is refused at once;
2. ``gpt2.tiktoken`` in ``$GPT_DATA_DIR`` (the offline data folder), then in our cache;
3. tiktoken's own cache, where a machine with internet has it after ``get_encoding``: the
   ``r50k_base.tiktoken`` download, or the ``vocab.bpe`` + ``encoder.json`` pair that
   ``get_encoding("gpt2")`` fetches instead, rebuilt into the same ranks (tiktoken's converter);
4. a download through tiktoken (into its cache), where the network allows.

Whatever is found outside our cache is copied there (atomically), so later runs find it at once.
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

from model.atomic import atomic_write
from model.paths import DATA_DIR_ENV, RANKS_ENV, RANKS_FILE, ranks_path, tiktoken_cached

R50K_URL = "https://openaipublic.blob.core.windows.net/encodings/r50k_base.tiktoken"
R50K_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
# what tiktoken.get_encoding("gpt2") downloads: GPT-2's own merges and vocabulary, with their hashes
GPT2_VOCAB_BPE = ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                  "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5")
GPT2_ENCODER_JSON = ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                     "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783")
MAX_BYTES = 4 << 20  # the real file is 835,554 bytes: a much larger one is not it (nor read into memory)
HOW_TO_GET = (f"pass --ranks PATH or set {RANKS_ENV} to a copy of tiktoken's r50k_base.tiktoken (sha256 "
              f"{R50K_SHA256[:16]}...; the openai-whisper package's source distribution ships it as "
              "whisper/assets/gpt2.tiktoken: pip download --no-deps openai-whisper)")


class RanksError(ValueError):
    """GPT-2's ranks cannot be had: not found anywhere, or a file that is not them. One line that
    names each place looked at and what to do."""


def verified(path: Path) -> bytes | str:
    """The bytes of ``path`` when they are GPT-2's ranks, else why not (a short phrase)."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            return f"{size:,} bytes, not GPT-2's ranks"
        data = path.read_bytes()
    except FileNotFoundError:
        return "absent"
    except OSError as e:  # a folder, no permission
        return f"unreadable ({type(e).__name__})"
    digest = hashlib.sha256(data).hexdigest()
    return data if digest == R50K_SHA256 else f"not GPT-2's ranks (sha256 {digest[:16]}...)"


def checked(path: Path, flag: str) -> bytes:
    """The bytes of a ranks file the user named (by ``flag``), or RanksError saying what it is."""
    data = verified(path)
    if isinstance(data, str):
        raise RanksError(f"GPT-2's BPE ranks at {path} ({flag}): {data}; {HOW_TO_GET}")
    return data


def parse(data: bytes) -> dict[bytes, int]:
    """tiktoken's file format -> token bytes -> rank (called on verified bytes only)."""
    ranks = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def serialize(ranks: dict[bytes, int]) -> bytes:
    """The inverse of ``parse``: tiktoken's dump_tiktoken_bpe, which wrote r50k_base.tiktoken."""
    return b"".join(base64.b64encode(token) + b" %d\n" % rank
                    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]))


def load_ranks(given: str | Path | None = None) -> tuple[dict[bytes, int], str]:
    """GPT-2's ranks and where they were read, found as the module says; RanksError if they cannot be."""
    if given or os.environ.get(RANKS_ENV):  # the user's choice: used, or refused, never passed over
        path, flag = (Path(given), "--ranks") if given else (Path(os.environ[RANKS_ENV]), f"${RANKS_ENV}")
        return parse(checked(path, flag)), str(path)

    looked = []
    local = [ranks_path()]
    if os.environ.get(DATA_DIR_ENV):
        local.insert(0, Path(os.environ[DATA_DIR_ENV]) / RANKS_FILE)
    for path in local:
        data = verified(path)
        if isinstance(data, bytes):
            return parse(data), str(path)
        looked.append(f"{path} ({data})")

    cached = tiktoken_cached(R50K_URL)
    if cached is None:
        looked.append("tiktoken's cache (turned off)")
    else:
        data = verified(cached)
        if isinstance(data, bytes):
            return parse(data), keep(data, cached)
        looked.append(f"tiktoken's cache {cached} ({data})")
        ranks = from_gpt2_pair()
        if isinstance(ranks, dict):
            return ranks, keep(serialize(ranks), cached.parent)
        looked.append(f"tiktoken's gpt2 vocab.bpe + encoder.json there ({ranks})")

    data = fetch()
    if isinstance(data, bytes):
        return parse(data), keep(data, R50K_URL)
    looked.append(f"a download from {R50K_URL} ({data})")
    raise RanksError(f"GPT-2's BPE ranks not found; looked at {', '.join(looked)}; {HOW_TO_GET}")


def from_gpt2_pair() -> dict[bytes, int] | str:
    """The ranks rebuilt from the vocab.bpe + encoder.json in tiktoken's cache, or why not."""
    for url, sha256 in (GPT2_VOCAB_BPE, GPT2_ENCODER_JSON):
        path = tiktoken_cached(url)
        try:
            ok = path is not None and hashlib.sha256(path.read_bytes()).hexdigest() == sha256
        except OSError:
            return "absent"
        if not ok:
            return "damaged"
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    # both files are cached with the right hashes, so tiktoken reads them there (no network); the
    # result is checked whole below, whatever happened to the files meanwhile
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(GPT2_VOCAB_BPE[0], GPT2_ENCODER_JSON[0],
                                                GPT2_VOCAB_BPE[1], GPT2_ENCODER_JSON[1])
    except Exception as e:  # tiktoken checks the pair with assert and raises what its parsing meets
        return f"unusable: {type(e).__name__}"
    if hashlib.sha256(serialize(ranks)).hexdigest() != R50K_SHA256:  # GPT-2's are r50k_base's
        return "not GPT-2's ranks once converted"
    return ranks


def fetch() -> bytes | str:
    """r50k_base.tiktoken downloaded through tiktoken (which keeps a copy in its cache and checks the
    hash), or why it could not be."""
    from tiktoken.load import read_file_cached

    try:
        data = read_file_cached(R50K_URL, R50K_SHA256)
    except Exception as e:  # requests' connection errors, a hash mismatch, a full disk: all "failed"
        return f"failed: {type(e).__name__}"
    return data if hashlib.sha256(data).hexdigest() == R50K_SHA256 else "not GPT-2's ranks"


def keep(data: bytes, source: object) -> str:
    """Copy verified ranks into our cache, where the next run looks before tiktoken's -> the place
    they now are. A cache that cannot be written costs only the copy: the ranks are in hand."""
    path = ranks_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            f.write(data)
    except OSError:  # WriteError included: a read-only or full disk
        return str(source)
    return str(path)
