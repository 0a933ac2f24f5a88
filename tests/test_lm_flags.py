"""`gsil-bench eval` as lm-eval users type it: lm-eval's flag names where they mean the same (turned
into our overrides, validated like them), answers where they do not, global options anywhere on the
line, override errors that name the command line, a real auto batch size, and generation progress
inside a long batch."""

from __future__ import annotations

import io
import logging

import pytest
import yaml

from gsil_bench.core.config import GenerationConfig
from gsil_bench.core.generation import OOM_TEST_ENV, HFGenerator
from gsil_bench.core.progress import BarLines
from gsil_bench.harness.cli import build_parser, log_level, main
from gsil_bench.harness.commands.eval import eval_config


def test_global_options_anywhere_on_the_line():
    for argv in (["report", "x", "--log-level", "debug"], ["--log-level", "debug", "report", "x"],
                 ["compare", "a", "b", "-v"], ["eval", "--tasks", "gsm8k", "--log-level", "DEBUG", "shared.eval.limit=2"]):
        assert log_level(build_parser().parse_args(argv)) == logging.DEBUG, argv
    assert log_level(build_parser().parse_args(["run", "c.yaml", "-q"])) == logging.WARNING
    assert log_level(build_parser().parse_args(["-q", "run", "c.yaml"])) == logging.WARNING
    assert log_level(build_parser().parse_args(["run", "c.yaml"])) == logging.INFO


def test_lm_eval_flags_become_our_settings(tmp_path):
    args = build_parser().parse_args([
        "eval", "--tasks", "gsm8k,arc_challenge", "--batch_size", "auto", "--num_fewshot", "gsm8k=5,arc_challenge=25",
        "--output_path", str(tmp_path / "out"), "--log_samples", "--apply_chat_template", "--revision", "v1.0",
        "--device", "cuda:1", "--gen_kwargs", "temperature=0.7,top_p=0.9,max_gen_toks=64,do_sample=True",
        "shared.eval.limit=3"])
    exp, _ = eval_config(args)
    cfg, shared = exp.shared.eval, exp.shared
    assert args.output == str(tmp_path / "out")
    assert shared.model_revision == "v1.0"  # --revision pins the evaluated model (SharedConfig.pins)
    assert cfg.generation.auto_batch_size and cfg.generation.batch_size == 16  # from 64 on a GPU (core.generation)
    assert cfg.num_fewshot == {"gsm8k": 5, "arc_challenge": 25} and cfg.limit == 3
    assert cfg.lm_eval_chat_template and cfg.device == "cuda:1"
    assert cfg.lm_eval_gen_kwargs == "temperature=0.7,top_p=0.9,max_gen_toks=64,do_sample=True"
    assert (cfg.generation.temperature, cfg.generation.top_p, cfg.generation.max_new_tokens) == (0.7, 0.9, 64)
    cfg = eval_config(build_parser().parse_args(["eval", "--batch_size", "8", "--num_fewshot", "3"]))[0].shared.eval
    assert (cfg.generation.batch_size, cfg.generation.auto_batch_size, cfg.num_fewshot) == (8, False, 3)


def test_flags_without_an_equivalent_are_answered(capsys):
    assert main(["eval", "--tasks", "gsm8k", "--seed", "1234"]) == 2
    err = capsys.readouterr().err
    assert "--seed: gsil-bench eval has no global seed" in err and "shared.seeds" in err and "Traceback" not in err
    assert main(["eval", "--model", "hf", "--model_args", "pretrained=org/name,revision=v1"]) == 2
    assert "--model_args: gsil-bench eval takes the model itself, --model ORG/NAME" in capsys.readouterr().err
    assert main(["eval", "--model", "vllm", "--tasks", "gsm8k"]) == 2
    assert "--model vllm: on gsil-bench eval --model names the model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--batch_size", "big"])
    assert "--batch_size: expected a positive number or 'auto'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", "--num_fewshot", "gsm8k:5"])
    assert "expected N or TASK=N" in capsys.readouterr().err


def test_per_task_fewshot_names_tasks_of_the_evaluation(capsys):
    assert main(["eval", "--tasks", "gsm8k", "--num_fewshot", "gsm8k=5,arc_chalenge=25"]) == 2
    assert "num_fewshot: arc_chalenge: not among the tasks (gsm8k)" in capsys.readouterr().err


def test_override_errors_name_the_command_line(tmp_path, capsys):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "shared": {"optimizer": {"lr": 1e-6}}, "methods": [{"loss": "sft"}]}))
    assert main(["run", str(path), "--dry-run", "shared.optimizer.lr=fast", "shared.train.batch_sise=2"]) == 2
    err = capsys.readouterr().err
    assert "command line 'shared.optimizer.lr=fast': shared.optimizer.lr: expected a number, got 'fast'" in err
    assert "command line 'shared.train.batch_sise=2': unknown key 'shared.train.batch_sise'" in err
    blamed = [line for line in err.splitlines() if "optimizer.lr" in line or "batch_sise" in line]
    assert len(blamed) == 2 and not any(str(path) in line for line in blamed)  # not the YAML's lines
    assert main(["eval", "--tasks", "gsm8k", "shared.eval.limit=many"]) == 2
    assert "command line 'shared.eval.limit=many': shared.eval.limit: expected" in capsys.readouterr().err


PROMPTS = [[{"role": "user", "content": f"Count to {i} please."}] for i in range(1, 8)]


