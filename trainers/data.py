"""Demonstration and preference data -> chat examples -> token ids -> padded batches.

Three stages, each replaceable on its own:

1. `load_examples(DataConfig, data_dir)` reads a JSONL file, a JSON array or a Hub split
   (`hf:<dataset>[:<config>]:<split>`) and maps every row to an `Example` (chat prompt,
   response, optional rejected response) through a registered data format
   (`DATA_FORMATS`: messages, gsm8k, code_alpaca, gpteacher, fields, preference). A
   malformed row or a missing field raises `DataError` naming the file, line (JSONL) or
   record number (JSON array) and the field.
2. `encode(tokenizer, prompt, response, ...)` (core.scoring: the one encoder, which the
   held-out tasks use too) applies the chat template once and returns an
   `EncodedSeq(input_ids, response_start)`: plain token-id lists in which the prompt's
   tokens are an exact prefix of the full sequence; the response ends with the
   end-of-turn token (`<|im_end|>` for ChatML) so the model learns to stop. The prompt is
   truncated from the left (its end is kept) to `max_prompt_length`, then the response is
   cut so the whole fits `max_length`.
3. A collator (`COLLATORS`: "padded" = core.scoring.collate, "packed" = trainers.packing.collate_packed,
   both registered here) turns a list of `EncodedSeq` into a `Batch` of tensors, selected by name;
   `trainers.logprobs.batch_logps` reads only the `Batch` fields.

Adding a data format is one decorated function:

    @register_format("my-format")
    def my_format(row: dict, cfg: DataConfig, where: str) -> Example:
        return Example(prompt=[user(field(row, "q", where))], response=field(row, "a", where), source=where)
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsil_bench.core.config import DataConfig
from gsil_bench.core.datadir import load_hub_rows, local_file
from gsil_bench.core.errors import DataError
from gsil_bench.core.io import iter_jsonl_file
from gsil_bench.core.registry import Registry
from gsil_bench.core.scoring import Batch, Chat, EncodedSeq, collate, encode
from gsil_bench.trainers.packing import collate_packed, collate_packed_shared

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Example:
    """One training example: a chat prompt and its demonstration (or chosen) response."""

    prompt: Chat  # the messages before the response (system/user/assistant turns)
    response: str  # the demonstration, or the chosen response of a preference pair
    rejected: str | None = None  # preference data: the rejected response
    source: str = ""  # "file:line" where the row came from (error messages)


# --- data formats --------------------------------------------------------------------

RowMapper = Callable[[dict[str, Any], DataConfig, str], Example]
DATA_FORMATS: Registry[RowMapper] = Registry("data format")


def register_format(name: str) -> Callable[[RowMapper], RowMapper]:
    """Register a row -> Example mapping under `name` (used as `DataConfig.format`)."""
    return DATA_FORMATS.register(name)


def field(row: dict[str, Any], key: str, where: str, *, allow_empty: bool = False) -> str:
    """`row[key]` as a string, or DataError naming where the row is and the field."""
    if key not in row:
        raise DataError(f"{where}: missing field {key!r} (the row has: {', '.join(map(str, row)) or 'nothing'})")
    value = row[key]
    if value is None and allow_empty:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{where}: field {key!r} must be a string, got {type(value).__name__}")
    if not value.strip() and not allow_empty:
        raise DataError(f"{where}: field {key!r} is empty")
    return value


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def _with_system(prompt: Chat, cfg: DataConfig) -> Chat:
    if cfg.system_prompt and not (prompt and prompt[0].get("role") == "system"):
        return [{"role": "system", "content": cfg.system_prompt}, *prompt]
    return prompt


def _check_chat(messages: Any, key: str, where: str) -> Chat:
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: field {key!r} must be a non-empty list of {{role, content}} messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise DataError(f"{where}: field {key!r}[{i}] must be an object with string 'role' and 'content'")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _split_last_assistant(messages: Chat, key: str, where: str) -> tuple[Chat, str]:
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field {key!r}: the last message must be the assistant's response, "
                        f"got role {messages[-1]['role']!r}")
    if len(messages) < 2:
        raise DataError(f"{where}: field {key!r}: needs at least one message before the assistant's response")
    return messages[:-1], messages[-1]["content"]


@register_format("messages")
def _messages(row: dict[str, Any], cfg: DataConfig, where: str) -> Example:
    """Conversational rows: {"messages": [..., {"role": "assistant", "content": response}]}."""
    key = cfg.prompt_field or "messages"
    if key not in row:
        raise DataError(f"{where}: missing field {key!r} (the row has: {', '.join(map(str, row))})")
    prompt, response = _split_last_assistant(_check_chat(row[key], key, where), key, where)
    return Example(_with_system(prompt, cfg), response, source=where)


def _instruction(row: dict[str, Any], cfg: DataConfig, where: str, response_key: str) -> Example:
    """Alpaca-style rows: instruction (+ optional input) -> response."""
    prompt = field(row, cfg.prompt_field or "instruction", where)
    extra = field(row, "input", where, allow_empty=True) if "input" in row else ""
    if extra.strip():
        prompt = f"{prompt}\n\n{extra}"
    response = field(row, cfg.response_field or response_key, where)
    return Example(_with_system([user(prompt)], cfg), response, source=where)


@register_format("gsm8k")
def _gsm8k(row: dict[str, Any], cfg: DataConfig, where: str) -> Example:
    """GSM8K train: question -> worked answer ending in '#### <number>'."""
    prompt = field(row, cfg.prompt_field or "question", where)
    return Example(_with_system([user(prompt)], cfg), field(row, cfg.response_field or "answer", where), source=where)


@register_format("code_alpaca")
def _code_alpaca(row: dict[str, Any], cfg: DataConfig, where: str) -> Example:
    """Code Alpaca: instruction + input -> output."""
    return _instruction(row, cfg, where, "output")


@register_format("gpteacher")
def _gpteacher(row: dict[str, Any], cfg: DataConfig, where: str) -> Example:
    """GPTeacher Codegen-Instruct: instruction + input -> response."""
    return _instruction(row, cfg, where, "response")


@register_format("fields")
def _fields(row: dict[str, Any], cfg: DataConfig, where: str) -> Example:
    """Any flat rows: prompt_field -> response_field (both required in the config)."""
    if not cfg.prompt_field or not cfg.response_field:
        raise DataError(f"{where}: format 'fields' needs prompt_field and response_field in the data config")
    return Example(_with_system([user(field(row, cfg.prompt_field, where))], cfg),
                   field(row, cfg.response_field, where), source=where)


def _side(row: dict[str, Any], key: str, where: str) -> tuple[Chat | None, str]:
    """A chosen/rejected value: a string, or a conversation ending in the assistant turn."""
    if key not in row:
        raise DataError(f"{where}: missing field {key!r} (the row has: {', '.join(map(str, row))})")
    if isinstance(row[key], str):
        return None, field(row, key, where)
    prompt, response = _split_last_assistant(_check_chat(row[key], key, where), key, where)
    return prompt, response


@register_format("preference")
def _preference(row: dict[str, Any], cfg: DataConfig, where: str) -> Example:
    """Preference pairs: prompt (string or messages) with chosen and rejected responses
    (strings, or conversations whose last turn is the response, as in UltraFeedback)."""
    chosen_prompt, chosen = _side(row, cfg.chosen_field, where)
    rejected_prompt, rejected = _side(row, cfg.rejected_field, where)
    key = cfg.prompt_field or "prompt"
    if key in row:
        raw = row[key]
        prompt = [user(field(row, key, where))] if isinstance(raw, str) else _check_chat(raw, key, where)
        # conversations repeat the prompt: their turns before the response win over a string prompt (as
        # alignment-handbook 95dc472 src/alignment/data.py:84-87 builds UltraFeedback's) or a shorter one
        if chosen_prompt and (isinstance(raw, str) or len(chosen_prompt) > len(prompt)):
            prompt = chosen_prompt
    elif chosen_prompt is not None:
        prompt = chosen_prompt
    else:
        raise DataError(f"{where}: missing field {key!r} (the row has: {', '.join(map(str, row))})")
    if rejected_prompt is not None and chosen_prompt is not None and rejected_prompt != chosen_prompt:
        raise DataError(f"{where}: {cfg.chosen_field!r} and {cfg.rejected_field!r} have different prompts")
    return Example(_with_system(prompt, cfg), chosen, rejected=rejected, source=where)


# --- reading files -------------------------------------------------------------------


def data_file(cfg: DataConfig, root: Path | None) -> Path | None:
    """The local file a data config reads (None for `hf:` paths); FileNotFoundError if absent."""
    if cfg.path.startswith("hf:"):
        return None
    path = local_file(cfg.path, root)
    if path is None:
        where = f"in the data directory {root}" if root else "and no data directory is set"
        raise FileNotFoundError(
            f"data file {cfg.path!r} not found {where} (set --data-dir, shared.data_dir or $GSIL_DATA_DIR, "
            f"or use an 'hf:<dataset>[:<config>]:<split>' path)"
        )
    return path


def _hub_rows(spec: str, root: Path | None) -> Iterator[tuple[str, dict[str, Any]]]:
    parts = spec.removeprefix("hf:").split(":")
    if len(parts) not in (2, 3) or not all(parts):
        raise DataError(f"data path {spec!r}: expected 'hf:<dataset>[:<config>]:<split>'")
    dataset, config, split = (parts[0], None, parts[1]) if len(parts) == 2 else parts
    for i, row in enumerate(load_hub_rows(dataset, split, config, root)):
        yield f"{spec}: row {i + 1}", row


def _json_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: invalid JSON ({err.msg})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of records, got {type(data).__name__}")
    for i, row in enumerate(data):
        where = f"{path}: record {i + 1} (index {i})"
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    try:
        for lineno, row in iter_jsonl_file(path):
            yield f"{path}:{lineno}", row
    except ValueError as err:
        raise DataError(str(err)) from None


def iter_rows(cfg: DataConfig, root: Path | None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(where, row) for every row of the configured file, after offset/limit."""
    if cfg.path.startswith("hf:"):
        rows = _hub_rows(cfg.path, root)
    else:
        path = data_file(cfg, root)
        assert path is not None
        rows = _json_rows(path) if path.suffix == ".json" else _jsonl_rows(path)
    for i, item in enumerate(rows):
        if i < cfg.offset:
            continue
        if cfg.limit is not None and i >= cfg.offset + cfg.limit:
            break
        yield item


