"""`gsil-bench eval` end to end on the real embedded model, output formats, reruns, caches."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import data_rows

from gsil_bench.harness.cli import main

EMBEDDED = "embedded:smollm2-135m-instruct"
METRIC_KEYS = {"value", "ci_low", "ci_high", "n", "stderr", "ci_method", "higher_is_better", "facts"}
SAMPLE_KEYS = {"id", "prompt", "output", "extracted", "reference", "scores"}


def _eval(out: Path, data_dir: Path, *extra: str) -> int:
    return main(["eval", "--model", EMBEDDED, "--tasks", "gsm8k,humaneval,mt_bench", "--limit", "2",
                 "--output", str(out), "--data-dir", str(data_dir), "--judge", EMBEDDED,
                 "shared.eval.generation.max_new_tokens=8", "shared.eval.generation.batch_size=4",
                 "shared.eval.judge.max_tokens=8", "shared.eval.lm_eval_gen_kwargs=max_gen_toks=8",
                 "--allow-empty",  # a 135M judge in 8 tokens gives no rating: exit 1 otherwise (test_eval_settings)
                 *extra])


@pytest.mark.slow  # 114 s on 2 busy cores; the default suite keeps one real-model run (test_training's GSIL)
def test_three_tasks_end_to_end_on_the_embedded_model(tmp_path, data_dir, embedded_dir, capsys):
    out = tmp_path / "eval"
    assert _eval(out, data_dir) == 0
    table = capsys.readouterr().out
    for line in ("gsm8k      exact_match/strict-match *", "humaneval  pass@1 *", "mt_bench   score *",
                 "mt_bench   missing"):
        assert line in table
    for task, primary in (("gsm8k", "exact_match/strict-match"), ("humaneval", "pass@1"), ("mt_bench", "score")):
        folder = out / task
        assert (folder / "DONE").is_file()
        metrics = json.loads((folder / "metrics.json").read_text())
        assert metrics["task"] == task and metrics["model"] == EMBEDDED and metrics["primary"] == primary
        assert primary in metrics["metrics"] and all(set(m) == METRIC_KEYS for m in metrics["metrics"].values())
        assert all(m["facts"]["label"] and m["facts"]["glossary"] for m in metrics["metrics"].values())  # declared
        assert metrics["config"]["limit"] == 2 and metrics["config"]["eval"]["generation"]["max_new_tokens"] == 8
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 2 and all(SAMPLE_KEYS <= set(s) for s in samples)
        prov = json.loads((folder / "provenance.json").read_text())
        assert prov["packages"]["lm-eval"] and prov["git"] and prov["model_identity"]["model"] == EMBEDDED
        assert prov["data"], task  # the data files read are hashed
    gsm = json.loads((out / "gsm8k/metrics.json").read_text())
    assert gsm["lm_eval_version"] and gsm["metrics"]["exact_match/strict-match"]["n"] == 2
    he = [json.loads(line) for line in (out / "humaneval/samples.jsonl").read_text().splitlines()]
    assert he[0]["id"] == "HumanEval/0" and he[0]["results"][0]["base"]["status"] in ("passed", "failed", "timeout")
    assert isinstance(he[0]["prompt"], list) and he[0]["prompt"][0]["role"] == "user"  # a chat model: chat prompts
    mt = [json.loads(line) for line in (out / "mt_bench/samples.jsonl").read_text().splitlines()]
    assert all(len(j["raw"]) > 0 for s in mt for j in s["judgments"])

    # a rerun finds every task done and recomputes nothing
    stamps = {t: (out / t / "DONE").stat().st_mtime_ns for t in ("gsm8k", "humaneval", "mt_bench")}
    start = time.monotonic()
    assert _eval(out, data_dir) == 0
    assert time.monotonic() - start < 30
    assert stamps == {t: (out / t / "DONE").stat().st_mtime_ns for t in stamps}


def test_no_chat_template_gives_completion_prompts(tmp_path, data_dir, tiny_model_dir):
    out = tmp_path / "plain"
    assert main(["eval", "--model", str(tiny_model_dir), "--tasks", "humaneval", "--limit", "1", "--output", str(out),
                 "--data-dir", str(data_dir), "--no-chat-template", "shared.eval.generation.max_new_tokens=4"]) == 0
    sample = json.loads((out / "humaneval/samples.jsonl").read_text().splitlines()[0])
    assert sample["prompt"] == data_rows(data_dir, "humaneval/HumanEval.jsonl")[0]["prompt"]  # the problem's own text
    assert sample["extracted"].startswith(sample["prompt"])  # prompt + completion
    # a changed limit recomputes the task but reuses the cached generation
    gens = (out / "humaneval/cache/generations.jsonl").read_text()
    assert main(["eval", "--model", str(tiny_model_dir), "--tasks", "humaneval", "--limit", "2", "--output", str(out),
                 "--data-dir", str(data_dir), "--no-chat-template", "shared.eval.generation.max_new_tokens=4"]) == 0
    lines = (out / "humaneval/cache/generations.jsonl").read_text().splitlines()
    assert len(lines) == 2 and lines[0] == gens.splitlines()[0]
    assert json.loads((out / "humaneval/metrics.json").read_text())["n_items"] == 2
