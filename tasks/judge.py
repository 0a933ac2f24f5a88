"""LLM judges for MT-Bench single-answer grading (FastChat llm_judge protocol).

Backends (`JUDGES` registry): `openai`, any OpenAI-compatible endpoint (a hosted
GPT-4-class API, vLLM serve, llama.cpp server; key from the environment) with
timeouts, retries with back-off and a cap on concurrent requests; `hf`, a local
Hugging Face model (e.g. embedded:smollm2-135m-instruct) through core.generation.

Every judgment is stored append-only in `judgments.jsonl` with the judge's identity,
the judge prompt (messages), the raw judgment text and the parsed rating, keyed by a
hash of judge identity + messages + decoding settings, so reruns reuse them. The
rating is parsed from the raw text under `JudgeConfig.rating_rule` (`parse_judgment`):
`verdict` refuses a judgment with several different ratings as `ambiguous`, `fastchat`
takes the first match as FastChat does. A reply without a rating is a real judgment
(kept, rating missing); an endpoint failure is not
stored, so a rerun retries it. After `breaker` consecutive failures with no success,
the remaining requests are skipped and reported with the same error.
"""

from __future__ import annotations

import ast
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from gsil_bench.core.config import GenerationConfig, JudgeConfig
from gsil_bench.core.errors import ConfigError
from gsil_bench.core.generation import HFGenerator
from gsil_bench.core.io import append_jsonl, hash_obj, read_jsonl
from gsil_bench.core.models import load_model
from gsil_bench.core.openai_client import EndpointError, OpenAIClient
from gsil_bench.core.registry import Registry

log = logging.getLogger(__name__)

Chat = list[dict[str, str]]
ONE_SCORE = re.compile(r"\[\[(\d+\.?\d*)\]\]")  # FastChat's one_score_pattern
ONE_SCORE_BACKUP = re.compile(r"\[(\d+\.?\d*)\]")  # FastChat's one_score_pattern_backup


def _number(text: str) -> float | None:
    try:
        return float(ast.literal_eval(text))
    except (ValueError, SyntaxError):
        return None


def parse_rating(text: str) -> float | None:
    """FastChat's single-answer rating: the first `[[x]]`, else the first `[x]`; None when
    neither is present (fastchat/llm_judge/common.py, run_judge_single)."""
    m = ONE_SCORE.search(text) or ONE_SCORE_BACKUP.search(text)
    return _number(m.group(1)) if m else None


def parse_judgment(text: str | None, rule: str = "verdict") -> tuple[float | None, str]:
    """(rating, status) of a judgment; status is `ok`, `missing` (no rating) or `ambiguous`.
    `fastchat`: FastChat's first-match rule. `verdict`: every `[[x]]` (else every `[x]`)
    in the text must give the same number; a judgment holding several different ones (a
    judge quoting an answer that contains `[[10]]`, say) is ambiguous and not scored."""
    if text is None:
        return None, "missing"
    if rule == "fastchat":
        rating = parse_rating(text)
        return rating, "ok" if rating is not None else "missing"
    values = [_number(v) for v in ONE_SCORE.findall(text)] or [_number(v) for v in ONE_SCORE_BACKUP.findall(text)]
    distinct = {v for v in values if v is not None}
    if not distinct:
        return None, "missing"
    if len(distinct) > 1:
        return None, "ambiguous"
    return distinct.pop(), "ok"


@dataclass(frozen=True)
class Reply:
    text: str | None  # the raw judgment (None when the judge could not be reached)
    error: str | None = None


class Judge(Protocol):
    identity: dict[str, Any]

    def complete(self, prompts: Sequence[Chat], desc: str) -> list[Reply]: ...


JUDGES: Registry[Callable[[JudgeConfig], Judge]] = Registry("judge backend")


