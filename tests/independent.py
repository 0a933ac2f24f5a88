"""Computations tests compare the project against, written without the project's own encoders,
renderers or scorers (trainers.data.encode/render, trainers.official, trainers.logprobs,
tasks.heldout): the text comes from the tokenizer's own `apply_chat_template`, the log-probs
from one plain forward pass of the sequence and a float64 log_softmax.

The training format restated from docs/methods.md and the chat template:
- chat (default): the prompt rendered with the generation prompt; the response is what the
  template appends for the assistant turn, up to and including the end-of-turn token (EOS),
  which is appended when the template writes none;
  a long prompt keeps its END (max_prompt_length), then the response is cut to max_length;
- official (paper mode, `encoding: spin`): an empty system turn before the first user turn,
  the assistant turn rendered alone (zephyr's `<|assistant|>\\n` prefix stripped), prompt and
  response tokenised separately, every EOS inside them masked from attention, one EOS appended.
"""

from __future__ import annotations

from pathlib import Path

import torch

ASSISTANT_PREFIX = "<|assistant|>\n"  # zephyr's, as the releases strip it


def chat_sequence(tokenizer, prompt: list[dict], response: str, *, max_prompt_length: int = 10**6,
                  max_length: int = 2 * 10**6) -> tuple[list[int], int]:
    """(token ids, index of the first response token) of the chat-format training text."""
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
    assert full.startswith(head) and response in full[len(head):], "the template does not append the response"
    p = tokenizer(head, add_special_tokens=False)["input_ids"]
    f = tokenizer(full, add_special_tokens=False)["input_ids"]
    # the conversation's tokens after the prompt's; where a response's first characters merge with the
    # generation prompt's last ones (the joint tokens do not start with the prompt's), the rest alone
    r = f[len(p):] if f[: len(p)] == p else tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    # up to the end-of-turn token (the template's trailing newline is not trained), or with one appended
    r = r[: len(r) - r[::-1].index(eos)] if eos in r else [*r, eos]
    p = p[-max_prompt_length:]
    return p + r[: max_length - len(p)], len(p)


def official_sequence(tokenizer, user: str, response: str) -> tuple[list[int], int, list[int]]:
    """(token ids, first response index, attention mask) of the official SPIN/GSIL training text."""
    head = tokenizer.apply_chat_template([{"role": "system", "content": ""}, {"role": "user", "content": user}],
                                         tokenize=False, add_generation_prompt=True)
    tail = tokenizer.apply_chat_template([{"role": "assistant", "content": response}], tokenize=False)
    tail = tail[len(ASSISTANT_PREFIX):] if tail.startswith(ASSISTANT_PREFIX) else tail
    eos = tokenizer.eos_token_id
    p = tokenizer(head, add_special_tokens=False)["input_ids"]
    r = tokenizer(tail, add_special_tokens=False)["input_ids"] + [eos]
    mask = [int(t != eos) for t in p] + [int(t != eos) for t in r[:-1]] + [1]
    return p + r, len(p), mask


@torch.no_grad()
def response_logp(model, ids: list[int], start: int, attention: list[int] | None = None) -> float:
    """Summed log-prob of ids[start:], each token predicted from the ones before it."""
    x = torch.tensor([ids])
    mask = None if attention is None else torch.tensor([attention])
    logp = model(input_ids=x, attention_mask=mask).logits[0].double().log_softmax(-1)
    return float(logp[start - 1 : -1].gather(1, x[0, start:, None]).sum())


def load(folder: str | Path):
    """A checkpoint folder as a float32 causal LM in eval mode (transformers directly)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
