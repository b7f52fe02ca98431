"""math-verify's equivalence of two answer strings, on or off the main thread.

math-verify bounds each parse and comparison with `signal.alarm`, which only the main thread may
set; called from another thread (asynchronous GRPO scores the next step's samples in a driver
thread, grpo/prefetch.py; environments step in threads) it refuses, and without its timeout a
crafted answer such as `9^{9^{9^{9}}}` keeps sympy busy for good. So a call off the main thread
sends the batch to one helper process (`python -m rewards.math_equivalence`, started on first use,
one JSON line per batch each way), where math-verify runs in that process's main thread with its
timeouts intact. A helper that dies or overruns the batch's deadline (math-verify's 5 s per parse
and per comparison, plus slack) is killed and the call fails in one line; the next call starts a
new one.
"""

from __future__ import annotations

import json
import select
import subprocess
import sys
import threading

from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

_EXTRACT = [LatexExtractionConfig(), ExprExtractionConfig()]
PER_PAIR_S = 12.0  # a parse and a comparison of 5 s each, and slack
_lock = threading.Lock()
_helper: subprocess.Popen | None = None


def _as_math(text: str) -> list:
    text = text.strip()
    if "$" not in text and "\\boxed" not in text:
        text = f"${text}$"
    return parse(text, extraction_config=_EXTRACT)


def answers_match(predicted: str, gold: str) -> bool:
    """math-verify equivalence of two answer strings.

    >>> answers_match("0.5", "\\\\frac{1}{2}"), answers_match("50\\\\%", "0.5"), answers_match("2", "3")
    (True, True, False)
    """
    gold_parsed, pred_parsed = _as_math(gold), _as_math(predicted)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed))


def _start() -> subprocess.Popen:
    global _helper
    if _helper is None or _helper.poll() is not None:
        _helper = subprocess.Popen([sys.executable, "-m", "rewards.math_equivalence"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True, bufsize=1)
    return _helper


def _kill() -> None:
    global _helper
    if _helper is not None:
        _helper.kill()
        _helper.wait()
    _helper = None


def matches(pairs: list[tuple[str, str]]) -> list[bool]:
    """answers_match(predicted, gold) for each pair: here on the main thread, else in the helper."""
    if threading.current_thread() is threading.main_thread() or not pairs:
        return [answers_match(p, g) for p, g in pairs]
    with _lock:  # one batch at a time through the one helper
        helper, ready = _start(), False
        try:
            helper.stdin.write(json.dumps(pairs) + "\n")
            helper.stdin.flush()
            ready, _, _ = select.select([helper.stdout], [], [], 10.0 + PER_PAIR_S * len(pairs))
            line = helper.stdout.readline() if ready else ""
        except OSError:
            line = ""
        if not line:
            _kill()
            raise RuntimeError(f"math-verify's helper process {'died' if ready else 'timed out'} on a batch of "
                               f"{len(pairs)} answers")
        return json.loads(line)


def _serve() -> None:
    out = sys.stdout
    sys.stdout = sys.stderr  # math-verify's own messages must not mix with the replies
    for line in sys.stdin:
        out.write(json.dumps([bool(answers_match(p, g)) for p, g in json.loads(line)]) + "\n")
        out.flush()


if __name__ == "__main__":
    _serve()
