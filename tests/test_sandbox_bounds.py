"""What a candidate can make the trusted side hold, and what it can hold outside its own limits
(issue 32): candidate text in verdicts and samples.jsonl, host disk through its output, kernel
memory in TCP buffers and System V IPC objects, the OOM score, the time a reply takes to parse,
and a sandbox that never started.

Real programs in real bubblewrap sandboxes, through the production checker (`check`,
`check_many`) and, for the harness's own memory, a whole `evaluate` run (in this process with
its Python heap traced; in a harness process of its own, measured as the issue did, in the slow
suite). The non-root fallback is run in tests/test_sandbox_fallback.py.
The sandbox server is untrusted code in the candidate's interpreter: the hostile programs
below rewrite it (`sys.modules['__main__']`) to answer whatever they like.
"""

from __future__ import annotations

import errno
import gc
import json
import os
import struct
import subprocess
import sys
import time
import tracemalloc

import pytest
from helpers import forged_reply, write_jsonl

from gsil_bench.core.config import EvalConfig
from gsil_bench.tasks import confine, wire
from gsil_bench.tasks.api import evaluate
from gsil_bench.tasks.checker import check
from gsil_bench.tasks.sandbox import Limits, check_many, run_program

L = Limits(timeout=5.0, memory_mb=1024)
ADD_TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"
KEPT = 4096 + 100  # no candidate-written field of a verdict is longer: 4 KB kept, and a note of what was cut


def _asserts(source: str, limits: Limits = L, mode: str = "bwrap") -> dict:
    return check({"kind": "asserts", "source": source, "entry": "add", "tests": ADD_TESTS, "limits": limits}, mode)


# -- 1. candidate text is capped where it enters the trusted side ----------------------------------------------
SERVER = "import sys\n_server = sys.modules['__main__']\n"
HUGE_TEXT = {
    # an AssertionError whose message is 16 MB (the server caps at 2000 characters; the candidate replaces it)
    "assertion-message": SERVER + "_server._error = lambda err: {'E': ['AssertionError', 'x' * (16 << 20)]}\n",
    # an exception type name of 16 MB (cut to 500 characters before too: kept as a guard)
    "exception-name": SERVER + "_server._error = lambda err: {'E': ['N' * (16 << 20), 'm']}\n",
    # a value whose tag is 15 MB: the checker's error message quotes the tag
    "malformed-tag": SERVER + "_server._call = lambda ns, req: {'ok': {'Q' * (15 << 20): 1}}\n",
    # 8 MB written to stderr and stdout (32 KB of it kept before)
    "output": "import sys\nsys.stderr.write('e' * (8 << 20))\nprint('o' * (8 << 20))\n",
}


@pytest.mark.parametrize("attack", sorted(HUGE_TEXT))
def test_candidate_text_is_capped_where_it_enters_the_checker(attack):
    v = _asserts(HUGE_TEXT[attack] + "def add(a, b):\n    raise ValueError('no')\n")
    assert v["status"] in ("failed", "crashed"), v["status"]
    sizes = {k: len(v[k]) for k in ("detail", "output")}
    assert max(sizes.values()) <= KEPT, sizes
    assert v["detail"]  # still says what happened


# the completion of HumanEval/0: the function raises, and every error reply carries 16 MB of text
HOSTILE_COMPLETION = ("    raise ValueError('no')\n\n\nimport sys\n_server = sys.modules['__main__']\n"
                      "_server._error = lambda err: {'E': ['AssertionError', 'x' * (16 << 20)]}\n")


def _hostile_completions(tmp_path, n: int):
    return write_jsonl(tmp_path / f"c{n}.jsonl", [{"task_id": "HumanEval/0", "completion": HOSTILE_COMPLETION}] * n)


