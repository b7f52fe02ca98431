"""`python_tool`: math with a sandboxed Python tool.

The policy may call the tool in transformers' tool-calling convention (the `tools` schema below
goes to the chat template; the call is `<tool_call>{"name": "python", "arguments": {"code":
...}}</tool_call>`, or a fenced ```python block); the environment runs the code in the sandbox
(rewards/sandbox.py: no network, CPU / memory / output limits) and answers with a `tool` message
holding its output. An answer with no tool call is final and scores by ground truth (the
`math_accuracy` reward on the row's `answer`). When the turn budget runs out while the policy is
still calling the tool, the trajectory ends with reward 0. The tool's output never reaches the
verdict: only the final answer's text is checked.
"""

from __future__ import annotations

import json
import re

from rewards.code_tests import sandbox_pool
from rewards.math_accuracy import math_accuracy

TOOL = {"type": "function", "function": {
    "name": "python", "description": "Run Python 3 code and return what it prints.",
    "parameters": {"type": "object", "properties": {"code": {"type": "string", "description": "the program"}},
                   "required": ["code"]}}}
SYSTEM = ("You can run Python: write <tool_call>{\"name\": \"python\", \"arguments\": {\"code\": \"print(2 + 3)\"}}"
          "</tool_call> and its output comes back. When you know the answer, reply with it and no tool call.")
_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.DOTALL)
_FENCE = re.compile(r"```(?:python|py)?[ \t]*\n(.*?)```", re.DOTALL)


def tool_code(text: str) -> str | None:
    """The code of the answer's (last) python tool call, or None when it makes none.

    >>> tool_code('<tool_call>{"name": "python", "arguments": {"code": "print(1)"}}</tool_call>')
    'print(1)'
    >>> tool_code("The answer is 4.") is None
    True
    """
    for raw in reversed(_CALL.findall(text)):
        try:
            call = json.loads(raw)
        except json.JSONDecodeError:
            continue
        args = call.get("arguments") if isinstance(call, dict) else None
        if call.get("name") == "python" and isinstance(args, dict) and isinstance(args.get("code"), str):
            return args["code"]
    blocks = _FENCE.findall(text)
    return blocks[-1] if blocks else None


class PythonTool:
    tools = [TOOL]

    def __init__(self, sandbox: str = "bwrap", max_workers: int = 4, cpu_seconds: int = 5, wall_seconds: float = 10.0,
                 memory_mb: int = 512, output_chars: int = 500, system_prompt: bool = True):
        self.pool_args = dict(mode=sandbox, max_workers=max_workers, cpu_seconds=cpu_seconds,
                              wall_seconds=wall_seconds, memory_mb=memory_mb)
        self.output_chars, self.system_prompt, self.row = output_chars, system_prompt, None
        self.calls = self.ok_calls = 0

    def reset(self, row) -> list[dict]:
        if row.columns.get("answer") is None:
            raise ValueError(f"python_tool: the row {row.prompt[:60]!r} has no 'answer' column")
        self.row = row
        return ([{"role": "system", "content": SYSTEM}] if self.system_prompt else []) + \
            [{"role": "user", "content": row.prompt}]

    def run(self, code: str) -> tuple[bool, str]:
        """(ran cleanly, what the policy sees: stdout, then the error's last line on a failure)."""
        result = sandbox_pool(**self.pool_args).map([({"tool.py": code}, ["python", "-I", "tool.py"], None)])[0]
        if result.status in ("timeout", "output_limit", "error"):
            return False, f"[{result.status}]"
        error = result.stderr.strip().splitlines()[-1:] if not result.ok else []
        return result.ok, (result.stdout + "".join(error))[-self.output_chars:]

    def step(self, messages: list[dict], completion: str):
        code = tool_code(completion)
        if code is None:
            score = math_accuracy([self.row.prompt], [completion], [self.row.columns["answer"]])[0]
            return None, float(score or 0.0), True, {"answered": 1.0, "tool_calls": float(self.calls)}
        messages[-1]["tool_calls"] = [{"type": "function", "function": {"name": "python", "arguments": {"code": code}}}]
        ok, output = self.run(code)
        self.calls, self.ok_calls = self.calls + 1, self.ok_calls + ok
        return [{"role": "tool", "name": "python", "content": output}], 0.0, False, \
            {"answered": 0.0, "tool_calls": float(self.calls), "tool_success": self.ok_calls / self.calls}
