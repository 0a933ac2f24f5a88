"""One validation pass: every problem of a config at once, each with file:line and key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gsil_bench.core.errors import ValidationError
from gsil_bench.harness.validate import load_and_validate

REPO = Path(__file__).resolve().parents[1]

THREE_MISTAKES = """\
name: three
shared:
  model: {model}
  train_data: {{path: gsm8k/train.jsonl, format: gsm8k, limit: 4}}
  optimizer:
    lr: fast
  train: {{batch_size: 2, max_length: 128, max_prompt_length: 64}}
  eval:
    tasks: [gsm8k, humaneval]
    limt: 3
methods:
  - loss: sft
  - loss: gsil-logistc
    params: {{a: 0.01}}
"""


def _line_of(path: Path, text: str) -> int:
    return next(i for i, t in enumerate(path.read_text().splitlines(), 1) if text in t)


def _write(tmp_path: Path, model: Path) -> Path:
    path = tmp_path / "three.yaml"
    path.write_text(THREE_MISTAKES.format(model=model))
    return path


def test_three_mistakes_in_three_places_are_reported_together(tmp_path, tiny_model_dir, data_dir):
    path = _write(tmp_path, tiny_model_dir)
    with pytest.raises(ValidationError) as info:
        load_and_validate(path, data_dir=str(data_dir))
    lines = info.value.lines
    assert lines == [
        f"{path}:{_line_of(path, 'lr: fast')}: shared.optimizer.lr: expected a number, got 'fast'",
        f"{path}:{_line_of(path, 'limt')}: unknown key 'shared.eval.limt' (did you mean 'limit'?); allowed here: "
        + lines[1].split("allowed here: ", 1)[1],
        f"{path}:{_line_of(path, 'gsil-logistc')}: methods[1].loss: unknown loss 'gsil-logistc' "
        "(did you mean 'gsil-logistic'?); known: " + lines[2].split("known: ", 1)[1],
    ]
    assert str(info.value).startswith("3 problems:\n  ")


def test_schema_and_registry_problems_share_one_error_from_the_cli(tmp_path, tiny_model_dir, data_dir):
    """`gsil-bench run` with the three mistakes: exit 2, all three lines, no traceback, nothing written."""
    path = _write(tmp_path, tiny_model_dir)
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "gsil_bench.harness.cli", "run", str(path), "--output", str(out),
                           "--data-dir", str(data_dir)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "error: 3 problems:" in proc.stderr
    for key in ("shared.optimizer.lr", "shared.eval.limt", "methods[1].loss"):
        assert key in proc.stderr
    assert not out.exists()


def test_override_mistakes_are_collected_too(tmp_path, tiny_model_dir, data_dir):
    """Overrides go through the same pass: a bad lr and a bad task name in one error."""
    path = tmp_path / "ok.yaml"
    path.write_text(THREE_MISTAKES.format(model=tiny_model_dir).replace("lr: fast", "lr: 1.0e-6")
                    .replace("limt: 3", "limit: 3").replace("gsil-logistc", "gsil-logistic"))
    cfg, _, _ = load_and_validate(path, data_dir=str(data_dir))
    assert cfg.shared.optimizer.lr == 1e-6 and cfg.shared.eval.limit == 3
    with pytest.raises(ValidationError) as info:
        load_and_validate(path, ["shared.optimizer.lr=-1", "shared.eval.tasks=[gsm8, humaneval]"],
                          data_dir=str(data_dir))
    text = str(info.value)
    assert "shared.optimizer.lr: must be a finite number > 0, got -1.0" in text
    assert "shared.eval.tasks: unknown task 'gsm8'" in text and "did you mean 'gsm8k'" in text
    assert len(info.value.lines) == 2


def test_a_nan_learning_rate_is_rejected_before_any_model_loads(tmp_path, data_dir):
    path = tmp_path / "nan.yaml"
    path.write_text(THREE_MISTAKES.format(model=tmp_path / "no-such-model").replace("lr: fast", "lr: .nan")
                    .replace("limt: 3", "limit: 3").replace("gsil-logistc", "gsil-logistic"))
    with pytest.raises(ValidationError) as info:
        load_and_validate(path, data_dir=str(data_dir))
    text = str(info.value)
    assert "shared.optimizer.lr: must be a finite number > 0, got nan" in text
    assert "shared.model:" in text  # the unresolvable model is a second problem of the same pass


SETTINGS = """\
name: settings
shared:
  model: {model}
  train_data: {{path: gsm8k/train.jsonl, format: gsm8k, limit: 4}}
  generation: {{cache: dynamic, compile: true}}
  eval:
    tasks: [gsm8k, no_such_task_xyz]
    generation: {{backend: openai}}
