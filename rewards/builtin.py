"""Registers deepalign's built-in rewards under their recipe names."""

from rewards.api import register_reward
from rewards.code_tests import code_tests
from rewards.math_accuracy import math_accuracy
from rewards.reward_model import reward_model
from rewards.rules import format_reward, language_consistency, refusal, repetition_penalty, soft_overlong_penalty

for _name, _fn in {
    "math_accuracy": math_accuracy,
    "code_tests": code_tests,
    "format": format_reward,
    "soft_overlong_penalty": soft_overlong_penalty,
    "repetition_penalty": repetition_penalty,
    "language_consistency": language_consistency,
    "refusal": refusal,
    "reward_model": reward_model,
}.items():
    register_reward(_name)(_fn)
