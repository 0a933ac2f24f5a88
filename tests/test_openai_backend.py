"""The `openai` generation backend and its HTTP client against a real loopback server.

The server (ModelServer below) speaks the OpenAI completions and chat-completions protocol
and answers with the tiny random Llama and the real tokenizer, generating greedily through
plain `model.generate` (not core.generation), so the backend's texts, stop strings,
finish reasons and token counts are checked against an independent path. Failures
(HTTP 503, 401, a reply that is not JSON) are injected per request to check the client's
retries, back-off and fail-fast.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from gsil_bench.core.config import GenerationConfig
from gsil_bench.core.generation import HFGenerator, make_generator
from gsil_bench.core.openai_client import EndpointError, OpenAIClient

CHAT = [{"role": "user", "content": "What is 2 + 3?"}]
RAW = "Once upon a time"
CODE = "def fibonacci(n):"  # the tiny random model continues it with varied tokens


class ModelServer:
    """OpenAI-compatible loopback server backed by a real model; `fail` holds injected
    failures ("503", "401", "garbage") consumed one per request before answering normally."""

    def __init__(self, model, tokenizer, *, honour_stop: bool = True) -> None:
        self.model, self.tok, self.honour_stop = model.eval(), tokenizer, honour_stop
        self.fail: list[str] = []
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.requests.append({"path": self.path, "body": body, "time": time.monotonic(),
                                            "auth": self.headers.get("Authorization")})
                    failure = server.fail.pop(0) if server.fail else None
                    status, reply = server.answer(self.path, body, failure)
                data = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, path: str, body: dict, failure: str | None) -> tuple[int, dict | bytes]:
        if failure == "garbage":
            return 200, b"<html>proxy error</html>"
        if failure:
            return int(failure), {"error": {"message": f"injected {failure}"}}
        if path == "/v1/chat/completions":
            text = self.tok.apply_chat_template(body["messages"], tokenize=False, add_generation_prompt=True)
        else:
            text = body["prompt"]
        out, finish, n = self.complete(text, body["max_tokens"], body.get("stop") or [])
        choice = {"finish_reason": finish, "index": 0}
        choice.update({"message": {"role": "assistant", "content": out}} if "messages" in body else {"text": out})
        return 200, {"choices": [choice], "usage": {"completion_tokens": n}}

    @torch.no_grad()
    def complete(self, text: str, max_tokens: int, stop: list[str]) -> tuple[str, str, int]:
        """Greedy; stops at EOS, after max_tokens, or (honour_stop) at the token that
        completes a stop string, whose text is then cut off, as OpenAI's servers do."""
        ids = torch.tensor([self.tok(text, add_special_tokens=False)["input_ids"]])
        new = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                  do_sample=False, temperature=None, top_p=None, top_k=None,
                                  eos_token_id=self.tok.eos_token_id, pad_token_id=self.tok.eos_token_id)[0, ids.shape[1]:]
        new = new.tolist()
        for k in range(1, len(new) + 1):
            if new[k - 1] == self.tok.eos_token_id:
                return self.tok.decode(new[: k - 1], skip_special_tokens=True), "stop", k - 1
            out = self.tok.decode(new[:k], skip_special_tokens=True)
            hits = [out.find(s) for s in stop if s in out] if self.honour_stop else []
            if hits:
                return out[: min(hits)], "stop", k
        return self.tok.decode(new, skip_special_tokens=True), "length", len(new)


@pytest.fixture()
def server(tiny_model, tokenizer):
    srv = ModelServer(tiny_model, tokenizer)
    yield srv
    srv.close()


def _backend(url: str, **cfg) -> object:
    return make_generator(GenerationConfig(backend="openai", base_url=url, api_model="tiny", **cfg))


def _stop_inside(text: str) -> str:
    """A two-character stop string whose first occurrence is inside `text`, not at its start
    (the tiny model's chat answers are all newlines: there, a newline, which empties them)."""
    for k in range(1, len(text) - 2):
        if text.find(text[k : k + 2]) == k:
            return text[k : k + 2]
    assert set(text) == {"\n"}, text
    return "\n"


