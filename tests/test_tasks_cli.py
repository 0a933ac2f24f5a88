"""`gsil-bench eval` errors and completions scoring; the crash-safe generation cache."""

from __future__ import annotations

import json

from gsil_bench.core.config import GenerationConfig
from gsil_bench.core.generation import HFGenerator
from gsil_bench.harness.cli import main
from gsil_bench.tasks.context import CachedGenerator


def test_scoring_a_completions_file_prints_the_table(tmp_path, data_dir, capsys):
    rows = [json.loads(line) for line in (data_dir / "humaneval/HumanEval.jsonl").read_text().splitlines()[:4]]
    comp = tmp_path / "c.jsonl"
    comp.write_text("".join(json.dumps({"task_id": r["task_id"], "completion": r["canonical_solution"]}) + "\n"
                            for r in rows))
    code = main(["eval", "--tasks", "humaneval", "--completions", str(comp), "--limit", "4",
                 "--output", str(tmp_path / "out"), "--data-dir", str(data_dir)])
    out = capsys.readouterr().out
    assert code == 0 and "humaneval  pass@1 *  1.0000  [0.5101, 1.0000]  4" in out
    metrics = json.loads((tmp_path / "out/humaneval/metrics.json").read_text())
    assert metrics["model"] == "completions:c.jsonl" and metrics["config"]["completions"] == str(comp)


def test_clear_errors(tmp_path, data_dir, capsys):
    def run(*args):
        code = main(["eval", "--output", str(tmp_path / "o"), "--data-dir", str(data_dir), *args])
        return code, capsys.readouterr().err

    code, err = run("--tasks", "humaneval,gsm8", "--model", "x")
    assert code == 2 and "unknown task 'gsm8'" in err and "did you mean 'gsm8k'" in err
    code, err = run("--tasks", "mt_bench", "--model", "x")
    assert code == 2 and "mt_bench needs a judge: --judge URL" in err
    code, err = run("--tasks", "humaneval", "shared.eval.generaton.max_new_tokens=3")
    assert code == 2 and "eval.generaton" in err and "did you mean 'generation'" in err
    code, err = run("--tasks", "gsm8k", "--completions", str(tmp_path / "none.jsonl"))
    assert code == 2 and "--completions scores code tasks only" in err
    code, err = run("--tasks", "humaneval", "--completions", str(tmp_path / "none.jsonl"))
    assert code == 2 and "none.jsonl not found" in err


class Counting:
    """The real HF generator, counting the prompts it is asked to generate."""

    def __init__(self, inner):
        self.inner, self.asked = inner, 0

    def generate(self, prompts, *, stop=None, seed=0, desc="generate"):
        self.asked += len(prompts)
        return self.inner.generate(prompts, stop=stop, seed=seed, desc=desc)


def test_generation_cache_survives_a_torn_line_and_regenerates_only_whats_missing(tmp_path, tiny_model, tokenizer):
    cfg = GenerationConfig(max_new_tokens=3, batch_size=2)
    path = tmp_path / "generations.jsonl"
    first = Counting(HFGenerator(tiny_model, tokenizer, cfg))
    prompts = ["def f():", "x = 1", [{"role": "user", "content": "hi"}]]
    out1 = CachedGenerator(first, {"model": "t"}, cfg, path, chunk=1).generate(prompts, stop=["\n"])
    assert first.asked == 3 and len(path.read_text().splitlines()) == 3
    with open(path, "a") as fh:  # a crash in the middle of an append
        fh.write('{"key": "abc", "te')
    second = Counting(HFGenerator(tiny_model, tokenizer, cfg))
    out2 = CachedGenerator(second, {"model": "t"}, cfg, path).generate(prompts + ["y = 2"], stop=["\n"])
    assert second.asked == 1 and out2[:3] == out1
    assert all(json.loads(line) for line in path.read_text().splitlines())  # the torn line was cut
    other = Counting(HFGenerator(tiny_model, tokenizer, cfg))  # another model identity: nothing reused
    CachedGenerator(other, {"model": "u"}, cfg, path).generate(prompts[:1], stop=["\n"])
    assert other.asked == 1


def test_other_weights_under_the_same_name_are_not_served_from_the_cache(tmp_path, data_dir, tokenizer):
    from gsil_bench.core.config import EvalConfig
    from gsil_bench.core.models import tiny_llama
    from gsil_bench.tasks.api import evaluate

    cfg = EvalConfig(generation=GenerationConfig(max_new_tokens=4), code_workers=1)
    out = tmp_path / "out"
    for seed in (0, 0, 1):
        evaluate("policy", ["humaneval"], cfg, out, data_dir=str(data_dir), limit=1,
                 model_obj=tiny_llama(tokenizer, seed=seed), tokenizer=tokenizer)
    lines = (out / "humaneval/cache/generations.jsonl").read_text().splitlines()
    assert len(lines) == 2  # seed 0 generated once (the rerun was skipped), seed 1 generated anew
    assert json.loads((out / "humaneval/provenance.json").read_text())["model_identity"]["weights"]
