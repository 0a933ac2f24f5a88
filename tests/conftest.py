"""Shared test fixtures: the real tokenizer, a tiny random Llama with it, the data
directory, and a real llama.cpp OpenAI-compatible server on loopback."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EMBEDDED = "embedded:smollm2-135m-instruct"
# The README's `GSIL_DATA_DIR=../shared/data tox` gives a path relative to the folder pytest starts in:
# resolved here, where it is read, so the tests' commands that run in other folders (an installed
# wheel, `eval --config` in tmp_path) read the same directory (as the CLI does: core.datadir.absolute_env).
if os.environ.get("GSIL_DATA_DIR"):
    os.environ["GSIL_DATA_DIR"] = str(Path(os.environ["GSIL_DATA_DIR"]).expanduser().absolute())


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """../shared/data (or $GSIL_DATA_DIR): the real benchmark files, read in place."""
    path = Path(os.environ.get("GSIL_DATA_DIR", REPO.parent / "shared" / "data")).absolute()
    if not (path / "gsm8k" / "train.jsonl").is_file():
        pytest.fail(f"data directory {path} not found: set GSIL_DATA_DIR (CI uses ../shared/data)")
    os.environ.setdefault("GSIL_DATA_DIR", str(path))
    return path


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The embedded SmolLM2 converted once to a cached Hugging Face folder."""
    from gsil_bench.core.models import resolve

    return Path(resolve(EMBEDDED))


@pytest.fixture(scope="session")
def tokenizer(embedded_dir):
    """The real SmolLM2 tokenizer (with its chat template)."""
    from gsil_bench.core.models import load_tokenizer

    return load_tokenizer(EMBEDDED)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A tiny random Llama with the real tokenizer, saved as a model folder."""
    from gsil_bench.core.models import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("tiny") / "model", tokenizer)


@pytest.fixture(scope="session")
def all_methods_run(tiny_model_dir, data_dir, tmp_path_factory):
    """Every method trained 2 steps on 4 GSM8K examples from the tiny model (one run folder):
    (config, run folder, {label: [IterationResult]})."""
    from helpers import ALL_METHODS, make_cfg

    from gsil_bench.trainers.api import train_method

    run = tmp_path_factory.mktemp("all") / "run"
    cfg = make_cfg(tiny_model_dir, ALL_METHODS)
    return cfg, run, {m.label: train_method(cfg, m.label, 0, run) for m in cfg.methods}


@pytest.fixture(scope="session")
def two_gsil_iterations(tiny_model_dir, tmp_path_factory):
    """GSIL (a = 0.5, b = 0), two self-play iterations of 2 steps each; the policy's weights as each
    iteration's loop received them (before its first step), observed by wrapping trainers.loop.prepare:
    (results, {iteration: state dict})."""
    from helpers import make_cfg

    import gsil_bench.trainers.loop as loop
    from gsil_bench.trainers.api import train_method

    cfg = make_cfg(tiny_model_dir, [{"loss": "gsil-logistic", "params": {"a": 0.5, "b": 0.0}}], iterations=2)
    starts: dict[int, dict] = {}
    real_prepare = loop.prepare

    def observed(run, plan):
        tr = real_prepare(run, plan)
        starts[run.iteration] = {k: v.detach().clone() for k, v in tr.model.state_dict().items()}
        return tr

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "prepare", observed)
        results = train_method(cfg, "gsil-logistic", 0, tmp_path_factory.mktemp("two-iter") / "run")
    return results, starts


@pytest.fixture()
def tiny_model(tokenizer):
    from gsil_bench.core.models import tiny_llama

    return tiny_llama(tokenizer)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    """A real llama-cpp-python OpenAI-compatible server on loopback serving the
    embedded GGUF; yields its base URL (…/v1) and stops it afterwards, or when the test run ends
    however it ends (tests/helpers.managed_server: SIGTERM, Ctrl-C, kill -9)."""
    pytest.importorskip("llama_cpp.server", reason="llama-cpp-python[server] is a test dependency")
    from helpers import managed_server

    from gsil_bench.core.models import embedded_gguf_path

    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    base = f"http://127.0.0.1:{port}/v1"
    argv = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf_path(EMBEDDED)),
            "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "4096", "--n_threads", "1",
            "--model_alias", "smollm2"]
    with managed_server(argv, log, ready=base + "/models", timeout=120):
        yield base