class _Breaker:
    """Stops sending after `limit` consecutive failures while nothing has succeeded."""

    def __init__(self, limit: int) -> None:
        self.limit, self.failures, self.successes, self.last = limit, 0, 0, ""
        self.lock = threading.Lock()

    def open(self) -> bool:
        with self.lock:
            return self.successes == 0 and self.failures >= self.limit

    def record(self, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.successes += 1
                self.failures = 0
            else:
                self.failures += 1
                self.last = error


class OpenAIJudge:
    """A judge behind an OpenAI-compatible /chat/completions endpoint."""

    def __init__(self, cfg: JudgeConfig, *, backoff: float = 1.0) -> None:
        if not cfg.base_url:
            raise ConfigError("eval.judge.base_url: required for judge backend 'openai' (or use --judge URL)")
        self.cfg = cfg
        self.client = OpenAIClient(cfg.base_url, api_key_env=cfg.api_key_env, timeout=cfg.timeout,
                                   max_retries=cfg.max_retries, backoff=backoff)
        self.identity = {"backend": "openai", "base_url": cfg.base_url.rstrip("/"), "model": cfg.model}

    def _one(self, messages: Chat, breaker: _Breaker) -> Reply:
        if breaker.open():
            return Reply(None, f"skipped after {breaker.failures} consecutive judge failures ({breaker.last})")
        body = {"model": self.cfg.model, "messages": messages, "temperature": self.cfg.temperature,
                "max_tokens": self.cfg.max_tokens}
        try:
            resp = self.client.post("/chat/completions", body)
            text = (resp["choices"][0].get("message") or {}).get("content")
            if not isinstance(text, str):
                raise EndpointError(f"{self.client.base_url}/chat/completions: reply has no message content")
        except Exception as err:  # a bad reply must not crash the evaluation: it is reported per judgment
            msg = str(err) if isinstance(err, EndpointError) else f"{self.client.base_url}: {type(err).__name__}: {err}"
            breaker.record(msg)
            return Reply(None, msg)
        breaker.record(None)
        return Reply(text)

    def complete(self, prompts: Sequence[Chat], desc: str) -> list[Reply]:
        breaker = _Breaker(max(4, 2 * self.cfg.concurrency))
        return self.client.map(lambda m: self._one(m, breaker), list(prompts), self.cfg.concurrency, desc)


class HFJudge:
    """A local Hugging Face chat model as the judge (greedy unless judge.temperature > 0)."""

    def __init__(self, cfg: JudgeConfig, model: Any = None, tokenizer: Any = None) -> None:

        if model is None:

            model, tokenizer = load_model(cfg.model)
        gen = GenerationConfig(max_new_tokens=cfg.max_tokens, temperature=cfg.temperature, batch_size=8)
        self.generator = HFGenerator(model, tokenizer, gen)
        self.identity = {"backend": "hf", "model": cfg.model}

    def complete(self, prompts: Sequence[Chat], desc: str) -> list[Reply]:
        return [Reply(c.text) for c in self.generator.generate(list(prompts), desc=desc)]


JUDGES.add("openai", OpenAIJudge)
JUDGES.add("hf", HFJudge)


def make_judge(cfg: JudgeConfig) -> Judge:
    return JUDGES.get(cfg.backend)(cfg)


class JudgmentStore:
    """Append-only judgments.jsonl: judge + prompt + raw text + parsed rating, keyed for reuse."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._cache: dict[str, dict[str, Any]] | None = None

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._cache is None:
            self._cache = {r["key"]: r for r in read_jsonl(self.path, repair=True) if "key" in r}
        return self._cache

    @staticmethod
    def key(judge: Judge, cfg: JudgeConfig, messages: Chat) -> str:
        return hash_obj({"judge": judge.identity, "messages": messages, "temperature": cfg.temperature,
                         "max_tokens": cfg.max_tokens})

    def judge_all(self, judge: Judge, cfg: JudgeConfig, requests: Sequence[tuple[str, Chat]],
                  desc: str = "judge") -> list[dict[str, Any]]:
        """Judge (name, messages) requests, reusing stored judgments; return one record per
        request: {key, judge, prompt_name, messages, raw, rating, error}."""
        cache = self._load()
        keys = [self.key(judge, cfg, m) for _, m in requests]
        todo = {k: r for k, r in zip(keys, requests) if k not in cache}
        if len(todo) < len(keys):
            log.info("%s: %d of %d judgments from the store", desc, len(keys) - len(todo), len(keys))
        errors: dict[str, str] = {}
        if todo:
            items = list(todo.items())
            replies = judge.complete([m for _, (_, m) in items], desc)
            fresh = []
            for (k, (name, messages)), reply in zip(items, replies):
                if reply.text is None:
                    errors[k] = reply.error or "no reply"
                    continue
                fresh.append({"key": k, "judge": judge.identity, "prompt_name": name, "messages": messages,
                              "raw": reply.text, "rating": parse_judgment(reply.text, cfg.rating_rule)[0]})
            append_jsonl(self.path, fresh)
            cache.update({str(r["key"]): r for r in fresh})
        out = []
        for k, (name, messages) in zip(keys, requests):
            if k in cache:  # the rating is parsed from the stored raw text under the configured rule
                rating, status = parse_judgment(cache[k].get("raw"), cfg.rating_rule)
                out.append({**cache[k], "rating": rating, "rating_status": status, "error": None})
            else:
                out.append({"key": k, "judge": judge.identity, "prompt_name": name, "messages": messages,
                            "raw": None, "rating": None, "rating_status": "missing",
                            "error": errors.get(k, "not judged")})
        return out
