"""One Generator interface with interchangeable backends.

A prompt is either a chat (a list of {"role", "content"} messages, rendered with the
model's chat template) or a raw string (sent as is, for completion-style prompts).
Backends, chosen by `GenerationConfig.backend`:
- `hf`: batched Hugging Face `generate` (left padding, length-sorted batches, stop at EOS);
- `openai`: any OpenAI-compatible server (llama.cpp, vLLM serve, a hosted API);
- `vllm`: in-process vLLM, when installed (`pip install gsil-bench[vllm]`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, Union

from tqdm.auto import tqdm

from harness.config import GenerationConfig
from harness.registry import Registry

log = logging.getLogger(__name__)

Chat = list[dict[str, str]]
Prompt = Union[str, Chat]


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int  # generated tokens (as counted by the backend)
    finish_reason: str = "stop"  # "stop" (EOS or stop string) or "length"


class Generator(Protocol):
    """Anything that turns prompts into completions, in order."""

    def generate(
        self, prompts: Sequence[Prompt], *, stop: Sequence[str] | None = None, seed: int = 0, desc: str = "generate"
    ) -> list[Completion]: ...


GeneratorFactory = Callable[..., Generator]
GENERATORS: Registry[GeneratorFactory] = Registry("generation backend")


def truncate_at_stop(text: str, stop: Sequence[str] | None) -> tuple[str, bool]:
    """Cut `text` at the first stop string; return (text, whether one was found)."""
    cut = len(text)
    for s in stop or ():
        i = text.find(s)
        if i != -1:
            cut = min(cut, i)
    return text[:cut], cut < len(text)


def render_prompt(tokenizer: Any, prompt: Prompt) -> str:
    """Chat -> the model's chat template with the generation prompt; a string stays as is."""
    if isinstance(prompt, str):
        return prompt
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


class HFGenerator:
    """Batched generation with a loaded Hugging Face model."""

    def __init__(self, model: Any, tokenizer: Any, cfg: GenerationConfig) -> None:
        self.model, self.tok, self.cfg = model, tokenizer, cfg

    def generate(
        self, prompts: Sequence[Prompt], *, stop: Sequence[str] | None = None, seed: int = 0, desc: str = "generate"
    ) -> list[Completion]:
        import torch

        tok, cfg = self.tok, self.cfg
        texts = [render_prompt(tok, p) for p in prompts]
        ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths batch together
        out: list[Completion | None] = [None] * len(ids)
        device = next(self.model.parameters()).device
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        was_training = self.model.training
        self.model.eval()
        torch.manual_seed(seed)
        bar = tqdm(total=len(ids), desc=desc, disable=None)
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            width = max(len(ids[i]) for i in idx)
            input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding
                input_ids[row, width - len(ids[i]) :] = torch.tensor(ids[i])
                mask[row, width - len(ids[i]) :] = 1
            sample = cfg.temperature > 0
            kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": cfg.max_new_tokens}
            if sample:
                kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
            else:
                kwargs.update(temperature=None, top_p=None, top_k=None)
            with torch.no_grad():
                gen = self.model.generate(
                    input_ids=input_ids.to(device), attention_mask=mask.to(device), pad_token_id=pad,
                    eos_token_id=tok.eos_token_id, **kwargs,
                )
            for row, i in enumerate(idx):
                new = gen[row, width:].tolist()
                n = len(new)
                finish = "length"
                if tok.eos_token_id in new:
                    n, finish = new.index(tok.eos_token_id), "stop"
                text = tok.decode(new[:n], skip_special_tokens=True)
                text, hit = truncate_at_stop(text, stop)
                out[i] = Completion(text, n, "stop" if hit else finish)
            bar.update(len(idx))
        bar.close()
        if was_training:
            self.model.train()
        return [c for c in out if c is not None]


