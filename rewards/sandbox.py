"""Running untrusted programs: bubblewrap isolation plus kernel-enforced limits, and a pool.

Each program runs under `bwrap` with
- no network (a new, empty network namespace: even loopback is unreachable), new pid, ipc, uts and
  cgroup namespaces, `--die-with-parent` and its own session, so killing the sandbox kills all it
  spawned;
- a read-only view of /usr, /etc and the Python installation only (the host's home, the checkout
  and the host's /tmp are not visible); the working directory /sandbox and /tmp are private tmpfs
  mounts of `disk_mb` each, writable by the program and gone with the sandbox (nothing is written
  on the host's disk, so there is nothing to clean up after a run or after a killed host process);
  the input files are copied into /sandbox by bwrap itself (`--file`);
- a seccomp filter (rewards/seccomp.py): no new namespaces (so no `unshare -Ur` with fresh
  capabilities), mounts, keyrings, ptrace or process_vm_* calls;
- per-sandbox limits where the machine allows a cgroup (rewards/sandbox_limits.py): the total
  memory (tmpfs included) and number of processes of everything the program starts; and rlimits
  per process in every case (CPU seconds, address space, processes per uid, file size, open files,
  no core dumps);
- when deepalign runs as root, every pool slot its own unprivileged uid, from a range no other
  deepalign process on the machine uses at the same time;
- a wall-clock timeout and an output cap, after which the whole sandbox is killed.
`run(..., secret=...)` also hands the program's harness a secret (a sealed in-memory file) and a
verdict pipe, passed as inherited descriptors and never as files (rewards/code_tests.py).

Without bwrap, `Sandbox(mode="bwrap")` refuses to run; `mode="rlimit"` (opt-in, with a warning)
keeps the rlimits, timeout and output cap but not the isolation, seccomp or cgroups, runs as the
calling user in a host temp folder (as root the kernel does not enforce the process limit).
"""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import os
import queue
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from rewards.sandbox_limits import CgroupSlots, reserve_uid_range
from rewards.seccomp import sandbox_filter

HARNESS_DIR = Path(__file__).parent / "harness"
HOST_PREFIX = "deepalign-sandbox-"  # rlimit mode's work folders in the host's temp folder: <prefix><pid>-...


class SandboxUnavailable(RuntimeError):
    """The requested sandbox mode cannot run on this machine."""


@dataclass
class SandboxLimits:
    cpu_seconds: int = 5
    memory_mb: int = 1024  # the whole sandbox with a cgroup; each process otherwise
    max_processes: int = 32
    file_size_mb: int = 16
    disk_mb: int = 64  # each of /sandbox and /tmp
    open_files: int = 64
    wall_seconds: float = 10.0
    output_bytes: int = 64 * 1024


@dataclass
class RunResult:
    """status: ok (exit 0) | failed (non-zero exit) | timeout | output_limit | error (could not run).
    verdict: what the program's harness wrote to the verdict pipe (runs given a secret)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    verdict: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def python_executable() -> str:
    """The base interpreter (not a venv's): it is all a test program needs, the stdlib."""
    for name in ("python3", "python"):
        path = Path(sys.base_prefix) / "bin" / name
        if path.exists():
            return str(path)
    return sys.executable


def remove_tree(path: Path) -> None:
    """Delete a folder of any depth (a 3,000-deep tree is beyond Python's recursion and PATH_MAX)
    without raising: GNU rm walks it with directory descriptors."""
    try:
        subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)], capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        pass


def _remove_leftover_work_folders() -> None:
    """rlimit mode's work folders of deepalign processes that were killed before they cleaned up."""
    for folder in Path(tempfile.gettempdir()).glob(f"{HOST_PREFIX}*-*"):
        pid = folder.name.removeprefix(HOST_PREFIX).split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                remove_tree(folder)
            except PermissionError:
                pass


