"""What the vLLM tests (tests/test_vllm.py, `tox -e vllm`) share: the embedded model with a tokenizer that
adds BOS, spies that record the token ids at vLLM's and at the hf model's input, and a `vllm serve` process
on loopback that is stopped by its process group's id (also when the test run gets SIGTERM)."""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import Server, start_server

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per engine on a CPU (vLLM's default: 4)
BOS = "<|im_start|>"  # SmolLM2's bos_token (id 1); its own tokenizer adds no BOS, this copy's does


def bos_model_folder(src: Path, dst: Path) -> Path:
    """The embedded SmolLM2 folder with a tokenizer.json whose post-processor prepends BOS whenever special
    tokens are added (as Llama's and Mistral's do): the same weights, so both backends run the real model, and
    each BOS rule (none on a self-play prompt, one per protocol) shows at the ids. Weights are linked."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name == "tokenizer.json" or not f.is_file():
            continue
        if f.suffix == ".safetensors":
            (dst / f.name).symlink_to(f)
        else:
            (dst / f.name).write_bytes(f.read_bytes())
    tok = json.loads((src / "tokenizer.json").read_text())
    bos = {"SpecialToken": {"id": BOS, "type_id": 0}}
    tok["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {BOS: {"id": BOS, "ids": [1], "tokens": [BOS]}},
    }
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    return dst


class EngineSpy:
    """Wraps a `vllm.LLM`'s generate: records what it received (the prompts as given) and the prompt token ids
    vLLM reports it ran (RequestOutput.prompt_token_ids); `cap` limits max_tokens (tests that check ids only)."""

    def __init__(self, llm: Any) -> None:
        self.llm, self.real = llm, llm.generate
        self.sent: list[list[int]] = []  # the prompt_token_ids handed to LLM.generate
        self.ran: list[list[int]] = []  # vLLM's own record of the prompt it ran
        self.cap: int | None = None

    def __call__(self, prompts: Any, *args: Any, **kwargs: Any) -> Any:
        params = kwargs.get("sampling_params", args[0] if args else None)
        if self.cap is not None:
            for p in params if isinstance(params, list) else [params]:
                p.max_tokens = min(p.max_tokens or self.cap, self.cap)
        outs = self.real(prompts, *args, **kwargs)
        self.sent += [list(p["prompt_token_ids"]) for p in prompts]
        self.ran += [list(o.prompt_token_ids) for o in outs]
        return outs

    def take(self) -> list[list[int]]:
        """The ids of the calls since the last take (checked equal to vLLM's own record first)."""
        assert self.sent == self.ran
        out, self.sent, self.ran = self.sent, [], []
        return out


class HFSpy:
    """Wraps a Hugging Face model's generate: records each row's prompt ids without the left padding."""

    def __init__(self, model: Any) -> None:
        self.model, self.real = model, model.generate
        self.rows: list[list[int]] = []

    def __call__(self, *args: Any, input_ids: Any = None, attention_mask: Any = None, **kwargs: Any) -> Any:
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            self.rows.append([i for i, m in zip(ids, mask) if m])
        return self.real(*args, input_ids=input_ids, attention_mask=attention_mask, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VLLMServer:
    """`vllm serve FOLDER` on 127.0.0.1 under the tests' server watchdog (helpers.start_server): `stop` ends it and
    every engine process it started, and so does the test process ending however it ends (SIGTERM, SIGINT,
    SIGKILL). The same engine settings as the in-process backend on a CPU."""

    def __init__(self, folder: Path, log: Path, name: str = "smollm2") -> None:
        self.folder, self.log, self.name = folder, log, name
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.server: Server | None = None

    def start(self) -> None:
        vllm = Path(sys.executable).parent / "vllm"
        cmd = [str(vllm), "serve", str(self.folder), "--host", "127.0.0.1", "--port", str(self.port),
               "--served-model-name", self.name, "--dtype", "float32", "--enforce-eager", "--max-model-len", "2048",
               "--seed", "1234"]
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
        self.server = start_server(cmd, self.log, env=env, grace=30.0)

    def wait_ready(self, timeout: float = 600) -> None:
        assert self.server is not None
        deadline = time.monotonic() + timeout
        while True:
            if not self.server.running():
                pytest.fail(f"vllm serve exited ({self.server.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/models", timeout=2):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vllm serve did not answer in {timeout} s:\n{self.log.read_text()[-3000:]}")
                time.sleep(1)

    def stop(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            server.stop(timeout=60)
