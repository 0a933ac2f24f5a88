"""The zephyr DPO baseline's training text as alignment-handbook and TRL v0.9.6 build it (`DataConfig.encoding:
trl`), and the handbook's HumanEval decontamination (`DataConfig.decontaminate: humaneval`).

Read at huggingface/alignment-handbook 95dc47218cf109659b74466d74be950525c53e67 (its setup.py:69 requires
trl>=0.9.6) and huggingface/trl v0.9.6 = 314e8eb367cbfaf74c2e9717085346360e779508; tests/test_handbook.py pins
every rule against the official code's own output (tests/pinned/trl_dpo_rows.json) and a port of it:

- Texts (handbook src/alignment/data.py:73-98, apply_chat_template's "dpo" branch; maybe_insert_system_message
  :28-39; the string `prompt` of UltraFeedback is not OpenAI format, so the prompt turns are chosen[:-1], :87): every
  turn before the response, with an empty system turn inserted first when the chat template mentions "system"
  (or `<|im_start|>`), is the prompt, rendered by the chat template WITHOUT the generation prompt; the response is the chat
  template of the assistant turn alone (zephyr's: `<|assistant|>\\n{response}</s>\\n`).
- Tokens (trl/trainer/dpo_trainer.py:716-780 build_tokenized_answer, :782-938 tokenize_row): prompt + response
  tokenised together without special tokens and split where the prompt alone ends (one token earlier when the
  prompt's last token merged into the response's, :753-754); BOS prepended to the prompt unless it starts with
  one (:847-857); EOS appended to the response unless it ends with one (:859-866). Every response token is a label (so zephyr's labels read
  `<|assistant|>\\n{response}</s>\\n</s>`); the attention mask is all ones.
- Truncation (:868-886, truncation_mode "keep_end", trl/trainer/dpo_config.py:102): with L the longer of the pair's
  responses, a side whose prompt + L exceeds max_length keeps its prompt's last max_prompt_length tokens (its
  BOS too, only if kept); a side still over keeps its response's first max_length - max_prompt_length tokens.
- Decontamination (handbook scripts/run_dpo.py:116-123 with src/alignment/decontaminate.py:22-89): a pair is dropped
  when its rendered response, lower-cased with whitespace collapsed, contains a HumanEval prompt's docstring or
  a canonical solution (stripped, except the four generic ones of HUMAN_EVAL_STRINGS_OK), treated the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gsil_bench.core.errors import ConfigError, DataError
from gsil_bench.core.scoring import Chat, EncodedSeq
from gsil_bench.trainers.data import Example

log = logging.getLogger(__name__)

ASSISTANT = "assistant"
# decontaminate.py:22 writes the last one `"return " ".join(strings)"`, which Python joins into this string
HUMAN_EVAL_STRINGS_OK = ["return x + y", "return len(string)", "return n**2", "return .join(strings)"]
HUMANEVAL_FILE = "humaneval/HumanEval.jsonl"  # openai_humaneval's test split (decontaminate.py:41, :54)


def _template(tokenizer: Any) -> str:
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise DataError("encoding trl: the tokenizer has no chat template (alignment-handbook renders every turn "
                        "with it)")
    return str(template)


def handbook_texts(tokenizer: Any, prompt: Chat, response: str) -> tuple[str, str]:
    """(text_prompt, text_response) as handbook data.py apply_chat_template builds them for task "dpo"."""
    messages = [dict(m) for m in prompt]
    template = _template(tokenizer)
    if messages and messages[0]["role"] != "system" and ("system" in template or "<|im_start|>" in template):
        messages.insert(0, {"role": "system", "content": ""})  # data.py:28-39 (auto_insert_empty_system_msg)
    text_prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    text_response = tokenizer.apply_chat_template([{"role": ASSISTANT, "content": response}], tokenize=False)
    return text_prompt, text_response


def split_tokens(tokenizer: Any, prompt: str, answer: str) -> tuple[list[int], list[int]]:
    """TRL build_tokenized_answer (dpo_trainer.py:716-780): `enc(prompt + answer)` split after the prompt's
    tokens, one token earlier when the prompt's last token merged into the answer's first."""
    full = list(tokenizer(prompt + answer, add_special_tokens=False)["input_ids"])
    prompt_ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if len(full) < len(prompt_ids):  # :735-743 (the concatenation would be longer than the joint ids)
        raise DataError("encoding trl: prompt + response tokenise shorter than the prompt alone")
    start = len(prompt_ids)
    if prompt_ids != full[:start]:  # :753-754
        start -= 1
    return full[:start], full[start:]


def encode_trl(tokenizer: Any, prompt: Chat, response: str) -> EncodedSeq:
    """One side of a pair, untruncated: TRL tokenize_row's ids (BOS on the prompt, EOS after the response)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    if bos is None or eos is None:
        raise DataError("encoding trl: the tokenizer needs a BOS and an EOS token (TRL v0.9.6 adds both)")
    p, a = split_tokens(tokenizer, *handbook_texts(tokenizer, prompt, response))
    if not p or p[0] != bos:  # dpo_trainer.py:847-857
        p = [bos, *p]
    if not a or a[-1] != eos:  # :859-866
        a = [*a, eos]
    return EncodedSeq([*p, *a], len(p))


