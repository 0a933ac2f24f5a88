"""The fallback without cgroups, run for real: a harness that is not root (issue 32).

A root test process starts the harness as a fresh unprivileged uid (`setpriv --reuid --regid
--clear-groups`), as a user without root would run it: no per-candidate uid, no cgroups, every
candidate under the harness's own uid. That harness is the system interpreter running a copy of
`gsil_bench.core` and `gsil_bench.tasks` in a world-readable folder (the virtualenv's interpreter
lives under /root, which another uid cannot enter), with tqdm beside it; it scores jobs through
the production `check_many` with 2 workers and prints the verdicts and its log.

What must hold there: a fork bomb does not make correct neighbours fail (each candidate's process
cap is its own), System V semaphores and queues are denied, the OOM score stays 1000, a sandbox
that could not start is `crashed` (never a wrong answer), and the log states the process cap a
candidate really meets.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import tqdm

REPO = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None or shutil.which("bwrap") is None
    or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root (to start the harness as another uid), setpriv, bwrap and /usr/bin/python3")

HARNESS = r"""
import json, logging, sys
from gsil_bench.tasks.sandbox import Limits, check_many
logging.basicConfig(level=logging.INFO, format="LOG %(message)s")
spec = json.load(open(sys.argv[1]))
jobs = [{**job, "limits": Limits(**job["limits"])} for job in spec]
print("VERDICTS " + json.dumps(check_many(jobs, mode="bwrap", workers=2)), flush=True)
"""
ADD_TESTS = "assert add(1, 2) == 3\nassert add(2, 2) == 4\n"
BOMB = ("import os, time\ndef add(a, b):\n    while True:\n        try:\n            os.fork()\n"
        "        except OSError:\n            time.sleep(0.01)\n")
# a correct program that needs process budget (a thread) a moment after the bomb began
CORRECT = ("import threading, time\ndef add(a, b):\n    time.sleep(0.5)\n    out = []\n"
           "    t = threading.Thread(target=lambda: out.append(a + b))\n    t.start()\n    t.join()\n    return out[0]\n")
# how many processes one candidate can really start, reported in its error
COUNT = ("import os, time\ndef add(a, b):\n    n = 0\n    while True:\n        try:\n            pid = os.fork()\n"
         "        except OSError:\n            break\n        if pid == 0:\n            time.sleep(2)\n"
         "            os._exit(0)\n        n += 1\n    raise ValueError(f'forked {n}')\n")
SYSV = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "def add(a, b):\n    sem = libc.semget(0, 250, 0o1600)\n    msg = libc.msgget(0, 0o1600)\n"
        "    raise ValueError(f'semget {ctypes.get_errno() if sem == -1 else \"ALLOWED\"} '\n"
        "                     f'msgget {\"ALLOWED\" if msg != -1 else \"denied\"}')\n")

# tries to lower its OOM score (the harness is not root: no floor; /proc is read-only in the sandbox)
LOWER_OOM = ("def add(a, b):\n    try:\n        with open('/proc/self/oom_score_adj', 'w') as f:\n"
             "            f.write('0')\n        how = 'LOWERED'\n    except OSError as e:\n        how = e.errno\n"
             "    raise ValueError(f'oom {how} {open(\"/proc/self/oom_score_adj\").read().strip()}')\n")


def _job(source: str, **limits) -> dict:
    return {"kind": "asserts", "source": source, "entry": "add", "tests": ADD_TESTS,
            "limits": {"timeout": 3.0, "memory_mb": 256, "file_mb": 16, "max_procs": 6, **limits}}


@pytest.fixture
def site():
    """A world-readable folder holding gsil_bench.core, gsil_bench.tasks and tqdm (removed afterwards)."""
    folder = Path(tempfile.mkdtemp(prefix="gsil-fallback-"))
    try:
        skip = shutil.ignore_patterns("__pycache__")
        for pkg in ("core", "tasks"):
            shutil.copytree(REPO / pkg, folder / "gsil_bench" / pkg, ignore=skip)
        shutil.copytree(Path(tqdm.__file__).parent, folder / "tqdm", ignore=skip)
        (folder / "harness.py").write_text(HARNESS)
        for p in [folder, *folder.rglob("*")]:
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _run_as_user(site: Path, jobs: list[dict]) -> tuple[list[dict], str]:
    uid = 200_000 + secrets.randbelow(100_000)  # a uid nothing else on the machine runs as
    (site / "jobs.json").write_text(json.dumps(jobs))
    os.chmod(site / "jobs.json", 0o644)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(site), "LANG": "C.UTF-8"}
    r = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--", SYSTEM_PYTHON, "-B",
                        str(site / "harness.py"), str(site / "jobs.json")], cwd=site, env=env, capture_output=True,
                       text=True, timeout=120)
    out = r.stdout + r.stderr
    line = next((x for x in out.splitlines() if x.startswith("VERDICTS ")), None)
    assert line is not None, out[-3000:]
    return json.loads(line.split(" ", 1)[1]), out


def test_the_non_root_fallback_keeps_neighbours_apart_and_says_what_holds(site):
    jobs = [_job(BOMB), _job(CORRECT), _job(CORRECT), _job(CORRECT), _job(COUNT), _job(SYSV), _job(LOWER_OOM),
            _job(CORRECT, memory_mb=1)]  # the last cannot start: 1 MiB of address space
    verdicts, out = _run_as_user(site, jobs)
    status = [v["status"] for v in verdicts]
    assert status[0] == "timeout" and status[1:4] == ["passed"] * 3, [v["detail"] for v in verdicts]
    assert "semget 1 " in verdicts[5]["detail"] and "msgget denied" in verdicts[5]["detail"], verdicts[5]
    assert "oom 30 1000" in verdicts[6]["detail"], verdicts[6]  # EROFS: the score stays 1000
    assert status[7] == "crashed" and "did not start" in verdicts[7]["detail"], verdicts[7]
    # the log names the cap one candidate meets, and what all of them share
    log = next(x for x in out.splitlines() if x.startswith("LOG code sandbox bwrap"))
    assert "the harness's uid" in log and "no delegated cgroup v2 subtree" in log, log
    cap = int(re.search(r"(\d+) processes and threads per candidate", log).group(1))
    forked = int(re.search(r"forked (\d+)", verdicts[4]["detail"]).group(1))
    assert cap - 4 <= forked + 1 <= cap, (forked, log)  # the candidate's own process counts too
