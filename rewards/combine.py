"""Combining reward functions: r = sum_k w_k * r_k, with per-component values kept for logging.

DeepSeek-V2's stage 2 is r = c1*RM_helpful + c2*RM_safety + c3*RM_rule (V2 §4.2); any weighted
mixture of reward functions is written the same way. A component returning None for a sample
("does not apply") adds nothing to that sample's total. A component with `categories` sees only the
rows whose `category` column is one of them and is None for the rest (DeepSeek-R1 §2.3.4: rule
rewards for reasoning prompts, reward models for general ones); with group-normalised advantages a
group then learns from the components that apply to its prompt alone, whatever their scales.

Errors are never silent: a component that raises (or runs past its `timeout`) stops the run
with its name and the first failing sample's index, found by re-scoring the batch one sample at
a time; a NaN or infinite value stops it the same way (None is how a reward says "does not
apply"). With `on_error="zero"` the failing or non-finite samples score 0 for that component and
are counted in `RewardBatch.errors`, which the trainer logs.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rewards.api import call_reward, get_reward
from rewards.registry import RewardFn

if TYPE_CHECKING:  # the recipe section pulls in policy/ (torch): rewards import without it
    from rewards.config import RewardSpec


class RewardError(RuntimeError):
    """A reward function failed; the message names it and the sample."""


@dataclass
class RewardComponent:
    name: str
    fn: RewardFn
    weight: float = 1.0
    timeout: float | None = None
    categories: tuple[str, ...] | None = None

    @classmethod
    def for_spec(cls, spec: RewardSpec, fn: RewardFn) -> RewardComponent:
        """The recipe reward's component (rewards/config.py), scoring with fn."""
        return cls(spec.label, fn, spec.weight, spec.timeout, tuple(spec.categories) if spec.categories else None)


@dataclass
class RewardBatch:
    """total: weighted sum per sample; components: each component's raw values (None = n/a);
    errors: failing samples per component; seconds: time spent per component."""

    total: list[float]
    components: dict[str, list[float | None]]
    errors: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def _call_with_timeout(component: RewardComponent, prompts, completions, columns):
    """The reward's values; past its timeout a TimeoutError. The call runs in a daemon thread, so a
    reward that never returns cannot keep the process from exiting (a pool's worker thread would)."""
    if component.timeout is None:
        return call_reward(component.fn, prompts, completions, columns)
    result: list = []

    def target():
        try:
            result.append((True, call_reward(component.fn, prompts, completions, columns)))
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
            result.append((False, exc))

    worker = threading.Thread(target=target, name=f"reward-{component.name}", daemon=True)
    worker.start()
    worker.join(component.timeout)
    if not result:
        raise TimeoutError(f"timed out after {component.timeout}s")
    ok, value = result[0]
    if not ok:
        raise value
    return value


def _span(index: list[int]) -> str:
    """'0-2' for consecutive sample numbers, '1, 4, 6' otherwise."""
    if index == list(range(index[0], index[-1] + 1)):
        return f"{index[0]}-{index[-1]}"
    return ", ".join(map(str, index))


def _non_finite(values: list[float | None]) -> int | None:
    """The index of the first NaN or infinite value (None, "not applicable", is fine)."""
    return next((i for i, v in enumerate(values) if v is not None and not math.isfinite(v)), None)


