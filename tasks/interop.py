"""Files other tools read, written beside ours in every task folder `<task>/interop/`:

- lm-evaluation-harness (every task): `lm_eval/<model>/results_<date>.json` (lm-eval's own
  results dict for lm-eval tasks; the same shape, `"<metric>,none"` keys, for the others) and
  `samples_<task>_<date>.jsonl`, as `lm_eval --output_path ... --log_samples` writes them:
  one line per document per filter (doc_id, doc, target, arguments as {gen_args_i: {arg_j}},
  resps, filtered_resps, filter, metrics, doc_hash, prompt_hash, target_hash, the metric
  values). An lm-eval task's lines are lm-eval's own records (kept in samples.jsonl under
  `lm_eval`); our tasks' items are written in that schema with filter "none".
- FastChat llm_judge (mt_bench): `fastchat/data/mt_bench/model_answer/<model>.jsonl` and
  `model_judgment/<judge>_single.jsonl` for `python -m fastchat.llm_judge.show_result
  --mode single --judge-model <judge>` (run in `interop/fastchat/`); a turn without a
  rating has score -1, which show_result drops as FastChat's own failures.
- EvalPlus (humaneval, humaneval_plus, mbpp, mbpp_plus): `evalplus/samples.jsonl` (task_id +
  solution: the whole program of the greedy completion) and `evalplus/samples_eval_results.json`
  (base_status / plus_status per task) that `evalplus.evaluate` reads instead of re-running;
  the base-only tasks (humaneval, mbpp) have no plus_status and are read with `--base-only`
  (`evalplus/README.md` holds the command).

Written from samples.jsonl + metrics.json after the task finishes; rewriting is idempotent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path
from typing import Any

from gsil_bench.core.io import atomic_write_json, atomic_write_text, read_json, read_jsonl

log = logging.getLogger(__name__)
EVALPLUS_TASKS = {"humaneval": "humaneval", "humaneval_plus": "humaneval", "mbpp": "mbpp", "mbpp_plus": "mbpp"}


def model_name(model: str) -> str:
    """A file-name-safe model id: `<method>_seed-<s>_iter-<k>` for a run checkpoint, else the name."""
    p = Path(model)
    if p.name == "checkpoint" and len(p.parts) >= 4:
        model = "_".join(p.parts[-4:-1])
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.removeprefix("embedded:")).strip("_") or "model"


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r, default=str) + "\n" for r in rows)


def _directions(results: dict[str, Any], metrics: dict[str, Any]) -> dict[str, dict[str, bool]]:
    """lm-eval's higher_is_better ({task: {metric: bool}}) from our metrics (`<metric>/<filter>` for
    one task, `<task>/<metric>/<filter>` for a group's tasks), for metrics.json written without it."""
    out: dict[str, dict[str, bool]] = {}
    for name, m in (metrics.get("metrics") or {}).items():
        parts = name.split("/")
        task, metric = (next(iter(results)), parts[0]) if len(parts) == 2 else (parts[0], parts[1])
        if len(parts) in (2, 3) and task in results:
            out.setdefault(task, {})[metric] = bool(m.get("higher_is_better", True))
    return out


