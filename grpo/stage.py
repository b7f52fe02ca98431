"""What a GRPO stage needs before its loop starts: the prompt sets (training and held-out, token
ids chat-templated for the policy) and the combined reward.

`preflight` checks what can be checked before any model loads or Ray starts: every reward
resolves (user modules import, params bind). Reward models marked `ray_actor` are built once Ray
runs (grpo/cluster.py serves them).
"""

from __future__ import annotations

from data_tools.chat import encode_prompts
from data_tools.prompts import load_prompts
from grpo.config import GRPORecipe
from grpo.groups import PromptSet
from policy.load import load_tokenizer, pad_token_id
from rewards.combine import CombinedReward, RewardComponent
from rewards.registry import UnknownRewardError
from train.recipe import RecipeError


def prompt_sets(recipe: GRPORecipe) -> tuple[PromptSet, PromptSet, int]:
    """(training prompts, held-out prompts, the policy's pad id)."""
    d = recipe.data
    tokenizer = load_tokenizer(recipe.policy.name)
    train_rows, eval_rows = load_prompts(d.source, d.num_prompts, d.eval_prompts, d.seed, d.max_digits)
    return (PromptSet(train_rows, encode_prompts(tokenizer, [r.prompt for r in train_rows])),
            PromptSet(eval_rows, encode_prompts(tokenizer, [r.prompt for r in eval_rows])), pad_token_id(tokenizer))


def preflight(recipe: GRPORecipe) -> None:
    """What can be checked before any model loads or Ray starts: every reward resolves."""
    build_reward(recipe, ray_actors=False)


def build_reward(recipe: GRPORecipe, ray_actors: bool = True) -> CombinedReward:
    """The recipe's weighted rewards; ray_actors False leaves actor-served reward models out (the
    pre-flight check before Ray starts)."""
    components = []
    for spec in recipe.rewards:
        if spec.ray_actor:
            if ray_actors:
                from grpo.cluster import reward_model_actor

                components.append(RewardComponent(spec.label, reward_model_actor(spec.params), spec.weight,
                                                  spec.timeout))
            continue
        try:
            components += CombinedReward.from_specs([spec]).components
        except (UnknownRewardError, ValueError) as exc:
            raise RecipeError(f"rewards: {exc}") from exc
    return CombinedReward(components, recipe.on_error)
