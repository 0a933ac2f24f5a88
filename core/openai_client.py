"""A small client for OpenAI-compatible HTTP endpoints, on the `openai` SDK's transport:
timeouts, retries of transient failures (429, 5xx, connection errors) with the SDK's
exponential back-off that honours `Retry-After`, a cap on concurrent requests, and clear
errors. Replies that arrive but are unusable (not JSON, no choices) are retried here.

Used by the `openai` generation backend and the MT-Bench judge. The key is read from
an environment variable (never from a config file); a missing key is fine for local
servers (llama.cpp, vLLM serve).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from gsil_bench.core.progress import track

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")


class EndpointError(RuntimeError):
    """The endpoint could not give a usable answer after all retries."""


class OpenAIClient:
    def __init__(
        self, base_url: str, *, api_key_env: str = "OPENAI_API_KEY", timeout: float = 120.0,
        max_retries: int = 3, backoff: float = 1.0,
    ) -> None:
        import openai

        self.base_url = base_url.rstrip("/")
        self.api_key = os.environ.get(api_key_env, "")
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        # the SDK retries 408/409/429/5xx and connection errors itself, waiting Retry-After when sent
        self.sdk = openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "no-key", timeout=timeout,
                                 max_retries=max_retries)

    def _send(self, path: str, body: dict[str, Any]) -> bytes:
        """One request through the SDK (with its retries); the raw reply body."""
        import httpx
        import openai

        url = self.base_url + path
        try:
            resp = self.sdk.post(path, body=body, cast_to=httpx.Response)
            return resp.read()
        except openai.APITimeoutError:
            raise EndpointError(f"{url}: timed out after {self.timeout} s ({self.max_retries} retries)") from None
        except openai.APIConnectionError as err:
            cause = err.__cause__ or err
            raise EndpointError(f"{url}: connection failed ({type(cause).__name__}: {cause})") from None
        except openai.APIStatusError as err:
            detail = err.response.text[:300] if err.response is not None else str(err)
            raise EndpointError(f"{url}: HTTP {err.status_code}: {detail}") from None

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON to base_url + path; return the JSON reply. Transport failures are retried
        by the SDK; a reply that is not JSON or has no choices is retried here."""
        url, last = self.base_url + path, ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            raw = self._send(path, body)
            try:
                reply = json.loads(raw)
            except json.JSONDecodeError:
                last = f"reply is not JSON: {raw[:200]!r}"
                continue
            if not isinstance(reply, dict) or not reply.get("choices"):
                last = f"reply has no choices: {str(reply)[:200]}"
                continue
            return reply
        raise EndpointError(f"{url}: no usable answer after {self.max_retries + 1} attempts ({last})")

    def map(self, fn: Callable[[T], R], items: list[T], concurrency: int, desc: str) -> list[R]:
        """Apply fn to items with at most `concurrency` requests in flight, keeping order."""
        with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
            futures = [pool.submit(fn, item) for item in items]
            results = []
            for fut in track(futures, desc=desc):
                results.append(fut.result())
        return results
