"""What confines a sandboxed candidate beyond rlimits: a seccomp filter, and cgroup v2 detection.

`program()` is a classic BPF program that bubblewrap loads (`--seccomp FD`).

rlimits bound each process, not what a program can pin outside its address space or set up
around it. The filter makes these calls fail with EPERM (benchmark programs never need them):
- memory outside RLIMIT_AS: memfd_create, memfd_secret, shmget (System V shared memory), mq_open,
  userfaultfd;
- mounts and namespaces (a nested user namespace could mount an uncapped tmpfs): mount, umount2,
  pivot_root, the new mount API (fsopen ... mount_setattr), unshare, setns, and clone with any
  CLONE_NEW* flag; clone3 answers ENOSYS (its flags sit behind a pointer a filter cannot read), so
  the C library falls back to clone;
- kernel attack surface no program here needs: bpf, perf_event_open, io_uring_setup, keyctl,
  add_key, request_key.
A syscall of another ABI (i386 through int 0x80, x32 numbers on x86-64) fails whatever it is.
Written by hand (no libseccomp): the program is a dozen lines of BPF and has no dependency.
Syscall numbers: linux/arch/x86/entry/syscalls/syscall_64.tbl and include/uapi/asm-generic/unistd.h.
"""

from __future__ import annotations

import errno
import os
import platform
import struct
from pathlib import Path

# seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6]
NR, ARCH, ARG0_LOW = 0, 4, 16
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
LD_W_ABS, JEQ_K, JGE_K, JSET_K, RET_K = 0x20, 0x15, 0x35, 0x45, 0x06
CLONE_NEW = 0x00000080 | 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
X32_BIT = 0x40000000

DENIED = ("memfd_create", "memfd_secret", "shmget", "mq_open", "userfaultfd", "mount", "umount2", "pivot_root",
          "fsopen", "fsconfig", "fsmount", "fspick", "open_tree", "move_mount", "mount_setattr", "unshare",
          "setns", "bpf", "perf_event_open", "io_uring_setup", "keyctl", "add_key", "request_key")
ABIS = {  # machine: (AUDIT_ARCH_*, syscall numbers)
    "x86_64": (0xC000003E, dict(
        memfd_create=319, memfd_secret=447, shmget=29, mq_open=240, userfaultfd=323, mount=165, umount2=166,
        pivot_root=155, fsopen=430, fsconfig=431, fsmount=432, fspick=433, open_tree=428, move_mount=429,
        mount_setattr=442, unshare=272, setns=308, bpf=321, perf_event_open=298, io_uring_setup=425, keyctl=250,
        add_key=248, request_key=249, clone=56, clone3=435)),
    "aarch64": (0xC00000B7, dict(
        memfd_create=279, memfd_secret=447, shmget=194, mq_open=180, userfaultfd=282, mount=40, umount2=39,
        pivot_root=41, fsopen=430, fsconfig=431, fsmount=432, fspick=433, open_tree=428, move_mount=429,
        mount_setattr=442, unshare=97, setns=268, bpf=280, perf_event_open=241, io_uring_setup=425, keyctl=219,
        add_key=217, request_key=218, clone=220, clone3=435)),
}


def supported() -> bool:
    return platform.machine() in ABIS


def program(machine: str | None = None) -> bytes:
    """The filter for this machine's ABI as `struct sock_filter[]` bytes (native byte order)."""
    arch, nrs = ABIS[machine or platform.machine()]
    ins: list[tuple[int, int | str, int | str, int]] = [(LD_W_ABS, 0, 0, ARCH), (JEQ_K, 0, "deny", arch),
                                                        (LD_W_ABS, 0, 0, NR)]
    if arch == ABIS["x86_64"][0]:
        ins.append((JGE_K, "deny", 0, X32_BIT))
    ins += [(JEQ_K, "deny", 0, nrs[name]) for name in DENIED]
    ins += [(JEQ_K, "enosys", 0, nrs["clone3"]), (JEQ_K, 0, "allow", nrs["clone"]),
            (LD_W_ABS, 0, 0, ARG0_LOW), (JSET_K, "deny", "allow", CLONE_NEW)]
    labels = {"allow": len(ins), "deny": len(ins) + 1, "enosys": len(ins) + 2}
    ins += [(RET_K, 0, 0, RET_ALLOW), (RET_K, 0, 0, RET_ERRNO | errno.EPERM), (RET_K, 0, 0, RET_ERRNO | errno.ENOSYS)]
    out = b""
    for i, (code, jt, jf, k) in enumerate(ins):
        jt = labels[jt] - i - 1 if isinstance(jt, str) else jt
        jf = labels[jf] - i - 1 if isinstance(jf, str) else jf
        out += struct.pack("=HBBI", code, jt, jf, k)
    return out


def cgroup_v2_subtree() -> Path | None:
    """This process's cgroup v2 folder when it offers the memory and pids controllers and is writable
    (a delegated subtree), else None (cgroup v1, or a v2 tree without those controllers or rights)."""
    try:
        own = next(x[3:] for x in Path("/proc/self/cgroup").read_text().splitlines() if x.startswith("0::"))
    except (OSError, StopIteration):
        return None
    for mount in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
        folder = Path(mount + own.rstrip("/"))
        try:
            controllers = set((folder / "cgroup.controllers").read_text().split())
        except OSError:
            continue
        if {"memory", "pids"} <= controllers and os.access(folder, os.W_OK):
            return folder
    return None
