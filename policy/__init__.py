"""policy: the DeepSeek-V2 policy (MLA + DeepSeekMoE) that SFT, GRPO, rollout and reward models run.

Built on transformers' DeepseekV2ForCausalLM (same parameter names and files). See
policy/model.py for what we add, policy/mla_decode.py for the absorbed decode path, and
policy/load.py for presets and checkpoints.
"""

from policy.load import load_policy, policy_config
from policy.model import DeepseekV2Policy, PolicyOutput
from policy.moe import MoEOptions

__all__ = ["DeepseekV2Policy", "MoEOptions", "PolicyOutput", "load_policy", "policy_config"]
