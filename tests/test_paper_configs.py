"""Both paper configs pass the strict validation offline and carry the official values
(uclaml/SPIN a12ba80, tengxiao1/GSIL bf269e0, alignment-handbook 95dc472 (DPO data split and recipe) and 925acdf;
lm-sys/FastChat 0e6d3e4; docs/reproduction.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gsil_bench.core.config import for_method, iteration_config, shared_hash
from gsil_bench.core.loading import load_experiment
from gsil_bench.core.strict import load_yaml
from gsil_bench.harness.validate import validate
from gsil_bench.tasks.api import check_tasks
from gsil_bench.trainers.official import SPIN_PROMPT_TEMPLATE

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", ["paper-zephyr", "paper-spin"])
def test_paper_config_validates_offline(name, data_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path = CONFIGS / f"{name}.yaml"
    cfg = load_experiment(path)
    validate(cfg, load_yaml(path)[1], data_dir=str(data_dir))
    check_tasks(cfg.shared.eval.tasks, cfg.shared.eval)
    s = cfg.shared
    assert s.generation.prompt_template == SPIN_PROMPT_TEMPLATE and s.train_data.encoding == "spin"
    assert (s.generation.max_new_tokens, s.generation.temperature) == (256, 0.0)
    assert (s.optimizer.name, s.optimizer.lr, s.train.max_length, s.train.max_prompt_length) == ("rmsprop", 5e-7, 1024, 512)
    assert s.model_revision == "ac6e600eefcce74f5e8bae1035d4f66019e93190"
    assert s.eval.fastchat_template == "zephyr" and "mt_bench_fastchat" in s.eval.tasks


def test_gsil_recipe():
    cfg = load_experiment(CONFIGS / "paper-zephyr.yaml")
    s = cfg.shared
    # scripts/finetune.sh:28-30, 35-36, 42, 45, 53-54
    assert cfg.method("gsil-logistic").params == {"a": 0.01, "b": 2.0}
    assert (s.train.batch_size, s.train.grad_accum, s.train.epochs) == (16, 2, 1)
    assert (s.schedule.name, s.schedule.warmup_steps, s.schedule.warmup_ratio) == ("linear", 30, 0.1)
    assert s.iterations == 1
    # the handbook's zephyr DPO (recipes/zephyr-7b-beta/dpo/config_full.yaml:28,40,44,53): only DPO changes them
    dpo = for_method(cfg, "dpo")
    assert cfg.method("dpo").params == {"beta": 0.01}
    assert (dpo.shared.optimizer.name, dpo.shared.schedule.name, dpo.shared.schedule.warmup_steps) == ("adamw", "cosine", None)
    assert for_method(cfg, "gsil-logistic").shared == s and for_method(cfg, "sft").shared == s
    assert shared_hash(cfg) == shared_hash(for_method(cfg, "gsil-logistic"))
    assert "openllm_gsm8k" in s.eval.tasks and "humaneval_gsil" in s.eval.tasks


def test_spin_recipe():
    cfg = load_experiment(CONFIGS / "paper-spin.yaml")
    s = cfg.shared
    assert s.iterations == 4 and s.self_play.history == 2  # configs/config_iter1.yaml:7-10
    assert (s.train.batch_size, s.train.grad_accum, s.train.epochs) == (8, 1, 2)  # 8 x 8 processes = 64
    plan = [iteration_config(cfg, "spin", k) for k in (1, 2, 3, 4)]
    assert [c.shared.optimizer.lr for c, _ in plan] == [5e-7, 5e-7, 1e-7, 1e-7]  # finetune_iter2/3.sh:21
    assert [m.params["beta"] for _, m in plan] == [0.1, 0.1, 0.1, 5.0]  # config.yaml:16, finetune_iter3.sh:21
    assert cfg.report.published == "published/spin_zephyr_open_llm.csv"
    assert "openllm_gsm8k_v040" in s.eval.tasks and "humaneval_gsil" not in s.eval.tasks
    assert "openllm_mmlu_v040" in s.eval.tasks and "openllm_mmlu" not in s.eval.tasks


def test_missing_published_file_and_unknown_conversation_fail_validation(data_dir, tmp_path):
    from gsil_bench.core.strict import ConfigError

    path = CONFIGS / "paper-spin.yaml"
    cfg = load_experiment(path, ["report.published=published/nope.csv"])
    with pytest.raises(ConfigError, match=r"paper-spin.yaml:\d+: report.published: 'published/nope.csv' not found"):
        validate(cfg, load_yaml(path)[1], data_dir=str(data_dir))
    cfg = load_experiment(path, ["shared.eval.fastchat_template=vicuna"])
    with pytest.raises(ConfigError, match=r"eval.fastchat_template: unknown template 'vicuna'; known: zephyr"):
        validate(cfg, load_yaml(path)[1], data_dir=str(data_dir))


def test_new_keys_at_their_defaults_keep_the_hashes_of_older_runs():
    """configs/smoke.yaml's shared hash and training key as main computed them before these keys existed
    (commit 0f0b5e0): run folders and nightly baselines stay comparable; using a new key changes them."""
    from gsil_bench.trainers.api import train_key

    cfg = load_experiment(CONFIGS / "smoke.yaml", ["shared.train.share_prompts=false"])  # a later key at its default
    # computed by commit 0f0b5e0's own code (harness.config.shared_hash, trainers.api.train_key) on
    # today's smoke.yaml (which issue 11 resized to 8 demonstrations; issue 36 turned share_prompts on)
    assert shared_hash(cfg) == "7c8d65d8581874ef"
    assert shared_hash(load_experiment(CONFIGS / "smoke.yaml")) != shared_hash(cfg)  # as shipped: a new key in use
    assert train_key(cfg, "sft", 0) == "ee896888d6d29af6" and train_key(cfg, "spin", 0) == "3dabdc2fa9c658c9"
    for change in ("shared.schedule.warmup_steps=30", "shared.self_play.history=2", "shared.train_data.encoding=spin",
                   "shared.generation.prompt_template='### {prompt}'"):
        changed = load_experiment(CONFIGS / "smoke.yaml", [change])
        assert shared_hash(changed) != shared_hash(cfg) and train_key(changed, "spin", 0) != train_key(cfg, "spin", 0)


def _fastchat_rating(judgment: str) -> float:
    """FastChat fastchat/llm_judge/common.py:36-37 and :175-183 (0e6d3e4), verbatim logic: the first [[x]], else
    the first [x]; -1 when neither."""
    import ast
    import re

    match = re.search(r"\[\[(\d+\.?\d*)\]\]", judgment) or re.search(r"\[(\d+\.?\d*)\]", judgment)
    return ast.literal_eval(match.groups()[0]) if match else -1


JUDGMENTS = ["Rating: [[7]]", "The answer quotes [[10]] but deserves [[3]].", "Score [8] then [[6]]", "no rating",
             "[[7.5]] and [2]", "Rating: [5]"]


@pytest.mark.parametrize("name", ["paper-zephyr", "paper-spin"])
def test_paper_configs_rate_mt_bench_by_fastchats_rule(name):
    """The configs do not set a rating rule: the mt_bench_fastchat protocol fixes FastChat's, so they inherit it."""
    from gsil_bench.tasks.base import TASKS
    from gsil_bench.tasks.context import EvalContext
    from gsil_bench.tasks.judge import parse_judgment

    cfg = load_experiment(CONFIGS / f"{name}.yaml")
    assert "rating_rule" not in load_yaml(CONFIGS / f"{name}.yaml")[0]["shared"]["eval"]["judge"]
    assert cfg.shared.eval.judge.rating_rule == "verdict"  # the user-level default ...
    judge = TASKS.get("mt_bench_fastchat")().judge_config(EvalContext("m", cfg.shared.eval))
    assert (judge.rating_rule, judge.temperature, judge.max_tokens) == ("fastchat", 0.0, 2048)  # ... the protocol's
    want = [_fastchat_rating(j) for j in JUDGMENTS]
    assert [parse_judgment(j, judge.rating_rule)[0] or -1 for j in JUDGMENTS] == want
    # wrong rules: the verdict rule (several different ratings: not scored), the last match, [[x]] only
    assert [parse_judgment(j, "verdict")[0] or -1 for j in JUDGMENTS] != want
    import re
    last = [float(m[-1]) if (m := re.findall(r"\[\[?(\d+\.?\d*)\]\]?", j)) else -1 for j in JUDGMENTS]
    double_only = [float(m.group(1)) if (m := re.search(r"\[\[(\d+\.?\d*)\]\]", j)) else -1 for j in JUDGMENTS]
    assert last != want and double_only != want


