"""One candidate cannot starve the others or the harness: per-candidate limits (tasks.sandbox, tasks.confine).

Without a delegated cgroup v2 subtree (these machines have none) rlimits bound each process;
these tests attack what they leave open: writable /dev space, memory outside the address
space (memfd, System V shm), nested user namespaces, a process budget shared between
candidates, and the OOM killer choosing the harness. Real programs in real bubblewrap
sandboxes; sizes stay small next to the limits set here.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gsil_bench.tasks import confine
from gsil_bench.tasks.sandbox import CheckerPool, Limits, Spawned, limits_in_force, python, run_program

RAW = Limits(timeout=5.0, memory_mb=256, file_mb=16)
ADD_TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"


def test_dev_and_dev_shm_are_not_space_to_fill():
    r = run_program("import os\nfor p in ('/dev/shm/fill', '/dev/fill'):\n    try:\n"
                    "        open(p, 'wb').write(b'x' * (1 << 20))\n        print('WROTE', p)\n"
                    "    except OSError as e:\n        print(e.errno)\nopen('/dev/null', 'w').write('still works')\n"
                    "open('/tmp/ok', 'w').write('ok')\nprint('done')", RAW)
    assert r.stdout.split() == ["30", "30", "done"], r  # EROFS for both; /dev/null and /tmp work


@pytest.mark.skipif(not confine.supported(), reason="no seccomp filter for this machine's ABI")
def test_memory_outside_the_address_space_and_nested_namespaces_are_denied():
    src = ("import ctypes, os, subprocess\nlibc = ctypes.CDLL(None, use_errno=True)\n"
           "def err(rc):\n    return ctypes.get_errno() if rc == -1 else 'ALLOWED'\n"
           "try:\n    os.memfd_create('x')\n    print('memfd ALLOWED')\nexcept OSError as e:\n    print('memfd', e.errno)\n"
           "print('shmget', err(libc.shmget(0, 1 << 20, 0o1600)))\n"
           "print('mq_open', err(libc.mq_open(b'/q', 0o100 | 2, 0o600, None)))\n"
           "print('unshare', err(libc.unshare(0x10000000)))\n"  # CLONE_NEWUSER
           "r = subprocess.run(['unshare', '-Urm', 'mount', '-t', 'tmpfs', 'none', '/tmp'], capture_output=True)\n"
           "print('nested', r.returncode)\n")
    out = run_program(src, RAW).stdout
    assert "ALLOWED" not in out and "memfd 1" in out and "shmget 1" in out and "unshare 1" in out, out
    assert "nested 0" not in out and "nested" in out


def test_threads_subprocesses_and_forks_still_work_within_the_cap():
    src = ("import os, subprocess, threading\nout = []\nt = threading.Thread(target=lambda: out.append(1))\n"
           "t.start()\nt.join()\nprint(out, subprocess.run(['echo', 'sub'], capture_output=True, text=True).stdout.strip())\n"
           "pid = os.fork()\nif pid == 0:\n    os._exit(7)\nprint(os.waitpid(pid, 0)[1] >> 8, open('/proc/self/oom_score_adj').read())")
    assert run_program(src, RAW).stdout.split() == ["[1]", "sub", "7", "1000"]


BOMB = ("import os, time\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
        "        except OSError:\n            time.sleep(0.01)\n")
# holds what memory it can outside its address space and in forked children, then reports it
HOG = ("import os, time\ndef add(a, b):\n    report = {}\n    try:\n        os.memfd_create('x')\n"
       "        report['memfd'] = 'allowed'\n    except OSError as e:\n        report['memfd'] = e.errno\n"
       "    try:\n        open('/dev/shm/fill', 'wb').write(b'x' * (8 << 20))\n        report['shm'] = 'wrote'\n"
       "    except OSError as e:\n        report['shm'] = e.errno\n    kids = 0\n    for _ in range(12):\n"
       "        try:\n            pid = os.fork()\n        except OSError:\n            break\n        if pid == 0:\n"
       "            try:\n                held = b'x' * (40 << 20)\n            except MemoryError:\n"
       "                os._exit(1)\n            time.sleep(3)\n            os._exit(0)\n        kids += 1\n"
       "    report['children'] = kids\n    report['oom'] = int(open('/proc/self/oom_score_adj').read())\n"
       "    raise ValueError(repr(report))\n")
# a correct program that starts a thread (it needs process budget) a moment after the attacks began
CORRECT = ("import threading, time\ndef add(a, b):\n    time.sleep(1.0)\n    out = []\n"
           "    t = threading.Thread(target=lambda: out.append(a + b))\n    t.start()\n    t.join()\n    return out[0]\n")


def _hwm_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def test_attacks_beside_correct_programs_starve_neither_them_nor_the_harness():
    limits = Limits(timeout=6.0, memory_mb=256, file_mb=16, max_procs=6)
    jobs = [{"kind": "asserts", "source": src, "entry": "add", "tests": ADD_TESTS, "limits": limits}
            for src in (BOMB, CORRECT, HOG, CORRECT, CORRECT)]
    pool = CheckerPool("bwrap", 3)
    try:
        with ThreadPoolExecutor(max_workers=3) as ex:
            verdicts = list(ex.map(pool.run, jobs))
        hwm = [_hwm_mb(p.pid) for p in pool._all]
    finally:
        pool.close()
    assert [verdicts[i]["status"] for i in (1, 3, 4)] == ["passed"] * 3, [v["detail"] for v in verdicts]
    assert verdicts[0]["status"] == "timeout"
    report = eval(verdicts[2]["detail"].split(": ", 1)[1].split(" (tests.py")[0])
    assert report["memfd"] == 1 and report["shm"] == 30 and report["oom"] == 1000, report
    assert report["children"] <= limits.max_procs + 1, report  # the cap fits one program, not all workers'
    assert max(hwm) < 200, hwm  # the checkers' peak resident memory, MiB (33 measured)


def test_the_log_says_which_limits_are_in_force():
    line = limits_in_force("bwrap", RAW)
    assert "address space 256 MiB per process" in line and "/dev and /proc read-only" in line and "cgroup" in line
    if os.geteuid() == 0:
        assert "its own uid" in line


# forks six children that each try to hold 60 MiB; each child alone fits its address space
FAMILY = ("import os, time\nkids = []\nfor _ in range(6):\n    pid = os.fork()\n    if pid == 0:\n        try:\n"
          "            held = b'x' * (60 << 20)\n        except MemoryError:\n            os._exit(3)\n"
          "        time.sleep(3)\n        os._exit(0)\n    kids.append(pid)\n"
          "print([os.waitpid(p, 0)[1] & 0x7f for p in kids])\n")


@pytest.mark.skipif(confine.cgroup_v1_parents() is None, reason="no writable cgroup v1 memory and pids hierarchies")
def test_a_candidates_processes_share_one_memory_limit_where_cgroups_exist():
    r = run_program(FAMILY, Limits(timeout=10.0, memory_mb=128, file_mb=16))
    killed = eval(r.stdout).count(9)  # SIGKILL: the cgroup's OOM killer, inside the candidate's cgroup
    assert killed >= 4, r  # 144 MiB for the whole candidate: at most two children hold 60 MiB at once
    sb = Spawned("bwrap", RAW, [python(), "-c", "import time; time.sleep(30)"], stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        folders = (sb.cgroups.memory, sb.cgroups.pids)
        deadline = time.monotonic() + 10
        while not all((f / "cgroup.procs").read_text().split() for f in folders) and time.monotonic() < deadline:
            time.sleep(0.05)  # the shell joins both cgroups right after it starts
        assert all((f / "cgroup.procs").read_text().split() for f in folders)  # it runs inside both
    finally:
        sb.kill()
    assert not any(f.exists() for f in folders)  # killed and removed with the candidate