class CombinedReward:
    def __init__(self, components: list[RewardComponent], on_error: str = "raise"):
        if on_error not in ("raise", "zero"):
            raise ValueError(f"on_error must be 'raise' or 'zero', got {on_error!r}")
        names = [c.name for c in components]
        if len(set(names)) != len(names):
            raise ValueError(f"reward component names must be unique, got {names}")
        self.components = components
        self.on_error = on_error

    @classmethod
    def from_specs(cls, specs: list[RewardSpec], on_error: str = "raise") -> CombinedReward:
        """One component per recipe reward (rewards/config.py), named by its alias or name."""
        return cls([RewardComponent.for_spec(s, get_reward(s.name, **s.params)) for s in specs], on_error)

    def _score_rows(self, component: RewardComponent, prompts, completions, columns, errors) -> list[float | None]:
        """The component's values, None on the rows its `categories` leave out (those are not sent)."""
        if component.categories is None:
            return self._score(component, prompts, completions, columns, errors)
        if "category" not in columns:
            raise RewardError(f"reward '{component.name}' scores only categories {list(component.categories)}, "
                              f"but the data has no 'category' column (columns: {', '.join(columns) or 'none'})")
        rows = [i for i, c in enumerate(columns["category"]) if c in component.categories]
        out: list[float | None] = [None] * len(completions)
        if rows:
            pick = {k: [v[i] for i in rows] for k, v in columns.items()}
            values = self._score(component, [prompts[i] for i in rows], [completions[i] for i in rows], pick, errors,
                                 rows)
            for i, v in zip(rows, values, strict=True):
                out[i] = v
        return out

    def _score(self, component: RewardComponent, prompts, completions, columns, errors,
               index: list[int] | None = None) -> list[float | None]:
        """index: each row's sample number in the whole batch (the error messages name it)."""
        index = index or list(range(len(completions)))
        try:
            values = _call_with_timeout(component, prompts, completions, columns)
        except TimeoutError as exc:  # a batch's time, not a sample's fault: no re-scoring one by one
            if self.on_error == "raise":
                what = f"sample {index[0]}" if len(index) == 1 else f"the batch of samples {_span(index)}"
                raise RewardError(f"reward '{component.name}' failed on {what}: TimeoutError: {exc}") from None
            errors[component.name] = errors.get(component.name, 0) + len(completions)
            return [0.0] * len(completions)
        except Exception as batch_exc:  # find which samples fail, one at a time
            return self._score_each(component, prompts, completions, columns, errors, batch_exc, index)
        bad = _non_finite(values)
        if bad is not None:
            if self.on_error == "raise":
                raise RewardError(f"reward '{component.name}' returned {values[bad]} for sample {index[bad]} (rewards "
                                  "must be finite; None means not applicable)")
            errors[component.name] = errors.get(component.name, 0) + sum(
                v is not None and not math.isfinite(v) for v in values)
            values = [0.0 if v is not None and not math.isfinite(v) else v for v in values]
        return values

    def _score_each(self, component, prompts, completions, columns, errors, batch_exc, index) -> list[float | None]:
        values: list[float | None] = []
        for i in range(len(completions)):
            one = {k: v[i : i + 1] for k, v in columns.items()}
            try:
                values.extend(_call_with_timeout(component, prompts[i : i + 1], completions[i : i + 1], one))
            except Exception as exc:
                if self.on_error == "raise":
                    raise RewardError(f"reward '{component.name}' failed on sample {index[i]}: "
                                      f"{type(exc).__name__}: {exc}") from exc
                errors[component.name] = errors.get(component.name, 0) + 1
                values.append(0.0)
        if component.name not in errors and self.on_error == "raise":
            raise RewardError(f"reward '{component.name}' failed on the batch but on no single sample: "
                              f"{type(batch_exc).__name__}: {batch_exc}") from batch_exc
        return values

    def __call__(self, prompts: list, completions: list, **columns) -> RewardBatch:
        errors: dict[str, int] = {}
        seconds: dict[str, float] = {}
        values: dict[str, list[float | None]] = {}
        for component in self.components:
            start = time.perf_counter()
            values[component.name] = self._score_rows(component, prompts, completions, columns, errors)
            seconds[component.name] = time.perf_counter() - start
        total = [
            sum(c.weight * v for c in self.components if (v := values[c.name][i]) is not None)
            for i in range(len(completions))
        ]
        return RewardBatch([float(t) for t in total], values, errors, seconds)


def combine(*components: RewardComponent | tuple, on_error: str = "raise") -> CombinedReward:
    """combine(("helpful", fn, 0.5), ("safety", fn2, 0.5)) or RewardComponent(...) objects."""
    built = [c if isinstance(c, RewardComponent) else RewardComponent(*c) for c in components]
    return CombinedReward(built, on_error)
