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
import re
from collections.abc import Callable
from pathlib import Path

import torch

from model import checkpoint
from model.bpe import GPT2_SPLIT, ByteBPETokenizer
from model.config import GPTConfig
from model.paths import UnsafePathError, name_inside
from model.tokenizer import EOT

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
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class HFImportError(ValueError):
    """A source that cannot be imported; the message names the file or field and what to do."""


def config_from_hf(hf: dict, where: str = "config.json") -> GPTConfig:
    """GPT-2's config.json -> GPTConfig; refuse, naming the field, whatever our GPT cannot compute."""
    if hf.get("model_type") != "gpt2":
        raise HFImportError(f"{where}: model_type {hf.get('model_type')!r} is not 'gpt2'; only GPT-2 "
                           "models import (the architecture our GPT shares)")
    refusals = {  # field: (value our GPT computes, its default in transformers)
        "scale_attn_weights": (True, True),
        "scale_attn_by_inverse_layer_idx": (False, False),
        "reorder_and_upcast_attn": (False, False),
        "add_cross_attention": (False, False),
    }
    for field, (want, default) in refusals.items():
        if hf.get(field, default) != want:
            raise HFImportError(f"{where}: {field}={hf[field]!r} is not supported (our GPT computes "
                               f"{field}={want}); only plain GPT-2 models import")
    act = hf.get("activation_function", "gelu_new")
    if act not in ACTIVATIONS:
        raise HFImportError(f"{where}: activation_function {act!r} is not supported; "
                           f"use one of {', '.join(ACTIVATIONS)}")
    n_embd = hf["n_embd"]
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise HFImportError(f"{where}: n_inner={hf['n_inner']} is not supported (our MLP is 4 * n_embd "
                           f"= {4 * n_embd} wide)")
    eps = hf.get("layer_norm_epsilon", 1e-5)
    if abs(eps - 1e-5) > 1e-12:
        raise HFImportError(f"{where}: layer_norm_epsilon={eps} is not supported (ours is 1e-05)")
    try:
        return GPTConfig(
            vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
            n_head=hf["n_head"], n_embd=n_embd, dropout=float(hf.get("resid_pdrop", 0.1)), bias=True,
            qkv_bias=True, tie_weights=hf.get("tie_word_embeddings", True), activation=ACTIVATIONS[act],
        )
    except KeyError as e:
        raise HFImportError(f"{where} lacks {e.args[0]!r}; is it a GPT-2 config.json?") from None
    except ValueError as e:
        raise HFImportError(f"{where}: {e}") from None


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
        tensor = tensor.float()
        state[ours] = tensor.t().contiguous() if ours.endswith(CONV1D) else tensor
        if state[ours].shape != want[ours].shape:
            raise HFImportError(f"{where}: {name} has shape {tuple(tensor.shape)}, its config.json wants "
                               f"{tuple(want[ours].shape)}")
    if config.tie_weights:
        state["lm_head.weight"] = state.get("wte.weight")  # one matrix, as in GPT2LMHeadModel
    missing = sorted(k for k in want if state.get(k) is None)
    if missing:
        raise HFImportError(f"{where}: missing weights {missing[:3]}{'...' if len(missing) > 3 else ''}")
    return state


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise HFImportError(f"cannot read {path} ({type(e).__name__}: {e}); download it again") from None


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
        weight_map = read_json(index).get("weight_map")
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


def tokenizer_from_hf(folder: Path, eot_id: int | None) -> ByteBPETokenizer:
    """tokenizer.json (or vocab.json + merges.txt) -> our byte-level BPE as data."""
    path = folder / "tokenizer.json"
    if path.is_file():
        tj = read_json(path)
        model = tj.get("model") or {}
        if model.get("type") != "BPE":
            raise HFImportError(f"{path}: model type {model.get('type')!r} is not a byte-level BPE")
        defaults = {"dropout": None, "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "byte_fallback": False, "ignore_merges": False}  # GPT-2's
        for field, default in defaults.items():
            if model.get(field, default) not in (default, ""):
                raise HFImportError(f"{path}: model.{field}={model[field]!r} is not supported (GPT-2 has "
                                   f"{default!r})")
        pre = tj.get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space") or not pre.get("use_regex", True):
            raise HFImportError(f"{path}: pre_tokenizer {json.dumps(pre)[:80]} is not GPT-2's "
                               "(ByteLevel, add_prefix_space false)")
        if tj.get("normalizer"):
            raise HFImportError(f"{path}: normalizer {tj['normalizer'].get('type')!r} is not supported")
        vocab_map, merges = model.get("vocab", {}), model.get("merges", [])
        special = {t["content"]: t["id"] for t in tj.get("added_tokens", [])}
    else:
        vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
        if not (vocab_path.is_file() and merges_path.is_file()):
            raise HFImportError(f"{folder} has no tokenizer.json nor vocab.json + merges.txt; "
                               "pass a folder with GPT-2's tokenizer")
        vocab_map = read_json(vocab_path)
        lines = merges_path.read_text(encoding="utf-8").splitlines()
        merges = [line for line in lines if line and not line.startswith("#version")]
        special = {t: i for t, i in vocab_map.items() if t == EOT}
    merges = [" ".join(m) if isinstance(m, list) else m for m in merges]  # newer files store pairs
    vocab = sorted(vocab_map, key=vocab_map.get)
    if [vocab_map[t] for t in vocab] != list(range(len(vocab))):
        raise HFImportError(f"{folder}: the tokenizer's ids are not 0..{len(vocab) - 1} without gaps")
    if EOT not in special and eot_id is not None and eot_id < len(vocab):
        special[vocab[eot_id]] = eot_id  # the config's eos token, under whatever name it has
    eot = EOT if EOT in special else next(iter(special), None)
    if eot is None:
        raise HFImportError(f"{folder}: the tokenizer has no end-of-text token ({EOT})")
    try:
        return ByteBPETokenizer(vocab, merges, special, eot=eot, pattern=GPT2_SPLIT)
    except ValueError as e:
        raise HFImportError(f"{folder}: unusable tokenizer ({e})") from None


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
        raise HFImportError("downloading needs huggingface_hub (pip install huggingface_hub); "
                           "or pass a local folder") from None
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