def harness_bin_dir(python: str) -> Path:
    """The harness built once on the host (per source version and interpreter), bound read-only at
    /harness-bin: the Python harnesses as bytecode for the sandbox's interpreter (so no run compiles
    them again), and, where gcc exists, the C/C++ runner (c_runner.c) and the launcher
    (da_launch.c, run on the host before bwrap)."""
    sources = sorted(HARNESS_DIR.glob("*.py")) + [HARNESS_DIR / "c_runner.c", HARNESS_DIR / "da_launch.c"]
    digest = hashlib.sha256(python.encode() + str(os.stat(python).st_mtime_ns).encode())
    for source in sources:
        digest.update(source.read_bytes())
    cache = Path(os.environ.get("DEEPALIGN_CACHE", Path.home() / ".cache" / "deepalign"))
    folder = cache / "sandbox" / digest.hexdigest()[:12]
    if not (folder / "done").exists():
        folder.mkdir(parents=True, exist_ok=True)
        for source in sources[:-2]:
            subprocess.run([python, "-I", "-S", "-c", "import py_compile, sys; py_compile.compile(sys.argv[1], "
                            "cfile=sys.argv[2], doraise=True)", str(source), str(folder / f"{source.stem}.pyc")],
                           check=True, capture_output=True)
        compiler = shutil.which("gcc")
        if compiler is not None:
            for source in sources[-2:]:
                subprocess.run([compiler, "-O1", "-o", str(folder / source.stem), str(source), "-ldl"], check=True,
                               capture_output=True)
        (folder / "done").write_text("")
    for path in (folder, *folder.iterdir()):
        os.chmod(path, 0o755 if path.is_dir() or path.name in ("c_runner", "da_launch") else 0o644)
    return folder


def _memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