def test_auto_batch_size_halves_on_out_of_memory_and_keeps_what_fits(tiny_model, tokenizer, monkeypatch):
    """$GSIL_TEST_OOM_ROWS makes a decode of more than N rows raise torch's OutOfMemoryError (fault
    injection, as GSIL_TEST_KILL is for resuming); the real model and tokenizer generate."""
    fixed = HFGenerator(tiny_model, tokenizer, GenerationConfig(max_new_tokens=6, batch_size=2))
    want = [c.text for c in fixed.generate(PROMPTS)]
    monkeypatch.setenv(OOM_TEST_ENV, "2")
    auto = HFGenerator(tiny_model, tokenizer, GenerationConfig(max_new_tokens=6, batch_size=16, auto_batch_size=True))
    assert [c.text for c in auto.generate(PROMPTS)] == want and auto.batch_size == 2
    plain = HFGenerator(tiny_model, tokenizer, GenerationConfig(max_new_tokens=6, batch_size=16))
    import torch

    with pytest.raises(torch.OutOfMemoryError):
        plain.generate(PROMPTS)


def test_progress_inside_a_long_generation_batch(tiny_model, tokenizer, monkeypatch, caplog):
    """Off a terminal, one batch of 7 prompts x 12 tokens logs its decoding steps ($GSIL_PROGRESS_SECONDS=0)."""
    monkeypatch.setenv("GSIL_PROGRESS_SECONDS", "0")
    gen = HFGenerator(tiny_model, tokenizer, GenerationConfig(max_new_tokens=12, batch_size=8))
    with caplog.at_level(logging.INFO, logger="gsil_bench.core.progress"):
        gen.generate(PROMPTS, desc="self-play")
    inside = [r.getMessage() for r in caplog.records if "batch of 7: token" in r.getMessage()]
    assert len(inside) >= 5 and inside[0].startswith("self-play: 0/7") and "token 12/12" in inside[-1]


def test_carriage_return_bars_become_lines(monkeypatch):
    """A real tqdm bar written through BarLines: its final state as one line, no carriage return."""
    from tqdm import tqdm

    monkeypatch.setenv("GSIL_PROGRESS_SECONDS", "3600")
    out = io.StringIO()
    stream = BarLines(out)
    stream.write("before\n")
    for _ in tqdm(range(50), desc="Loading weights", file=stream, disable=False, mininterval=0):
        pass
    stream.write("after\n")
    text = out.getvalue()  # a StringIO keeps carriage returns as written
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert lines[0] == "before" and lines[-1] == "after" and len(lines) == 3
    assert lines[1].startswith("Loading weights: 100%") and "50/50" in lines[1]


def _greedy(model, tokenizer, prompt: str, n: int) -> str:
    """The model's greedy continuation of `prompt` in `n` new tokens, cut at gsm8k's stop strings."""
    import torch

    ids = torch.tensor([tokenizer(prompt)["input_ids"]])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                             pad_token_id=tokenizer.pad_token_id)
    text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    for stop in ("Question:", "</s>", "<|im_end|>"):  # gsm8k.yaml's until, and the tokenizer's EOS
        text = text.split(stop)[0]
    return text


def test_eval_with_lm_eval_flags_end_to_end(tmp_path, tiny_model_dir, data_dir, capsys, tokenizer):
    """The flags reach lm-eval and the model, checked by their effects: each prompt the model received holds
    one few-shot example before the question, each output is the model's greedy continuation of exactly
    8 tokens (9 would read otherwise), and the results land in our
    output folder, one sample per item. `--batch_size auto` is recorded; on a CPU it leaves the batch size as
    is (tasks/lmeval._hf_lm: lm-eval's search is for CUDA), its halving is tested on the generator above."""
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_model_dir), "--tasks", "gsm8k", "--limit", "2", "--num_fewshot",
                 "gsm8k=1", "--batch_size", "auto", "--gen_kwargs", "max_gen_toks=8",
                 "--output_path", str(out), "--log_samples", "--data-dir", str(data_dir)]) == 0
    import json

    rec = json.loads((out / "gsm8k" / "metrics.json").read_text())
    assert rec["lm_eval"]["n-shot"] == {"gsm8k": 1} and rec["n_items"] == 2
    assert rec["config"]["eval"]["num_fewshot"] == {"gsm8k": 1}  # the record; the effects below
    assert rec["config"]["eval"]["generation"]["auto_batch_size"] is True
    samples = [json.loads(line) for line in (out / "gsm8k" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 2
    from gsil_bench.trainers.reference import load_causal_lm

    model = load_causal_lm(str(tiny_model_dir), revision=None, device="cpu").eval()
    for s in samples:
        assert s["prompt"].count("Question: ") == 2 and s["prompt"].endswith(s["doc"]["question"] + "\nAnswer:"), (
            f"--num_fewshot gsm8k=1: the model's prompt does not hold one example, then the question: {s['prompt']!r}")
        want, longer = (_greedy(model, tokenizer, s["prompt"], n) for n in (8, 9))
        assert want != longer, f"the model stops before 8 tokens here ({want!r}): nothing to check"
        assert s["output"] == want, (f"--gen_kwargs max_gen_toks=8: the output {s['output']!r} is not the model's "
                                     f"8-token greedy continuation {want!r}")
    assert f"results: {out}" in capsys.readouterr().out
