"""Results no one can tamper with unnoticed: digests checked on reuse, one writer per folder,
unique temporary names, torn sample files refused by reports, copied runs indexed apart."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import threading

import pytest
from helpers import data_rows, write_jsonl
from test_reports_data import write_run

from gsil_bench.core.config import EvalConfig
from gsil_bench.core.io import FolderBusy, atomic_write_json, is_done, read_json, temp_name
from gsil_bench.harness.cli import main
from gsil_bench.reports.index import RunIndex, default_index
from gsil_bench.reports.rundata import RunDataError, load_run
from gsil_bench.tasks.api import evaluate

CFG = EvalConfig(code_workers=2, code_timeout=5.0)


def _two_problems(tmp_path, data_dir):
    rows = data_rows(data_dir, "humaneval/HumanEval.jsonl")[:2]
    recs = [{"task_id": rows[0]["task_id"], "completion": rows[0]["canonical_solution"]},
            {"task_id": rows[1]["task_id"], "completion": "    return None\n"}]
    return write_jsonl(tmp_path / "c.jsonl", recs)


def test_a_tampered_result_is_recomputed_with_a_warning(tmp_path, data_dir, caplog):
    comp, out = _two_problems(tmp_path, data_dir), tmp_path / "out"
    first = evaluate("m", ["humaneval"], CFG, out, data_dir=str(data_dir), completions=comp, limit=2)
    assert first["humaneval"]["metrics"]["pass@1"]["value"] == 0.5
    folder = out / "humaneval"
    assert set(read_json(folder / "DONE")["digests"]) == {"metrics.json", "samples.jsonl"}
    forged = read_json(folder / "metrics.json")
    forged["metrics"]["pass@1"]["value"] = 1.0  # what a leftover process did on main
    atomic_write_json(folder / "metrics.json", forged)
    with caplog.at_level(logging.WARNING):
        again = evaluate("m", ["humaneval"], CFG, out, data_dir=str(data_dir), completions=comp, limit=2)
    assert again["humaneval"]["metrics"]["pass@1"]["value"] == 0.5
    assert "metrics.json changed after it was written" in caplog.text
    lines = (folder / "samples.jsonl").read_text().splitlines()
    lines[1] = lines[1].replace('"pass@1": 0.0', '"pass@1": 1.0')
    (folder / "samples.jsonl").write_text("\n".join(lines) + "\n")
    assert not is_done(folder)
    evaluate("m", ["humaneval"], CFG, out, data_dir=str(data_dir), completions=comp, limit=2)
    assert '"pass@1": 0.0' in (folder / "samples.jsonl").read_text() and is_done(folder)


def test_a_second_eval_into_a_busy_folder_is_refused(tmp_path, data_dir, capsys):
    comp, out = _two_problems(tmp_path, data_dir), tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom gsil_bench.core.io import folder_lock\n"
                               f"with folder_lock({str(out)!r}):\n    print('locked', flush=True)\n    time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderBusy):
            evaluate("m", ["humaneval"], CFG, out, data_dir=str(data_dir), completions=comp, limit=2)
        for target in (out, out / "eval" / "base"):  # the folder itself, or inside a run that holds it
            code = main(["eval", "--tasks", "humaneval", "--completions", str(comp), "--limit", "2",
                         "--output", str(target), "--data-dir", str(data_dir)])
            err = capsys.readouterr().err
            assert code == 2 and "another gsil-bench run or eval is using this folder" in err
            assert len(err.strip().splitlines()) == 1
        assert not (out / "humaneval").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["eval", "--tasks", "humaneval", "--completions", str(comp), "--limit", "2", "--output", str(out),
                 "--data-dir", str(data_dir)]) == 0


def test_temporary_names_are_unique_per_process_and_thread(tmp_path):
    target = tmp_path / "x.json"
    names = {temp_name(target) for _ in range(100)}
    assert len(names) == 100 and all(n.parent == tmp_path and n.name.startswith(".x.json.tmp") for n in names)
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            for _ in range(20):
                atomic_write_json(target, {"writer": i, "pad": "x" * 10000})
        except BaseException as err:  # noqa: BLE001  (reported below)
            errors.append(err)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and read_json(target)["pad"] == "x" * 10000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]  # no temporary left behind


def test_a_torn_samples_line_is_an_error_in_report(tmp_path):
    run = write_run(tmp_path / "night")
    samples = run / "eval" / "sft" / "seed-0" / "iter-1" / "gsm8k" / "samples.jsonl"
    data = samples.read_bytes()
    samples.write_bytes(data[: len(data) - 40])  # cut inside the last line
    with pytest.raises(RunDataError, match=r"samples.jsonl:200: torn last line"):
        for result in load_run(run).find("sft", "gsm8k"):
            result.item_scores()
    samples.write_bytes(data.replace(b"\n", b"\n{not json\n", 1))
    with pytest.raises(RunDataError, match=r"samples.jsonl:2: invalid JSON"):
        for result in load_run(run).find("sft", "gsm8k"):
            result.item_scores()


def test_a_copied_run_folder_gets_its_own_row(tmp_path):
    run = write_run(tmp_path / "runs" / "night-1")
    copy = tmp_path / "runs" / "night-1-copy"
    shutil.copytree(run, copy)
    index = RunIndex(default_index(run))
    first, second = index.add_run(run), index.add_run(copy)
    assert first != second and len(index.runs()) == 2
    assert index.add_run(copy) == second and index.add_run(run) == first  # re-indexing keeps each its row
    n = len(load_run(run).results_frame())
    assert len(index.metrics()) == 2 * n
    assert sorted(index.runs().run_dir) == sorted([str(run.resolve()), str(copy.resolve())])
