"""The training text and the self-play prompt exactly as the official SPIN and GSIL releases build them.

GSIL's release copies SPIN's data path, so one implementation serves both (`DataConfig.encoding: spin`,
`GenerationConfig.prompt_template`). Every rule cites the file and line it follows, read at
uclaml/SPIN a12ba808a51c23bb98c7cc892d261e9c2f71ff8e and tengxiao1/GSIL bf269e0c9dd7642a55fcb4e21cc831ef9ca76406
(tests/test_official.py pins each byte for byte). The DPO baseline's encoding ("trl": alignment-handbook + TRL
v0.9.6) lives in trainers.handbook and is dispatched here (`PAIR_ENCODINGS`):

- Self-play prompt: the raw text `### Instruction: {prompt}\\n\\n### Response: ` around the first user turn,
  tokenised without special tokens and without the chat template (SPIN spin/generate.py:80 and :40-46;
  GSIL gsil/generate.py:88). Training itself uses the chat template: the releases generate and train on
  different texts, and a reproduction keeps that.
- Prompt text: an empty system turn (or the example's own system turn) followed by the first user turn,
  chat template with the generation prompt (SPIN spin/run_spin.py:38-51; GSIL gsil/run_gsil.py:100-113).
- Response text: the chat template of the assistant turn alone, its leading `<|assistant|>\\n` stripped
  (SPIN spin/run_spin.py:30-34, :45-53; GSIL gsil/run_gsil.py:92-96, :107-115). The prefix is zephyr's,
  as in the releases: other templates keep their own prefix, as the official code would.
- Tokens (SPIN spin/alignment/utils.py, GSIL gsil/alignment/utils.py:69-100): prompt and response tokenised
  separately without special tokens; every EOS token inside them gets attention mask 0 (still a label in
  the response); one EOS is appended to the response with attention 1.
- Self-play response (GSIL gsil/generate.py:119, SPIN spin/generate.py:106 and spin/generate_vllm.py:70):
  `r.replace("</s>", "").lstrip()` on the decoded text: the EOS text (zephyr's "</s>") removed wherever it
  occurs, then leading whitespace stripped (`official_response`: self-play on this prompt, every backend).
- Truncation (GSIL gsil/alignment/utils.py:102-120, "keep_end"): only when prompt + the LONGER of the two
  responses exceeds max_length is the prompt cut to its last max_prompt_length tokens; if still too long,
  both responses are cut to max_length - max_prompt_length tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from gsil_bench.trainers.data import Chat, DataError, EncodedSeq, Example, encode, encode_examples
from gsil_bench.trainers.handbook import encode_trl, truncate_trl

# SPIN spin/generate.py:80, GSIL gsil/generate.py:88 ("following SPIN")
SPIN_PROMPT_TEMPLATE = "### Instruction: {prompt}\n\n### Response: "
# SPIN spin/run_spin.py:30, GSIL gsil/run_gsil.py:92: apply_chat_template_spin(..., assistant_prefix=...)
ASSISTANT_PREFIX = "<|assistant|>\n"


def official_response(text: str, eos_text: str | None) -> str:
    """The stored self-play response: GSIL gsil/generate.py:119 (SPIN spin/generate.py:106, generate_vllm.py:70)
    `r.replace("</s>", "").lstrip()`, with the tokenizer's EOS text for zephyr's "</s>"."""
    return (text.replace(eos_text, "") if eos_text else text).lstrip()


def first_user(prompt: Chat) -> str:
    """The first user turn's text (what the releases generate from and train on)."""
    for m in prompt:
        if m["role"] == "user":
            return m["content"]
    raise DataError("the prompt has no user turn")


def raw_prompt(template: str, prompt: Chat) -> str:
    """The self-play prompt text: `template` with {prompt} replaced by the first user turn (no chat template)."""
    return template.replace("{prompt}", first_user(prompt))


