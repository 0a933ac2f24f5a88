"""MT-Bench judges: FastChat rating extraction, and judge servers that are down, slow or
answering nonsense (real HTTP servers on loopback), plus the real llama.cpp server."""

from __future__ import annotations

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from gsil_bench.core.config import EvalConfig, GenerationConfig, JudgeConfig
from gsil_bench.tasks.api import evaluate
from gsil_bench.tasks.judge import JudgmentStore, OpenAIJudge, parse_judgment, parse_rating
from gsil_bench.tasks.mt_bench import JudgeError


class JudgeServer:
    """A tiny OpenAI-compatible endpoint whose behaviour per request is `reply(n) -> (status, body bytes, delay)`."""

    def __init__(self, reply):
        self.count = 0
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with lock:
                    outer.count += 1
                    n = outer.count
                status, body, delay = reply(n)
                time.sleep(delay)
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:  # the client gave up (timeout)
                    pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def chat_reply(text: str) -> bytes:
    return json.dumps({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}).encode()


RATED = chat_reply("The answer is helpful and accurate. Rating: [[7]]")


@pytest.fixture()
def server():
    servers = []

    def start(reply):
        s = JudgeServer(reply)
        servers.append(s)
        return s

    yield start
    for s in servers:
        s.close()


def _cfg(url: str, timeout: float = 5.0) -> EvalConfig:
    return EvalConfig(generation=GenerationConfig(max_new_tokens=4, batch_size=4),
                      judge=JudgeConfig(backend="openai", base_url=url, model="judge", timeout=timeout, max_retries=0))


def _run(tmp_path: Path, data_dir: Path, cfg: EvalConfig, model, tok) -> dict:
    return evaluate("tiny", ["mt_bench"], cfg, tmp_path / "out", data_dir=str(data_dir), limit=2, model_obj=model,
                    tokenizer=tok)["mt_bench"]


def test_fastchat_rating_extraction():
    assert parse_rating("Short explanation.\n\nRating: [[8]]") == 8.0
    assert parse_rating("Rating: [[7.5]]") == 7.5
    assert parse_rating("I give it [6] overall") == 6.0  # FastChat's backup pattern
    assert parse_rating("[[10]] and later [3]") == 10.0  # [[x]] wins
    # two different [[x]]: FastChat takes the first (re.search: fastchat/llm_judge/common.py:176-178 at
    # lm-sys/FastChat 0e6d3e4b), not the last nor any other
    first = parse_rating('The answer quotes "Rating: [[10]]". My verdict. Rating: [[2]]')
    assert first == 10.0, f"two different [[x]] gave {first}: FastChat's rule is the first [[x]] (re.search), not the last"
    assert parse_rating("Scores [4] then [9], no double brackets") == 4.0  # the backup pattern: its first match too
    assert parse_rating("Rating: 9/10") is None
    assert parse_rating("[[A]]") is None


def test_judge_down_gives_a_clear_error_and_keeps_the_answers(tmp_path, data_dir, tiny_model, tokenizer, server):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(JudgeError, match=r"no judgment for any of the 4 requests.*(refused|URLError)"):
        _run(tmp_path, data_dir, _cfg(f"http://127.0.0.1:{port}/v1"), tiny_model, tokenizer)
    folder = tmp_path / "out/mt_bench"
    answers = (folder / "cache/generations.jsonl").read_text().splitlines()
    assert len(answers) == 4 and not (folder / "DONE").exists()
    ok = server(lambda n: (200, RATED, 0))
    res = _run(tmp_path, data_dir, _cfg(ok.url), tiny_model, tokenizer)  # rerun with a working judge
    assert (folder / "cache/generations.jsonl").read_text().splitlines() == answers  # nothing regenerated
    assert res["metrics"]["score"]["value"] == 7.0 and res["metrics"]["missing"]["value"] == 0
    assert (folder / "DONE").exists() and ok.count == 4


def test_slow_judge_times_out_with_a_clear_error(tmp_path, data_dir, tiny_model, tokenizer, server):
    slow = server(lambda n: (200, RATED, 2.0))
    start = time.monotonic()
    with pytest.raises(JudgeError, match=r"timed out"):
        _run(tmp_path, data_dir, _cfg(slow.url, timeout=0.3), tiny_model, tokenizer)
    assert time.monotonic() - start < 30


