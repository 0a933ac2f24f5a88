"""Bad input ends in one clear line and exit status 2, never a traceback, and nothing
already computed is lost: completions files, data files, weights, settings."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import data_rows, write_jsonl

from gsil_bench.harness.cli import main


def _eval(capsys, *args: str) -> tuple[int, str]:
    code = main(["eval", *args])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err.strip().splitlines()[-1] if err.strip() else ""


def test_invalid_or_binary_lines_in_a_completions_file(tmp_path, data_dir, capsys):
    rows = data_rows(data_dir, "humaneval/HumanEval.jsonl")[:3]
    good = json.dumps({"task_id": rows[0]["task_id"], "completion": rows[0]["canonical_solution"]}).encode()
    for bad, expect in ((b'{"task_id": "HumanEval/1", "completion": ', ":2: invalid JSON"),
                        (b"\xff\xfe\x00\x01binary", ":2: not UTF-8 text"),
                        (b'"just a string"', ":2: expected a JSON object"),
                        (b'{"task_id": "HumanEval/1", "completion": "\\u0000"}\x00', ":2: contains NUL bytes")):
        comp = tmp_path / "c.jsonl"
        comp.write_bytes(good + b"\n" + bad + b"\n")
        code, line = _eval(capsys, "--tasks", "humaneval", "--completions", str(comp), "--limit", "2",
                           "--output", str(tmp_path / "o"), "--data-dir", str(data_dir))
        assert code == 2 and f"c.jsonl{expect}" in line, line


def test_a_malformed_row_anywhere_in_a_data_file(tmp_path, data_dir, capsys):
    rows = data_rows(data_dir, "humaneval/HumanEval.jsonl")[:5]
    comp = write_jsonl(tmp_path / "c.jsonl", [{"task_id": r["task_id"], "completion": "    pass\n"} for r in rows])
    for damage, expect in ((lambda r: r.pop("test"), ":4: the row lacks the field(s) test"),
                           (None, ":4: expected a JSON object")):
        local = tmp_path / "data" / "humaneval"
        local.mkdir(parents=True, exist_ok=True)
        broken = [dict(r) for r in rows]
        lines = [json.dumps(r) for r in broken]
        if damage is not None:
            damage(broken[3])
            lines[3] = json.dumps(broken[3])
        else:
            lines[3] = "[1, 2, 3]"
        (local / "HumanEval.jsonl").write_text("\n".join(lines) + "\n")
        code, line = _eval(capsys, "--tasks", "humaneval", "--completions", str(comp), "--limit", "2",
                           "--output", str(tmp_path / "o"), "--data-dir", str(tmp_path / "data"))
        assert code == 2 and f"HumanEval.jsonl{expect}" in line, line  # row 4 of 5: beyond the first


def test_a_truncated_safetensors_file(tmp_path, tiny_model_dir, data_dir, capsys):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    code, line = _eval(capsys, "--model", str(model), "--tasks", "humaneval", "--limit", "1",
                       "--output", str(tmp_path / "o"), "--data-dir", str(data_dir))
    assert code == 2 and "model.safetensors: damaged or truncated weights file" in line, line


@pytest.mark.parametrize("lr", ["0", "-1e-5", ".nan", ".inf"])
def test_a_learning_rate_that_is_not_positive_is_refused_before_any_model_loads(tmp_path, tiny_model_dir, lr, capsys):
    config = Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml"
    code = main(["run", str(config), f"shared.optimizer.lr={lr}", f"shared.model={tiny_model_dir}",
                 "--output", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "shared.optimizer.lr: must be a finite number > 0" in err, err
    assert not any((tmp_path / "run").rglob("checkpoint"))


def test_a_negative_limit(tmp_path, data_dir, capsys):
    code, line = _eval(capsys, "--tasks", "humaneval", "--limit", "-3", "--output", str(tmp_path / "o"),
                       "--data-dir", str(data_dir), "--completions", str(write_jsonl(tmp_path / "c.jsonl", [])))
    assert code == 2 and "--limit must be a positive number of items, got -3" in line, line
    code, line = _eval(capsys, "--tasks", "humaneval", "shared.eval.limit=-1", "--output", str(tmp_path / "o"))
    assert code == 2 and "eval.limit: must be >= 1 or null, got -1" in line, line
