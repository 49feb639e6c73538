import pytest
import torch

from model.config import PRESETS, GPTConfig, preset
from model.gpt import GPT, Bigram, count_params


def block_params(C: int, bias: bool = True, qkv_bias: bool = True) -> int:
    """One block: qkv 3C^2, out proj C^2, MLP 8C^2; biases qkv 3C, proj C, fc 4C, fc2 C; 2 LNs."""
    weights = 12 * C * C
    biases = (3 * C if qkv_bias else 0) + (C + 4 * C + C if bias else 0)
    layer_norms = 2 * (2 * C if bias else C)
    return weights + biases + layer_norms


def gpt_params(V, T, L, C, bias=True, qkv_bias=True, tied=True) -> int:
    embeddings = V * C + T * C
    head = 0 if tied else V * C  # lm_head has no bias
    final_ln = 2 * C if bias else C
    return embeddings + L * block_params(C, bias, qkv_bias) + final_ln + head


@pytest.mark.parametrize("name, expected, approx_m", [
    # tied embeddings everywhere; shakespeare vocab = 65 chars + end-of-text
    ("shakespeare-char", gpt_params(66, 256, 6, 384), 10.77),
    # 8 blocks of the same width: 14.3M with this architecture (the 13.1M in our brief does not
    # follow from 8 x (6 heads, 384) with a 4x MLP; the count below is what this shape gives)
    ("mini-13m", gpt_params(66, 256, 8, 384), 14.32),
    ("gpt2-124m", gpt_params(50257, 1024, 12, 768, qkv_bias=False), 124.41),
    ("cpu", gpt_params(66, 64, 4, 128), 0.81),
])
def test_preset_parameter_counts(name, expected, approx_m):
    cfg = preset(name)
    with torch.device("meta"):  # shapes only: no memory for gpt2-124m
        model = GPT(cfg)
    assert count_params(model) == expected
    assert round(expected / 1e6, 2) == approx_m


def test_config_validation_says_what_to_fix():
    with pytest.raises(ValueError, match="n_embd must be divisible by n_head: 100 % 6 != 0"):
        GPTConfig(n_embd=100, n_head=6)
    with pytest.raises(ValueError, match="dropout must be in"):
        GPTConfig(dropout=1.5)
    with pytest.raises(ValueError, match="unknown preset 'gpt5'"):
        preset("gpt5")
    assert set(PRESETS) >= {"shakespeare-char", "mini-13m", "gpt2-124m", "cpu"}


def test_explicit_and_fused_attention_agree(tiny_config):
    idx = torch.randint(0, tiny_config.vocab_size, (3, tiny_config.block_size))
    torch.manual_seed(0)
    explicit = GPT(tiny_config.replace(attention="explicit")).eval()
    fused = GPT(tiny_config.replace(attention="fused")).eval()
    fused.load_state_dict(explicit.state_dict())
    torch.testing.assert_close(explicit(idx)[0], fused(idx)[0], rtol=0, atol=1e-5)


@pytest.mark.parametrize("attention", ["explicit", "fused"])
def test_causality_later_tokens_never_change_earlier_logits(tiny_config, attention):
    torch.manual_seed(0)
    model = GPT(tiny_config.replace(attention=attention)).eval()
    idx = torch.randint(0, tiny_config.vocab_size, (1, 20))
    changed = idx.clone()
    changed[0, 12:] = (changed[0, 12:] + 1) % tiny_config.vocab_size
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :12], b[:, :12], rtol=0, atol=0)
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_too_long_input_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="33 positions exceed block_size 32"):
        tiny_model(torch.zeros(1, 33, dtype=torch.long))


@pytest.mark.parametrize("kind", ["gpt", "bigram"])
def test_tiny_model_overfits_one_batch(tiny_config, kind):
    torch.manual_seed(0)
    cfg = tiny_config.replace(kind=kind)
    model = GPT(cfg) if kind == "gpt" else Bigram(cfg)
    x = torch.randint(0, cfg.vocab_size, (4, 16))
    y = torch.roll(x, -1, dims=1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2 if kind == "gpt" else 1.0)
    first = None
    for _ in range(150):
        _, loss = model(x, y)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    # a bigram can only learn the pairs; the GPT memorises the whole batch
    assert loss.item() < (0.1 if kind == "gpt" else 0.6 * first)
