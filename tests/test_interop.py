"""Files other tools read (tasks.interop), read back by those tools themselves:
lm-eval's result helpers and `make_table`, FastChat's `show_result.py`, and EvalPlus's
`evaluate` (which reads our `_eval_results.json`, and in the slow test recomputes every
HumanEval+ verdict itself for a parity check against ours)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
from helpers import data_rows, write_jsonl, zeroed_llama
from test_gsm8k import _direct, _local_yaml, answers_three  # noqa: F401  (lm-eval's own GSM8K run, a fixed model)

from gsil_bench.core.config import EvalConfig, GenerationConfig
from gsil_bench.core.io import atomic_write_json, read_json, read_jsonl
from gsil_bench.tasks.api import evaluate
from gsil_bench.tasks.base import Sample
from gsil_bench.tasks.interop import model_name, write_interop
from gsil_bench.tasks.mt_bench import MTBench

CFG = EvalConfig(code_workers=2, code_timeout=5.0)
BROKEN = ["    raise NotImplementedError\n", "    return None\n", "    return (\n"]


@pytest.fixture(scope="module")
def humaneval_plus(tmp_path_factory, data_dir):
    """12 HumanEval+ problems scored by our sandbox: canonical solutions for 8, broken for 4."""
    tmp = tmp_path_factory.mktemp("hep")
    rows = data_rows(data_dir, "humaneval_plus/HumanEvalPlus.jsonl")[:12]
    recs = [{"task_id": r["task_id"], "completion": r["canonical_solution"] if i % 3 else BROKEN[i % 3]}
            for i, r in enumerate(rows)]
    comp = write_jsonl(tmp / "mixed.jsonl", recs)
    res = evaluate("runs/x/spin/seed-0/iter-2/checkpoint", ["humaneval_plus"], CFG, tmp / "out",
                   data_dir=str(data_dir), completions=comp, limit=12)
    return tmp / "out" / "humaneval_plus", res["humaneval_plus"]


def test_interop_files_are_written_beside_ours(humaneval_plus):
    folder, metrics = humaneval_plus
    inter = folder / "interop"
    assert model_name("runs/x/spin/seed-0/iter-2/checkpoint") == "spin_seed-0_iter-2"
    assert (inter / "evalplus" / "samples.jsonl").is_file()
    assert len(list((inter / "lm_eval" / "spin_seed-0_iter-2").glob("results_*.json"))) == 1
    assert len(list((inter / "lm_eval" / "spin_seed-0_iter-2").glob("samples_humaneval_plus_*.jsonl"))) == 1
    write_interop(folder)  # rewriting replaces, never piles up
    assert len(list((inter / "lm_eval" / "spin_seed-0_iter-2").glob("results_*.json"))) == 1


def test_lm_eval_reads_our_results(humaneval_plus):
    from lm_eval.utils import get_latest_filename, get_results_filenames, get_sample_results_filenames, make_table

    folder, metrics = humaneval_plus
    files = [str(p) for p in (folder / "interop" / "lm_eval" / "spin_seed-0_iter-2").iterdir()]
    results = get_results_filenames(files)
    assert len(results) == 1 and len(get_sample_results_filenames(files)) == 1
    table = make_table(read_json(get_latest_filename(results)))
    cells = {row[5]: row[7] for row in (line.replace(" ", "").split("|") for line in table.splitlines()[2:])}
    for name in ("pass@1", "pass@1+"):
        assert cells[name] == f"{metrics['metrics'][name]['value']:.4f}", table
    assert "|humaneval_plus|gsil-bench|none" in table.replace(" ", "")


LM_EVAL_KEYS = ["doc_id", "doc", "target", "arguments", "resps", "filtered_resps", "filter", "metrics", "doc_hash",
                "prompt_hash", "target_hash"]  # then the metric values, as lm-eval's evaluator logs a sample


def _lines(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_lm_eval_samples_equal_the_file_lm_eval_writes(tmp_path, data_dir, answers_three, tokenizer):  # noqa: F811
    """lm-eval itself runs GSM8K on the same model and writes its samples file the way
    `lm_eval --output_path ... --log_samples` does (EvaluationTracker); ours equals it line by line, key by key."""
    from lm_eval.loggers import EvaluationTracker

    gen = "max_gen_toks=8"
    _local_yaml(tmp_path / "yaml", data_dir, "gsm8k/gsm8k.yaml", "gsm8k_local")
    direct = _direct(answers_three, tokenizer, tmp_path / "yaml", "gsm8k_local", limit=3, gen_kwargs=gen, batch=4,
                     chat=False)
    samples = direct.pop("samples")
    tracker = EvaluationTracker(output_path=str(tmp_path / "lm_eval"))
    tracker.save_results_aggregated(results=direct, samples=samples)
    tracker.save_results_samples(task_name="gsm8k_local", samples=samples["gsm8k_local"])
    (theirs_path,) = (tmp_path / "lm_eval").rglob("samples_gsm8k_local_*.jsonl")
    cfg = EvalConfig(lm_eval_gen_kwargs=gen, generation=GenerationConfig(batch_size=4))
    evaluate("tiny", ["gsm8k"], cfg, tmp_path / "out", data_dir=str(data_dir), limit=3, model_obj=answers_three,
             tokenizer=tokenizer)
    (ours_path,) = (tmp_path / "out" / "gsm8k" / "interop" / "lm_eval" / "tiny").glob("samples_gsm8k_*.jsonl")
    ours, theirs = _lines(ours_path), _lines(theirs_path)
    assert len(theirs) == 6 and [r["filter"] for r in theirs] == ["strict-match"] * 3 + ["flexible-extract"] * 3
    assert [list(r) for r in ours] == [list(r) for r in theirs] == [[*LM_EVAL_KEYS, "exact_match"]] * 6
    assert ours == theirs  # every value too: documents, prompts, responses, filters, scores, hashes
    from lm_eval.utils import make_table

    (theirs_results,) = (tmp_path / "lm_eval").rglob("results_*.json")
    (ours_results,) = ours_path.parent.glob("results_*.json")
    ours_rec, theirs_rec = read_json(ours_results), read_json(theirs_results)
    assert sorted(ours_rec) == sorted(theirs_rec), set(ours_rec) ^ set(theirs_rec)  # every key lm-eval writes (19 lacked)
    assert list(ours_rec["task_hashes"].values()) == list(theirs_rec["task_hashes"].values())  # the same samples
    for key in ("n-shot", "versions", "max_length", "eot_token_id", "tokenizer_eos_token", "group_subtasks"):
        assert json.dumps(ours_rec[key]).replace("gsm8k_local", "gsm8k") == \
            json.dumps(theirs_rec[key]).replace("gsm8k_local", "gsm8k"), key
    settings = read_json(ours_path.parents[3] / "metrics.json")["config"]  # what metrics.json says it ran with
    assert settings["chat"] is False and "max_new_tokens" not in json.dumps(settings["eval"]["generation"])
    assert settings["eval"]["generation"]["lm_eval"]["gsm8k"]["max_gen_toks"] == 8  # lm-eval's, with our gen_kwargs
    tables = [[[c.strip() for c in line.split("|")] for line in make_table(read_json(p)).splitlines()[2:]]
              for p in (ours_results, theirs_results)]
    assert tables[0] == [[c.replace("gsm8k_local", "gsm8k") for c in row] for row in tables[1]]  # lm-eval's table
    assert tables[0][0][1:6] == ["gsm8k", "3", "flexible-extract", "5", "exact_match"] and tables[0][0][6] == "↑"


def test_lm_eval_samples_of_a_multiple_choice_task_equal_lm_evals(tmp_path, tiny_model, tokenizer):
    """arc_challenge (four log-likelihood requests per document, one filter): lm-eval's own samples file and
    ours agree line by line (our samples.jsonl keeps the repeated context once)."""
    import lm_eval
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from test_protocols import _arc_rows, _write

    from gsil_bench.tasks.lmeval import builtin_yaml

    data = tmp_path / "data" / "openllm" / "arc_challenge"
    for split, rows in (("train", _arc_rows(4, 0)), ("validation", _arc_rows(2, 100)), ("test", _arc_rows(3, 200))):
        _write(data / f"{split}.jsonl", rows)
    (tmp_path / "yaml").mkdir()
    (tmp_path / "yaml" / "arc_local.yaml").write_text(
        f"include: {builtin_yaml('arc/arc_challenge.yaml')}\ntask: arc_local\ndataset_path: json\ndataset_name: null\n"
        "dataset_kwargs:\n  data_files:\n" + "".join(f"    {sp}: {data / sp}.jsonl\n" for sp in ("train", "validation", "test")))
    lm = HFLM(pretrained=tiny_model, tokenizer=tokenizer, batch_size=8, device="cpu")
    direct = lm_eval.simple_evaluate(model=lm, tasks=["arc_local"], limit=3, num_fewshot=1, log_samples=True,
                                     task_manager=TaskManager(include_defaults=False, include_path=str(tmp_path / "yaml")))
    samples = direct.pop("samples")
    tracker = EvaluationTracker(output_path=str(tmp_path / "lm_eval"))
    tracker.save_results_aggregated(results=direct, samples=samples)
    tracker.save_results_samples(task_name="arc_local", samples=samples["arc_local"])
    (theirs,) = (tmp_path / "lm_eval").rglob("samples_arc_local_*.jsonl")
    cfg = EvalConfig(num_fewshot=1, generation=GenerationConfig(batch_size=8))
    evaluate("tiny", ["arc_challenge"], cfg, tmp_path / "out", data_dir=str(tmp_path / "data"), limit=3,
             model_obj=tiny_model, tokenizer=tokenizer)
    (ours,) = (tmp_path / "out" / "arc_challenge" / "interop" / "lm_eval" / "tiny").glob("samples_arc_challenge_*.jsonl")
    lines = _lines(ours)
    assert len(lines) == 3 and all(len(r["arguments"]) == 4 for r in lines)
    assert [list(r) for r in lines] == [[*LM_EVAL_KEYS, "acc", "acc_norm"]] * 3
    assert lines == _lines(theirs)
    kept = read_jsonl(tmp_path / "out" / "arc_challenge" / "samples.jsonl")[0]["lm_eval"]["arguments"]
    assert [arg[0] for arg in kept] == [None] * 4  # the context, once (the item's prompt)


def test_lm_eval_samples_of_our_tasks_in_lm_evals_schema(humaneval_plus):
    """Our own tasks' samples file: lm-eval's keys in its order, its hashes, readable by `datasets`
    (what lm-eval's sanitising of arguments and responses is for) and found by lm-eval's file helpers."""
    from datasets import load_dataset
    from lm_eval.utils import get_sample_results_filenames, hash_string

    folder, metrics = humaneval_plus
    (path,) = get_sample_results_filenames([str(p) for p in (folder / "interop" / "lm_eval").rglob("*.jsonl")])
    lines = _lines(Path(path))
    assert len(lines) == metrics["n_items"] == 12
    for i, r in enumerate(lines):
        assert list(r) == [*LM_EVAL_KEYS, "pass@1", "pass@1+"] and r["metrics"] == ["pass@1", "pass@1+"]
        assert r["doc_id"] == i and r["filter"] == "none" and isinstance(r["target"], str)
        assert r["doc_hash"] == hash_string(json.dumps(r["doc"], indent=2, ensure_ascii=False))
        assert r["prompt_hash"] == hash_string(r["arguments"]["gen_args_0"]["arg_0"])
        assert r["target_hash"] == hash_string(r["target"])
    assert sum(r["pass@1"] for r in lines) / 12 == pytest.approx(metrics["metrics"]["pass@1"]["value"])
    rows = load_dataset("json", data_files=str(path), split="train")
    assert rows.num_rows == 12 and rows[0]["doc"]["id"] == lines[0]["doc"]["id"]


def _evalplus_scores(samples_path, capsys, *, base_only: bool = False) -> dict[str, float]:
    """What `evalplus.evaluate` prints for our files (it reads samples_eval_results.json beside them)."""
    from evalplus.evaluate import evaluate as evalplus_evaluate

    flags = Namespace(samples=str(samples_path), dataset="humaneval", base_only=base_only, parallel=1,
                      i_just_wanna_run=False, test_details=False, min_time_limit=1.0, gt_time_limit_factor=4.0,
                      mini=False, noextreme=False)
    evalplus_evaluate(flags)
    out = capsys.readouterr().out
    assert "Load from previous results" in out, out  # our verdicts, not a re-run
    base = re.search(r"humaneval \(base tests\)\s*\n.*?pass@1:\s*([\d.]+)", out, re.S)
    plus = re.search(r"humaneval\+ \(base \+ extra tests\)\s*\n.*?pass@1:\s*([\d.]+)", out, re.S)
    assert base and bool(plus) != base_only, out
    return {"pass@1": float(base.group(1)), **({"pass@1+": float(plus.group(1))} if plus else {})}


def test_evalplus_reads_our_results(humaneval_plus, capsys):
    pytest.importorskip("evalplus", reason="evalplus is a test dependency (gsil-bench[interop])")
    folder, metrics = humaneval_plus
    got = _evalplus_scores(folder / "interop" / "evalplus" / "samples.jsonl", capsys)
    assert got["pass@1"] == pytest.approx(metrics["metrics"]["pass@1"]["value"], abs=5e-4)
    assert got["pass@1+"] == pytest.approx(metrics["metrics"]["pass@1+"]["value"], abs=5e-4)
    assert got["pass@1"] == pytest.approx(8 / 12, abs=5e-4)
    assert "--base-only" not in (folder / "interop" / "evalplus" / "README.md").read_text()


def test_evalplus_reads_a_base_only_task_without_inventing_plus(tmp_path, data_dir, capsys):
    """humaneval (no plus tests run): `--base-only` prints our pass@1; without it EvalPlus stops
    rather than print a HumanEval+ score from tests that never ran."""
    pytest.importorskip("evalplus", reason="evalplus is a test dependency (gsil-bench[interop])")
    rows = data_rows(data_dir, "humaneval_plus/HumanEvalPlus.jsonl")[:6]
    recs = [{"task_id": r["task_id"], "completion": r["canonical_solution"] if i % 3 else BROKEN[i % 3]}
            for i, r in enumerate(rows)]
    res = evaluate("base-only", ["humaneval"], CFG, tmp_path / "out", data_dir=str(data_dir),
                   completions=write_jsonl(tmp_path / "c.jsonl", recs), limit=6)["humaneval"]
    inter = tmp_path / "out" / "humaneval" / "interop" / "evalplus"
    assert all(set(r[0]) == {"task_id", "solution", "base_status", "base_fail_tests"}
               for r in read_json(inter / "samples_eval_results.json")["eval"].values())
    assert "--base-only" in (inter / "README.md").read_text()
    got = _evalplus_scores(inter / "samples.jsonl", capsys, base_only=True)
    assert got["pass@1"] == pytest.approx(res["metrics"]["pass@1"]["value"], abs=5e-4) == pytest.approx(4 / 6, abs=5e-4)
    with pytest.raises(KeyError, match="plus_status"):
        _evalplus_scores(inter / "samples.jsonl", capsys)
    assert "humaneval+" not in capsys.readouterr().out


# judge texts as GPT-4 writes them: a float, FastChat's backup pattern, a judgment quoting the answer's "[[10]]"
# before its own rating, one without a rating
JUDGMENTS = [("The answer is accurate and well organised. Rating: [[8]]", "Clear but brief. Rating: [[6.5]]"),
             ("The assistant repeats the user's claim that it is '[[10]] best'; the reasoning is wrong. Rating: [[3]]",
              "I would rate it [7]."),
             ("The response is off-topic.", "Rating: [[2]]"),
             ("Rating: [[9]]", "Excellent follow-up. [[10]]"),
             ("Rating: [[5]]", "The answer ignores the second question; no rating possible.")]


def _mt_bench_folder(tmp_path, rule: str = "verdict"):
    """An MT-Bench task folder in our format from judge texts parsed by our parser (tasks.judge) under
    `rule`; metrics by MTBench.aggregate, as the task computes them."""
    from gsil_bench.tasks.judge import parse_judgment

    samples = []
    for i, raws in enumerate(JUDGMENTS):
        parsed = [parse_judgment(raw, rule) for raw in raws]
        ratings = [r for r, _ in parsed]
        judgments = [{"prompt_name": "single-v1" if t == 1 else "single-v1-multi-turn",
                      "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"q{i}-{t}"}],
                      "raw": raw, "rating": r, "error": None, "judge": {"backend": "openai", "model": "gpt-4"}}
                     for t, (raw, r) in enumerate(zip(raws, ratings), 1)]
        scores = {f"turn{t}": r for t, r in enumerate(ratings, 1) if r is not None}
        status = [st for _, st in parsed]
        samples.append(Sample(str(81 + i), ["Q1", "Q2"], [f"A{i}-1", f"A{i}-2"], ratings, None, scores,
                              {"category": "writing", "missing": status.count("missing"),
                               "ambiguous": status.count("ambiguous"), "judgments": judgments}))
    metrics = MTBench().aggregate(samples, None)
    folder = tmp_path / "mt_bench"
    folder.mkdir()
    (folder / "samples.jsonl").write_text("".join(json.dumps(s.to_json()) + "\n" for s in samples))
    atomic_write_json(folder / "metrics.json", {
        "task": "mt_bench", "model": "runs/x/gsil/seed-1/iter-1/checkpoint", "primary": "score",
        "metrics": {k: m.to_json() for k, m in metrics.items()}, "n_items": len(samples),
        "config": {"eval": {"judge": {"model": "gpt-4", "rating_rule": rule}}}})
    return folder, metrics


def _show_result(folder, judge: str = "gpt-4") -> dict[str, str]:
    """FastChat's show_result.py, run on our files; its three tables by title."""
    proc = subprocess.run([sys.executable, "-m", "fastchat.llm_judge.show_result", "--mode", "single",
                           "--bench-name", "mt_bench", "--judge-model", judge], cwd=folder / "interop" / "fastchat",
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return dict(re.findall(r"#+ (\w[\w ]*?) #+\n(.*?)(?=\n\n#|\Z)", proc.stdout, re.S))


@pytest.mark.parametrize("rule", ["verdict", "fastchat"])
def test_fastchat_show_result_equals_our_scores(tmp_path, rule):
    """show_result's tables (per turn, average) equal our MT-Bench scores on judge texts parsed by our
    parser: with the verdict rule the ambiguous judgment is left out of both, with FastChat's rule it counts."""
    pytest.importorskip("fastchat", reason="fschat is a test dependency (gsil-bench[interop])")
    folder, metrics = _mt_bench_folder(tmp_path, rule)
    write_interop(folder)
    base = folder / "interop" / "fastchat" / "data" / "mt_bench"
    answers = read_jsonl(base / "model_answer" / "gsil_seed-1_iter-1.jsonl")
    assert answers[0]["choices"][0]["turns"] == ["A0-1", "A0-2"] and answers[0]["question_id"] == 81
    judged = read_jsonl(base / "model_judgment" / "gpt-4_single.jsonl")
    assert [j["score"] for j in judged if j["question_id"] == 82] == ([-1, 7.0] if rule == "verdict" else [10.0, 7.0])
    tables = _show_result(folder)
    expected = {"First turn": ("gsil_seed-1_iter-1", "1", metrics["score/turn1"].value),
                "Second turn": ("gsil_seed-1_iter-1", "2", metrics["score/turn2"].value),
                "Average": ("gsil_seed-1_iter-1", metrics["score"].value)}
    for title, (*row, value) in expected.items():
        lines = tables[title].strip().splitlines()
        cells = lines[-1].split()  # one model: its row is the table's last line
        assert cells[:-1] == row and float(cells[-1]) == pytest.approx(value, abs=1e-6), tables[title]
    assert metrics["ambiguous"].value == (1.0 if rule == "verdict" else 0.0)


def _rating_judge(tokenizer, folder):
    """A one-layer Llama with set weights (like test_gsm8k's answers_three) that answers any chat with
    "Rating: [[7]]" and stops: attention and MLP are zero, each token of that text (and any other
    token, for the first) points to the next one."""
    import torch

    text = tokenizer("Rating: [[7]]", add_special_tokens=False)["input_ids"]
    assert len(set(text)) == len(text)
    model = zeroed_llama(tokenizer)
    with torch.no_grad():
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb[:, 0] = 1.0  # any token -> direction 0 -> the text's first token
        for k, (tok, nxt) in enumerate(zip(text, [*text[1:], tokenizer.eos_token_id]), 1):
            emb[tok, 0], emb[tok, k] = 0.0, 1.0
            head[nxt, k] = 1.0
        head[text[0], 0] = 1.0
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_fastchat_show_result_equals_an_evaluation_with_a_rating_judge(tmp_path, data_dir, tiny_model_dir, tokenizer):
    """End to end: MT-Bench answered by the tiny model and judged by a local model that rates every turn
    7 (its text parsed as every judgment is); the interop files the evaluation writes give show_result's
    tables equal to ours."""
    pytest.importorskip("fastchat", reason="fschat is a test dependency (gsil-bench[interop])")
    from gsil_bench.core.config import JudgeConfig

    judge = _rating_judge(tokenizer, tmp_path / "judge")
    cfg = EvalConfig(generation=GenerationConfig(max_new_tokens=4, batch_size=2),
                     judge=JudgeConfig(backend="hf", model=str(judge), max_tokens=12))
    res = evaluate(str(tiny_model_dir), ["mt_bench"], cfg, tmp_path / "out", data_dir=str(data_dir), limit=2)["mt_bench"]
    assert res["metrics"]["score"]["value"] == 7.0 and res["metrics"]["missing"]["value"] == 0
    name, judge_name = model_name(str(tiny_model_dir)), model_name(str(judge))
    judged = read_jsonl(tmp_path / f"out/mt_bench/interop/fastchat/data/mt_bench/model_judgment/{judge_name}_single.jsonl")
    assert [(j["turn"], j["score"], j["judgment"]) for j in judged] == [(1, 7.0, "Rating: [[7]]"),
                                                                        (2, 7.0, "Rating: [[7]]")] * 2
    tables = _show_result(tmp_path / "out/mt_bench", judge=judge_name)
    assert tables["First turn"].strip().splitlines()[-1].split() == [name, "1", "7.0"]
    assert tables["Second turn"].strip().splitlines()[-1].split() == [name, "2", "7.0"]
    assert tables["Average"].strip().splitlines()[-1].split() == [name, "7.0"]


# Every problem where EvalPlus (0.2, the pinned version: np.testing.assert_allclose) and our checker
# disagree on the programs below, with the reason. A one-item list against a float expected output:
# assert_allclose broadcasts the scalar and passes it; we require the expected output's type first
# (EvalPlus 0.3's rule) and nested shapes before the tolerance (tasks.checker._same_shape).
MAD_AS_LIST = ("    mean = sum(numbers) / len(numbers)\n"
               "    return [sum(abs(x - mean) for x in numbers) / len(numbers)]\n")
DIFFERENCES = {"HumanEval/4": "a one-item list for a float: EvalPlus 0.2's assert_allclose broadcasts it and passes; "
                              "ours compares the type (and nested shape) first and fails it"}


def _mixed_programs(rows: list[dict]) -> list[dict]:
    """Canonical solutions, broken ones for every fifth problem, and the programs of DIFFERENCES."""
    special = {"HumanEval/4": MAD_AS_LIST}
    return [{"task_id": r["task_id"], "completion": special.get(r["task_id"]) or
             (BROKEN[i % 3] if i % 5 == 0 else r["canonical_solution"])} for i, r in enumerate(rows)]


@pytest.mark.slow
def test_evalplus_recomputes_the_same_verdicts_on_all_164(tmp_path, data_dir):
    """Parity: EvalPlus's own evaluation of the same programs gives the same base and plus verdict as
    our sandbox, problem by problem, except on the problems listed in DIFFERENCES (with the reason)."""
    pytest.importorskip("evalplus")
    rows = data_rows(data_dir, "humaneval_plus/HumanEvalPlus.jsonl")
    comp = write_jsonl(tmp_path / "mixed.jsonl", _mixed_programs(rows))
    evaluate("mixed", ["humaneval_plus"], CFG, tmp_path / "out", data_dir=str(data_dir), completions=comp)
    ours = read_json(tmp_path / "out/humaneval_plus/interop/evalplus/samples_eval_results.json")["eval"]
    theirs_dir = tmp_path / "theirs"
    theirs_dir.mkdir()
    (theirs_dir / "samples.jsonl").write_text(
        (tmp_path / "out/humaneval_plus/interop/evalplus/samples.jsonl").read_text())
    env = {**os.environ, "HUMANEVAL_OVERRIDE_PATH": str(data_dir / "humaneval_plus/HumanEvalPlus.jsonl")}
    proc = subprocess.run([sys.executable, "-m", "evalplus.evaluate", "--dataset", "humaneval", "--samples",
                           str(theirs_dir / "samples.jsonl"), "--parallel", "2",
                           # generous time limits: on a loaded machine EvalPlus's 1 s x 4 would fail slow
                           # canonical programs (our sandbox gives the whole program eval.code_timeout)
                           "--min-time-limit", "10", "--gt-time-limit-factor", "50"], env=env, capture_output=True,
                          text=True, timeout=3000)
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = read_json(theirs_dir / "samples_eval_results.json")["eval"]
    assert set(theirs) == set(ours)
    verdict = {side: {t: (r[t][0]["base_status"], r[t][0]["plus_status"]) for t in r}
               for side, r in (("ours", ours), ("theirs", theirs))}
    differ = {t: f"ours {verdict['ours'][t]}, EvalPlus {verdict['theirs'][t]}" for t in ours
              if verdict["ours"][t] != verdict["theirs"][t]}
    listing = "\n".join(f"{t}: {d}; known reason: {DIFFERENCES.get(t, 'NONE')}" for t, d in sorted(differ.items()))
    assert set(differ) == set(DIFFERENCES), listing
