"""Hugging Face GPT-2 <-> our GPT: the config fields, the weight names and the tokenizer files.

Our GPT is GPT-2's architecture with nanoGPT's names, so the weights map one to one. The only
change of layout: GPT-2's attention and MLP projections are ``Conv1D`` modules, which store the
weight as (in, out), where ``nn.Linear`` stores (out, in), so those four matrices are transposed.

``import_hf`` reads a local folder (``config.json``, ``model.safetensors`` or the shards of one or
``pytorch_model.bin``, and ``tokenizer.json`` or ``vocab.json`` + ``merges.txt``) or downloads one
from the hub, and writes one of our checkpoints holding the tokenizer as data (model.bpe).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from pathlib import Path

import torch

from model import checkpoint
from model.bpe import GPT2_SPLIT, ByteBPETokenizer
from model.config import GPTConfig
from model.paths import UnsafePathError, name_inside
from model.tokenizer import EOT, GPT2_PATTERN

# GPT-2's activation names -> ours; gelu_new and gelu_pytorch_tanh are the same tanh formula
ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu"}
HF_ACTIVATION = {"gelu_tanh": "gelu_new", "gelu": "gelu"}
# the files a download fetches: configs, weights, tokenizer (not TF/Flax/ONNX copies)
HUB_FILES = ["config.json", "generation_config.json", "*.safetensors", "model.safetensors.index.json",
             "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"]
# Conv1D modules: their weights are (in, out) in GPT-2's files
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
DOWNLOAD_ERRORS = {  # huggingface_hub's exception names -> what they mean for a user
    "LocalEntryNotFoundError": "no network, or HF_HUB_OFFLINE set, and no cached copy",
    "RepositoryNotFoundError": "no such model, or a private one",
    "GatedRepoError": "a gated model: accept its terms and log in first",
}
# the most a JSON file is read for: GPT-2's config.json is 1 kB, its tokenizer.json 1.4 MB, and a
# large vocabulary's some tens of MB; a bigger file is not one of these (and would be held in memory)
CONFIG_BYTES = 1 << 20
TOKENIZER_BYTES = 64 << 20
# what a checkpoint may hold as weights: floating point; an integer tensor is not a GPT-2 weight
FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class HFImportError(ValueError):
    """A source that cannot be imported; the message names the file or field and what to do."""


def config_from_hf(hf: dict, where: str = "config.json") -> GPTConfig:
    """GPT-2's config.json -> GPTConfig; refuse, naming the field, whatever our GPT cannot compute
    (and any field of the wrong JSON type or out of range: the file may have been crafted)."""
    if hf.get("model_type") != "gpt2":
        raise HFImportError(f"{where}: model_type {_shown(hf.get('model_type'))} is not 'gpt2'; only "
                            "GPT-2 models import (the architecture our GPT shares)")
    refusals = {  # field: (value our GPT computes, its default in transformers)
        "scale_attn_weights": (True, True),
        "scale_attn_by_inverse_layer_idx": (False, False),
        "reorder_and_upcast_attn": (False, False),
        "add_cross_attention": (False, False),
    }
    for field, (want, default) in refusals.items():
        if hf.get(field, default) is not want:  # `is`: 1 and 1.0 are not JSON's true
            raise HFImportError(f"{where}: {field}={_shown(hf[field])} is not supported (our GPT "
                                f"computes {field}={want}); only plain GPT-2 models import")
    act = hf.get("activation_function", "gelu_new")
    if not isinstance(act, str) or act not in ACTIVATIONS:
        raise HFImportError(f"{where}: activation_function {_shown(act)} is not supported; "
                            f"use one of {', '.join(ACTIVATIONS)}")
    missing = [k for k in ("vocab_size", "n_positions", "n_layer", "n_head", "n_embd") if k not in hf]
    if missing:
        raise HFImportError(f"{where} lacks {missing[0]!r}; is it a GPT-2 config.json?")
    n_embd = hf["n_embd"]
    if not isinstance(n_embd, int) or isinstance(n_embd, bool):
        raise HFImportError(f"{where}: n_embd must be a positive integer, got {_shown(n_embd)}")
    if hf.get("n_inner") not in (None, 4 * n_embd) or isinstance(hf.get("n_inner"), (bool, float)):
        raise HFImportError(f"{where}: n_inner={_shown(hf['n_inner'])} is not supported (our MLP is "
                            f"4 * n_embd = {4 * n_embd} wide)")
    eps = number(hf, "layer_norm_epsilon", 1e-5, where)
    if abs(eps - 1e-5) > 1e-12:
        raise HFImportError(f"{where}: layer_norm_epsilon={eps} is not supported (ours is 1e-05)")
    dropout = number(hf, "resid_pdrop", 0.1, where)
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
            n_head=hf["n_head"], n_embd=n_embd, dropout=dropout, bias=True,
            qkv_bias=True, tie_weights=hf.get("tie_word_embeddings", True), activation=ACTIVATIONS[act],
        )
    except (TypeError, ValueError) as e:
        raise HFImportError(f"{where}: {str(e)[:160]}") from None


def number(hf: dict, field: str, default: float, where: str) -> float:
    """A finite JSON number of config.json (not a bool, string or NaN), or its default when absent."""
    value = hf.get(field, default)
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise HFImportError(f"{where}: {field} must be a finite number, got {_shown(value)}")
    return float(value)


def hf_config(config: GPTConfig, eot_id: int) -> dict:
    """Our config -> GPT-2's config.json (what GPT2LMHeadModel needs to rebuild it)."""
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": config.vocab_size, "n_positions": config.block_size, "n_ctx": config.block_size,
        "n_embd": config.n_embd, "n_layer": config.n_layer, "n_head": config.n_head, "n_inner": None,
        "activation_function": HF_ACTIVATION[config.activation],
        "resid_pdrop": config.dropout, "embd_pdrop": config.dropout, "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "use_cache": True,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": eot_id, "eos_token_id": eot_id, "torch_dtype": "float32",
    }


