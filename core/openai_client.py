"""A small client for OpenAI-compatible HTTP endpoints: timeouts, retries with
exponential back-off, a cap on concurrent requests, and clear errors.

Used by the `openai` generation backend and the MT-Bench judge. The key is read from
an environment variable (never from a config file); a missing key is fine for local
servers (llama.cpp, vLLM serve).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from core.progress import track

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
        self.base_url = base_url.rstrip("/")
        self.api_key = os.environ.get(api_key_env, "")
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST JSON to base_url + path; retry transient failures; return the JSON reply."""
        url = self.base_url + path
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    raw = resp.read()
            except urllib.error.HTTPError as err:
                detail = err.read()[:300].decode(errors="replace")
                last = f"HTTP {err.code}: {detail}"
                if err.code in (400, 401, 403, 404, 422):  # not transient
                    break
                continue
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                last = f"{type(err).__name__}: {getattr(err, 'reason', err)}"
                continue
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
