"""Multi-turn trajectories, token in and token out, over any rollout engine.

G trajectories per prompt row: the environment's `reset` gives the first conversation; the engine
answers (the first turn samples G completions of each prompt in one call, as single-turn GRPO
does); the environment's `step` scores the answer and may reply; the engine answers the whole
context so far; and so on until the environment is done, the turn budget (`max_turns`) is spent,
an answer hits the token budget, or the next turn would not fit the policy's context.

Token in, token out (no re-tokenisation drift, verl issue 3720): a trajectory's tokens are the
prompt's ids, then exactly the ids the engine produced for each answer, then the ids of the
environment's rendered turns, and the engine is fed exactly those ids at the next turn. The model's
own answers are never re-rendered or re-tokenised. An environment turn is the chat template's text
between the conversation ending with the answer and the conversation with the new messages plus
the generation prompt (`render_turn`); where the answer ended without the end-of-turn token (a stop
string), that token's text leads the environment's turn. The loss mask is True on model tokens
only; the engine's log-probs sit under model tokens (0 under environment tokens).

The result is a `Rollout` (prompt-major, sample j of row i is i*G + j) whose completions are the
whole trajectories after the prompt, with `loss_mask` set, and the trajectory rewards (P, G): the
sum of each turn's reward. Routing replay: environment tokens carry -1 (the learner routes them).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch

from envs.api import Environment
from rollout.engine import Rollout, SamplingConfig

Generate = Callable[..., Rollout]  # (prompt ids, n, sampling, seed=) -> Rollout, as RolloutEngine.generate


class TrajectoryError(ValueError):
    """An environment or chat template that cannot drive a trajectory; the message names which."""


@dataclass
class Trajectory:
    row: int
    env: Environment
    messages: list[dict]
    prompt_ids: list[int]
    tools: list[dict] | None = None  # the environment's tool schemas, given to the chat template
    ids: list[int] = field(default_factory=list)  # everything after the prompt: model and environment tokens
    mask: list[bool] = field(default_factory=list)  # True = a model token
    logprobs: list[float] = field(default_factory=list)
    versions: list[int] = field(default_factory=list)  # the weights version behind each token (asynchronous GRPO)
    routing: list[torch.Tensor] = field(default_factory=list)
    reward: float = 0.0
    turns: int = 0
    finish_reason: str = "stop"
    last_text: str = ""
    info: dict[str, float] = field(default_factory=dict)
    done: bool = False

    @property
    def context(self) -> list[int]:
        return self.prompt_ids + self.ids


def render_turn(tokenizer, conversation: list[dict], new_messages: list[dict], ended_with_eos: bool,
                tools: list[dict] | None = None) -> list[int]:
    """The token ids of the environment's turn: the template's text after `conversation` (which ends
    with the policy's answer) up to the generation prompt following `new_messages`."""
    template = dict(tokenize=False, tools=tools)
    before = tokenizer.apply_chat_template(conversation, **template)
    after = tokenizer.apply_chat_template(conversation + new_messages, add_generation_prompt=True, **template)
    if not after.startswith(before):
        raise TrajectoryError(f"tokenizer {tokenizer.name_or_path!r}: its chat template renders the conversation "
                                "differently once a turn is added, so a turn cannot be appended token by token")
    eos = tokenizer.eos_token or ""
    cut = before.rfind(eos) if eos else -1
    closing = before[cut + len(eos):] if cut >= 0 else ""  # the template's text after the answer's end token
    lead = "" if ended_with_eos or cut < 0 else eos
    return tokenizer(lead + closing + after[len(before):], add_special_tokens=False)["input_ids"]


def _start(rows, make_env: Callable[[], Environment], tokenizer, group_size: int) -> list[Trajectory]:
    out = []
    for i, row in enumerate(rows):
        for _ in range(group_size):
            env = make_env()
            messages, tools = list(env.reset(row)), getattr(env, "tools", None)
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, tools=tools,
                                                return_dict=True)["input_ids"]
            out.append(Trajectory(i, env, messages, list(ids), tools))
    return out


def _first_turn(generate: Generate, trajs: list[Trajectory], group_size: int, sampling: SamplingConfig,
                seed: int) -> Rollout:
    """G samples per prompt in one call when a row's G first conversations agree (the usual case)."""
    rows = [trajs[i: i + group_size] for i in range(0, len(trajs), group_size)]
    if all(all(t.prompt_ids == g[0].prompt_ids for t in g) for g in rows):
        return generate([g[0].prompt_ids for g in rows], group_size, sampling, seed=seed)
    return generate([t.prompt_ids for t in trajs], 1, sampling, seed=seed)


def _take_answer(traj: Trajectory, out: Rollout, j: int, eos_id: int | None) -> bool:
    """Append answer j of `out`; True when it ended with the end-of-turn token."""
    ids = list(out.completion_ids[j])
    traj.ids += ids
    traj.mask += [True] * len(ids)
    traj.logprobs += list(out.logprobs[j])
    traj.versions += out.versions(j)
    if out.routing is not None:
        traj.routing.append(out.routing[j])
    traj.finish_reason, traj.last_text = out.finish_reasons[j], out.texts[j]
    traj.turns += 1
    return bool(ids) and ids[-1] == eos_id