def test_openai_backend_equals_local_generation(server, tiny_model, tokenizer, monkeypatch):
    """Chat prompts go to /chat/completions, strings to /completions, with the configured
    settings; texts, token counts and finish reasons equal local greedy generation."""
    monkeypatch.setenv("GSIL_TEST_KEY", "sk-local")
    gen = _backend(server.url, max_new_tokens=8, concurrency=2, api_key_env="GSIL_TEST_KEY")
    got = gen.generate([CHAT, RAW, CODE])
    want = HFGenerator(tiny_model, tokenizer, GenerationConfig(max_new_tokens=8)).generate([CHAT, RAW, CODE])
    assert got == want and all(c.tokens == 8 and c.finish_reason == "length" and c.text for c in got)
    assert len({c.text for c in got}) == 3
    paths = sorted(r["path"] for r in server.requests)
    assert paths == ["/v1/chat/completions", "/v1/completions", "/v1/completions"]
    chat = next(r for r in server.requests if r["path"] == "/v1/chat/completions")
    assert chat["body"]["messages"] == CHAT and chat["body"]["model"] == "tiny"
    assert chat["body"]["max_tokens"] == 8 and chat["body"]["temperature"] == 0.0 and "stop" not in chat["body"]
    assert chat["auth"] == "Bearer sk-local"


@pytest.mark.parametrize("honour_stop", [True, False])
def test_stop_strings_cut_the_text_and_finish_with_stop(tiny_model, tokenizer, honour_stop):
    """A stop string ends the completion before it (the string itself excluded) with finish
    reason "stop", whether the server cuts it (as OpenAI's does, counting only the tokens it
    generated) or returns the whole text (the client cuts it)."""
    srv = ModelServer(tiny_model, tokenizer, honour_stop=honour_stop)
    try:
        full = _backend(srv.url, max_new_tokens=12).generate([CODE, CHAT])
        stops = [_stop_inside(c.text) for c in full]
        got = [_backend(srv.url, max_new_tokens=12).generate([p], stop=[s, "\u2603never"])[0]
               for p, s in zip([CODE, CHAT], stops)]
    finally:
        srv.close()
    assert [r["body"]["stop"] for r in srv.requests if "stop" in r["body"]] == [[s, "\u2603never"] for s in stops]
    local = HFGenerator(tiny_model, tokenizer, GenerationConfig(max_new_tokens=12))
    assert got[0].text  # the code prompt's stop string lies inside its completion
    for c, f, s, p in zip(got, full, stops, [CODE, CHAT]):
        assert c.text == f.text[: f.text.find(s)] and s not in c.text
        assert c.finish_reason == "stop"
        assert c.text == local.generate([p], stop=[s])[0].text
        assert (c.tokens < 12) if honour_stop else (c.tokens == 12)


def test_client_retries_a_503_then_succeeds_with_back_off(server):
    server.fail = ["503", "garbage"]
    client = OpenAIClient(server.url, max_retries=3, backoff=0.05)
    reply = client.post("/completions", {"model": "tiny", "prompt": RAW, "max_tokens": 3})
    assert reply["choices"][0]["text"] and reply["usage"]["completion_tokens"] == 3
    assert len(server.requests) == 3 and server.fail == []
    assert all(r["body"] == server.requests[0]["body"] for r in server.requests)
    t = [r["time"] for r in server.requests]
    # the 503 is retried by the openai SDK (its back-off starts at 0.5 s, jittered down to 0.375 s at the least),
    # the reply that is not JSON by our client (backoff * 2**0 = 0.05 s)
    assert t[1] - t[0] >= 0.375 and t[2] - t[1] >= 0.05


def test_client_stops_at_once_on_401(server):
    server.fail = ["401", "503"]
    client = OpenAIClient(server.url, max_retries=3, backoff=0.05)
    with pytest.raises(EndpointError, match=r"/v1/completions: HTTP 401: .*injected 401"):
        client.post("/completions", {"model": "tiny", "prompt": RAW, "max_tokens": 3})
    assert len(server.requests) == 1  # not retried: the key is wrong, asking again cannot help


def test_client_gives_up_after_its_retries(server):
    server.fail = ["503", "503", "503", "503"]
    client = OpenAIClient(server.url, max_retries=2, backoff=0.01)
    with pytest.raises(EndpointError, match=r"/v1/completions: HTTP 503: .*injected 503"):
        client.post("/completions", {"model": "tiny", "prompt": RAW, "max_tokens": 3})
    assert len(server.requests) == 3 and server.fail == ["503"]


def test_backend_surfaces_an_unreachable_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    srv.server_close()  # nothing listens on this port any more
    gen = _backend(url, max_new_tokens=4, max_retries=1, timeout=5.0)
    with pytest.raises(EndpointError, match=r"/v1/completions: connection failed \(ConnectError: .*refused"):
        gen.generate([RAW])