methods:
  - loss: sft
"""


def test_settings_that_cannot_work_are_problems_before_any_work(tmp_path, tiny_model_dir, data_dir):
    """A compiled decode step with a dynamic cache, an openai backend without a URL: found by the
    validation pass (with file:line), not when generation starts."""
    path = tmp_path / "settings.yaml"
    path.write_text(SETTINGS.format(model=tiny_model_dir))
    with pytest.raises(ValidationError) as info:
        load_and_validate(path, data_dir=str(data_dir))
    text = "\n".join(info.value.lines)
    assert f"{path}:{_line_of(path, 'compile: true')}: shared.generation.compile: true needs cache: static" in text
    assert f"{path}:{_line_of(path, 'backend: openai')}: shared.eval.generation.base_url: the openai backend" in text


def test_eval_with_a_config_goes_through_the_validation_pass(tmp_path, tiny_model_dir, data_dir):
    """`gsil-bench eval --config` reports the config's problems as `run` does: file:line, key, exit 2."""
    path = tmp_path / "settings.yaml"
    path.write_text(SETTINGS.format(model=tiny_model_dir))
    proc = subprocess.run([sys.executable, "-m", "gsil_bench.harness.cli", "eval", "--config", str(path),
                           "--output", str(tmp_path / "out"), "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"{path}:{_line_of(path, 'no_such_task_xyz')}: shared.eval.tasks: " in proc.stderr
    assert f"{path}:{_line_of(path, 'backend: openai')}: shared.eval.generation.base_url" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_every_cross_key_problem_is_listed_with_the_schema_ones(tmp_path, tiny_model_dir, data_dir):
    """The config's own cross-key checks (self-play schedule, warm-up, per-method overrides) are
    Problems like every other check: all of them listed at once, each at its line."""
    path = tmp_path / "cross.yaml"
    path.write_text(f"""\
name: cross
shared:
  model: {tiny_model_dir}
  train_data: {{path: gsm8k/train.jsonl, format: gsm8k, limit: 4}}
  schedule: {{warmup_steps: -1}}
  self_play:
    history: 0
    schedule:
      - {{iteration: 0, lr: -1.0}}
  optimizer: {{lr: fast}}
methods:
  - loss: spin
  - loss: sft
    overrides: {{model: x}}
""")
    with pytest.raises(ValidationError) as info:
        load_and_validate(path, data_dir=str(data_dir))
    lines = info.value.lines
    expected = [("lr: fast", "shared.optimizer.lr: expected a number"),
                ("overrides:", "methods[1].overrides.model: only keys below"),
                ("history: 0", "shared.self_play.history: must be >= 1"),
                ("iteration: 0", "shared.self_play.schedule[0].iteration: must be >= 1"),
                ("iteration: 0", "shared.self_play.schedule[0].lr: must be > 0"),
                ("warmup_steps", "shared.schedule.warmup_steps: must be >= 0")]
    for text, start in expected:
        assert any(line.startswith(f"{path}:{_line_of(path, text)}: {start}") for line in lines), (start, lines)