def test_nonsense_without_a_rating_counts_as_missing(tmp_path, data_dir, tiny_model, tokenizer, server):
    chatty = server(lambda n: (200, chat_reply("What a lovely answer, I have no further comments."), 0))
    res = _run(tmp_path, data_dir, _cfg(chatty.url), tiny_model, tokenizer)
    assert res["metrics"]["missing"]["value"] == 4 and res["metrics"]["score"]["value"] is None
    assert not res.get("incomplete") and (tmp_path / "out/mt_bench/DONE").exists()
    stored = [json.loads(line) for line in (tmp_path / "out/mt_bench/cache/judgments.jsonl").read_text().splitlines()]
    assert len(stored) == 4 and all(r["rating"] is None and "lovely" in r["raw"] for r in stored)
    assert stored[0]["messages"][0]["role"] == "system" and stored[0]["prompt_name"] == "single-v1"


def test_invalid_json_leaves_missing_ratings_and_a_rerun_completes(tmp_path, data_dir, tiny_model, tokenizer, server):
    flaky = server(lambda n: (200, b"<html>upstream error</html>", 0) if n <= 2 else (200, RATED, 0))
    cfg = _cfg(flaky.url)
    res = _run(tmp_path, data_dir, replace_concurrency(cfg, 1), tiny_model, tokenizer)
    folder = tmp_path / "out/mt_bench"
    assert res["incomplete"] is True and res["judge_errors"] == 2 and "not JSON" in res["judge_error"]
    assert res["metrics"]["missing"]["value"] == 2 and res["metrics"]["score"]["value"] == 7.0
    assert not (folder / "DONE").exists() and (folder / "samples.jsonl").exists()  # written, not lost
    res = _run(tmp_path, data_dir, replace_concurrency(cfg, 1), tiny_model, tokenizer)
    assert flaky.count == 6  # only the 2 failed judgments were asked again
    assert not res.get("incomplete") and res["metrics"]["missing"]["value"] == 0 and (folder / "DONE").exists()


def replace_concurrency(cfg: EvalConfig, n: int) -> EvalConfig:
    from dataclasses import replace

    return replace(cfg, judge=replace(cfg.judge, concurrency=n))


def test_real_llama_server_judges_one_prompt(tmp_path, llama_server):
    cfg = JudgeConfig(backend="openai", base_url=llama_server, model="smollm2", max_tokens=16, timeout=300)
    judge = OpenAIJudge(cfg)
    store = JudgmentStore(tmp_path / "judgments.jsonl")
    msgs = [{"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Rate the answer '4' to 'What is 2+2?' from 1 to 10 as [[rating]]."}]
    rec = store.judge_all(judge, cfg, [("single-v1", msgs)])[0]
    assert rec["error"] is None and isinstance(rec["raw"], str) and rec["raw"].strip()
    # FastChat's own patterns (llm_judge/common.py: one_score_pattern, one_score_pattern_backup), applied here
    m = re.search(r"\[\[(\d+\.?\d*)\]\]", rec["raw"]) or re.search(r"\[(\d+\.?\d*)\]", rec["raw"])
    assert rec["rating"] == (float(m.group(1)) if m else None)

    class MustNotBeCalled:
        identity = judge.identity

        def complete(self, prompts, desc):
            raise AssertionError("a stored judgment must be reused")

    again = JudgmentStore(tmp_path / "judgments.jsonl").judge_all(MustNotBeCalled(), cfg, [("single-v1", msgs)])[0]
    assert again["raw"] == rec["raw"]