def load_examples(cfg: DataConfig, root: Path | None) -> list[Example]:
    """Read and map every selected row; errors name the file, line/record and field."""
    mapper = DATA_FORMATS.get(cfg.format)
    examples = [mapper(row, cfg, where) for where, row in iter_rows(cfg, root)]
    if not examples:
        raise DataError(f"{cfg.path}: no examples selected (offset={cfg.offset}, limit={cfg.limit})")
    log.info("loaded %d examples from %s (format %s)", len(examples), cfg.path, cfg.format)
    return examples


# --- tokenisation --------------------------------------------------------------------


Collator = Callable[[Sequence[EncodedSeq], int], Batch]
COLLATORS: Registry[Collator] = Registry("collator")
COLLATORS.add("padded", collate)  # one row per sequence, right-padded (core.scoring)
COLLATORS.add("packed", collate_packed)  # one padding-free row (trainers.packing; train.packing: true)
COLLATORS.add("packed-shared", collate_packed_shared)  # the same, each shared prompt once (train.share_prompts: true)


@dataclass(frozen=True)
class TrainItem:
    """One example as the loop sees it: its index, the real sequence and, for pairwise
    losses, the generated (self-play) or rejected sequence."""

    index: int
    real: EncodedSeq
    gen: EncodedSeq | None = None


def encode_examples(tokenizer: Any, examples: Sequence[Example], *, max_prompt_length: int,
                    max_length: int) -> list[EncodedSeq]:
    """Encode every example's (prompt, response) with a progress bar."""
    from tqdm.auto import tqdm

    return [encode(tokenizer, ex.prompt, ex.response, max_prompt_length=max_prompt_length, max_length=max_length)
            for ex in tqdm(examples, desc="tokenise", disable=None)]
