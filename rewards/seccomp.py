"""A seccomp filter for the code sandbox, as the classic-BPF program bubblewrap's `--seccomp FD` loads.

It refuses (EPERM) what a test program never needs and an escape or a cross-run channel would:
new namespaces (`unshare`, `setns`, `clone` with any CLONE_NEW* flag; `clone3`, whose flags BPF
cannot read, gets ENOSYS so that libc falls back to `clone`), mounts, `chroot`, the kernel keyrings
(`add_key`, `request_key`, `keyctl`: a key would outlive the run for the next program of the same
uid), `ptrace` and `process_vm_readv/writev` (reading the harness's memory), `bpf`,
`perf_event_open`, `userfaultfd`, `io_uring`, module and kexec loading, and the x32 ABI. Every
other system call is allowed; a foreign architecture is killed. x86-64 and aarch64.
"""

from __future__ import annotations

import errno
import platform
import struct

# struct seccomp_data offsets; classic-BPF opcodes
_NR, _ARCH, _ARG0 = 0, 4, 16
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
ALLOW, KILL = 0x7FFF0000, 0x80000000


def _errno(code: int) -> int:
    return 0x00050000 | code


# CLONE_NEWNS, NEWCGROUP, NEWUTS, NEWIPC, NEWUSER, NEWPID, NEWNET, NEWTIME
CLONE_NEW_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80

_BLOCKED = ("unshare", "setns", "mount", "umount2", "pivot_root", "chroot", "add_key", "request_key", "keyctl",
            "ptrace", "process_vm_readv", "process_vm_writev", "bpf", "perf_event_open", "userfaultfd",
            "io_uring_setup", "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
            "open_by_handle_at", "name_to_handle_at", "open_tree", "move_mount", "fsopen", "fsconfig", "fsmount",
            "fspick", "mount_setattr", "quotactl", "swapon", "swapoff", "reboot", "acct", "syslog")

SYSCALLS = {
    "x86_64": {"audit_arch": 0xC000003E, "clone": 56, "clone3": 435, "unshare": 272, "setns": 308, "mount": 165,
               "umount2": 166, "pivot_root": 155, "chroot": 161, "add_key": 248, "request_key": 249, "keyctl": 250,
               "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "bpf": 321, "perf_event_open": 298,
               "userfaultfd": 323, "io_uring_setup": 425, "kexec_load": 246, "kexec_file_load": 320,
               "init_module": 175, "finit_module": 313, "delete_module": 176, "open_by_handle_at": 304,
               "name_to_handle_at": 303, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
               "fsmount": 432, "fspick": 433, "mount_setattr": 442, "quotactl": 179, "swapon": 167, "swapoff": 168,
               "reboot": 169, "acct": 163, "syslog": 103},
    "aarch64": {"audit_arch": 0xC00000B7, "clone": 220, "clone3": 435, "unshare": 97, "setns": 268, "mount": 40,
                "umount2": 39, "pivot_root": 41, "chroot": 51, "add_key": 217, "request_key": 218, "keyctl": 219,
                "ptrace": 117, "process_vm_readv": 270, "process_vm_writev": 271, "bpf": 280,
                "perf_event_open": 241, "userfaultfd": 282, "io_uring_setup": 425, "kexec_load": 104,
                "kexec_file_load": 294, "init_module": 105, "finit_module": 273, "delete_module": 106,
                "open_by_handle_at": 265, "name_to_handle_at": 264, "open_tree": 428, "move_mount": 429,
                "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442,
                "quotactl": 60, "swapon": 224, "swapoff": 225, "reboot": 142, "acct": 89, "syslog": 116},
}


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("<HBBI", code, jt, jf, k)


def sandbox_filter(machine: str | None = None) -> bytes | None:
    """The filter for this machine's architecture, or None where it has no table here."""
    table = SYSCALLS.get(machine or platform.machine())
    if table is None:
        return None
    eperm = _errno(errno.EPERM)
    prog = [_insn(_LD_ABS, _ARCH), _insn(_JEQ, table["audit_arch"], 1, 0), _insn(_RET, KILL), _insn(_LD_ABS, _NR)]
    if table["audit_arch"] == 0xC000003E:  # x32 system calls carry bit 30
        prog += [_insn(_JGE, 0x40000000, 0, 1), _insn(_RET, eperm)]
    for name in _BLOCKED:
        prog += [_insn(_JEQ, table[name], 0, 1), _insn(_RET, eperm)]
    prog += [_insn(_JEQ, table["clone3"], 0, 1), _insn(_RET, _errno(errno.ENOSYS))]
    prog += [_insn(_JEQ, table["clone"], 0, 3), _insn(_LD_ABS, _ARG0), _insn(_JSET, CLONE_NEW_FLAGS, 0, 1),
             _insn(_RET, eperm), _insn(_RET, ALLOW)]
    return b"".join(prog)
