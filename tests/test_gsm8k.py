"""GSM8K through lm-eval: local data, and the numbers equal lm-eval's own run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import zeroed_llama

from gsil_bench.core.config import EvalConfig, GenerationConfig
from gsil_bench.tasks.api import evaluate


def _local_yaml(folder: Path, data_dir: Path, base: str, name: str) -> Path:
    """An lm-eval task written the way an lm-eval user would: include the stock YAML and
    point the data set at the local files (independent of tasks.lmeval)."""
    from gsil_bench.tasks.lmeval import builtin_yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(
        f"include: {builtin_yaml(base)}\ntask: {name}\ndataset_path: json\ndataset_name: null\n"
        f"dataset_kwargs:\n  data_files:\n    train: {data_dir / 'gsm8k/train.jsonl'}\n"
        f"    test: {data_dir / 'gsm8k/test.jsonl'}\n"
    )
    return path


def _direct(model, tok, folder: Path, name: str, *, limit: int, gen_kwargs: str, batch: int, chat: bool) -> dict:
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch, device="cpu")
    tm = TaskManager(include_defaults=False, include_path=str(folder))
    return lm_eval.simple_evaluate(model=lm, tasks=[name], limit=limit, gen_kwargs=gen_kwargs, task_manager=tm,
                                   log_samples=True, apply_chat_template=chat, fewshot_as_multiturn=chat)


def _compare(ours_dir: Path, ours: dict, direct: dict, name: str) -> None:
    res = direct["results"][name]
    for key in ("exact_match,strict-match", "exact_match,flexible-extract"):
        metric, flt = key.split(",")
        assert ours["metrics"][f"{metric}/{flt}"]["value"] == res[key]  # exactly lm-eval's number
    samples = [json.loads(line) for line in (ours_dir / "samples.jsonl").read_text().splitlines()]
    by_doc = {}
    for rec in direct["samples"][name]:
        by_doc.setdefault(rec["doc_id"], {})[rec["filter"]] = rec
    assert [s["id"] for s in samples] == [str(i) for i in sorted(by_doc)]
    for s in samples:
        recs = by_doc[int(s["id"])]
        any_rec = next(iter(recs.values()))
        assert s["prompt"] == any_rec["arguments"][0][0] and s["output"] == any_rec["resps"][0][0]
        for flt, rec in recs.items():
            assert s["extracted"][flt] == rec["filtered_resps"][0]
            assert s["scores"][f"exact_match/{flt}"] == rec["exact_match"]


def test_local_data_spec_keeps_lm_evals_task(data_dir):
    from lm_eval.tasks._yaml_loader import load_yaml

    from gsil_bench.tasks.lmeval import builtin_yaml, task_spec

    stock = load_yaml(builtin_yaml("gsm8k/gsm8k.yaml"), resolve_func=True)
    spec, files = task_spec("gsm8k", data_dir, builtin_yaml("gsm8k/gsm8k.yaml"))
    assert spec["dataset_path"] == "json" and spec["dataset_kwargs"]["data_files"]["test"].endswith("gsm8k/test.jsonl")
    assert files == {"train": str(data_dir / "gsm8k/train.jsonl"), "test": str(data_dir / "gsm8k/test.jsonl")}
    changed = {k for k in set(stock) | set(spec) if stock.get(k) != spec.get(k)}
    assert changed == {"dataset_path", "dataset_name", "dataset_kwargs"}  # prompts, filters, metrics untouched
    hub, files = task_spec("gsm8k", None, builtin_yaml("gsm8k/gsm8k.yaml"))
    assert hub["dataset_path"] == "openai/gsm8k" and files == {}


@pytest.fixture()
def answers_three(tokenizer):
    """A one-layer Llama with set weights (the real tokenizer) that answers every prompt with
    "3 3 3 ...": attention and MLP are zero, so the next token depends on the current one only;
    after "3" it writes a space, after anything else "3". GSM8K's second test item's answer is 3,
    so flexible-extract (the last number) scores 1 of the first 3 items and strict-match
    ("#### 3") none: a nonzero score to compare with lm-eval's."""
    (three,) = tokenizer("3", add_special_tokens=False)["input_ids"]
    (space,) = tokenizer(" ", add_special_tokens=False)["input_ids"]
    model = zeroed_llama(tokenizer)
    with torch.no_grad():
        emb = model.model.embed_tokens.weight
        emb[:, 0] = 1.0  # every token but "3" -> direction 0 -> "3"
        emb[three, 0], emb[three, 1] = 0.0, 1.0  # "3" -> direction 1 -> " "
        model.lm_head.weight[three, 0] = 1.0
        model.lm_head.weight[space, 1] = 1.0
    return model


