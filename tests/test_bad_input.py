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


def _run(capsys, *args: str) -> tuple[int, list[str]]:
    """`gsil-bench ARGS` in process: (exit status, stderr's lines); never a traceback."""
    code = main(list(args))
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.strip().splitlines()


SMALL = """name: small
shared:
  model: {model}
  train_data: {{path: gsm8k/train.jsonl, format: gsm8k, limit: 4}}
  eval: {{tasks: [heldout_gsm8k], limit: 2}}
methods:
  - loss: sft
  - loss: gsil-logistic
    params: {{a: 0.01, b: [0, 1, 2]}}
"""


def test_invalid_yaml_in_an_override_is_one_line(tmp_path, tiny_model_dir, capsys):
    """Was a 59-line yaml.parser traceback and exit 1."""
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(SMALL.format(model=tiny_model_dir))
    for cmd in (["run", str(cfg), "--dry-run"], ["train", str(cfg), "--method", "sft"]):
        code, lines = _run(capsys, *cmd, "shared.optimizer.lr=[1, 2")
        assert code == 2 and len(lines) == 1, lines
        assert "command line 'shared.optimizer.lr=[1, 2': the value is not valid YAML" in lines[0]


def test_an_override_error_names_the_command_line_once_for_every_variant(tmp_path, tiny_model_dir, capsys):
    """A bad value set on the command line for a swept method: was blamed on the YAML's line
    (`ok.yaml:8`) and repeated once per variant (three times here)."""
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(SMALL.format(model=tiny_model_dir))
    code, lines = _run(capsys, "run", str(cfg), "--dry-run", "methods.gsil-logistic.params.a=fast")
    assert code == 2 and lines == ["gsil-bench run: error: command line 'methods.gsil-logistic.params.a=fast': "
                                   "methods[1].params.a: expected a number, got 'fast'"], lines
    code, lines = _run(capsys, "run", str(cfg), "--dry-run", "methods.1.params.a=-1")
    assert code == 2 and len(lines) == 1 and lines[0].startswith(
        "gsil-bench run: error: command line 'methods.1.params.a=-1' (in "), lines
    assert "GSIL scale a must be > 0, got -1.0" in lines[0]
    # a shared sweep with a bad value: once, for the command line (not again per variant's override)
    code, lines = _run(capsys, "run", str(cfg), "--dry-run", "shared.optimizer.lr=[fast, 1]", "report.baseline=base")
    assert code == 2 and lines == ["gsil-bench run: error: command line 'shared.optimizer.lr=[fast, 1]': "
                                   "shared.optimizer.lr: expected a number, got 'fast'"], lines  # was 5 lines


@pytest.mark.parametrize("source, where, what", [
    ("import os\ndef loss(x:\n    return x\n", 2, "SyntaxError"),
    ("x = 1\nraise RuntimeError('boom at import')\n", 2, "RuntimeError: boom at import"),
])
def test_a_plugin_that_does_not_import_names_its_file_and_line(tmp_path, tiny_model_dir, capsys, source, where, what):
    """Was a 33-line traceback (a syntax error) and exit 1."""
    (tmp_path / "myplugin.py").write_text(source)
    cfg = tmp_path / "p.yaml"
    cfg.write_text("plugins: [myplugin]\n" + SMALL.format(model=tiny_model_dir))
    code, lines = _run(capsys, "run", str(cfg), "--dry-run")
    assert code == 2 and len(lines) == 1, lines
    assert f"p.yaml:1: plugins[0]: cannot import 'myplugin': {tmp_path / 'myplugin.py'}:{where}: {what}" in lines[0]


def test_an_output_folder_that_cannot_be_written(tmp_path, tiny_model_dir, capsys):
    """Was a 20-line PermissionError traceback and exit 1, after the validation pass. Root writes through
    file modes, so the unwritable places here are under a file and in sysfs."""
    cfg = tmp_path / "ok.yaml"
    cfg.write_text(SMALL.format(model=tiny_model_dir))
    (tmp_path / "a-file").write_text("x")
    places = [tmp_path / "a-file" / "run"]
    if Path("/sys").is_dir():
        places.append(Path("/sys/gsil-bench-test-output"))
    for place in places:
        code, lines = _run(capsys, "run", str(cfg), "--output", str(place))
        assert code == 2 and lines == [f"gsil-bench run: error: --output {place}: cannot write there "
                                       f"({'Not a directory' if 'a-file' in str(place) else 'Operation not permitted'})"], lines
        code, lines = _run(capsys, "eval", "--model", str(tiny_model_dir), "--tasks", "heldout_gsm8k", "--limit", "1",
                           "--output", str(place))
        assert code == 2 and len(lines) == 1 and f"--output {place}: cannot write there" in lines[0], lines
    assert not any(tmp_path.rglob("checkpoint"))


def test_a_hub_id_that_does_not_resolve_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """Offline (HF_HUB_OFFLINE), a Hub id that is not in the local cache: one line from the validation
    pass, exit 2, no retries (was 47 lines of retries, then a traceback)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = tmp_path / "hub.yaml"
    cfg.write_text(SMALL.format(model="no-such-org-gsil/no-such-model"))
    code, lines = _run(capsys, "run", str(cfg), "--output", str(tmp_path / "run"))
    assert code == 2 and len(lines) == 1, lines
    assert "shared.model: model 'no-such-org-gsil/no-such-model': not in the local Hugging Face cache" in lines[0]
    assert not (tmp_path / "run").exists()  # before any work
    code, lines = _run(capsys, "eval", "--model", "no-such-org-gsil/no-such-model", "--tasks", "heldout_gsm8k",
                       "--output", str(tmp_path / "ev"))
    assert code == 2 and len(lines) == 1 and "--model: model 'no-such-org-gsil/no-such-model'" in lines[0], lines
    code, _ = _run(capsys, "run", str(cfg), "--dry-run")  # the dry run plans without loading anything
    assert code == 0
