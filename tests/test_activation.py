"""The MLP's activation: exact GELU by default, GPT-2's tanh form on request, in both attention paths."""

import pytest
import torch

from model.config import GPTConfig
from model.gpt import GPT


def logits(config: GPTConfig, ids: torch.Tensor, state: dict | None = None) -> torch.Tensor:
    torch.manual_seed(0)
    model = GPT(config).eval()
    if state is not None:
        model.load_state_dict(state)
    with torch.no_grad():
        return model(ids)[0]


def test_gelu_tanh_changes_the_output_the_same_way_in_both_attention_paths():
    base = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0)
    torch.manual_seed(0)
    state = GPT(base).state_dict()
    ids = torch.randint(0, 11, (2, 8), generator=torch.Generator().manual_seed(1))
    exact = logits(base, ids, state)
    tanh = {a: logits(base.replace(activation="gelu_tanh", attention=a), ids, state)
            for a in ("explicit", "fused")}
    assert (tanh["fused"] - exact).abs().max() > 1e-7  # the two GELUs differ slightly...
    torch.testing.assert_close(tanh["explicit"], tanh["fused"], rtol=0, atol=1e-6)  # ...paths agree


def test_activation_default_validation_and_old_checkpoints():
    assert GPTConfig().activation == "gelu"
    with pytest.raises(ValueError, match="activation must be 'gelu' or 'gelu_tanh', not 'relu'"):
        GPTConfig(activation="relu")
    old = GPTConfig().to_dict()
    del old["activation"]  # a checkpoint written before the field existed
    assert GPTConfig.from_dict(old).activation == "gelu"
