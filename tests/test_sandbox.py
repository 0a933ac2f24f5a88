"""The sandbox survives misbehaving programs and scores them as failed.

Misbehaviours run with the in-process guard off, so the OS-level containment (limits,
sessions, process-group kill, marker sweep) is what is tested; the guard is tested apart.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from tasks.sandbox import MARKER, Limits, run_many, run_program

RAW = Limits(timeout=3.0, memory_mb=512, guard=False)


def _marked_processes() -> list[int]:
    """Processes still carrying any sandbox marker in their environment."""
    pids = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            data = env.read_bytes()
            status = (env.parent / "status").read_text()
        except OSError:
            continue
        if f"{MARKER}=".encode() in data and "State:\tZ" not in status:
            pids.append(int(env.parent.name))
    return pids


def test_a_passing_program_and_its_output():
    r = run_program("print('hello'); import sys; print('err', file=sys.stderr)", RAW)
    assert r.passed and r.returncode == 0
    assert r.stdout == "hello\n" and r.stderr == "err\n"


def test_exiting_early_is_a_failure_not_a_pass():
    for src in ("import sys; sys.exit(0)", "import os; os._exit(0)", "raise SystemExit(0)"):
        r = run_program(src + "\nassert False, 'tests never ran'", RAW)
        assert r.status == "failed", src
    assert run_program("assert 1 == 2", RAW).status == "failed"


def test_infinite_loop_is_killed_at_the_time_limit():
    start = time.monotonic()
    r = run_program("while True:\n    pass", Limits(timeout=1.0, guard=False))
    assert r.status == "timeout" and r.returncode == -9
    assert time.monotonic() - start < 3.0


def test_huge_memory_fails_cleanly():
    r = run_program("x = bytearray(8 * 1024**3)", RAW)
    assert r.status == "failed" and "MemoryError" in r.stderr


def test_megabytes_of_output_are_capped():
    limits = Limits(timeout=5.0, file_mb=8, output_bytes=4096, guard=False)
    r = run_program("import sys\nfor _ in range(100000):\n    sys.stdout.write('x' * 1000)", limits)
    assert not r.passed  # the 8 MiB file limit stops it
    assert len(r.stdout) < 4096 + 100 and "bytes cut" in r.stdout


def test_files_stay_in_a_fresh_directory_that_is_removed():
    src = "import os\nopen('junk.txt', 'w').write('x' * 1000)\nos.chmod('.', 0o500)\nprint(os.getcwd())"
    r = run_program(src, RAW)
    assert r.passed
    workdir = Path(r.stdout.strip())
    assert workdir.name == "work" and not workdir.exists() and not workdir.parent.exists()
    r2 = run_program("import os; print(os.listdir('.'))", RAW)
    assert r2.stdout.strip() == "['program.py']"  # nothing left over from the previous program


def test_environment_is_minimal_and_stdin_closed(monkeypatch):
    monkeypatch.setenv("GSIL_TEST_SECRET", "hunter2")
    r = run_program("import os, sys\nprint(sorted(os.environ))\nprint(repr(sys.stdin.read()))", RAW)
    assert r.passed and "GSIL_TEST_SECRET" not in r.stdout and "hunter2" not in r.stdout
    assert "OPENAI_API_KEY" not in r.stdout
    assert r.stdout.splitlines()[1] == "''"


def test_fork_bomb_is_contained():
    src = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass"
    start = time.monotonic()
    r = run_program(src, Limits(timeout=2.0, memory_mb=512, max_procs=32, guard=False))
    assert not r.passed and time.monotonic() - start < 15
    time.sleep(0.2)
    assert _marked_processes() == []


def test_escaped_children_are_killed():
    src = ("import os, time\npid = os.fork()\nif pid == 0:\n    os.setsid()\n    time.sleep(300)\n"
           "print(pid, flush=True)")
    r = run_program(src, RAW)
    pid = int(r.stdout.split()[0])
    time.sleep(0.2)
    status = Path(f"/proc/{pid}/status")
    assert not status.exists() or "State:\tZ" in status.read_text()  # gone, or a zombie awaiting init


def test_killing_its_own_group_cannot_reach_the_harness():
    sibling = subprocess.Popen(["sleep", "60"])  # a process in the harness's own group
    assert os.getpgid(sibling.pid) == os.getpgid(0)
    r = run_program("import os, signal\nos.killpg(0, signal.SIGKILL)", RAW)
    assert r.status == "crashed" and r.returncode == -9
    alive = sibling.poll() is None  # a killpg reaching the harness's group would have killed it
    sibling.kill()
    sibling.wait()
    assert alive


def test_guard_blocks_signalling_and_deleting():
    parent = run_program("import os\nos.kill(os.getppid(), 9)", Limits(timeout=3.0))
    assert parent.status == "failed" and "NoneType" in parent.stderr
    spawn = run_program("import subprocess\nsubprocess.run(['true'])", Limits(timeout=3.0))
    assert spawn.status == "failed"
    assert run_program("import shutil\nshutil.rmtree('/tmp')", Limits(timeout=3.0)).status == "failed"


def test_run_many_keeps_order_and_runs_in_parallel():
    sources = [f"import time\ntime.sleep(0.8)\nassert {i} % 2 == 0" for i in range(4)]
    start = time.monotonic()
    results = run_many(sources, RAW, workers=4)
    assert [r.passed for r in results] == [True, False, True, False]
    assert time.monotonic() - start < 3.0  # 4 x 0.8 s serially


def test_files_in_and_out():
    r = run_program("data = open('in.txt').read()\nopen('out.txt', 'w').write(data.upper())", RAW,
                    files={"in.txt": b"abc"}, collect=["out.txt", "absent.txt"])
    assert r.passed and r.files == {"out.txt": b"ABC"}


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid switch happens only when the harness runs as root")
def test_as_root_the_program_runs_with_nobody_as_real_uid():
    r = run_program("import os\nprint(os.getresuid())", RAW)
    assert r.passed and r.stdout.strip() == "(65534, 0, 0)"
