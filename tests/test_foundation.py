"""Foundation: registry, strict config loading, model resolution, generators."""

from __future__ import annotations

import sys

import pytest

from gsil_bench.core.config import shared_hash
from gsil_bench.core.loading import load_experiment
from gsil_bench.core.registry import Registry
from gsil_bench.core.strict import ConfigError
from gsil_bench.harness.validate import load_and_validate


def test_registry_rejects_duplicates_and_suggests():
    reg: Registry[int] = Registry("thing")
    reg.add("alpha", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("alpha", 2)
    with pytest.raises(KeyError, match="did you mean 'alpha'"):
        reg.get("alpah")


def _write(tmp_path, text):
    p = tmp_path / "exp.yaml"
    p.write_text(text)
    return p


def test_config_unknown_key_names_line_and_suggestion(tmp_path):
    p = _write(tmp_path, "name: x\nmethods:\n  - loss: sft\nshared:\n  optimizer:\n    lr: 1e-5\n    wieght_decay: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(p)
    msg = str(err.value)
    assert f"{p}:7" in msg and "shared.optimizer.wieght_decay" in msg and "did you mean 'weight_decay'" in msg


def test_config_wrong_type_and_bad_loss(tmp_path):
    p = _write(tmp_path, "name: x\nmethods:\n  - loss: sft\nshared:\n  train:\n    batch_size: four\n")
    with pytest.raises(ConfigError, match=r"exp.yaml:6: shared.train.batch_size: expected an integer"):
        load_experiment(p)
    # losses are the registry's business: the validation pass (harness.validate) checks them
    p = _write(tmp_path, "name: x\nmethods:\n  - loss: gsil-logistc\n")
    with pytest.raises(ConfigError, match=r"exp.yaml:3: methods\[0\].loss: .*did you mean 'gsil-logistic'"):
        load_and_validate(p, scope=("train",))
    p = _write(tmp_path, "name: x\nmethods:\n  - loss: gsil-hinge\n    params: {beta: 0.1}\n")
    with pytest.raises(ConfigError, match=r"has no parameter 'beta'.*takes: a, b"):
        load_and_validate(p, scope=("train",))


def test_shared_hash_ignores_methods_but_not_shared(tmp_path):
    a = load_experiment(_write(tmp_path, "name: x\nmethods:\n  - loss: sft\n"))
    b = load_experiment(_write(tmp_path, "name: y\nmethods:\n  - loss: spin\n"))
    c = load_experiment(_write(tmp_path, "name: x\nmethods:\n  - loss: sft\n"), ["shared.optimizer.lr=2e-5"])
    assert shared_hash(a) == shared_hash(b) != shared_hash(c)
    assert c.shared.optimizer.lr == 2e-5


def test_model_name_errors(tmp_path):
    from gsil_bench.core.models import ModelError, resolve

    with pytest.raises(ModelError, match="unknown embedded model.*did you mean 'embedded:smollm2-135m-instruct'"):
        resolve("embedded:smollm2-135m-instruc")
    with pytest.raises(ModelError, match="not a local folder"):
        resolve("no such model")
    with pytest.raises(ModelError, match="GGUF file not found"):
        resolve(str(tmp_path / "x.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no config.json"):
        resolve(str(tmp_path / "empty"))


def test_embedded_model_converts_once_and_generates(embedded_dir, tokenizer):
    """The real embedded model: cached conversion loads and answers a chat prompt."""
    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import HFGenerator
    from gsil_bench.core.models import load_model

    assert (embedded_dir / "DONE").is_file() and (embedded_dir / "model.safetensors").is_file()
    model, tok = load_model("embedded:smollm2-135m-instruct")
    gen = HFGenerator(model, tok, GenerationConfig(max_new_tokens=12, batch_size=2))
    out = gen.generate([[{"role": "user", "content": "What is 2+3?"}], "The capital of France is"])
    assert "5" in out[0].text
    assert out[0].finish_reason == "stop" and 0 < out[0].tokens <= 12
    assert out[1].tokens == 12 and out[1].finish_reason == "length"


def test_hf_generator_left_padding_matches_single(tiny_model, tokenizer):
    """Batched (left-padded) greedy generation equals one-at-a-time generation."""
    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import HFGenerator

    prompts = ["Hello there, how are", "A much longer prompt that needs padding in a batch of two"]
    cfg = GenerationConfig(max_new_tokens=8, batch_size=2)
    batched = HFGenerator(tiny_model, tokenizer, cfg).generate(prompts)
    single = [HFGenerator(tiny_model, tokenizer, cfg).generate([p])[0] for p in prompts]
    assert [c.text for c in batched] == [c.text for c in single]


@pytest.mark.slow
def test_openai_generator_against_llama_server(llama_server):
    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import make_generator

    gen = make_generator(GenerationConfig(backend="openai", base_url=llama_server, api_model="smollm2", max_new_tokens=16))
    out = gen.generate([[{"role": "user", "content": "What is 2+3?"}], "def add(a, b):\n"], stop=["\n\n"])
    assert "5" in out[0].text and out[0].tokens > 0
    assert isinstance(out[1].text, str) and out[1].tokens > 0


def test_plugin_module_registers_a_new_loss(tmp_path):
    """A new loss variant is one decorated function in a plugin module plus a config line."""
    import torch

    from gsil_bench.trainers.losses import LOSSES, LossInputs, compute_loss

    (tmp_path / "my_losses_plugin.py").write_text(
        "import torch\n"
        "from gsil_bench.trainers.losses import LossInputs, LossOutput, gsil_output, register_loss\n\n"
        "@register_loss('gsil-squared-hinge-test', self_play=True)\n"
        "def f(x: LossInputs, *, a: float = 0.01, b: float = 2.0) -> LossOutput:\n"
        "    z_real, z_gen = a * x.r_real + b, a * x.r_gen + b\n"
        "    return gsil_output(x, torch.relu(1 - z_real) ** 2, torch.relu(1 + z_gen) ** 2)\n"
    )
    p = _write(tmp_path, "name: x\nplugins: [my_losses_plugin]\nmethods:\n  - loss: gsil-squared-hinge-test\n    params: {a: 1.0, b: 0.0}\n")
    before = list(sys.path)
    cfg = load_experiment(p)
    assert sys.path == before  # the config's folder was searched for the plugin, and only then
    assert LOSSES.self_play("gsil-squared-hinge-test")
    z = torch.tensor([0.5])
    out = compute_loss(cfg.methods[0].loss, LossInputs(z, torch.zeros(1), -z, torch.zeros(1)), cfg.methods[0].params)
    assert torch.allclose(out.loss, torch.tensor(0.25 + 0.25))  # (1-0.5)^2 + (1-0.5)^2
    p2 = _write(tmp_path, "name: x\nplugins: [no_such_plugin_mod]\nmethods:\n  - loss: sft\n")
    with pytest.raises(ConfigError, match=r"exp.yaml:2: plugins\[0\]: cannot import 'no_such_plugin_mod'"):
        load_experiment(p2)


def test_a_config_is_a_file_or_the_name_of_a_packaged_one(tmp_path, monkeypatch):
    from gsil_bench.core.loading import config_file, packaged_configs

    monkeypatch.chdir(tmp_path)  # no configs/ folder here
    assert {"smoke", "nightly"} <= set(packaged_configs())
    assert config_file("smoke") == packaged_configs()["smoke"] and config_file("smoke").is_file()
    with pytest.raises(ConfigError, match=r"smok: no such file, nor a packaged config \(did you mean 'smoke'\?\)"):
        config_file("smok")
    with pytest.raises(ConfigError, match=r"configs/smoke.yaml: config file not found \(or name a packaged config"):
        config_file("configs/smoke.yaml")