def _run_info(metrics: dict[str, Any], lm: dict[str, Any], task_hashes: dict[str, str]) -> dict[str, Any]:
    """The keys lm-eval's results file carries beside the scores (simple_evaluate's run record and
    EvaluationTracker's GeneralConfigTracker), from what the task recorded; None where it did not run lm-eval."""
    model = str(metrics.get("model"))
    template = lm.get("chat_template")
    try:
        from importlib.metadata import version

        transformers = version("transformers")
    except Exception:  # noqa: BLE001 - absent: lm-eval writes "N/A" too
        transformers = "N/A"
    return {
        "config": {**(lm.get("config") or {}), "model": model},
        "git_hash": lm.get("git_hash"), "pretty_env_info": lm.get("pretty_env_info") or "N/A (see provenance.json)",
        "transformers_version": lm.get("transformers_version") or transformers,
        "lm_eval_version": metrics.get("lm_eval_version") or lm.get("lm_eval_version"),
        "upper_git_hash": lm.get("upper_git_hash"),
        **{k: lm.get(k) for k in ("tokenizer_pad_token", "tokenizer_eos_token", "tokenizer_bos_token", "eot_token_id",
                                  "max_length")},
        "task_hashes": task_hashes, "model_source": "gsil-bench", "model_name": model,
        "model_name_sanitized": model_name(model), "system_instruction": None, "system_instruction_sha": None,
        "fewshot_as_multiturn": bool(lm.get("fewshot_as_multiturn")), "chat_template": template,
        "chat_template_sha": _hash(template) if template else None,
        "total_evaluation_time_seconds": lm.get("total_evaluation_time_seconds")
        or (str(metrics["wall_time_s"]) if metrics.get("wall_time_s") is not None else None),
    }


def lm_eval_results(task: str, metrics: dict[str, Any], date: str,
                    task_hashes: dict[str, str] | None = None) -> dict[str, Any]:
    """lm-eval's results dict for a task folder's metrics.json: every key lm-eval's EvaluationTracker
    writes (the scores, the run's settings, environment, tokenizer and tracker fields)."""
    lm = metrics.get("lm_eval") or {}
    hashes = task_hashes or {}
    if lm.get("results"):
        results = lm["results"]
        return {"results": results, "group_subtasks": lm.get("group_subtasks") or {},
                "configs": lm.get("configs") or {}, "versions": lm.get("versions") or {}, "n-shot": lm.get("n-shot") or {},
                "higher_is_better": lm.get("higher_is_better") or _directions(results, metrics),
                "n-samples": lm.get("n-samples") or {}, "date": lm.get("date") or date, **_run_info(metrics, lm, hashes)}
    row: dict[str, Any] = {"alias": task}
    better: dict[str, bool] = {}
    for name, m in metrics.get("metrics", {}).items():
        row[f"{name},none"] = m.get("value")
        row[f"{name}_stderr,none"] = m.get("stderr") if m.get("stderr") is not None else "N/A"
        better[name] = bool(m.get("higher_is_better", True))
    n = metrics.get("n_items", 0)
    return {"results": {task: row}, "group_subtasks": {},  # a standalone task, as lm-eval writes it
            "configs": {task: {"task": task, "gsil_bench_config": metrics.get("config")}},
            "versions": {task: "gsil-bench"}, "n-shot": {task: 0}, "higher_is_better": {task: better},
            "n-samples": {task: {"original": n, "effective": n}}, "date": date, **_run_info(metrics, lm, hashes)}


def _sanitize(x: Any) -> Any:
    """lm-eval's `sanitize_list`: nested lists with every leaf as its str."""
    return [_sanitize(v) for v in x] if isinstance(x, list | tuple) else str(x)


