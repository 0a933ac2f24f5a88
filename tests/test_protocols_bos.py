"""BOS per protocol, tested on a tokenizer that adds one (tests/helpers.bos_tokenizer) and a real tiny model:
leaderboard requests carry none (lm-eval b281b09 and 46c7966 encode a causal LM's requests without special
tokens); MT-Bench answers and HumanEval completions get the one FastChat (gen_model_answer.py:114) and Eurus (vLLM
given strings, evaluate_human_eval.py:45) add. Each pin lists the wrong encodings it must reject.
"""

from __future__ import annotations

import pytest
from helpers import bos_tokenizer
from test_protocols import HE_PROMPT

from gsil_bench.core.config import EvalConfig, GenerationConfig
from gsil_bench.tasks.base import TASKS
from gsil_bench.tasks.protocols import PROTOCOLS, eurus_prompt, zephyr_conversation

LEADERBOARD = sorted({t for name in ("open_llm_v1", "open_llm_v1_spin") for t in PROTOCOLS[name]})


def _b281b09_encode(tok, text):
    """lm-eval b281b09 lm_eval/models/huggingface.py:407-409 with add_special_tokens False for a causal LM (:343-355)."""
    return tok.encode(text, add_special_tokens=False)


def _v040_encode(tok, text):
    """lm-eval 46c7966 lm_eval/models/huggingface.py:610-620 (tok_encode), causal LM."""
    return tok.encode(text, add_special_tokens=False)


# what a leaderboard request must NOT be encoded as (each differs from both old harnesses on a BOS tokenizer)
WRONG_LEADERBOARD_ENCODE = {"tokenizer_default": lambda tok, text: tok.encode(text),  # lm-eval 0.4.13 left alone
                            "special_tokens": lambda tok, text: tok.encode(text, add_special_tokens=True)}


@pytest.fixture(scope="module")
def bos_model():
    from gsil_bench.core.models import tiny_llama

    tok = bos_tokenizer()
    return tiny_llama(tok), tok


def _bos_ctx(bos_model, **cfg):
    from gsil_bench.tasks.context import EvalContext

    model, tok = bos_model
    return EvalContext("tiny-bos", EvalConfig(generation=GenerationConfig(batch_size=2), **cfg), model_obj=model,
                       tokenizer=tok)


def test_leaderboard_requests_carry_no_bos(bos_model):
    """Every leaderboard protocol task builds lm-eval's model with add_bos_token=False: contexts and generation
    prompts are encoded as both papers' harness versions encoded them; lm-eval 0.4.13's default would add BOS."""
    from gsil_bench.tasks.lmeval import LM_BACKENDS

    assert {TASKS.get(t)().add_bos for t in LEADERBOARD} == {False}
    ctx, tok = _bos_ctx(bos_model), bos_model[1]
    text = "Question: What is 2+2?\nAnswer: 4"
    want = _b281b09_encode(tok, text)
    assert want == _v040_encode(tok, text) and tok.bos_token_id not in want
    lm = LM_BACKENDS.get("hf")(ctx, TASKS.get("openllm_arc")().add_bos)
    assert lm.tok_encode(text) == want
    assert lm.tok_batch_encode([text])[0][0].tolist() == want
    for name, wrong in WRONG_LEADERBOARD_ENCODE.items():
        assert wrong(tok, text) != want, name
    default = LM_BACKENDS.get("hf")(ctx, None)  # lm-eval 0.4.13 left to the tokenizer: BOS on every request
    assert default.tok_encode(text) == [tok.bos_token_id, *want]


def test_leaderboard_loglikelihood_is_scored_without_bos(bos_model):
    """lm-eval's log-likelihood of a continuation equals the model's, computed here on the ids without BOS
    (and differs from the one with BOS), so the flag reaches the scored requests."""
    import torch
    from lm_eval.api.instance import Instance

    from gsil_bench.tasks.lmeval import LM_BACKENDS

    model, tok = bos_model
    context, continuation = "Question: Which is larger, 3 or 5?\nAnswer:", " 5"

    def ours(prefix):
        ids = prefix + tok.encode(context + continuation, add_special_tokens=False)
        n = len(ids) - len(tok.encode(context, add_special_tokens=False)) - len(prefix)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].float(), -1)
        return float(sum(logp[i - 1, ids[i]] for i in range(len(ids) - n, len(ids))))

    lm = LM_BACKENDS.get("hf")(_bos_ctx(bos_model), False)
    req = Instance("loglikelihood", {}, (context, continuation), 0)
    (got, _), = lm.loglikelihood([req])
    assert got == pytest.approx(ours([]), abs=1e-4)
    assert abs(got - ours([tok.bos_token_id])) > 1e-3


def _fastchat_ids(tok, prompt):
    """FastChat gen_model_answer.py:114 `input_ids = tokenizer([prompt]).input_ids`."""
    return tok([prompt]).input_ids[0]


def _eurus_ids(tok, prompt):
    """Eurus evaluate_human_eval.py:45 `llm.generate(question_list, ...)`: vLLM encodes a string with the tokenizer's
    special tokens (its InputPreprocessor calls `tokenizer.encode(prompt)`)."""
    return tok.encode(prompt)


