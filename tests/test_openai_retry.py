"""The OpenAI-compatible client on the `openai` SDK's transport, against a real loopback
server: a 429 with `Retry-After` is waited out and retried, a 400 is not retried, and a
reply that is not JSON is retried by our own loop with a clear error at the end."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from gsil_bench.core.openai_client import EndpointError, OpenAIClient

OK = json.dumps({"choices": [{"message": {"role": "assistant", "content": "hi"}}]}).encode()


@pytest.fixture()
def server():
    """start(script) -> (url, seen): request n gets script[n] = (status, headers, body); seen = arrival times."""
    started = []

    def start(script):
        seen: list[float] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                seen.append(time.monotonic())
                status, headers, body = script[min(len(seen), len(script)) - 1]
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        started.append(httpd)
        return f"http://127.0.0.1:{httpd.server_address[1]}/v1", seen

    yield start
    for httpd in started:
        httpd.shutdown()
        httpd.server_close()


def test_retry_after_is_honoured(server):
    url, seen = server([(429, {"Retry-After": "2"}, b'{"error": "slow down"}'), (200, {}, OK)])
    reply = OpenAIClient(url, max_retries=2, timeout=10).post("/chat/completions", {"model": "m", "messages": []})
    assert reply["choices"][0]["message"]["content"] == "hi"
    assert len(seen) == 2 and seen[1] - seen[0] >= 1.9  # waited the server's 2 s, not the SDK's 0.5 s default


def test_client_errors_are_not_retried_and_say_why(server):
    url, seen = server([(400, {}, b'{"error": {"message": "bad model"}}')])
    with pytest.raises(EndpointError, match=r"HTTP 400: .*bad model"):
        OpenAIClient(url, max_retries=3).post("/chat/completions", {"model": "m", "messages": []})
    assert len(seen) == 1


def test_a_reply_that_is_not_json_is_retried_then_reported(server):
    url, seen = server([(200, {}, b"<html>oops</html>"), (200, {}, b"<html>oops</html>")])
    with pytest.raises(EndpointError, match=r"no usable answer after 2 attempts \(reply is not JSON"):
        OpenAIClient(url, max_retries=1, backoff=0.01).post("/chat/completions", {"model": "m", "messages": []})
    assert len(seen) == 2
