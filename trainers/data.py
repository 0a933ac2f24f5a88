"""Demonstration and preference data -> chat examples -> token ids -> padded batches.

Three stages, each replaceable on its own:

1. `load_examples(DataConfig, data_dir)` reads a JSONL file, a JSON array or a Hub split
   (`hf:<dataset>[:<config>]:<split>`) and maps every row to an `Example` (chat prompt,
   response, optional rejected response) through a registered data format
   (`DATA_FORMATS`: messages, gsm8k, code_alpaca, gpteacher, fields, preference). A
   malformed row or a missing field raises `DataError` naming the file, line (JSONL) or
   record number (JSON array) and the field.
2. `encode(tokenizer, prompt, response, ...)` applies the chat template once and returns
   an `EncodedSeq(input_ids, response_start)`: plain token-id lists in which the prompt's
   tokens are an exact prefix of the full sequence; the response ends with the
   end-of-turn token (`<|im_end|>` for ChatML) so the model learns to stop. The prompt is
   truncated from the left (its end is kept) to `max_prompt_length`, then the response is
   cut so the whole fits `max_length`.
3. A collator (`COLLATORS`, default "padded") turns a list of `EncodedSeq` into a `Batch`
   of tensors. A padding-free (packed) collator can be registered beside it and selected
   by name; `trainers.logprobs.batch_logps` reads only the `Batch` fields below.

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

import torch

from gsil_bench.core.config import DataConfig
from gsil_bench.core.datadir import load_hub_rows, local_file
from gsil_bench.core.io import iter_jsonl_file
from gsil_bench.core.registry import Registry
from gsil_bench.core.strict import ConfigError

log = logging.getLogger(__name__)

Chat = list[dict[str, str]]


class DataError(ConfigError):
    """A data file problem; the message names the file, the line or record, and the field."""


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
        if chosen_prompt and len(chosen_prompt) > len(prompt):  # conversations repeat the prompt
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


@dataclass(frozen=True)
class EncodedSeq:
    """A tokenised (prompt, response): input_ids[:response_start] is the prompt."""

    input_ids: list[int]
    response_start: int
    attention_mask: list[int] | None = None  # per-token attention (0 = masked key); None = all 1 (encoding "spin")

    @property
    def n_response(self) -> int:
        return len(self.input_ids) - self.response_start


def render(tokenizer: Any, prompt: Chat, response: str) -> tuple[str, str]:
    """(prompt text with the generation prompt, full text with the response), chat template applied once."""
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; "
                        "use a chat (instruct) model or set one on its tokenizer")
    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(head):
        raise DataError("the chat template does not render the conversation as the generation prompt followed "
                        "by the response; cannot mark the response tokens")
    return head, full


def _response_ids(tokenizer: Any, prompt_ids: list[int], head: str, full: str) -> list[int]:
    """Response token ids, from the joint tokenisation when the prompt's tokens are its prefix
    (the usual case: special tokens separate the turns), else from the response text alone."""
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] == prompt_ids:
        ids = full_ids[len(prompt_ids):]
    else:
        ids = tokenizer(full[len(head):], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    if eos in ids:  # end at the end-of-turn token (drop the template's trailing newline)
        ids = ids[: len(ids) - ids[::-1].index(eos)]
    else:
        ids = [*ids, eos]
    return ids


def encode(tokenizer: Any, prompt: Chat, response: str, *, max_prompt_length: int, max_length: int) -> EncodedSeq:
    """Tokenise a (prompt, response) with the chat template; keep the END of a long prompt
    (left truncation to max_prompt_length), then cut the response to fit max_length."""
    if max_prompt_length >= max_length:
        raise ConfigError(f"shared.train.max_prompt_length ({max_prompt_length}) must be < "
                          f"shared.train.max_length ({max_length})")
    head, full = render(tokenizer, prompt, response)
    prompt_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    response_ids = _response_ids(tokenizer, prompt_ids, head, full)
    prompt_ids = prompt_ids[-max_prompt_length:]
    response_ids = response_ids[: max_length - len(prompt_ids)]
    return EncodedSeq([*prompt_ids, *response_ids], len(prompt_ids))


# --- batches -------------------------------------------------------------------------


@dataclass
class Batch:
    """Tensors one forward pass reads; rows are sequences (padded collator).

    input_ids, attention_mask: [B, T]; response_mask: [B, T], 1 where the token is a response
    token whose log-prob counts (it is predicted from the positions before it).
    position_ids / sequence_index (optional, [B, T]): for packed (padding-free) batches,
    positions restarting at every sequence and the index of the sequence each token belongs
    to (-1 for padding); with sequence_index set, log-probs are summed per sequence index.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    position_ids: torch.Tensor | None = None
    sequence_index: torch.Tensor | None = None
    num_sequences: int | None = None  # with sequence_index: how many sequences (default: max index + 1)

    def to(self, device: Any) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.response_mask.to(device),
                     move(self.position_ids), move(self.sequence_index), self.num_sequences)

    @property
    def tokens(self) -> int:
        """Real (non-padding) tokens in the batch."""
        return int(self.attention_mask.sum())


Collator = Callable[[Sequence[EncodedSeq], int], Batch]
COLLATORS: Registry[Collator] = Registry("collator")


@COLLATORS.register("padded")
def collate(seqs: Sequence[EncodedSeq], pad_id: int) -> Batch:
    """Right-padded batch: one row per sequence (masks come from lengths, never from pad ids,
    since the pad and end-of-turn tokens are often the same id)."""
    width = max(len(s.input_ids) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(seqs), width), dtype=torch.long)
    response = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, s in enumerate(seqs):
        n = len(s.input_ids)
        input_ids[row, :n] = torch.tensor(s.input_ids, dtype=torch.long)
        attention[row, :n] = 1 if s.attention_mask is None else torch.tensor(s.attention_mask, dtype=torch.long)
        response[row, s.response_start:n] = 1
    return Batch(input_ids, attention, response)


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
