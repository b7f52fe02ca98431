"""rewards: the reward plug-in API, built-in rewards, the code sandbox, and reward models.

    from rewards import get_reward, combine
    fn = get_reward("math_accuracy", extraction="boxed")
    fn(prompts, completions, answer=answers)  # -> [1.0, 0.0, None, ...]
"""

from rewards.api import call_reward, get_reward
from rewards.combine import CombinedReward, RewardBatch, RewardComponent, RewardError, combine
from rewards.registry import register_reward, registered_rewards
from rewards.text import completion_text

__all__ = [
    "CombinedReward", "RewardBatch", "RewardComponent", "RewardError", "call_reward", "combine",
    "completion_text", "get_reward", "register_reward", "registered_rewards",
]