class Sandbox:
    def __init__(self, limits: SandboxLimits | None = None, mode: str = "bwrap", uid_base: int | None = None):
        if mode not in ("bwrap", "rlimit"):
            raise ValueError(f"sandbox mode must be 'bwrap' or 'rlimit', got {mode!r}")
        self.limits = limits or SandboxLimits()
        self.mode = mode
        self.bwrap, self.prlimit, self.setpriv = shutil.which("bwrap"), shutil.which("prlimit"), shutil.which("setpriv")
        if mode == "bwrap" and self.bwrap is None:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap`, or set the sandbox mode to "
                "'rlimit' to accept rlimit-only isolation (no filesystem or network isolation)"
            )
        if mode == "rlimit":
            warnings.warn("code sandbox in rlimit-only mode: programs can read the filesystem and use the network",
                          stacklevel=2)
        self.as_root = os.geteuid() == 0
        if self.as_root and self.setpriv is None:
            raise SandboxUnavailable("setpriv (util-linux) is needed to drop root inside the sandbox")
        self.uid_base = uid_base if uid_base is not None else (reserve_uid_range() if self.as_root else 0)
        self.python = python_executable()
        self.seccomp = sandbox_filter() if mode == "bwrap" else None
        self.cgroups = CgroupSlots(self.limits.memory_mb * 2**20, self.limits.max_processes) \
            if mode == "bwrap" and self.as_root else None
        self.bin_dir = harness_bin_dir(self.python)
        launcher = self.bin_dir / "da_launch"
        self.launcher = str(launcher) if launcher.exists() else None  # else a shell and prlimit
        if self.launcher is None and self.prlimit is None:
            raise SandboxUnavailable("gcc (to build the launcher) or prlimit (util-linux) is needed to apply "
                                     "resource limits")
        if mode == "rlimit":
            _remove_leftover_work_folders()

    @property
    def guarantees(self) -> str:
        """What this sandbox enforces on this machine, in one line."""
        if self.mode == "rlimit":
            return "rlimit only: per-process limits, timeout and output cap; no isolation"
        memory = f"cgroup {self.cgroups.mode}: memory and processes per sandbox" if self.cgroups and \
            self.cgroups.mode else "no cgroup: memory per process, processes per uid"
        return f"bwrap + seccomp{'' if self.seccomp else ' (none for this architecture)'}; {memory}"

    def _launch_argv(self, procs: list[Path]) -> list[str]:
        """What runs on the host before bwrap: join the slot's cgroups, set the rlimits, exec."""
        lim = self.limits
        limits = {"cpu": lim.cpu_seconds, "as": lim.memory_mb * 2**20, "nproc": lim.max_processes,
                  "fsize": lim.file_size_mb * 2**20, "nofile": lim.open_files, "core": 0}
        if self.launcher is not None:
            joins = [a for p in procs for a in ("--cgroup", str(p))]
            return [self.launcher, *joins, *(f"--{k}={v}" for k, v in limits.items()), "--"]
        argv = [self.prlimit, *(f"--{k}={v}" for k, v in limits.items()), "--"]
        if procs:
            joins = " && ".join(f'echo $$ > "${i + 1}"' for i in range(len(procs)))
            argv = ["/bin/sh", "-c", f'{joins} && shift {len(procs)} && exec "$@"', "sh", *map(str, procs), *argv]
        return argv

    def _bwrap_argv(self, files: dict[str, int], seccomp_fd: int | None, user: int | None) -> list[str]:
        if user is None:  # unprivileged: bwrap makes a user namespace and drops every capability
            argv = [self.bwrap, "--unshare-all", "--cap-drop", "ALL"]
        else:  # as root: mount with root's rights, then setpriv drops to the slot's uid inside
            argv = [self.bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                    "--unshare-cgroup-try"]
        argv += ["--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
        for name in ("bin", "lib", "lib64", "sbin"):
            host = Path("/") / name
            if host.is_symlink():
                argv += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.exists():
                argv += ["--ro-bind", str(host), f"/{name}"]
        prefix = Path(sys.base_prefix)
        if not str(prefix).startswith("/usr"):
            argv += ["--ro-bind", str(prefix), str(prefix)]
        size = str(self.limits.disk_mb * 2**20)
        argv += ["--dev", "/dev", "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
                 "--perms", "1777", "--size", size, "--tmpfs", "/sandbox", "--ro-bind", str(HARNESS_DIR), "/harness"]
        if self.bin_dir is not None:
            argv += ["--ro-bind", str(self.bin_dir), "/harness-bin"]
        for name, fd in files.items():
            argv += ["--perms", "0644", "--file", str(fd), f"/sandbox/{name}"]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        argv += ["--chdir", "/sandbox", "--clearenv", "--setenv", "HOME", "/sandbox",
                 "--setenv", "PATH", f"{prefix}/bin:/usr/bin:/bin", "--setenv", "LANG", "C.UTF-8", "--"]
        if user is not None:
            argv += [self.setpriv, f"--reuid={user}", f"--regid={user}", "--clear-groups", "--"]
        return argv

    def run(self, files: dict[str, str | bytes], argv: list[str], slot: int = 0,
            secret: bytes | None = None) -> RunResult:
        """Run `argv` in /sandbox holding `files`. `python` is the base interpreter, `{harness}` the
        harness folder; with a secret, `{secret_fd}` / `{verdict_fd}` are descriptors of a sealed
        in-memory file holding it and of the verdict pipe (RunResult.verdict)."""
        start = time.perf_counter()
        passed: list[int] = []  # descriptors the sandbox inherits (closed here once it has them)
        verdict_r = None
        bwrap = self.mode == "bwrap"
        tokens = {"python": self.python, "{harness}": "/harness" if bwrap else str(HARNESS_DIR),
                  "{harness_bin}": "/harness-bin" if bwrap else str(self.bin_dir)}
        blobs = {k: v if isinstance(v, bytes) else v.encode("utf-8") for k, v in files.items()}
        work = None
        try:
            if secret is not None:
                verdict_r, verdict_w = os.pipe()
                passed += [_memfd("secret", secret), verdict_w]
                tokens.update({"{secret_fd}": str(passed[0]), "{verdict_fd}": str(verdict_w)})
            if self.mode == "bwrap":
                file_fds = {name: _memfd(name, data) for name, data in blobs.items()}
                seccomp_fd = _memfd("seccomp", self.seccomp) if self.seccomp else None
                passed += list(file_fds.values()) + ([seccomp_fd] if seccomp_fd is not None else [])
                user = self.uid_base + slot if self.as_root else None
                procs = self.cgroups.procs(slot) if self.cgroups else []
                cmd = self._launch_argv(procs) + self._bwrap_argv(file_fds, seccomp_fd, user)
                cmd += self._expand(argv, tokens)
                return self._execute(cmd, "/", passed, start, verdict_r)
            work = Path(tempfile.mkdtemp(prefix=f"{HOST_PREFIX}{os.getpid()}-"))
            for name, data in blobs.items():
                (work / name).write_bytes(data)
            return self._execute(self._launch_argv([]) + self._expand(argv, tokens), str(work), passed, start,
                                 verdict_r)
        finally:
            for fd in passed + ([verdict_r] if verdict_r is not None else []):
                os.close(fd)
            if work is not None:
                remove_tree(work)

    @staticmethod
    def _expand(argv: list[str], tokens: dict[str, str]) -> list[str]:
        out = []
        for a in argv:
            a = tokens.get(a, a)
            for key, value in tokens.items():
                if key.startswith("{") and key in a:
                    a = a.replace(key, value)
            out.append(a)
        return out

    def _execute(self, cmd: list[str], cwd: str, passed: list[int], start: float,
                 verdict_r: int | None) -> RunResult:
        try:
            proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, pass_fds=passed,
                                    env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        except OSError as exc:
            return RunResult("error", None, "", f"could not start sandbox: {exc}", time.perf_counter() - start)
        finally:
            for fd in passed:  # the child has its copies; the verdict pipe reaches EOF when the sandbox ends
                os.close(fd)
            passed.clear()
        return self._collect(proc, start, verdict_r)

    def _collect(self, proc: subprocess.Popen, start: float, verdict_r: int | None) -> RunResult:
        cap = self.limits.output_bytes
        overflow = threading.Event()
        buffers: dict[str, bytearray] = {"out": bytearray(), "err": bytearray(), "verdict": bytearray()}

        def drain(stream, key, limit):
            while chunk := stream.read1(65536) if hasattr(stream, "read1") else stream.read(65536):
                room = limit - len(buffers[key])
                buffers[key] += chunk[: max(room, 0)]
                if len(chunk) > room and key != "verdict":
                    overflow.set()
                    _kill(proc)
                    break
            stream.close()

        streams = [(proc.stdout, "out", cap), (proc.stderr, "err", cap)]
        if verdict_r is not None:
            streams.append((os.fdopen(os.dup(verdict_r), "rb"), "verdict", 4096))
        readers = [threading.Thread(target=drain, args=s, daemon=True) for s in streams]
        for r in readers:
            r.start()
        timed_out = not _wait_exit(proc, self.limits.wall_seconds)
        _kill(proc)  # whatever the program left running dies with the sandbox
        proc.wait()
        for r in readers:
            r.join(timeout=2)
        out, err = (buffers[k].decode("utf-8", errors="replace") for k in ("out", "err"))
        verdict = buffers["verdict"].decode("utf-8", errors="replace")
        seconds = time.perf_counter() - start
        if timed_out:
            return RunResult("timeout", None, out, err, seconds, verdict)
        if overflow.is_set():
            return RunResult("output_limit", proc.returncode, out, err, seconds, verdict)
        return RunResult("ok" if proc.returncode == 0 else "failed", proc.returncode, out, err, seconds, verdict)


def _wait_exit(proc: subprocess.Popen, seconds: float) -> bool:
    """Whether the process ended within `seconds`, learnt the moment it does (a pidfd; Popen.wait's
    timeout polls with growing sleeps, which rounded a 32 ms run up to 64 ms)."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # no pidfd: Popen's polling wait
        try:
            proc.wait(timeout=seconds)
            return True
        except subprocess.TimeoutExpired:
            return False
    try:
        return bool(select.select([pidfd], [], [], seconds)[0])
    finally:
        os.close(pidfd)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class SandboxPool:
    """Runs many programs in parallel, at most `max_workers` at a time, each in its own slot."""

    def __init__(self, sandbox: Sandbox, max_workers: int = 4):
        self.sandbox = sandbox
        self.max_workers = max_workers
        self._slots: queue.Queue[int] = queue.Queue()
        for i in range(max_workers):
            self._slots.put(i)
        self._executor = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="sandbox")

    def _run(self, job) -> RunResult:
        slot = self._slots.get()
        try:
            files, argv, *secret = job
            return self.sandbox.run(files, argv, slot, *secret)
        finally:
            self._slots.put(slot)

    def map(self, jobs: list[tuple]) -> list[RunResult]:
        """Results in the order of `jobs`: (files, argv) or (files, argv, secret) tuples."""
        return list(self._executor.map(self._run, jobs))

    def close(self) -> None:
        self._executor.shutdown(wait=True)
