"""The test harness that runs inside the code sandbox for Python programs (started by
rewards/code_tests.py; standard library only, so it runs on the base interpreter).

    python -I -S -c "import sys; sys.path.insert(0, HARNESS_BIN); import python_harness as h; h.main()" \
        SECRET_FD VERDICT_FD

(HARNESS_BIN holds this file compiled by the host, so no run compiles it again.)

Two processes, so that the program under test cannot forge its verdict:
- this process (the harness) never runs program code. It holds the run's secret (the tests and a
  per-run nonce, read from SECRET_FD) and the verdict pipe (VERDICT_FD). The program's process
  cannot reach its memory or descriptors: the sandbox mounts no /proc (no /proc/<pid>/mem or
  /proc/<pid>/fd) and its seccomp filter refuses ptrace and process_vm_readv;
- the program's process is forked before the secret is read, closes SECRET_FD and VERDICT_FD
  before any program code runs, executes program.py, and then serves calls of its functions.
The tests run here. A call of a program function (the proxies this process binds under the
program's names) crosses to the program's process with marshal-ed arguments and returns a
marshal-ed value, or the exception's type and message: plain data only (numbers, strings, bytes,
None, and tuples, lists, dicts and sets of them), so nothing the program returns can run code here.
HumanEval's prompt (prompt.py, trusted: it comes with the tests) is executed here too, so
its helper functions (`poly`, `encode_cyclic`, ...) are the reference ones, whatever the program
redefines.

The verdict, "<nonce> <passed> <total> <reason>", goes to VERDICT_FD once the tests have run to
their end: an exit, a crash, a hang or a kill of either process before that leaves no verdict.
With partial credit every `assert` of the tests is counted instead of stopping them.
"""

import builtins
import marshal
import os
import select
import struct
import sys
import time

MAX_MESSAGE = 64 * 2**20
PROGRAM, PROMPT = "program.py", "prompt.py"  # in the working folder (/sandbox in bwrap mode)


class ProgramError(Exception):
    """The program raised an exception that is not a built-in one, or died, or timed out."""