def test_many_hostile_candidates_keep_the_harness_memory_and_samples_bounded(tmp_path, data_dir):
    """8 candidates, each answering with 16 MB of error text, through `evaluate` in this process: before,
    134 MB of samples.jsonl, and the harness held every one of those messages (its Python heap, traced)."""
    n = 8
    tracemalloc.start()
    try:
        res = evaluate("hostile", ["humaneval"], EvalConfig(code_workers=2, code_timeout=10.0), tmp_path / "o",
                       data_dir=str(data_dir), completions=_hostile_completions(tmp_path, n), limit=1)["humaneval"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert res["metrics"]["pass@1"]["value"] == 0.0
    assert peak < 48 << 20, peak  # not n x 16 MB
    samples = tmp_path / "o" / "humaneval" / "samples.jsonl"
    details = [r["base"]["detail"] for r in json.loads(samples.read_text())["results"]]
    assert len(details) == n and all(d.startswith("AssertionError: xxx") for d in details)  # their errors, cut
    assert samples.stat().st_size < n * 3 * KEPT, samples.stat().st_size  # bounded per candidate


HARNESS = r"""
import json, re, resource, sys
from pathlib import Path
from gsil_bench.core.config import EvalConfig
from gsil_bench.tasks.api import evaluate
comp, out, data = sys.argv[1:4]
rss = lambda: int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) // 1024
start = rss()
res = evaluate("hostile", ["humaneval"], EvalConfig(code_workers=2, code_timeout=10.0), Path(out), data_dir=data,
               completions=Path(comp), limit=1)["humaneval"]
print(json.dumps({"start_mb": start, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
                  "pass@1": res["metrics"]["pass@1"]["value"]}))
"""


@pytest.mark.slow
def test_forty_hostile_candidates_as_the_red_team_ran_them(tmp_path, data_dir):
    """The issue's measurement, a harness process of its own: 40 candidates (before: 712 MB of samples.jsonl
    and 2.37 GB of harness memory; 12 of them here: 201 MB, and the peak resident memory 624 MB above its
    start, 64 MB for one)."""
    out = tmp_path / "o"
    r = subprocess.run([sys.executable, "-c", HARNESS, str(_hostile_completions(tmp_path, 40)), str(out),
                        str(data_dir)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.splitlines()[-1])
    size = (out / "humaneval" / "samples.jsonl").stat().st_size
    assert got["pass@1"] == 0.0 and size < 40 * 3 * KEPT and got["peak_mb"] - got["start_mb"] < 100, (got, size)


# -- 2. the candidate's output cannot take host disk -----------------------------------------------------------
# fallocate(FALLOC_FL_KEEP_SIZE) and the generic preallocation ioctl (FS_IOC_RESVSP64) on stdout and stderr:
# both allocate blocks past the end of a file without changing its size, so RLIMIT_FSIZE does not see them
PREALLOCATE = ("import ctypes, fcntl, os, struct\nlibc = ctypes.CDLL(None, use_errno=True)\n"
               "libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]\n"
               "report = {}\nfor fd in (1, 2):\n"
               "    rc = libc.fallocate(fd, 1, 0, 1 << 30)\n"  # FALLOC_FL_KEEP_SIZE, 1 GiB
               "    report[f'fallocate{fd}'] = ctypes.get_errno() if rc else 'ALLOCATED'\n"
               "    try:\n        fcntl.ioctl(fd, 0x4030582a, struct.pack('hhqqii16x', 0, 0, 0, 1 << 30, 0, 0))\n"
               "        report[f'resvsp{fd}'] = 'ALLOCATED'\n"
               "    except OSError as e:\n        report[f'resvsp{fd}'] = e.errno\n"
               "    report[f'blocks{fd}'] = os.fstat(fd).st_blocks * 512\n")


def test_the_output_cannot_allocate_host_disk():
    r = run_program(PREALLOCATE + "import sys\nprint(report, file=sys.stderr)\n", Limits(timeout=10.0, memory_mb=512))
    report = eval(r.stderr.strip().splitlines()[-1])
    assert "ALLOCATED" not in report.values() and report["blocks1"] < 1 << 20 and report["blocks2"] < 1 << 20, report
    v = _asserts(PREALLOCATE + "def add(a, b):\n    raise ValueError(repr(report))\n")  # through the checker
    report = eval(v["detail"].split(": ", 1)[1].split(" (tests.py")[0])
    assert "ALLOCATED" not in report.values() and report["blocks2"] < 1 << 20, report


# -- 3. no INET sockets: TCP buffers are kernel memory outside the memory cgroup ---------------------------------
SOCKETS = ("import errno, socket\nreport = {}\n"
           "for name, family, kind in (('inet', socket.AF_INET, socket.SOCK_STREAM), ('inet6', socket.AF_INET6, "
           "socket.SOCK_STREAM), ('udp', socket.AF_INET, socket.SOCK_DGRAM), ('netlink', socket.AF_NETLINK, "
           "socket.SOCK_RAW)):\n"
           "    try:\n        socket.socket(family, kind).close()\n        report[name] = 'ALLOWED'\n"
           "    except OSError as e:\n        report[name] = e.errno\n"
           "held = 0\ntry:\n    server = socket.socket()\n    server.bind(('127.0.0.1', 0))\n    server.listen()\n"
           "    client = socket.create_connection(server.getsockname())\n    client.setblocking(False)\n"
           "    while True:\n        held += client.send(b'x' * 65536)\nexcept OSError:\n    pass\n"
           "report['held'] = held\na, b = socket.socketpair()\na.sendall(b'unix')\nreport['unix'] = b.recv(4).decode()\n"
           "print(report)\n")


@pytest.mark.skipif(not confine.supported(), reason="no seccomp filter for this machine's ABI")
def test_inet_sockets_are_denied_and_unix_sockets_work():
    r = run_program(SOCKETS, Limits(timeout=10.0, memory_mb=512))
    report = eval(r.stdout)
    assert report["held"] == 0, report  # before: megabytes queued in loopback TCP buffers
    assert {report[k] for k in ("inet", "inet6", "udp", "netlink")} == {errno.EAFNOSUPPORT}, report
    assert report["unix"] == "unix"  # unix sockets stay (counted in the memory cgroup)


# -- 4. the OOM score adjustment stays at 1000 -------------------------------------------------------------------
LOWER_OOM = ("import os, subprocess\nreport = []\nfor value in ('0', '999'):\n    try:\n"
             "        with open('/proc/self/oom_score_adj', 'w') as f:\n            f.write(value)\n"
             "        report.append('LOWERED')\n    except OSError as e:\n        report.append(e.errno)\n"
             "r = subprocess.run(['choom', '-n', '0', '--', 'true'], capture_output=True)\n"
             "report.append('LOWERED' if r.returncode == 0 else 'refused')\n"
             "report.append(int(open('/proc/self/oom_score_adj').read()))\nprint(report)\n")


@pytest.mark.parametrize("mode", ["bwrap", "process"])
def test_a_candidate_cannot_lower_its_oom_score(mode):
    if mode == "process" and not (os.geteuid() == 0 and confine.oom_floor_holds()):
        pytest.skip("process mode without root's CAP_SYS_RESOURCE: the candidate may lower its score back to the "
                    "harness's (docs/security.md)")
    r = run_program(LOWER_OOM, Limits(timeout=10.0, memory_mb=512), mode=mode)
    report = eval(r.stdout)
    assert "LOWERED" not in report and report[-1] == 1000, (report, r.stderr)


# -- 5. parsing a reply counts against the deadline ----------------------------------------------------------------
def _container_frame(n: int) -> bytes:
    return b'{"ok":{"L":[' + b",".join([b'{"L":[]}'] * n) + b"]}}"


def test_parsing_and_decoding_a_reply_do_not_run_the_cyclic_collector():
    """The collector's passes over millions of fresh containers made a 17 MB reply cost 5 s to parse (1 s
    without them): a reply is parsed and decoded with the collector paused. A collection or two may follow
    each (the collector, enabled again, finds its count past the threshold): a pass, linear in the frame."""
    frame = _container_frame(100_000)
    runs: list[str] = []

    def seen(phase: str, info: dict) -> None:
        runs.append(phase)

    gc.callbacks.append(seen)
    try:
        reply = wire.parse_frame(struct.pack(">I", len(frame)), lambda n: frame)
        value = wire.decode(reply["ok"], budget=wire.Budget(float("inf")))
    finally:
        gc.callbacks.remove(seen)
    assert len(value) == 100_000 and runs.count("start") <= 4, runs.count("start")  # before: 429
    assert gc.isenabled()


# a reply frame just under the checker's cap, made of about two million empty lists, sent just before the
# deadline straight onto the reply pipe
CONTAINERS = "b'{\"ok\":{\"L\":[' + b','.join([b'{\"L\":[]}'] * 1_950_000) + b']}}'"


def _parse_seconds(n: int) -> float:
    """How long parsing a frame of `n` empty containers takes on this machine now, the collector paused:
    a quarter of it measured, times four (linear)."""
    frame = _container_frame(n // 4)
    gc.disable()
    try:
        start = time.perf_counter()
        json.loads(frame)
        return 4 * (time.perf_counter() - start)
    finally:
        gc.enable()


def test_a_two_million_container_reply_is_judged_within_its_deadline():
    """The frame arrives a second before the deadline: its verdict comes at the deadline plus at most about
    one parse of it (measured here, so the bound follows the machine's load), not five (the collector's
    passes: 8.6-10.5 s before, for a 3 s limit)."""
    limit = 3.0
    job = {"kind": "asserts", "source": forged_reply(CONTAINERS, at=limit - 1.0), "entry": "add",
           "tests": ADD_TESTS, "limits": Limits(timeout=limit, memory_mb=1024)}
    [v] = check_many([job], mode="bwrap", workers=1)
    parse = _parse_seconds(1_950_000)
    assert v["status"] == "timeout" and v["seconds"] < limit + 2 * parse + 1.0, (v, parse)


# -- 6. System V IPC, and a sandbox that never started ----------------------------------------------------------------
SYSV = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nreport = {}\n"
        "for name, call in (('semget', lambda: libc.semget(0, 250, 0o1600)), ('msgget', lambda: libc.msgget(0, 0o1600)),"
        " ('shmget', lambda: libc.shmget(0, 1 << 20, 0o1600))):\n"
        "    report[name] = ctypes.get_errno() if call() == -1 else 'ALLOWED'\nprint(report)\n")


@pytest.mark.skipif(not confine.supported(), reason="no seccomp filter for this machine's ABI")
def test_system_v_semaphores_and_queues_are_denied():
    report = eval(run_program(SYSV, Limits(timeout=10.0, memory_mb=512)).stdout)
    assert report == {"semget": errno.EPERM, "msgget": errno.EPERM, "shmget": errno.EPERM}, report


def test_a_sandbox_that_could_not_start_is_crashed_not_failed():
    """1 MiB of address space: the sandbox (bwrap, the server's interpreter) cannot start; no candidate code ran,
    so the verdict is not a wrong answer."""
    v = _asserts("def add(a, b):\n    return a + b\n", Limits(timeout=5.0, memory_mb=1))
    assert v["status"] == "crashed" and "did not start" in v["detail"], v
    ok = _asserts("def add(a, b):\n    return a + b\n")
    assert ok["status"] == "passed"  # the rule does not touch a sandbox that started