@GENERATORS.register("hf")
def _hf(cfg: GenerationConfig, *, model: Any = None, tokenizer: Any = None, model_name: str | None = None, **_: Any) -> Generator:
    if model is None:
        from harness.models import load_model

        if model_name is None:
            raise ValueError("generation backend 'hf' needs a model or a model name")
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        from harness.models import pick_dtype

        model, tokenizer = load_model(model_name, dtype=pick_dtype("auto", device), device=device)
    return HFGenerator(model, tokenizer, cfg)


class OpenAIGenerator:
    """Generation through an OpenAI-compatible server (chat or completions endpoint)."""

    def __init__(self, cfg: GenerationConfig, model_name: str | None = None) -> None:
        from harness.openai_client import OpenAIClient

        if not cfg.base_url:
            raise ValueError("generation.base_url is required for backend 'openai'")
        self.cfg = cfg
        self.client = OpenAIClient(
            cfg.base_url, api_key_env=cfg.api_key_env, timeout=cfg.timeout, max_retries=cfg.max_retries,
        )
        self.model = cfg.api_model or model_name or "default"

    def _one(self, prompt: Prompt, stop: Sequence[str] | None, seed: int) -> Completion:
        cfg = self.cfg
        body: dict[str, Any] = {
            "model": self.model, "max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
            "top_p": cfg.top_p, "seed": seed,
        }
        if stop:
            body["stop"] = list(stop)
        if isinstance(prompt, str):
            resp = self.client.post("/completions", {**body, "prompt": prompt})
            choice = resp["choices"][0]
            text = choice.get("text", "")
        else:
            resp = self.client.post("/chat/completions", {**body, "messages": prompt})
            choice = resp["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
        tokens = int((resp.get("usage") or {}).get("completion_tokens", 0))
        text, _ = truncate_at_stop(text, stop)
        return Completion(text, tokens, "length" if choice.get("finish_reason") == "length" else "stop")

    def generate(
        self, prompts: Sequence[Prompt], *, stop: Sequence[str] | None = None, seed: int = 0, desc: str = "generate"
    ) -> list[Completion]:
        return self.client.map(lambda p: self._one(p, stop, seed), list(prompts), self.cfg.concurrency, desc)


@GENERATORS.register("openai")
def _openai(cfg: GenerationConfig, *, model_name: str | None = None, **_: Any) -> Generator:
    return OpenAIGenerator(cfg, model_name)


class VLLMGenerator:
    """In-process vLLM (optional extra)."""

    def __init__(self, model_path: str, cfg: GenerationConfig, tokenizer: Any) -> None:
        from vllm import LLM

        self.cfg, self.tok = cfg, tokenizer
        self.llm = LLM(model=model_path, tokenizer=model_path)

    def generate(
        self, prompts: Sequence[Prompt], *, stop: Sequence[str] | None = None, seed: int = 0, desc: str = "generate"
    ) -> list[Completion]:
        from vllm import SamplingParams

        cfg = self.cfg
        params = SamplingParams(
            max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed,
            stop=list(stop) if stop else None,
        )
        outs = self.llm.generate([render_prompt(self.tok, p) for p in prompts], params)
        result = []
        for o in outs:
            c = o.outputs[0]
            result.append(Completion(c.text, len(c.token_ids), "length" if c.finish_reason == "length" else "stop"))
        return result


@GENERATORS.register("vllm")
def _vllm(cfg: GenerationConfig, *, model_name: str | None = None, tokenizer: Any = None, **_: Any) -> Generator:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ImportError("generation backend 'vllm' needs vLLM: pip install 'gsil-bench[vllm]'") from None
    from harness.models import load_tokenizer, resolve

    if model_name is None:
        raise ValueError("generation backend 'vllm' needs a model name or folder")
    return VLLMGenerator(resolve(model_name), cfg, tokenizer or load_tokenizer(model_name))


def make_generator(cfg: GenerationConfig, **kwargs: Any) -> Generator:
    """Build the configured backend; kwargs: model, tokenizer, model_name."""
    return GENERATORS.get(cfg.backend)(cfg, **kwargs)


def with_overrides(cfg: GenerationConfig, **changes: Any) -> GenerationConfig:
    return replace(cfg, **changes)
