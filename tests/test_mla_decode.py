"""Absorbed-MLA decode against the naive (expanded) path and transformers' full forward."""

import pytest
import torch
from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

from policy.mla_decode import LatentKVCache, MLADecoder
from policy.presets import DEEPSEEK_PRESETS
from tests.conftest import small_config


def _model(**overrides):
    torch.manual_seed(0)
    return DeepseekV2ForCausalLM(small_config(**overrides)).eval()


def _decode(model, ids, prompt_len, absorbed, steps):
    decoder = MLADecoder(model, absorbed=absorbed)
    cache = decoder.allocate(ids.shape[0], prompt_len + steps)
    logits = [decoder.forward(ids[:, :prompt_len], cache)]
    for i in range(prompt_len, prompt_len + steps):
        logits.append(decoder.forward(ids[:, i : i + 1], cache))
    return torch.cat(logits, 1), cache


@pytest.mark.parametrize("q_lora_rank", [None, 48])
def test_absorbed_equals_naive_over_64_decode_steps(q_lora_rank):
    model = _model(q_lora_rank=q_lora_rank)
    ids = torch.randint(0, model.config.vocab_size, (3, 8 + 64))
    absorbed, _ = _decode(model, ids, 8, absorbed=True, steps=64)
    naive, _ = _decode(model, ids, 8, absorbed=False, steps=64)
    assert (absorbed - naive).abs().max().item() < 1e-5
    # and both equal transformers' own forward over the whole sequence
    with torch.no_grad():
        full = model(ids).logits
    assert (absorbed - full).abs().max().item() < 1e-5


def test_yarn_scaled_attention_matches_transformers():
    rope = dict(DEEPSEEK_PRESETS["deepseek-v2"]["config"]["rope_parameters"])
    model = _model(rope_parameters=rope, max_position_embeddings=163840)
    assert model.model.layers[0].self_attn.scaling == pytest.approx(24 ** -0.5 * 1.260804 ** 2, rel=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (2, 40))
    absorbed, _ = _decode(model, ids, 8, True, 32)
    with torch.no_grad():
        torch.testing.assert_close(absorbed, model(ids).logits, rtol=1e-5, atol=1e-5)


def test_left_padded_rows_decode_like_unpadded():
    model = _model()
    a = torch.randint(0, 128, (1, 12))
    b = torch.randint(0, 128, (1, 7))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 5, dtype=torch.long), b], 1)], 0)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[1, :5] = False
    decoder = MLADecoder(model)
    cache = decoder.allocate(2, 16)
    logits = decoder.forward(ids, cache, valid)
    with torch.no_grad():
        torch.testing.assert_close(logits[0], model(a).logits[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits[1, 5:], model(b).logits[0], rtol=1e-5, atol=1e-5)
        nxt = torch.randint(0, 128, (2, 1))
        step = decoder.forward(nxt, cache)
        torch.testing.assert_close(step[1, 0], model(torch.cat([b, nxt[1:]], 1)).logits[0, -1], rtol=1e-5, atol=1e-5)


def test_cache_holds_576_elements_per_token_per_layer_for_v2_shapes():
    config = DeepseekV2Config(**DEEPSEEK_PRESETS["deepseek-v2"]["config"])
    cache = LatentKVCache.allocate(config, batch=1, max_len=2, dtype=torch.bfloat16, device="meta")
    per_token_per_layer = (cache.latent.shape[-1] + cache.rope_key.shape[-1])
    assert per_token_per_layer == 576
    assert cache.latent.shape[0] * per_token_per_layer == 34560
    cache.length = 1
    assert cache.bytes_used() == 69120  # BF16 bytes per token, reference §1.4


def test_cache_overflow_is_an_error():
    model = _model()
    decoder = MLADecoder(model)
    cache = decoder.allocate(1, 4)
    with pytest.raises(ValueError, match="latent cache holds 4 tokens"):
        decoder.forward(torch.zeros(1, 5, dtype=torch.long), cache)
