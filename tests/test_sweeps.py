"""Sweeps in the config (core.sweeps): lists of values expanded into named method variants, the
override grammar that reaches method params (lists included), errors that name file:line, the
variant hashes, and `run --dry-run` showing the expansion and the shared work."""

from __future__ import annotations

import pytest
import yaml

from gsil_bench.core.config import shared_hash
from gsil_bench.core.errors import ConfigError
from gsil_bench.core.loading import load_experiment
from gsil_bench.core.sweeps import inputs_group, variant_hash

SWEEP = """name: sw
shared:
  optimizer: {lr: 1.0e-5}
methods:
  - loss: sft
  - loss: gsil-logistic
    params: {a: 0.01, b: [0, 1, 2]}
  - loss: dpo
    name: dpo-lr
    overrides: {optimizer.lr: [1.0e-6, 1.0e-5]}
report: {baseline: sft}
"""


def _write(tmp_path, text: str, name: str = "sw.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_lists_in_params_and_overrides_become_named_variants(tmp_path):
    cfg = load_experiment(_write(tmp_path, SWEEP))
    assert [m.label for m in cfg.methods] == [
        "sft", "gsil-logistic[b=0]", "gsil-logistic[b=1]", "gsil-logistic[b=2]", "dpo-lr[lr=1e-06]", "dpo-lr[lr=1e-05]"]
    b1 = cfg.method("gsil-logistic[b=1]")
    assert b1.loss == "gsil-logistic" and b1.params == {"a": 0.01, "b": 1.0}
    assert b1.sweep == {"params.b": 1} and b1.sweep_of == "gsil-logistic"
    lr = cfg.method("dpo-lr[lr=1e-06]")
    assert lr.overrides == {"optimizer.lr": 1e-6} and lr.sweep == {"overrides.optimizer.lr": 1e-6}
    assert cfg.method("sft").sweep == {} and cfg.method("sft").sweep_of is None
    # every variant has its own hash; the shared block (and its hash) is the experiment's
    hashes = {variant_hash(cfg, m.label) for m in cfg.methods}
    assert len(hashes) == len(cfg.methods)
    assert variant_hash(cfg, "gsil-logistic[b=1]") == variant_hash(load_experiment(_write(tmp_path, SWEEP, "again.yaml")),
                                                                    "gsil-logistic[b=1]")
    plain = load_experiment(_write(tmp_path, SWEEP.replace("b: [0, 1, 2]", "b: 1").replace("[1.0e-6, 1.0e-5]", "1.0e-6")))
    assert shared_hash(plain) == shared_hash(cfg)
    # the b variants share the starting model's generations and reference log-probs; the lr variants too
    # (the learning rate does not change them)
    assert len({inputs_group(cfg, m.label) for m in cfg.methods}) == 1


def test_a_grid_a_shared_sweep_and_keys_that_are_lists(tmp_path):
    text = """name: g
shared:
  optimizer: {lr: [1.0e-6, 1.0e-5], betas: [0.9, 0.95]}
  generation: {temperature: [0.0, 0.7]}
methods:
  - loss: gsil-hinge
    params: {a: [0.01, 0.1], b: 2}
report: {baseline: gsil-hinge}
"""
    cfg = load_experiment(_write(tmp_path, text))
    labels = [m.label for m in cfg.methods]
    assert len(labels) == 2 * 2 * 2 and labels[0] == "gsil-hinge[a=0.01,lr=1e-06,temperature=0]"
    assert cfg.shared.optimizer.betas == [0.9, 0.95]  # a list-typed key is a value, never a sweep
    assert cfg.shared.optimizer.lr == 1e-6 and cfg.shared.generation.temperature == 0.0  # first values
    last = cfg.methods[-1]
    assert last.params == {"a": 0.1, "b": 2.0}
    assert last.overrides == {"optimizer.lr": 1e-5, "generation.temperature": 0.7}
    assert cfg.report.baseline == labels[0]  # a swept baseline means its first variant
    # a swept generation setting changes the starting model's generations: not shared across it
    assert inputs_group(cfg, labels[0]) != inputs_group(cfg, labels[1])
    assert inputs_group(cfg, labels[0]) == inputs_group(cfg, labels[2])  # lr differs only


def test_overrides_reach_method_params_with_lists(tmp_path):
    base = _write(tmp_path, "name: o\nmethods:\n  - loss: sft\n  - loss: gsil-logistic\n    params: {a: 0.01, b: 2.0}\n")
    cfg = load_experiment(base, ["methods.gsil-logistic.params.b=[0,1,2]"])
    assert [m.label for m in cfg.methods][1:] == ["gsil-logistic[b=0]", "gsil-logistic[b=1]", "gsil-logistic[b=2]"]
    assert {m.params["a"] for m in cfg.methods[1:]} == {0.01}
    cfg = load_experiment(base, ["methods.1.params.a=0.5", "methods.sft.name=nll", "shared.optimizer.lr=[1e-6,1e-5]"])
    assert [m.label for m in cfg.methods] == ["nll[lr=1e-06]", "nll[lr=1e-05]", "gsil-logistic[lr=1e-06]",
                                             "gsil-logistic[lr=1e-05]"]
    assert cfg.methods[2].params == {"a": 0.5, "b": 2.0}
    with pytest.raises(ConfigError, match=r"no entry 'gsil-logistc' in methods \(did you mean 'gsil-logistic'\?\)"):
        load_experiment(base, ["methods.gsil-logistc.params.b=1"])
    with pytest.raises(ConfigError, match=r"methods has 2 entries, no index 5"):
        load_experiment(base, ["methods.5.params.b=1"])


def test_bad_sweeps_name_the_file_line_and_key(tmp_path):
    path = _write(tmp_path, SWEEP.replace("b: [0, 1, 2]", "b: []"))
    with pytest.raises(ConfigError, match=r"sw.yaml:7: methods\[1\].params.b: a sweep needs at least one value"):
        load_experiment(path)
    path = _write(tmp_path, SWEEP.replace("b: [0, 1, 2]", "b: [1, 1.0]"))
    with pytest.raises(ConfigError, match=r"sw.yaml:7: methods\[1\].params.b: the sweep lists 1 twice"):
        load_experiment(path)
    # a bad value inside a sweep: the variant's error points at the line and key of the method it came from
    path = _write(tmp_path, SWEEP.replace("b: [0, 1, 2]", "b: [0, fast]"))
    with pytest.raises(ConfigError, match=r"sw.yaml:7: methods\[1\].params.b: expected a number, got 'fast'"):
        load_experiment(path)


def test_dry_run_shows_the_expansion_and_the_shared_work(tmp_path, tiny_model_dir, data_dir, capsys):
    from gsil_bench.harness.cli import main

    data = yaml.safe_load(SWEEP)
    data["shared"].update(model=str(tiny_model_dir), train_data={"path": "gsm8k/train.jsonl", "format": "gsm8k",
                                                                  "limit": 4},
                          train={"batch_size": 2, "max_length": 64, "max_prompt_length": 48}, iterations=1,
                          seeds=[0, 1], eval={"tasks": ["heldout_gsm8k"], "limit": 2})
    path = _write(tmp_path, yaml.safe_dump(data))
    out = tmp_path / "run"
    assert main(["run", str(path), "--output", str(out), "--dry-run", "methods.sft.name=nll"]) == 2  # baseline sft gone
    assert "report.baseline: 'sft' is not a method label" in capsys.readouterr().err
    assert main(["run", str(path), "--output", str(out), "--dry-run", "methods.gsil-logistic.params.b=[5,6]"]) == 0
    assert "sweep gsil-logistic: params.b in [5, 6] -> 2 variants: gsil-logistic[b=5]" in capsys.readouterr().out
    assert main(["run", str(path), "--output", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert not out.exists()
    cfg = load_experiment(path)
    assert (f"sweep gsil-logistic: params.b in [0, 1, 2] -> 3 variants: gsil-logistic[b=0] "
            f"(hash {variant_hash(cfg, 'gsil-logistic[b=0]')}), gsil-logistic[b=1] (hash ") in text
    assert "sweep dpo-lr: overrides.optimizer.lr in [1e-06, 1e-05] -> 2 variants" in text
    group = inputs_group(cfg, "gsil-logistic[b=0]")
    assert (f"shared work (inputs group {group}): the starting model's generations and reference log-probs, made once for 5 "
            "method(s): gsil-logistic[b=0], gsil-logistic[b=1], gsil-logistic[b=2], dpo-lr[lr=1e-06], dpo-lr[lr=1e-05]"
            ) in text
    assert "[todo] train gsil-logistic[b=2] (loss gsil-logistic) seed 1: iter 1: 2 steps" in text
    assert f"{1 + 6 * 2 * 2} of {1 + 6 * 2 * 2} steps to do" in text  # base eval + (train + eval) x 6 x 2 seeds


def test_the_shipped_sweep_config_expands_as_documented():
    """configs/ablation-b.yaml (docs/ablation.md): two GSIL members over b in {0, 1, 2} beside SFT, DPO and SPIN."""
    from pathlib import Path

    cfg = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "ablation-b.yaml")
    assert [m.label for m in cfg.methods] == ["sft", "dpo", "spin"] + [
        f"gsil-{member}[b={b}]" for member in ("logistic", "hinge") for b in (0, 1, 2)]
    assert {m.params["a"] for m in cfg.methods if m.sweep_of} == {0.01} and len(cfg.shared.seeds) >= 3
    assert len({inputs_group(cfg, m.label) for m in cfg.methods}) == 1  # one set of starting-model generations


def test_a_mistake_in_a_swept_method_is_one_error_at_the_method_as_written(tmp_path, data_dir):
    """A typo in a method swept over 3 x 2 values was 6 identical errors (one per variant), and a bad value
    in one sweep 3 errors: each mistake is one line now, keyed by the method as the YAML writes it."""
    from gsil_bench.harness.validate import load_and_validate

    text = SWEEP.replace("params: {a: 0.01, b: [0, 1, 2]}",
                         "params: {a: [-1, 0.01], b: [0, 1, 2]}\n    overrides: {optimizer.lrr: 1.0e-5}")
    with pytest.raises(ConfigError) as err:
        load_and_validate(_write(tmp_path, text), data_dir=str(data_dir), scope=("train",))
    lines = str(err.value).splitlines()[1:]
    assert [line.strip().split(": ", 1)[1] for line in lines] == [
        "methods[1].overrides.optimizer.lrr: no shared key 'optimizer.lrr'",
        "methods[1].params: GSIL scale a must be > 0, got -1.0"]
    assert all(":7: " in line or ":8: " in line for line in lines), lines  # the swept method's own lines
    # a method after a swept one is named as written too (methods[2], not the expanded list's methods[4]),
    # and its two lr variants share the mistake: one error
    # (set on the command line: the error names the override, with the YAML line of the method it changed)
    with pytest.raises(ConfigError, match=r"command line 'methods.dpo-lr.params.beta=-1' \(in \S*later.yaml:8\): "
                                          r"methods\[2\]\.params: beta must be > 0, got -1.0$"):
        load_and_validate(_write(tmp_path, SWEEP, "later.yaml"), ["methods.dpo-lr.params.beta=-1"],
                          data_dir=str(data_dir), scope=("train",))