def our_name(hf_name: str) -> str | None:
    """GPT-2's parameter name -> ours; None for buffers we rebuild (the causal mask)."""
    name = hf_name.removeprefix("transformer.")
    if re.fullmatch(r"h\.\d+\.attn\.(bias|masked_bias)", name):
        return None  # GPT-2's saved causal mask: ours is built from the config
    name = re.sub(r"^h\.(\d+)\.", r"blocks.\1.", name)
    return name


def hf_name(name: str) -> str:
    """Our parameter name -> GPT2LMHeadModel's."""
    if name.startswith("lm_head."):
        return name
    return "transformer." + re.sub(r"^blocks\.(\d+)\.", r"h.\1.", name)


def state_from_hf(
    hf_state: dict[str, torch.Tensor], config: GPTConfig, where: str
) -> dict[str, torch.Tensor]:
    """GPT-2's weights -> our state dict (Conv1D transposed, fp32), checked against the config."""
    from model.gpt import GPT

    with torch.device("meta"):  # shapes only: no memory for a second copy of the weights
        want = GPT(config).state_dict()
    state = {}
    for name, tensor in hf_state.items():
        ours = our_name(name)
        if ours is None:
            continue
        if ours not in want:
            raise HFImportError(f"{where}: weight {name!r} has no place in a GPT-2; "
                                "is it a GPT-2 checkpoint?")
        if tensor.dtype not in FLOAT_DTYPES:
            raise HFImportError(f"{where}: {name} holds {tensor.dtype} values; GPT-2's weights are "
                                "floating point (float32, float16 or bfloat16)")
        shape = tuple(tensor.t().shape if ours.endswith(CONV1D) and tensor.dim() == 2 else tensor.shape)
        if shape != tuple(want[ours].shape):
            raise HFImportError(f"{where}: {name} has shape {tuple(tensor.shape)}, its config.json wants "
                                f"{tuple(want[ours].shape)}")
        tiny = torch.finfo(tensor.dtype).tiny  # the smallest normal number of the file's dtype
        tensor = tensor.float()
        if not torch.isfinite(tensor).all():
            raise HFImportError(f"{where}: {name} holds NaN or infinite values; download it again")
        # integers relabelled as floats read as subnormals (the int 1 is 1.4e-45 as a float32):
        # no trained weight is all zeros and subnormals, but a small integer tensor is
        if tensor.numel() > 1 and bool((tensor.abs() < tiny).all()) \
                and bool(tensor.any()):
            raise HFImportError(f"{where}: {name} holds only subnormal values, as integers labelled as "
                                "floats would; download it again")
        state[ours] = tensor.t().contiguous() if ours.endswith(CONV1D) else tensor
    if config.tie_weights:
        state["lm_head.weight"] = state.get("wte.weight")  # one matrix, as in GPT2LMHeadModel
    missing = sorted(k for k in want if state.get(k) is None)
    if missing:
        raise HFImportError(f"{where}: missing weights {missing[:3]}{'...' if len(missing) > 3 else ''}")
    return state


