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
from policy.load import load_tokenizer, pad_token_id, policy_config
from rewards.combine import CombinedReward, RewardComponent
from rewards.registry import UnknownRewardError
from train.recipe import RecipeError


def prompt_sets(recipe: GRPORecipe) -> tuple[PromptSet, PromptSet, int]:
    """(training prompts, held-out prompts, the policy's pad id). Prompts that leave the policy's
    context no room for `rollout.sampling.max_new_tokens` are dropped, saying how many."""
    d = recipe.data
    tokenizer = load_tokenizer(recipe.policy.name)
    train_rows, eval_rows = load_prompts(d.source, d.num_prompts, d.eval_prompts, d.seed, d.max_digits)
    context = getattr(policy_config(recipe.policy.name), "max_position_embeddings", None)
    room = context - recipe.rollout.sampling.max_new_tokens if context else None
    sets = []
    for name, rows in (("training", train_rows), ("held-out", eval_rows)):
        ids = encode_prompts(tokenizer, [r.prompt for r in rows])
        fits = [i for i, x in enumerate(ids) if room is None or len(x) <= room]
        if len(fits) < len(rows):
            print(f"{name} prompts: {len(rows) - len(fits)} of {len(rows)} are longer than {room} tokens (the policy's "
                  f"context {context} minus rollout.sampling.max_new_tokens) and are left out")
        if not fits:
            raise RecipeError(f"data.source: no {name} prompt fits the policy's context ({context} tokens) with "
                              f"rollout.sampling.max_new_tokens={recipe.rollout.sampling.max_new_tokens}")
        sets.append(PromptSet([rows[i] for i in fits], [ids[i] for i in fits]))
    return sets[0], sets[1], pad_token_id(tokenizer)


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
