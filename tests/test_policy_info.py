"""Parameter and KV-cache figures of the published models (V2 §3.1.2, App. B.1)."""

import pytest

from policy.info import policy_figures
from policy.load import policy_config


@pytest.mark.parametrize(
    "preset, total, activated, kv_per_token",
    [("deepseek-v2", 236e9, 21e9, 34560), ("deepseek-v2-lite", 15.7e9, 2.4e9, 15552)],
)
def test_published_figures(preset, total, activated, kv_per_token):
    figures = policy_figures(policy_config(preset))
    assert figures["total_params"] == pytest.approx(total, rel=0.03)
    assert figures["activated_params"] == pytest.approx(activated, rel=0.03)
    assert figures["kv_cache_elements_per_token_per_layer"] == 576
    assert figures["kv_cache_elements_per_token"] == kv_per_token


def test_v2_cache_is_under_2_percent_of_mha():
    figures = policy_figures(policy_config("deepseek-v2"))
    # 576 / (2 * 128 heads * 128) = 1.76%  (reference §1.4)
    assert figures["kv_cache_vs_mha"] == pytest.approx(0.0176, abs=1e-4)
    assert figures["mha_kv_cache_elements_per_token"] == 2 * 128 * 128 * 60


def test_tiny_is_a_few_million_parameters():
    figures = policy_figures(policy_config("tiny"))
    assert 2e6 < figures["total_params"] < 10e6
    assert figures["activated_params"] < figures["total_params"]
