"""`code_feedback`: compiler feedback the policy can read and act on (DeepSeek-V2 §4 rewards code by
compiler feedback; here the policy also sees it and tries again).

Each turn the answer's program runs against the row's `tests` in the sandbox, through the same
hardened harness as the `code_tests` reward (rewards/code_tests.py): the verdict comes only from
the harness, so a program that exits early, strips asserts or prints a fake result still scores 0.
On a pass the trajectory ends with reward 1; on a failure the policy gets the failure (the failing
test's line or exception, compile error, timeout) as a user turn and answers again, until
`max_turns`. Trajectory reward = 1 if some turn passes, minus `turn_penalty` per failed turn.

Known limit: the feedback names the failing assert, so a policy could special-case it; rows may
carry `hidden_tests`, which count in the verdict but are never shown (their failures read as
"a hidden test failed").
"""

from __future__ import annotations

from rewards.code_tests import sandbox_pool, score_programs


class CodeFeedback:
    def __init__(self, turn_penalty: float = 0.0, language: str = "python", sandbox: str = "bwrap",
                 max_workers: int = 4, cpu_seconds: int = 5, wall_seconds: float = 10.0, memory_mb: int = 1024,
                 feedback_chars: int = 300):
        if turn_penalty < 0:
            raise ValueError(f"code_feedback: turn_penalty must be >= 0, got {turn_penalty}")
        self.turn_penalty, self.language, self.feedback_chars = turn_penalty, language, feedback_chars
        self.pool_args = dict(mode=sandbox, max_workers=max_workers, cpu_seconds=cpu_seconds,
                              wall_seconds=wall_seconds, memory_mb=memory_mb)
        self.row = None

    def reset(self, row) -> list[dict]:
        if not row.columns.get("tests"):
            raise ValueError(f"code_feedback: the row {row.prompt[:60]!r} has no 'tests' column")
        self.row = row
        return [{"role": "user", "content": row.prompt}]

    def _verdict(self, completion: str, tests: str) -> tuple[bool, str]:
        pool = sandbox_pool(**self.pool_args)
        found = score_programs([self.row.prompt], [completion], [tests], [self.row.columns.get("entry_point")],
                               self.language, pool=pool)[0]
        return found.score == 1.0, found.reason

    def step(self, messages: list[dict], completion: str):
        tests, hidden = self.row.columns["tests"], self.row.columns.get("hidden_tests")
        passed, reason = self._verdict(completion, tests)
        if passed and hidden:
            passed, hidden_reason = self._verdict(completion, f"{tests}\n{hidden}")
            reason = "failed: a hidden test failed" if not passed else hidden_reason
        if passed:
            return None, 1.0, True, {"passed": 1.0, "passed_after_feedback": float(len(messages) > 2)}
        feedback = (f"The program did not pass the tests ({reason[: self.feedback_chars]}). "
                    "Fix it and write the whole program again.")
        return [{"role": "user", "content": feedback}], -self.turn_penalty, False, {"passed": 0.0}