def official_texts(tokenizer: Any, prompt: Chat, response: str) -> tuple[str, str]:
    """(text_prompt, text_response) as apply_chat_template_spin builds them."""
    system = prompt[0] if prompt and prompt[0]["role"] == "system" else {"role": "system", "content": ""}
    messages = [system, {"role": "user", "content": first_user(prompt)}]
    text_prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    text_response = tokenizer.apply_chat_template([{"role": "assistant", "content": response}], tokenize=False)
    return text_prompt, re.sub(f"^{re.escape(ASSISTANT_PREFIX)}", "", text_response)


def encode_official(tokenizer: Any, prompt: Chat, response: str) -> EncodedSeq:
    """Untruncated token ids and attention mask of (prompt, response) built the official way."""
    text_prompt, text_response = official_texts(tokenizer, prompt, response)
    eos = tokenizer.eos_token_id
    p = list(tokenizer(text_prompt, add_special_tokens=False)["input_ids"])
    r = list(tokenizer(text_response, add_special_tokens=False)["input_ids"])
    attention = [0 if t == eos else 1 for t in p] + [0 if t == eos else 1 for t in r] + [1]
    return EncodedSeq([*p, *r, eos], len(p), attention)


def _cut(seq: EncodedSeq, prompt_keep: int, response_keep: int | None) -> EncodedSeq:
    """Keep the last `prompt_keep` prompt tokens and the first `response_keep` response tokens."""
    mask = seq.attention_mask or [1] * len(seq.input_ids)
    start = seq.response_start - prompt_keep
    end = len(seq.input_ids) if response_keep is None else seq.response_start + response_keep
    return EncodedSeq(seq.input_ids[start:end], prompt_keep, mask[start:end])


def truncate_pair(real: EncodedSeq, gen: EncodedSeq | None, *, max_prompt_length: int,
                  max_length: int) -> tuple[EncodedSeq, EncodedSeq | None]:
    """The official truncation rule (GSIL gsil/alignment/utils.py:102-120, truncation_mode "keep_end")."""
    longer = max(real.n_response, gen.n_response if gen is not None else 0)
    n_prompt = real.response_start
    if n_prompt + longer > max_length:
        n_prompt = min(n_prompt, max_prompt_length)
    response_keep = max_length - max_prompt_length if n_prompt + longer > max_length else None
    real = _cut(real, n_prompt, response_keep)
    return real, None if gen is None else _cut(gen, n_prompt, response_keep)


# encodings whose sequences are truncated as pairs (`fit`), each side encoded whole first
PAIR_ENCODINGS = {"spin": (encode_official, truncate_pair), "trl": (encode_trl, truncate_trl)}


def encode_with(encoding: str, tokenizer: Any, prompt: Chat, response: str, *, max_prompt_length: int,
                max_length: int) -> EncodedSeq:
    """One (prompt, response) by `DataConfig.encoding`: "chat" (truncated now), "spin" or "trl" (untruncated:
    `fit` truncates the pair together)."""
    if encoding in PAIR_ENCODINGS:
        return PAIR_ENCODINGS[encoding][0](tokenizer, prompt, response)
    return encode(tokenizer, prompt, response, max_prompt_length=max_prompt_length, max_length=max_length)


def fit(encoding: str, real: EncodedSeq, gen: EncodedSeq | None, *, max_prompt_length: int,
        max_length: int) -> tuple[EncodedSeq, EncodedSeq | None]:
    """The training pair as the loop sees it: "spin" and "trl" apply their releases' pair truncation; "chat"
    sequences were truncated when encoded."""
    if encoding not in PAIR_ENCODINGS:
        return real, gen
    return PAIR_ENCODINGS[encoding][1](real, gen, max_prompt_length=max_prompt_length, max_length=max_length)


def encode_all(encoding: str, tokenizer: Any, examples: Sequence[Example], *, max_prompt_length: int,
               max_length: int) -> list[EncodedSeq]:
    """Every example's (prompt, response) by `DataConfig.encoding` (progress bar)."""
    if encoding not in PAIR_ENCODINGS:
        return encode_examples(tokenizer, examples, max_prompt_length=max_prompt_length, max_length=max_length)
    encode_one = PAIR_ENCODINGS[encoding][0]
    return [encode_one(tokenizer, ex.prompt, ex.response) for ex in tqdm(examples, desc="tokenise", disable=None)]