def test_paper_configs_hold_bf16_weights_and_truncate_as_their_generators(tmp_path):
    """Both configs hold bf16 weights (GSIL finetune.sh:20,26; SPIN config.yaml:15 under DeepSpeed's bf16 mode);
    GSIL cuts self-play prompts to 1024 tokens (gsil/generate.py:52-55), SPIN does not (spin/generate.py:44).
    A tiny run with bf16-weights holds bf16 weights in policy, reference and checkpoint; the optimizer steps an
    fp32 master copy (tests/test_precision.py observes it at the weights)."""
    import torch
    from helpers import bos_tokenizer, make_cfg
    from safetensors.torch import load_file

    from gsil_bench.core.models import save_tiny_llama
    from gsil_bench.trainers.api import precision_of, train_method
    from gsil_bench.trainers.reference import weights_dtype

    zephyr, spin = (load_experiment(CONFIGS / f"{n}.yaml") for n in ("paper-zephyr", "paper-spin"))
    assert zephyr.shared.train.precision == spin.shared.train.precision == "bf16-weights"
    assert (zephyr.shared.generation.max_prompt_tokens, spin.shared.generation.max_prompt_tokens) == (1024, None)
    assert precision_of(zephyr) == "bf16-weights" and weights_dtype("bf16-weights") == torch.bfloat16
    assert weights_dtype("bf16") == weights_dtype("fp32") == torch.float32  # autocast keeps fp32 weights
    model_dir = save_tiny_llama(tmp_path / "model", bos_tokenizer())
    cfg = make_cfg(model_dir, [{"loss": "spin"}], train={"max_steps": 1, "precision": "bf16-weights"})
    (res,) = train_method(cfg, "spin", 0, tmp_path / "run")
    weights = load_file(next(res.checkpoint.glob("*.safetensors")))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}


def test_paper_zephyr_on_a_server_backend_fails_validation(data_dir):
    """GSIL's 1024-token prompt cut cannot reach a server: the openai backend is refused before any work."""
    from gsil_bench.core.strict import ConfigError

    path = CONFIGS / "paper-zephyr.yaml"
    cfg = load_experiment(path, ["shared.generation.backend=openai", "shared.generation.base_url=http://127.0.0.1:9/v1"])
    with pytest.raises(ConfigError, match=r"shared.generation.max_prompt_tokens: the openai backend sends text.*1024 tokens"):
        validate(cfg, load_yaml(path)[1], data_dir=str(data_dir))
