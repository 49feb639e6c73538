"""An ONNX folder other runtimes load: our ``model.onnx`` plus the files their loaders look for.

- Hugging Face Optimum (``optimum.onnxruntime.ORTModelForCausalLM.from_pretrained(DIR)``) reads
  ``config.json`` as a GPT-2's to learn the heads and layers, and finds the cache inputs by the
  ``past_key_values.{i}.key`` names our graph already uses (export.onnx_export).
- ONNX Runtime GenAI (``onnxruntime_genai.Model(DIR)``) reads ``genai_config.json``: model type
  ``decoder`` (a generic decoder, nothing model-specific assumed), our input and output names, and
  ``past_present_share_buffer: false``, because this graph returns the present as past + new (a new
  buffer every step) rather than writing into a preallocated one.
- Both take the tokenizer from ``tokenizer.json`` and friends (model.hf.save).

The ``model.onnx`` is the single-file export in the ``concat`` layout (export.graph): Optimum feeds
an empty past first and left-pads a batch, which the single file's in-place cache cannot take. It
carries the same metadata, so our own ONNX Runtime backend opens it too (one row at a time: its
batched decoder needs the cache layout). With ``kind`` it is the converted file (export.quantize),
whose contrib ops (MatMulNBits, GatherBlockQuantized, MatMulInteger) both loaders run through ONNX
Runtime as they are, so the other files do not change.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from export.onnx_export import export_onnx
from export.quantize import Quantize, export_converted
from model.atomic import writing
from model.checkpoint import load, restore_model
from model.config import GPTConfig
from model.hf.save import hf_files, write_files

MODEL_FILE = "model.onnx"


def genai_config(config: GPTConfig, eot_id: int) -> dict:
    """genai_config.json for our graph (see the module docstring)."""
    return {
        "model": {
            "type": "decoder",
            "bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id,
            "context_length": config.block_size, "vocab_size": config.vocab_size,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE,
                "head_size": config.head_size, "hidden_size": config.n_embd,
                "num_attention_heads": config.n_head, "num_key_value_heads": config.n_head,
                "num_hidden_layers": config.n_layer,
                "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask",
                           "position_ids": "position_ids", "past_key_names": "past_key_values.%d.key",
                           "past_value_names": "past_key_values.%d.value"},
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key",
                            "present_value_names": "present.%d.value"},
            },
        },
        "search": {
            "do_sample": False, "num_beams": 1, "num_return_sequences": 1, "max_length": config.block_size,
            "min_length": 0, "past_present_share_buffer": False, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0, "early_stopping": True, "length_penalty": 1.0,
            "no_repeat_ngram_size": 0, "diversity_penalty": 0.0,
        },
    }


def export_folder(
    ckpt_path: str | Path,
    out: str | Path,
    opset: int | None = None,
    progress: Callable[[str], None] | None = None,
    validate: bool = True,
    kind: Quantize | None = None,
    data: str | None = None,
    status: Callable[[str], None] = lambda message: None,
) -> Path:
    """Write ``out/model.onnx`` (validated as the single file is; with ``kind``, converted and judged
    on ``data`` as export.quantize.export_converted does) and the files Optimum and GenAI read."""
    say = progress or (lambda message: None)
    out = Path(out)
    model, tokenizer = restore_model(load(ckpt_path), ckpt_path)
    config = model.config
    del model  # the export loads the weights again; holding them here would add to its peak
    with writing(out):  # one export into the folder at a time
        if kind is None:
            export_onnx(ckpt_path, out / MODEL_FILE, opset, say, validate, layout="concat")
        else:
            export_converted(Path(ckpt_path), out / MODEL_FILE, kind, opset, say, validate, data, status,
                             layout="concat")
        say(f"writing config.json, genai_config.json and the tokenizer into {out}")
        files = hf_files(config, tokenizer)
        files["genai_config.json"] = genai_config(config, tokenizer.eot_id)
        write_files(out, files)
    return out