def _hash(text: str) -> str:
    """lm-eval's `hash_string`."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _as_logged(rec: dict[str, Any], doc: Any, arguments: list[Any], resps: list[Any]) -> dict[str, Any]:
    """A record as lm-eval's `EvaluationTracker.save_results_samples` writes it: arguments as
    {gen_args_i: {arg_j}}, responses as strings, the target as str; its keys in its order."""
    line = dict(rec)
    line.update(doc=doc, arguments={f"gen_args_{i}": {f"arg_{j}": a for j, a in enumerate(arg)}
                                    for i, arg in enumerate(arguments)},
                resps=_sanitize(resps), filtered_resps=_sanitize(rec.get("filtered_resps")), target=str(rec.get("target")))
    return line


def _requests(s: dict[str, Any]) -> tuple[list[str], list[Any], list[Any]]:
    """Our item as lm-eval requests: one per turn when prompt, output and extracted are per-turn lists."""
    prompt, output, extracted = s.get("prompt"), s.get("output"), s.get("extracted")
    if isinstance(prompt, list) and isinstance(output, list) and len(prompt) == len(output) \
            and all(isinstance(p, str) for p in prompt):
        if isinstance(extracted, list) and len(extracted) == len(output):  # a rating per turn (MT-Bench)
            return list(prompt), list(output), list(extracted)
        return list(prompt), list(output), [extracted] * len(output)
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)
    return [text], [output], [extracted]


def lm_eval_lines(i: int, s: dict[str, Any], gen_kwargs: dict[str, Any]) -> list[dict[str, Any]]:
    """samples_<task>.jsonl lines of one item: an lm-eval task's own records (one per filter), else
    ours in lm-eval's schema (filter "none", the generation settings as gen_kwargs)."""
    lm = s.get("lm_eval")
    if lm:  # contexts equal to the prompt are kept once (tasks.lmeval._compact)
        arguments = [[s.get("prompt") if j == 0 and a is None else a for j, a in enumerate(arg)] for arg in lm["arguments"]]
        return [_as_logged(rec, s.get("doc"), arguments, lm["resps"]) for rec in lm["records"]]
    prompts, outputs, extracted = _requests(s)
    doc = {"id": s["id"], "prompt": s.get("prompt"), "reference": s.get("reference")}
    scores = s.get("scores") or {}
    rec = {"doc_id": i, "doc": None, "target": s.get("reference"), "arguments": None, "resps": None,
           "filtered_resps": extracted, "filter": "none", "metrics": list(scores),
           "doc_hash": _hash(json.dumps(doc, indent=2, default=str, ensure_ascii=False)),
           "prompt_hash": _hash(prompts[0]), "target_hash": _hash(str(s.get("reference"))), **scores}
    return [_as_logged(rec, doc, [[p, gen_kwargs] for p in prompts], [[o] for o in outputs])]


def _gen_kwargs(metrics: dict[str, Any]) -> dict[str, Any]:
    gen = (((metrics.get("config") or {}).get("eval") or {}).get("generation")) or {}
    temperature = gen.get("temperature", 0.0)
    return {"max_gen_toks": gen.get("max_new_tokens"), "temperature": temperature, "do_sample": bool(temperature)}