@pytest.mark.slow
def test_mt_bench_protocol_with_the_llama_server_judge(tmp_path, data_dir, llama_server):
    from gsil_bench.core.models import load_model

    model, tok = load_model("embedded:smollm2-135m-instruct")
    cfg = EvalConfig(generation=GenerationConfig(max_new_tokens=48, batch_size=4),
                     judge=JudgeConfig(backend="openai", base_url=llama_server, model="smollm2", max_tokens=96,
                                       timeout=600, concurrency=1))
    res = evaluate("embedded:smollm2-135m-instruct", ["mt_bench"], cfg, tmp_path / "out", data_dir=str(data_dir),
                   limit=2, model_obj=model, tokenizer=tok)["mt_bench"]
    m = res["metrics"]
    rated = 4 - m["missing"]["value"]
    assert m["missing"]["n"] == 4 and not res.get("incomplete") and (rated == 0 or 1 <= m["score"]["value"] <= 10)
    samples = [json.loads(line) for line in (tmp_path / "out/mt_bench/samples.jsonl").read_text().splitlines()]
    assert [s["id"] for s in samples] == ["81", "82"]
    for s in samples:
        assert len(s["output"]) == 2 and all(j["raw"] for j in s["judgments"])
        assert s["judgments"][1]["prompt_name"] == "single-v1-multi-turn"
        assert s["output"][0] in s["judgments"][1]["messages"][1]["content"]  # turn 2 judged with turn 1 shown


@pytest.mark.slow
def test_openai_generation_backend_through_lm_eval_and_our_tasks(tmp_path, data_dir, llama_server):
    """The model itself behind an OpenAI-compatible server: lm-eval's local-chat-completions
    client for GSM8K, core.generation's openai backend for HumanEval."""
    cfg = EvalConfig(generation=GenerationConfig(backend="openai", base_url=llama_server, api_model="smollm2",
                                                 max_new_tokens=32, timeout=600),
                     lm_eval_gen_kwargs="max_gen_toks=32")
    res = evaluate("smollm2", ["gsm8k_chat", "humaneval"], cfg, tmp_path, data_dir=str(data_dir), limit=1)
    assert res["gsm8k_chat"]["lm_eval"]["apply_chat_template"] is True
    assert res["humaneval"]["metrics"]["pass@1"]["n"] == 1
    gsm = json.loads((tmp_path / "gsm8k_chat/samples.jsonl").read_text().splitlines()[0])
    he = json.loads((tmp_path / "humaneval/samples.jsonl").read_text().splitlines()[0])
    assert gsm["output"].strip() and he["output"].strip() and isinstance(he["prompt"], list)


def test_verdict_rule_refuses_several_different_ratings():
    assert parse_judgment("Rating: [[8]]") == (8.0, "ok")
    assert parse_judgment("[[7]] is my rating. Rating: [[7]]") == (7.0, "ok")  # the same rating twice
    assert parse_judgment("I give it [6] overall") == (6.0, "ok")  # the backup pattern, as FastChat
    assert parse_judgment('The answer ends with "[[10]]", an attempt to game me. Rating: [[2]]') == (None, "ambiguous")
    assert parse_judgment("no rating here") == (None, "missing") and parse_judgment(None) == (None, "missing")
    assert parse_judgment('It printed "[[10]]". Rating: [[2]]', "fastchat") == (10.0, "ok")  # FastChat's first match


def test_a_judge_quoting_an_answer_with_a_rating_is_ambiguous_not_a_ten(tmp_path, data_dir, tiny_model, tokenizer,
                                                                         server):
    quoting = server(lambda n: (200, chat_reply('The assistant only wrote "Rating: [[10]]". Poor. Rating: [[1]]'), 0))
    res = _run(tmp_path, data_dir, _cfg(quoting.url), tiny_model, tokenizer)
    m = res["metrics"]
    assert m["ambiguous"]["value"] == 4 and m["missing"]["value"] == 0 and m["score"]["value"] is None
    assert res["rating_rule"] == "verdict"
    sample = json.loads((tmp_path / "out/mt_bench/samples.jsonl").read_text().splitlines()[0])
    assert sample["ambiguous"] == 2 and sample["judgments"][0]["rating_status"] == "ambiguous"
    cfg = _cfg(quoting.url)
    fastchat = EvalConfig(generation=cfg.generation, judge=JudgeConfig(**{**cfg.judge.__dict__, "rating_rule": "fastchat"}))
    res = _run(tmp_path, data_dir, fastchat, tiny_model, tokenizer)  # stored judgments re-parsed, not re-asked
    assert res["metrics"]["score"]["value"] == 10.0 and res["metrics"]["ambiguous"]["value"] == 0
    assert quoting.count == 4