# ---- framing --------------------------------------------------------------------------------------
def _send(fd, message):
    data = marshal.dumps(message)
    view = memoryview(struct.pack("<I", len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


def _recv_exact(fd, n, deadline):
    chunks, got = [], 0
    while got < n:
        left = deadline - time.monotonic()
        if left <= 0 or (left != float("inf") and not select.select([fd], [], [], left)[0]):
            raise TimeoutError("the program timed out")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise ProgramError("the program's process ended")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(fd, deadline):
    (size,) = struct.unpack("<I", _recv_exact(fd, 4, deadline))
    if size > MAX_MESSAGE:
        raise ProgramError(f"the program sent {size} bytes")
    try:
        return marshal.loads(_recv_exact(fd, size, deadline))
    except (EOFError, ValueError, TypeError) as exc:
        raise ProgramError(f"unreadable reply ({exc})") from None


# ---- the program's process ------------------------------------------------------------------------
def _serve(requests, replies):
    """Run the program, report its names, then answer calls until the harness closes the pipe."""
    namespace = {"__name__": "__main__", "__builtins__": builtins, "__file__": PROGRAM}
    sys.argv = [PROGRAM]
    try:
        with open(PROGRAM, encoding="utf-8") as f:
            source = f.read()
        exec(compile(source, PROGRAM, "exec"), namespace)  # noqa: S102  (the sandboxed program)
    except SystemExit as exc:
        _flush()
        _send(replies, ("exited", repr(exc.code)))
        return
    except BaseException as exc:  # noqa: BLE001  (report anything the program raises)
        _flush()
        _send(replies, ("error", type(exc).__name__, str(exc)[:500]))
        return
    _flush()
    callables = sorted(k for k, v in namespace.items() if callable(v) and not k.startswith("__"))
    _send(replies, ("ready", callables))
    while True:
        try:
            (size,) = struct.unpack("<I", _recv_exact(requests, 4, float("inf")))
            _, name, args, kwargs = marshal.loads(_recv_exact(requests, size, float("inf")))
        except (ProgramError, EOFError, ValueError, TypeError, struct.error):
            return
        try:
            value = namespace[name](*args, **kwargs)
            _flush()
            try:
                _send(replies, ("ok", value))
            except ValueError:
                _send(replies, ("unsendable", type(value).__name__))
        except BaseException as exc:  # noqa: BLE001  (the call's exception goes back to the tests)
            _flush()
            _send(replies, ("raise", type(exc).__name__, str(exc)[:500]))


def _flush():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001  (the program may have replaced or closed its streams)
            pass


# ---- the harness ----------------------------------------------------------------------------------
class Program:
    """The program's process, as seen from the harness."""

    def __init__(self, pid, requests, replies, deadline):
        self.pid, self.requests, self.replies, self.deadline = pid, requests, replies, deadline

    def proxy(self, name):
        def call(*args, **kwargs):
            try:
                _send(self.requests, ("call", name, args, kwargs))
            except ValueError:
                raise TypeError(f"{name}: an argument cannot cross to the program (plain data only)") from None
            except OSError:
                raise ProgramError("the program's process ended") from None
            reply = _recv(self.replies, self.deadline)
            if reply[0] == "ok":
                return reply[1]
            if reply[0] == "raise":
                raise _exception(reply[1], reply[2])
            raise ProgramError(f"{name} returned a {reply[1]}, which cannot cross back (plain data only)")

        call.__name__ = name
        return call

    def kill(self):
        try:
            os.kill(self.pid, 9)  # SIGKILL (the signal module is slow to import)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass


def _exception(type_name, message):
    cls = getattr(builtins, type_name, None)
    if isinstance(cls, type) and issubclass(cls, Exception):
        return cls(message)
    return ProgramError(f"{type_name}: {message}")


def _start_program(deadline):
    requests_r, requests_w = os.pipe()
    replies_r, replies_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        for fd in (int(sys.argv[1]), int(sys.argv[2]), requests_w, replies_r):
            os.close(fd)
        try:
            _serve(requests_r, replies_w)
        finally:
            os._exit(0)
    os.close(requests_r)
    os.close(replies_w)
    return Program(pid, requests_w, replies_r, deadline)


def _tests_code(tests, partial):
    """(compiled tests, whether they call check(...) themselves); with partial credit every assert
    is rewritten to count pass/fail and go on (`ast` is imported only then: it is slow to import)."""
    calls_check = any(line.startswith("check(") for line in tests.splitlines())
    if not partial:
        return compile(tests, "tests", "exec"), calls_check
    import ast

    class CountAsserts(ast.NodeTransformer):
        def visit_Assert(self, node):
            test = ast.Lambda(args=ast.arguments([], [], None, [], [], None, []), body=node.test)
            return ast.copy_location(ast.Expr(ast.Call(ast.Name("__da_check", ast.Load()), [test], [])), node)

    tree = ast.fix_missing_locations(CountAsserts().visit(ast.parse(tests)))
    return compile(tree, "tests", "exec"), calls_check


def prompt_namespace():
    """The tests' namespace: with HumanEval, the prompt's signature, docstring and reference helpers.
    It runs before the program's process is forked, so the modules it imports (typing, math, ...) are
    loaded once, for both processes."""
    namespace = {"__name__": "__tests__", "__builtins__": builtins}
    if os.path.exists(PROMPT):
        with open(PROMPT, encoding="utf-8") as f:
            exec(compile(f.read(), "prompt", "exec"), namespace)  # noqa: S102  (trusted, comes with the tests)
    return namespace


def run_tests(secret, program, namespace):
    """(passed, total, reason) of the tests against the program."""
    code, calls_check = _tests_code(secret["tests"], secret.get("partial", False))
    ready = _recv(program.replies, program.deadline)
    if ready[0] == "exited":
        return 0, 1, f"the program exited (SystemExit {ready[1]}) before the tests ran"
    if ready[0] == "error":
        return 0, 1, f"{ready[1]}: {ready[2]}" if ready[2] else ready[1]
    entry_point = secret.get("entry_point")
    for name in ready[1]:
        if name == entry_point or name not in namespace:
            namespace[name] = program.proxy(name)
    counts = [0, 0]

    def check(condition):
        counts[1] += 1
        try:
            counts[0] += bool(condition())
        except Exception:  # noqa: BLE001  (a failing or raising check counts as failed)
            pass

    namespace["__da_check"] = check
    exec(code, namespace)  # noqa: S102  (the trusted tests)
    if entry_point and callable(namespace.get("check")) and not calls_check:
        if entry_point not in namespace:
            raise NameError(f"the program defines no {entry_point}")
        namespace["check"](namespace[entry_point])
    if secret.get("partial", False):
        return counts[0], counts[1], f"{counts[0]}/{counts[1]} tests passed"
    return 1, 1, "passed"


def _failing_line(exc, tests):
    """The tests' source line the exception came from (a bare `assert` says nothing by itself)."""
    tb, line = exc.__traceback__, None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "tests":
            line = tb.tb_lineno
        tb = tb.tb_next
    lines = tests.splitlines()
    return lines[line - 1].strip() if line and 0 < line <= len(lines) else ""


def main():
    secret_fd, verdict_fd = int(sys.argv[1]), int(sys.argv[2])
    started = time.monotonic()
    try:
        namespace = prompt_namespace()
    except Exception as exc:  # noqa: BLE001  (a broken prompt fails the run, with its reason)
        namespace = exc
    program = _start_program(float("inf"))
    with os.fdopen(secret_fd, "rb") as f:
        secret = marshal.loads(f.read())  # written by the host, which is trusted
    program.deadline = started + float(secret.get("seconds", 8.0))
    try:
        if isinstance(namespace, Exception):
            raise namespace
        passed, total, reason = run_tests(secret, program, namespace)
    except TimeoutError:
        passed, total, reason = 0, 1, "timeout"
    except Exception as exc:  # noqa: BLE001  (a failing test is the verdict, not a harness error)
        message = str(exc) or _failing_line(exc, secret["tests"])
        passed, total, reason = 0, 1, f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    finally:
        program.kill()
    reason = " ".join(reason.split())[:300]
    with os.fdopen(verdict_fd, "w") as out:
        out.write(f"{secret['nonce']} {passed} {total} {reason}\n")


if __name__ == "__main__":
    main()