def _reply(traj: Trajectory, max_turns: int) -> list[dict] | None:
    """The environment's reply to the answer just taken, or None when the trajectory ends here."""
    traj.messages.append({"role": "assistant", "content": traj.last_text})
    new, reward, done, info = traj.env.step(traj.messages, traj.last_text)
    traj.reward += float(reward)
    for k, v in (info or {}).items():
        if isinstance(v, (int, float)):  # bools count as 0 / 1
            traj.info[k] = float(v)
    if done or not new or traj.turns >= max_turns or traj.finish_reason == "length":
        traj.done = True
        return None
    return list(new)


def _append_turn(traj: Trajectory, new: list[dict], tokenizer, ended_with_eos: bool, room: int | None) -> None:
    turn = render_turn(tokenizer, traj.messages, new, ended_with_eos, traj.tools)
    if room is not None and len(traj.context) + len(turn) > room:
        traj.done, traj.info["context_full"] = True, 1.0
        return
    traj.messages += new
    traj.ids += turn
    traj.mask += [False] * len(turn)
    traj.logprobs += [0.0] * len(turn)
    traj.versions += [traj.versions[-1] if traj.versions else 0] * len(turn)  # not trained on; the answer's version
    if traj.routing:
        layers, top_k = traj.routing[-1].shape[1:]
        traj.routing.append(torch.full((len(turn), layers, top_k), -1, dtype=torch.int16))


def _advance(trajs: list[Trajectory], out: Rollout, tokenizer, max_turns: int, room: int | None) -> None:
    """Take each trajectory's answer from `out`; the environments step in threads (they wait on
    sandboxes), the tokenizer renders their turns in this thread."""
    ended = [_take_answer(t, out, j, tokenizer.eos_token_id) for j, t in enumerate(trajs)]
    with ThreadPoolExecutor(max_workers=min(8, len(trajs))) as pool:
        replies = list(pool.map(_reply, trajs, [max_turns] * len(trajs)))
    for traj, new, eos in zip(trajs, replies, ended, strict=True):
        if new is not None:
            _append_turn(traj, new, tokenizer, eos, room)


def run_trajectories(generate: Generate, tokenizer, rows: list, make_env: Callable[[], Environment], group_size: int,
                     sampling: SamplingConfig, seed: int, max_turns: int, context: int | None = None
                     ) -> tuple[Rollout, torch.Tensor, list[dict[str, float]]]:
    """(the trajectories as one Rollout with loss_mask, rewards (P, G), each trajectory's info:
    `trajectory_info`). Turn t samples with seed + 7919 * t; `context` (the policy's) bounds a
    trajectory's length."""
    if max_turns < 1:
        raise TrajectoryError(f"environment.max_turns must be at least 1, got {max_turns}")
    start = time.perf_counter()
    room = context - sampling.max_new_tokens if context else None
    trajs = _start(rows, make_env, tokenizer, group_size)
    out = _first_turn(generate, trajs, group_size, sampling, seed)
    version, turn, active = out.weights_version, 0, trajs  # the version the first turn started with
    probe_diff = out.sync_probe_diff
    while active:
        _advance(active, out, tokenizer, max_turns, room)
        active = [t for t in active if not t.done]
        turn += 1
        if active:
            out = generate([t.context for t in active], 1, sampling, seed=seed + 7919 * turn)
            probe_diff = max(probe_diff, out.sync_probe_diff)
    rollout = Rollout([t.prompt_ids for t in trajs], [t.ids for t in trajs], [t.logprobs for t in trajs],
                      [t.finish_reason for t in trajs], [t.last_text for t in trajs], time.perf_counter() - start,
                      version, [torch.cat(t.routing) for t in trajs] if all(t.routing for t in trajs) else None,
                      loss_mask=[t.mask for t in trajs], token_versions=[t.versions for t in trajs],
                      sync_probe_diff=probe_diff)
    rewards = torch.tensor([t.reward for t in trajs]).view(len(rows), group_size)
    return rollout, rewards, [trajectory_info(t) for t in trajs]


def trajectory_info(traj: Trajectory) -> dict[str, float]:
    """One trajectory's turns, the fraction of its tokens that are the model's, and its info values."""
    return {"turns": float(traj.turns), "model_token_fraction": sum(traj.mask) / max(len(traj.mask), 1), **traj.info}


def trajectory_metrics(infos: list[dict[str, float]]) -> dict[str, float]:
    """env/<key>: the mean over trajectories of each key (0 where a trajectory lacks it)."""
    return {f"env/{k}": sum(i.get(k, 0.0) for i in infos) / len(infos) for k in sorted({k for i in infos for k in i})}