WRONG_GENERATION_IDS = {"no_bos": lambda tok, p: tok(p, add_special_tokens=False)["input_ids"],
                        "double_bos": lambda tok, p: tok(tok.bos_token + p)["input_ids"]}


def test_fastchat_and_eurus_prompts_get_the_bos_their_tools_add():
    from gsil_bench.core.generation import prompt_ids
    from gsil_bench.tasks.protocols import EURUS_BOS, FASTCHAT_BOS

    tok = bos_tokenizer()
    mt = zephyr_conversation([("Write a haiku.", None)])
    he = eurus_prompt(tok, HE_PROMPT, "has_close_elements")
    for prompt, bos, official in ((mt, FASTCHAT_BOS, _fastchat_ids), (he, EURUS_BOS, _eurus_ids)):
        want = official(tok, prompt)
        assert want[0] == tok.bos_token_id and want.count(tok.bos_token_id) == 1
        assert prompt_ids(tok, prompt, GenerationConfig(bos=bos)) == want
        for name, wrong in WRONG_GENERATION_IDS.items():
            assert wrong(tok, prompt) != want, name
    # a chat rendered by a template that already opens with BOS gets no second one
    tpl = bos_tokenizer(chat_template="{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}")
    ids = prompt_ids(tpl, [{"role": "user", "content": "hi"}], GenerationConfig(bos="tokenizer"))
    assert ids.count(tpl.bos_token_id) == 1 and ids[0] == tpl.bos_token_id


def _bos_eval_ctx(tmp_path, data_dir, bos_model, folder):
    from gsil_bench.tasks.context import EvalContext

    model, tok = bos_model
    cfg = EvalConfig(generation=GenerationConfig(batch_size=2), code_workers=1, limit=1, fastchat_template="zephyr")
    return EvalContext("tiny-bos", cfg, data_dir=data_dir, model_obj=model, tokenizer=tok, task_folder=tmp_path / folder)


def test_humaneval_gsil_generates_with_bos(tmp_path, data_dir, bos_model):
    """humaneval_gsil generates through a generator set to the tokenizer's BOS (its cache key says so), on a real
    tiny model whose tokenizer adds one."""
    ctx = _bos_eval_ctx(tmp_path, data_dir, bos_model, "he")
    he = TASKS.get("humaneval_gsil")()
    he.evaluate(he.load(ctx)[:1], ctx)
    (gen,) = ctx._generators.values()
    assert gen.gen.bos == "tokenizer" and gen._settings()["bos"] == "tokenizer"


def test_mt_bench_fastchat_generates_with_bos(tmp_path, data_dir, bos_model):
    ctx = _bos_eval_ctx(tmp_path, data_dir, bos_model, "mt")
    mt = TASKS.get("mt_bench_fastchat")()
    mt._answers([next(d for d in mt.load(ctx) if d["category"] == "math")], ctx)
    (gen,) = ctx._generators.values()
    assert gen.gen.bos == "tokenizer" and gen._settings()["bos"] == "tokenizer"


def _prefill_ids(model):
    """Record the prompt ids each generate call's first forward receives (left padding stripped by the mask)."""
    seen: list[list[int]] = []

    def hook(module, args, kwargs):
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        if ids is not None and ids.shape[1] > 1:  # the prefill (each decoding step sends one token)
            rows = ids.tolist() if mask is None else [[t for t, m in zip(r, mr) if m] for r, mr in
                                                       zip(ids.tolist(), mask[:, : ids.shape[1]].tolist())]
            seen.extend(rows)
    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_protocol_prompts_reach_the_model_with_the_official_bos(tmp_path, data_dir):
    """At the model's input: the prompt ids the hf backend sends for MT-Bench answers (turn 1) and HumanEval
    completions are FastChat's `tokenizer([prompt])` and vLLM's `tokenizer.encode(prompt)` ids, BOS first, on a
    real tiny model whose tokenizer adds BOS. (The generated text is the same with or without BOS on this model, and
    the generator's `bos` setting is only a setting: a backend that built the ids without BOS passed the tests
    above; tests/mutations.py: hf-prompt-ids-without-bos.)"""
    from gsil_bench.core.models import tiny_llama
    from gsil_bench.tasks.protocols import zephyr_conversation

    tok = bos_tokenizer()
    model = tiny_llama(tok)
    seen, handle = _prefill_ids(model)
    try:
        ctx = _bos_eval_ctx(tmp_path, data_dir, (model, tok), "mt")
        mt = TASKS.get("mt_bench_fastchat")()
        doc = next(d for d in mt.load(ctx) if d["category"] == "math")
        mt._answers([doc], ctx)
        turn1 = zephyr_conversation([(doc["turns"][0], None)])
        assert seen[0] == _fastchat_ids(tok, turn1) and seen[0][0] == tok.bos_token_id
        seen.clear()
        ctx = _bos_eval_ctx(tmp_path, data_dir, (model, tok), "he")
        he = TASKS.get("humaneval_gsil")()
        (doc,) = he.load(ctx)[:1]
        he.evaluate([doc], ctx)
        want = _eurus_ids(tok, eurus_prompt(tok, doc.prompt, doc.entry_point))
        assert seen == [want] and want[0] == tok.bos_token_id and want.count(tok.bos_token_id) == 1
    finally:
        handle.remove()
