"""docs/extending.md's loss example runs as written: its plugin and its self-contained test, copied
out of the page into a folder of their own, pass under pytest (a wrong statement of what a loss
receives or logs would fail them)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def test_the_loss_example_and_its_test_run_as_written(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    files = {b.splitlines()[0].removeprefix("# ").strip(): b for b in blocks if b.startswith("# ")}
    assert {"my_losses.py", "test_my_losses.py"} <= set(files), list(files)
    for name in ("my_losses.py", "test_my_losses.py"):
        (tmp_path / name).write_text(files[name])
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_my_losses.py"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "1 passed" in proc.stdout, proc.stdout[-3000:] + proc.stderr[-2000:]