def test_gsm8k_equals_lm_eval_on_the_same_model(tmp_path, data_dir, answers_three, tokenizer):
    gen = "max_gen_toks=16"
    folder = tmp_path / "yaml"
    _local_yaml(folder, data_dir, "gsm8k/gsm8k.yaml", "gsm8k_local")
    direct = _direct(answers_three, tokenizer, folder, "gsm8k_local", limit=3, gen_kwargs=gen, batch=4, chat=False)
    cfg = EvalConfig(lm_eval_gen_kwargs=gen, generation=GenerationConfig(batch_size=4))
    ours = evaluate("tiny", ["gsm8k"], cfg, tmp_path / "out", data_dir=str(data_dir), limit=3,
                    model_obj=answers_three, tokenizer=tokenizer)["gsm8k"]
    _compare(tmp_path / "out/gsm8k", ours, direct, "gsm8k_local")
    assert ours["primary"] == "exact_match/strict-match" and ours["n_items"] == 3
    assert ours["lm_eval_version"] == "0.4.13" and ours["lm_eval"]["n-shot"] == {"gsm8k": 5}
    assert ours["metrics"]["exact_match/strict-match"]["n"] == 3
    assert ours["metrics"]["exact_match/strict-match"]["value"] == 0.0
    assert ours["metrics"]["exact_match/flexible-extract"]["value"] == pytest.approx(1 / 3)
    samples = [json.loads(line) for line in (tmp_path / "out/gsm8k/samples.jsonl").read_text().splitlines()]
    assert [s["scores"]["exact_match/flexible-extract"] for s in samples] == [0.0, 1.0, 0.0]
    assert all(s["output"].startswith("3 3 3 ") for s in samples)


@pytest.mark.slow
def test_gsm8k_and_chat_variant_equal_lm_eval_on_the_embedded_model(tmp_path, data_dir):
    from gsil_bench.core.models import load_model

    model, tok = load_model("embedded:smollm2-135m-instruct")
    gen = "max_gen_toks=96"
    folder = tmp_path / "yaml"
    _local_yaml(folder, data_dir, "gsm8k/gsm8k.yaml", "gsm8k_local")
    _local_yaml(folder, data_dir, "gsm8k/gsm8k-cot-zeroshot.yaml", "gsm8k_cot_local")
    cfg = EvalConfig(lm_eval_gen_kwargs=gen, generation=GenerationConfig(batch_size=4))
    ours = evaluate("embedded:smollm2-135m-instruct", ["gsm8k", "gsm8k_chat"], cfg, tmp_path / "out",
                    data_dir=str(data_dir), limit=4, model_obj=model, tokenizer=tok)
    direct = _direct(model, tok, folder, "gsm8k_local", limit=4, gen_kwargs=gen, batch=4, chat=False)
    _compare(tmp_path / "out/gsm8k", ours["gsm8k"], direct, "gsm8k_local")
    direct = _direct(model, tok, folder, "gsm8k_cot_local", limit=4, gen_kwargs=gen, batch=4, chat=True)
    _compare(tmp_path / "out/gsm8k_chat", ours["gsm8k_chat"], direct, "gsm8k_cot_local")
    assert ours["gsm8k_chat"]["lm_eval"]["apply_chat_template"] is True


def test_unknown_task_names_get_a_did_you_mean(tmp_path):
    from gsil_bench.tasks.base import TaskError
    from gsil_bench.tasks.lmeval import check_task_name, task_index

    with pytest.raises(TaskError, match=r"unknown task 'gsm8kk'.*did you mean 'gsm8k'"):
        evaluate("x", ["gsm8kk"], EvalConfig(), tmp_path)
    with pytest.raises(TaskError, match=r"did you mean 'humaneval'"):
        evaluate("x", ["humaneva"], EvalConfig(), tmp_path)
    check_task_name("arc_easy", ["gsm8k"])  # an lm-eval task passes through
    assert task_index()["hellaswag"][0] == "TASK" and task_index()["mmlu"][0] == "GROUP"
