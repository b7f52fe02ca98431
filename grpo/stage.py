"""What a GRPO stage needs before its loop starts: the prompt sets (training and held-out, token
ids chat-templated for the policy) and the combined reward, or with an `environment` the
multi-turn episodes (envs/) that stand in for it.

`preflight` checks what can be checked before any model loads or Ray starts: every reward
resolves (user modules import, params bind) and takes the data's first row (signature,
columns). Reward models marked `ray_actor` are built once Ray runs (grpo/cluster.py serves them).
"""

from __future__ import annotations

from data_tools.chat import encode_prompts
from data_tools.prompts import first_prompt_row, load_prompts
from envs.api import UnknownEnvironmentError, environment_factory
from grpo.config import GRPORecipe
from grpo.groups import Episodes, PromptSet
from policy.load import load_tokenizer, pad_token_id, policy_config
from rewards.api import call_reward
from rewards.combine import CombinedReward, RewardComponent
from rewards.registry import UnknownRewardError
from rewards.text import completions_for
from train.recipe import RecipeError

NOT_CALLED = ("reward_model", "code_tests")  # the pre-flight call would load a model / start sandboxes


def prompt_sets(recipe: GRPORecipe) -> tuple[PromptSet, PromptSet, int]:
    """(training prompts, held-out prompts, the policy's pad id). Prompts that leave the policy's
    context no room for `rollout.sampling.max_new_tokens` are dropped, saying how many."""
    d = recipe.data
    tokenizer = load_tokenizer(recipe.policy.name)
    train_rows, eval_rows = load_prompts(d.source, d.num_prompts, d.eval_prompts, d.seed, d.max_digits,
                                         d.eval_source, d.columns)
    context = getattr(policy_config(recipe.policy.name), "max_position_embeddings", None)
    room = context - recipe.rollout.sampling.max_new_tokens if context else None
    sets = []
    for name, rows in (("training", train_rows), ("held-out", eval_rows)):
        ids = encode_prompts(tokenizer, [r.prompt for r in rows], chat=d.chat_template)
        fits = [i for i, x in enumerate(ids) if room is None or len(x) <= room]
        if len(fits) < len(rows):
            print(f"{name} prompts: {len(rows) - len(fits)} of {len(rows)} are longer than {room} tokens (the policy's "
                  f"context {context} minus rollout.sampling.max_new_tokens) and are left out")
        if not fits:
            raise RecipeError(f"data.source: no {name} prompt fits the policy's context ({context} tokens) with "
                              f"rollout.sampling.max_new_tokens={recipe.rollout.sampling.max_new_tokens}")
        sets.append(PromptSet([rows[i] for i in fits], [ids[i] for i in fits]))
    return sets[0], sets[1], pad_token_id(tokenizer)


def preflight(recipe: GRPORecipe, data: bool = True) -> None:
    """What can be checked before any model loads or Ray starts: every reward resolves and (with
    `data`) takes the data's first row: each reward is called on it with an empty completion, so a
    wrong signature or a missing column fails in seconds. Reward models and code_tests are not
    called (they load a model / start a sandbox pool), nor a reward whose categories leave the row out."""
    build_reward(recipe, ray_actors=False)
    make_env = _environment(recipe)
    if not data:
        return
    d = recipe.data
    row = first_prompt_row(d.source, d.columns, d.seed, d.max_digits)
    if make_env is not None:
        try:
            make_env().reset(row)
        except Exception as exc:
            raise RecipeError(f"environment: {recipe.environment.name} cannot start on the first row of {d.source}: "
                              f"{type(exc).__name__}: {exc}") from exc
    for spec in recipe.rewards:
        if spec.categories and "category" not in row.columns:
            raise RecipeError(f"rewards.{spec.label}: categories {spec.categories} need a 'category' column, and the "
                              f"first row of {d.source} has none (its columns: {', '.join(row.columns) or 'none'})")
        outside = spec.categories and row.columns["category"] not in spec.categories  # never sent this row
        if spec.ray_actor or spec.name in NOT_CALLED or outside:
            continue
        component = CombinedReward.from_specs([spec]).components[0]
        columns = {"completion_ids": [[]], **{k: [v] for k, v in row.columns.items()}}
        found = ", ".join(row.columns) or "none"
        try:
            values = call_reward(component.fn, [row.prompt], completions_for([row.prompt], [""]), columns)
        except Exception as exc:
            raise RecipeError(f"rewards.{spec.label}: fails on the first row of {d.source} before any model loads: "
                              f"{type(exc).__name__}: {exc}; the row's columns: {found} (data.columns: "
                              "{parameter: column} renames one)") from exc
        if values == [None]:
            print(f"rewards.{spec.label}: does not apply to the first row of {d.source} (returned None); if it reads "
                  f"a column, the row's columns are: {found}")


def _environment(recipe: GRPORecipe):
    if not recipe.environment.name:
        return None
    try:
        return environment_factory(recipe.environment.name, recipe.environment.params)
    except UnknownEnvironmentError as exc:
        raise RecipeError(f"environment: {exc}") from exc


def build_scorer(recipe: GRPORecipe) -> CombinedReward | Episodes:
    """What scores the step's samples: the combined reward, or the environment's episodes."""
    make_env = _environment(recipe)
    if make_env is None:
        return build_reward(recipe)
    context = getattr(policy_config(recipe.policy.name), "max_position_embeddings", None)
    return Episodes(make_env, load_tokenizer(recipe.policy.name), recipe.environment.max_turns, context)


def build_reward(recipe: GRPORecipe, ray_actors: bool = True) -> CombinedReward:
    """The recipe's weighted rewards; ray_actors False leaves actor-served reward models out (the
    pre-flight check before Ray starts)."""
    components = []
    for spec in recipe.rewards:
        if spec.ray_actor:
            if ray_actors:
                from grpo.cluster import reward_model_actor

                components.append(RewardComponent.for_spec(spec, reward_model_actor(spec.params)))
            continue
        try:
            components += CombinedReward.from_specs([spec]).components
        except (UnknownRewardError, ValueError) as exc:
            raise RecipeError(f"rewards: {exc}") from exc
    return CombinedReward(components, recipe.on_error)