def read_text(path: Path, limit: int) -> str:
    """A text file of a Hugging Face folder, refused when larger than ``limit`` bytes or not UTF-8."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise HFImportError(f"{path} has {size:,} bytes, more than the {limit:,} such a file can "
                                "need; is it the right file?")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise HFImportError(f"{path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise HFImportError(f"cannot read {path} ({type(e).__name__}: {e}); download it again") from None


def read_json(path: Path, limit: int = CONFIG_BYTES) -> dict:
    """A JSON object of a Hugging Face folder (at most ``limit`` bytes), refused in one line if not."""
    text = read_text(path, limit)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise HFImportError(f"cannot read {path} ({type(e).__name__}: {str(e)[:80]}); download it again") \
            from None
    if not isinstance(data, dict):
        raise HFImportError(f"{path} holds a JSON {type(data).__name__}, not an object; download it again")
    return data


def read_weights(folder: Path, root: Path | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """The weights of a Hugging Face folder -> (name -> tensor, file name): safetensors, its shards,
    or pytorch_model.bin loaded with weights_only=True (a pickle that could run code is refused).
    A shard named by the index must be a plain file in ``folder`` (symlinks may point inside ``root``)."""
    from safetensors.torch import load_file

    def read(path: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(path)
        except Exception as e:  # safetensors' own error type for damaged or missing files
            raise HFImportError(f"cannot read {path} ({type(e).__name__}: {str(e)[:80]}); "
                                "download it again") from None

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return read(single), single.name
    if index.is_file():
        weight_map = read_json(index, TOKENIZER_BYTES).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise HFImportError(f"{index}: its weight_map is not an object of weight -> file name")
        state = {}
        shards: list = []  # in order, once each (a value may be any JSON: refused by name_inside)
        for shard in weight_map.values():
            shards += [] if shard in shards else [shard]
        for shard in shards:
            try:
                state |= read(name_inside(folder, shard, str(index), root))
            except UnsafePathError as e:
                raise HFImportError(str(e)) from None
        return state, index.name
    binary = folder / "pytorch_model.bin"
    if binary.is_file():
        try:
            return torch.load(binary, map_location="cpu", weights_only=True), binary.name
        except Exception as e:  # the weights-only unpickler refuses code in many ways
            raise HFImportError(f"refusing {binary}: it does not load with weights_only=True "
                               f"({type(e).__name__}); convert it to model.safetensors") from None
    raise HFImportError(f"{folder} has no model.safetensors (nor shards, nor pytorch_model.bin); "
                       "pass a Hugging Face GPT-2 folder")


def tokenizer_from_hf(folder: Path, eot_id: object) -> ByteBPETokenizer:
    """tokenizer.json (or vocab.json + merges.txt) -> our byte-level BPE as data."""
    path = folder / "tokenizer.json"
    if path.is_file():
        tj = read_json(path, TOKENIZER_BYTES)
        model, pre = _object(tj, "model", path), _object(tj, "pre_tokenizer", path)
        if model.get("type") != "BPE":
            raise HFImportError(f"{path}: model type {_shown(model.get('type'))} is not a byte-level BPE")
        defaults = {"dropout": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "byte_fallback": False}  # GPT-2's
        for field, default in defaults.items():
            if model.get(field, default) not in (default, ""):
                raise HFImportError(f"{path}: model.{field}={_shown(model[field])} is not supported "
                                    f"(GPT-2 has {default!r})")
        ignore_merges = model.get("ignore_merges", False)
        if not isinstance(ignore_merges, bool):
            raise HFImportError(f"{path}: model.ignore_merges={_shown(ignore_merges)} is not true or false")
        check_pre_tokenizer(pre, path)
        if tj.get("normalizer"):
            raise HFImportError(f"{path}: normalizer {json.dumps(tj['normalizer'])[:60]} is not supported")
        vocab_map, merges, added = model.get("vocab", {}), model.get("merges", []), tj.get("added_tokens", [])
        if not (isinstance(added, list) and all(isinstance(t, dict) and isinstance(t.get("content"), str)
                                                and _is_id(t.get("id")) for t in added)):
            raise HFImportError(f"{path}: added_tokens is not a list of {{content: text, id: integer}}")
        special = {t["content"]: t["id"] for t in added}
        where = vocab_file = path
    else:
        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        if not (vocab_path.is_file() and merges_path.is_file()):
            raise HFImportError(f"{folder} has no tokenizer.json nor vocab.json + merges.txt; "
                                "pass a folder with GPT-2's tokenizer")
        vocab_map = read_json(vocab_path, TOKENIZER_BYTES)
        lines = read_text(merges_path, TOKENIZER_BYTES).splitlines()
        merges = [line for line in lines if line and not line.startswith("#version")]
        special = {t: i for t, i in vocab_map.items() if t == EOT}
        where, vocab_file, ignore_merges = merges_path, vocab_path, False
    if not (isinstance(vocab_map, dict) and all(_is_id(i) for i in vocab_map.values())):
        raise HFImportError(f"{vocab_file}: the vocabulary is not an object of token -> integer id")
    if not (isinstance(merges, list) and all(
            isinstance(m, str) or (isinstance(m, list) and len(m) == 2 and all(isinstance(p, str) for p in m))
            for m in merges)):
        raise HFImportError(f"{where}: the merges are not a list of \"left right\" pairs")
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]  # newer files store pairs
    vocab = sorted(vocab_map, key=vocab_map.get)
    if [vocab_map[t] for t in vocab] != list(range(len(vocab))):
        raise HFImportError(f"{where}: the tokenizer's ids are not 0..{len(vocab) - 1} without gaps")
    if EOT not in special and _is_id(eot_id) and eot_id < len(vocab):
        special[vocab[eot_id]] = eot_id  # the config's eos token, under whatever name it has
    eot = EOT if EOT in special else next(iter(special), None)
    if eot is None:
        raise HFImportError(f"{where}: the tokenizer has no end-of-text token ({EOT})")
    try:
        tok = ByteBPETokenizer(vocab, merges, special, eot=eot, pattern=GPT2_SPLIT)
    except ValueError as e:
        raise HFImportError(f"{where}: unusable tokenizer ({str(e)[:120]})") from None
    if ignore_merges:
        # ignore_merges takes a word that is itself a token whole, where BPE would run the merges;
        # the two agree exactly when the merges make every token from its own bytes, as GPT-2's do
        unmade = tok.tokens_not_made_by_merges()
        if unmade:
            raise HFImportError(f"{path}: model.ignore_merges is true and {len(unmade)} token(s) such as "
                                f"{_shown(unmade[0])} are not made by the merges, so it would encode "
                                "otherwise than GPT-2's BPE; not supported")
    return tok


# The pre-tokenizer of current converters (transformers' TikTokenConverter): GPT-2's pattern in a
# Split, then ByteLevel without its own regex. The pattern is compared as text with the spellings
# of GPT-2's that are known to split alike (tests/test_bpe.py checks them against each other), never
# compiled: a pattern from a file could backtrack for hours, (a|aa)+$.
GPT2_SPLIT_SPELLINGS = (GPT2_PATTERN, GPT2_SPLIT)


def check_pre_tokenizer(pre: dict, path: Path) -> None:
    """Refuse, in one line, a pre-tokenizer that does not cut text as GPT-2's does: either the 2019
    form (ByteLevel with its own regex) or a Sequence of a Split on GPT-2's pattern and a ByteLevel
    with use_regex false; neither may add a prefix space."""
    if pre.get("type") == "ByteLevel" and not pre.get("add_prefix_space") and pre.get("use_regex", True):
        return
    steps = pre.get("pretokenizers") if pre.get("type") == "Sequence" else None
    if isinstance(steps, list) and len(steps) == 2 and all(isinstance(step, dict) for step in steps):
        split, level = steps
        pattern = split.get("pattern")
        if (split.get("type") == "Split" and isinstance(pattern, dict) and set(pattern) == {"Regex"}
                and split.get("behavior") == "Isolated" and split.get("invert") is False
                and level.get("type") == "ByteLevel" and not level.get("add_prefix_space")
                and level.get("use_regex") is False):
            if pattern["Regex"] in GPT2_SPLIT_SPELLINGS:
                return
            raise HFImportError(f"{path}: pre_tokenizer splits on the pattern {_shown(pattern['Regex'])}, "
                                "not GPT-2's; only GPT-2's pre-tokenizer imports")
    raise HFImportError(f"{path}: pre_tokenizer {json.dumps(pre)[:80]} is not GPT-2's (ByteLevel, or a "
                        "Split on GPT-2's pattern then ByteLevel without its regex; add_prefix_space false)")


def _object(data: dict, field: str, path: Path) -> dict:
    """``data[field]`` when it is a JSON object (or absent or null: {}); refused otherwise."""
    value = data.get(field) or {}
    if not isinstance(value, dict):
        raise HFImportError(f"{path}: {field} is a JSON {type(value).__name__}, not an object")
    return value


def _shown(value: object) -> str:
    """A value read from a JSON file for a message: its repr (1 and '1' differ), cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_id(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def fetch(src: str, progress: bool = True) -> tuple[Path, str]:
    """A local folder as it is, or a hub id downloaded into the Hugging Face cache -> (folder, source)."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path, str(path.resolve())
    if path.exists() or not HUB_ID.match(src):
        raise HFImportError(f"{src} is not a folder; pass a Hugging Face GPT-2 folder or a hub id such "
                           "as openai-community/gpt2")
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars
    except ImportError:
        raise HFImportError("downloading needs huggingface_hub: pip install 'gpt-from-scratch[hub]' "
                           "(or pip install huggingface_hub); or pass a local folder") from None
    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        folder = snapshot_download(src, allow_patterns=HUB_FILES)
    except Exception as e:  # offline, unknown repo, refused: all end the same way for a user
        why = DOWNLOAD_ERRORS.get(type(e).__name__, type(e).__name__)
        raise HFImportError(f"could not download {src} from the Hugging Face hub ({why}); download it where "
                            "you are online and pass its folder: gpt-import hf FOLDER --out CKPT") from None
    return Path(folder), f"hf:{src}"


def import_hf(src: str, out: str | Path, progress: bool = True,
              say: Callable[[str], None] = lambda m: None) -> dict:
    """Write ``out``: a checkpoint of the GPT-2 at ``src`` (folder or hub id), tokenizer included."""
    folder, source = fetch(src, progress)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise HFImportError(f"{folder} has no config.json; pass a Hugging Face GPT-2 folder")
    hf = read_json(config_path)
    config = config_from_hf(hf, str(config_path))
    tokenizer = tokenizer_from_hf(folder, hf.get("eos_token_id"))
    if tokenizer.vocab_size > config.vocab_size:
        raise HFImportError(f"{folder}: the tokenizer has {tokenizer.vocab_size} tokens, the model "
                           f"{config.vocab_size}")
    say(f"reading the weights of {folder}")
    # a hub snapshot's files are symlinks to the blobs of its repository's cache folder
    hf_state, weights_file = read_weights(folder, folder.parents[1] if source.startswith("hf:") else None)
    state = state_from_hf(hf_state, config, str(folder / weights_file))
    meta = {"source": source, "imported_from": "huggingface", "hf_config": hf}
    ckpt = {"config": config.to_dict(), "tokenizer": tokenizer.to_dict(), "model": state, "meta": meta}
    checkpoint.restore_model(ckpt, out)  # refuse to write what would not load
    checkpoint.save(ckpt, out)
    return ckpt
