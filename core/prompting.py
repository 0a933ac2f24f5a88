"""What every generation backend shares: the prompt and completion types, the prompt's token ids (one
function, so the hf and vllm backends send the same ids), stop-string truncation.

Kept apart from core.generation so that core.vllm_backend can use it without importing the backends'
registry (which registers the vllm backend: no import circle)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from gsil_bench.core.config import GenerationConfig

Chat = list[dict[str, str]]
Prompt = Union[str, Chat]


@dataclass(frozen=True)
class Completion:
    text: str
    tokens: int  # generated tokens (as counted by the backend)
    finish_reason: str = "stop"  # "stop" (EOS or stop string) or "length"



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


def prompt_ids(tokenizer: Any, prompt: Prompt, cfg: GenerationConfig) -> list[int]:
    """The token ids the hf and vllm backends send for `prompt` (one function, so both send the same).

    `cfg.bos`: "never" tokenises without special tokens, as the official self-play generators do (GSIL
    gsil/generate.py:50-57, SPIN spin/generate.py:40-46); "tokenizer" with the tokenizer's own special tokens
    (BOS on Llama/Mistral tokenizers), as FastChat (fastchat/llm_judge/gen_model_answer.py:114,
    `tokenizer([prompt])`) and vLLM given a string (Eurus eval/Coding/human_eval/evaluate_human_eval.py:45) do.
    A chat rendered by a template that already opens with BOS gets no second one (no official tool renders it).
    `cfg.max_prompt_tokens`: the tokenizer's own truncation to that many tokens, on its `truncation_side`
    (GSIL gsil/generate.py:52-55: max_length=1024, truncation=True; SPIN does not truncate, :44)."""
    text = render_prompt(tokenizer, prompt)
    special = cfg.bos == "tokenizer"
    bos = getattr(tokenizer, "bos_token", None)
    if special and not isinstance(prompt, str) and bos and text.startswith(bos):
        special = False
    cut: dict[str, Any] = {"truncation": True, "max_length": cfg.max_prompt_tokens} if cfg.max_prompt_tokens else {}
    return list(tokenizer(text, add_special_tokens=special, **cut)["input_ids"])


def vllm_requests(tokenizer: Any, prompts: Sequence[Prompt], cfg: GenerationConfig) -> list[dict[str, list[int]]]:
    """vLLM's prompts as token ids (`TokensPrompt`), the ids the hf backend sends: vLLM given a string would
    tokenise it with special tokens (a BOS the official self-play generators do not add, GSIL gsil/generate.py:57)."""
    return [{"prompt_token_ids": prompt_ids(tokenizer, p, cfg)} for p in prompts]