def lm_eval_sample_files(task: str, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> dict[str, list[dict]]:
    """lm-eval task name -> its samples file's lines, in lm-eval's order (filter by filter, documents by id)."""
    files: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
    gen_kwargs = _gen_kwargs(metrics)
    for i, s in enumerate(samples):
        name = (s.get("lm_eval") or {}).get("task") or task
        for order, line in enumerate(lm_eval_lines(i, s, gen_kwargs)):
            files.setdefault(name, []).append((order, int(line["doc_id"]), line))
    return {name: [line for _, _, line in sorted(rows, key=lambda r: r[:2])] for name, rows in files.items()}


def write_lm_eval(folder: Path, task: str, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> Path:
    out = folder / "lm_eval" / model_name(str(metrics.get("model")))
    shutil.rmtree(out, ignore_errors=True)
    date = time.strftime("%Y-%m-%dT%H-%M-%S.000000")
    path = out / f"results_{date}.json"
    files = lm_eval_sample_files(task, metrics, samples)
    hashes = {name: _hash("".join(r["doc_hash"] + r["prompt_hash"] + r["target_hash"] for r in lines))
              for name, lines in files.items()}  # as EvaluationTracker.save_results_aggregated computes them
    atomic_write_json(path, lm_eval_results(task, metrics, date, hashes))
    for name, lines in files.items():
        atomic_write_text(out / f"samples_{name}_{date}.jsonl",
                          "".join(json.dumps(r, default=str, ensure_ascii=False) + "\n" for r in lines))
    return path


def write_fastchat(folder: Path, metrics: dict[str, Any], samples: list[dict[str, Any]]) -> tuple[Path, Path]:
    """FastChat's model_answer and single-answer model_judgment files for MT-Bench."""
    model = model_name(str(metrics.get("model")))
    judge = model_name(str(((metrics.get("config") or {}).get("eval") or {}).get("judge", {}).get("model", "judge")))
    base = folder / "fastchat" / "data" / "mt_bench"
    answers, judgments = [], []
    for s in samples:
        qid = int(s["id"]) if str(s["id"]).isdigit() else s["id"]
        answers.append({"question_id": qid, "answer_id": f"{model}-{qid}", "model_id": model,
                        "choices": [{"index": 0, "turns": list(s["output"])}], "tstamp": 0.0})
        for turn, j in enumerate(s.get("judgments") or [], 1):
            user = next((m["content"] for m in j.get("messages", []) if m.get("role") == "user"), "")
            judgments.append({"question_id": qid, "model": model, "judge": [judge, j.get("prompt_name")],
                              "user_prompt": user, "judgment": j.get("raw") or "",
                              "score": j["rating"] if j.get("rating") is not None else -1, "turn": turn, "tstamp": 0.0})
    a = base / "model_answer" / f"{model}.jsonl"
    b = base / "model_judgment" / f"{judge}_single.jsonl"
    atomic_write_text(a, _jsonl(answers))
    atomic_write_text(b, _jsonl(judgments))
    return a, b


def _status(result: dict[str, Any] | None) -> str | None:
    """Our sandbox status -> EvalPlus's (pass, fail, timeout)."""
    if not result:
        return None
    return {"passed": "pass", "timeout": "timeout"}.get(result.get("status", ""), "fail")


def evalplus_command(task: str) -> str:
    """The `evalplus.evaluate` command that reads a task folder's EvalPlus files (run in `interop/evalplus/`)."""
    base_only = "" if task.endswith("_plus") else " --base-only"
    return f"python -m evalplus.evaluate --dataset {EVALPLUS_TASKS[task]} --samples samples.jsonl{base_only}"


def write_evalplus(folder: Path, task: str, samples: list[dict[str, Any]]) -> tuple[Path, Path]:
    """EvalPlus samples.jsonl (greedy programs) and samples_eval_results.json. A task without the
    plus tests (humaneval, mbpp) has no plus_status at all: `evalplus.evaluate --base-only` prints
    our base numbers, and without --base-only it stops (KeyError) instead of reading "not run" as failed."""
    out = folder / "evalplus"
    rows, results = [], {}
    plus = task.endswith("_plus")
    for s in samples:
        r = (s.get("results") or [{}])[0]
        rows.append({"task_id": s["id"], "solution": s.get("extracted") or ""})
        rec: dict[str, Any] = {"task_id": s["id"], "solution": s.get("extracted") or "",
                               "base_status": _status(r.get("base")), "base_fail_tests": []}
        if plus:  # our sandbox skips the plus inputs once the base ones failed: failed either way for EvalPlus,
            rec.update(plus_status=_status(r.get("plus")) or "fail", plus_fail_tests=[])  # which needs both
        results[s["id"]] = [rec]
    samples_path = out / "samples.jsonl"
    atomic_write_text(samples_path, _jsonl(rows))
    res_path = out / "samples_eval_results.json"
    atomic_write_json(res_path, {"date": time.strftime("%Y-%m-%d %H:%M"), "hash": EVALPLUS_TASKS[task],
                                 "eval": results})
    atomic_write_text(out / "README.md", f"Our {task} verdicts for EvalPlus; in this folder:\n\n    {evalplus_command(task)}\n")
    return samples_path, res_path


def write_interop(task_folder: Path) -> list[Path]:
    """Every interop file a finished task folder supports, under `<task>/interop/`."""
    task_folder = Path(task_folder)
    if not (task_folder / "metrics.json").is_file():
        return []
    metrics = read_json(task_folder / "metrics.json")
    samples = read_jsonl(task_folder / "samples.jsonl")
    task, folder = str(metrics.get("task")), task_folder / "interop"
    written = [write_lm_eval(folder, task, metrics, samples)]
    if task == "mt_bench":
        written += write_fastchat(folder, metrics, samples)
    if task in EVALPLUS_TASKS:
        written += write_evalplus(folder, task, samples)
    log.debug("%s: interop files %s", task, ", ".join(str(p) for p in written))
    return written