def _cut(seq: EncodedSeq, longer: int, max_prompt_length: int, max_length: int) -> EncodedSeq:
    p, a = seq.input_ids[: seq.response_start], seq.input_ids[seq.response_start :]
    if len(p) + longer > max_length:  # :870-880, keep_end
        p = p[-max_prompt_length:]
    if len(p) + longer > max_length:  # :883-886
        a = a[: max_length - max_prompt_length]
    return EncodedSeq([*p, *a], len(p))


def truncate_trl(chosen: EncodedSeq, rejected: EncodedSeq | None, *, max_prompt_length: int,
                 max_length: int) -> tuple[EncodedSeq, EncodedSeq | None]:
    """TRL v0.9.6's truncation of a pair, both sides judged by the longer response (dpo_trainer.py:867-886)."""
    if rejected is not None:  # :830-845: the two prompts may differ in their last token only
        cp, rp = chosen.input_ids[: chosen.response_start], rejected.input_ids[: rejected.response_start]
        if sum(x != y for x, y in zip(cp, rp)) > 1 or abs(len(cp) - len(rp)) > 1:
            raise DataError("encoding trl: the chosen and rejected prompts tokenise differently")
    longer = max(chosen.n_response, rejected.n_response if rejected is not None else 0)
    cut = [_cut(s, longer, max_prompt_length, max_length) if s is not None else None for s in (chosen, rejected)]
    assert cut[0] is not None
    return cut[0], cut[1]


# --- HumanEval decontamination ---------------------------------------------------------------------------


def _docstring(prompt: str) -> str:
    """decontaminate.py:25-38 extract_docstring."""
    if '"""' in prompt:
        if prompt.count('"""') == 2:
            return prompt.split('"""')[1].strip()
        if prompt.count('"""') == 4:
            return prompt.split('"""')[3].strip()
        raise DataError('HumanEval prompt with an unexpected number of """')
    if "'''" in prompt and prompt.count("'''") == 2:
        return prompt.split("'''")[1].strip()
    raise DataError("HumanEval prompt without a docstring")


def normalize(text: str) -> str:
    """decontaminate.py:63-64 normalize_whitespace, applied to lower-cased text (:79, :83)."""
    return " ".join(text.lower().split())


def humaneval_strings(data_dir: Path | None) -> list[str]:
    """FILTER_OUT of decontaminate.py:40-60, normalised: HumanEval's docstrings and canonical solutions."""
    path = (data_dir / HUMANEVAL_FILE) if data_dir is not None else None
    if path is None or not path.is_file():
        raise ConfigError(f"decontaminate: humaneval needs {HUMANEVAL_FILE} in the data directory "
                          f"({data_dir or 'none set'})")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    solutions = [s for s in (r["canonical_solution"].strip() for r in rows) if s and s not in HUMAN_EVAL_STRINGS_OK]
    return [normalize(s) for s in [_docstring(r["prompt"]) for r in rows] + solutions]


def contaminated(text: str, strings: Sequence[str]) -> bool:
    """decontaminate.py:67-89: whether the normalised `text` contains any of `strings`."""
    content = normalize(text)
    return any(s in content for s in strings)


def rendered_response(tokenizer: Any, response: str) -> str:
    """The handbook's `text_chosen` (data.py:97) that run_dpo.py:116-123 decontaminates."""
    return str(tokenizer.apply_chat_template([{"role": ASSISTANT, "content": response}], tokenize=False))


def decontaminate(examples: Sequence[Example], tokenizer: Any, data_dir: Path | None) -> list[Example]:
    """The examples whose rendered response contains no HumanEval docstring or solution (run_dpo.py:116-127:
    the handbook logs how many it dropped, as here)."""
    strings = humaneval_strings(data_dir)
    kept = [ex for ex in examples if not contaminated(rendered_response(tokenizer, ex.response), strings)]
    dropped = len(examples) - len(kept)
    log.info("decontaminate humaneval: dropped %d of %d rows (%.2f%%)", dropped, len(examples),
             100 * dropped / max(1, len(examples)))
    if not kept:
        raise DataError(f"decontaminate humaneval: every one of the {len(examples)} rows contains HumanEval text")
    return kept
