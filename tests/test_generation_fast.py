"""The fast Hugging Face generation path (static cache, lean decode loop, optional
torch.compile) produces what the default `model.generate` path produces."""

from __future__ import annotations

import json

import pytest
import torch

from gsil_bench.core.config import GenerationConfig
from gsil_bench.core.generation import HFGenerator, StaticDecoder, left_pad

PROMPTS = [
    [{"role": "user", "content": "What is 2 + 3?"}],
    "Once upon a time",
    [{"role": "user", "content": "Natalia sold clips to 48 of her friends in April, and then half as many in May."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Name a colour."}],
    "def fibonacci(n):",
]


def _gen(model, tok, **cfg):
    return HFGenerator(model, tok, GenerationConfig(**cfg)).generate(PROMPTS)


@pytest.mark.parametrize("batch_size", [2, 5])
def test_static_greedy_equals_default(tiny_model, tokenizer, batch_size):
    default = _gen(tiny_model, tokenizer, max_new_tokens=12, batch_size=batch_size)
    static = _gen(tiny_model, tokenizer, max_new_tokens=12, batch_size=batch_size, cache="static")
    assert static == default
    assert all(c.tokens == 12 and c.finish_reason == "length" for c in static)


def test_static_logits_equal_generate_logits(tiny_model, tokenizer):
    """Every step's logits (not only the argmax) equal those of model.generate."""
    rows = [tokenizer(t)["input_ids"] for t in ["Hi", "A longer prompt with more words in it", "Three words here"]]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    scores: list[torch.Tensor] = []
    with torch.no_grad():
        ours = StaticDecoder(tiny_model, pad_id=tokenizer.pad_token_id, eos_id=-1, max_new_tokens=8,
                             batch_size=3, bucket=True).run(ids, mask, scores=scores)
        ref = tiny_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8, do_sample=False,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=None, temperature=None,
                                  top_p=None, top_k=None, return_dict_in_generate=True, output_logits=True)
    assert ours.tolist() == ref.sequences[:, ids.shape[1] :].tolist()
    assert len(scores) == len(ref.logits) == 8
    for step, (a, b) in enumerate(zip(scores, ref.logits)):
        torch.testing.assert_close(a, b.float(), rtol=1e-4, atol=1e-4, msg=f"step {step}")


def test_bucketed_shapes_do_not_change_tokens(tiny_model, tokenizer):
    """Filler rows and extra left padding (the fixed shapes a compiled step needs) change nothing."""
    rows = [tokenizer(p if isinstance(p, str) else p[-1]["content"])["input_ids"] for p in PROMPTS[:3]]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    plain = StaticDecoder(tiny_model, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                          max_new_tokens=10, batch_size=8)
    bucketed = StaticDecoder(tiny_model, pad_id=tokenizer.pad_token_id, eos_id=tokenizer.eos_token_id,
                             max_new_tokens=10, batch_size=8, bucket=True)
    with torch.no_grad():
        a = plain.run(ids, mask)
        b = bucketed.run(ids, mask)
        again = bucketed.run(ids[:2], mask[:2, :])  # reuses the cache: reset must clear it
    assert bucketed._cache_shape == (8, 64 + 10)
    assert a.shape == (3, 10) and torch.equal(a, b)
    assert torch.equal(again, b[:2])


def test_eos_stops_rows_like_generate(tiny_model, tokenizer):
    """With an EOS id the model emits mid-way, rows end there and are padded after, as in generate."""
    rows = [tokenizer(t)["input_ids"] for t in ["Hello there", "A much longer prompt about numbers and words"]]
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        free = StaticDecoder(tiny_model, pad_id=0, eos_id=-1, max_new_tokens=20, batch_size=2).run(ids, mask)
        eos = int(free[0, 4])  # a token row 0 emits at step 4
        ours = StaticDecoder(tiny_model, pad_id=0, eos_id=eos, max_new_tokens=20, batch_size=2).run(ids, mask)
        ref = tiny_model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=20, do_sample=False,
                                  eos_token_id=eos, pad_token_id=0, temperature=None, top_p=None, top_k=None)
    ref_new = ref[:, ids.shape[1] :]
    first = free[0].tolist().index(eos)
    assert ours[0, first] == eos and (ours[0, first + 1 :] == 0).all()
    assert ours[:, : ref_new.shape[1]].tolist() == ref_new.tolist()


def test_sampling_is_seeded(tiny_model, tokenizer):
    cfg = {"max_new_tokens": 10, "batch_size": 5, "cache": "static", "temperature": 1.0, "top_p": 0.9}
    gen = HFGenerator(tiny_model, tokenizer, GenerationConfig(**cfg))
    a, b, c = gen.generate(PROMPTS, seed=1), gen.generate(PROMPTS, seed=1), gen.generate(PROMPTS, seed=2)
    assert a == b
    assert a != c


def test_compile_needs_static_cache(tiny_model, tokenizer):
    from gsil_bench.core.errors import GsilError

    with pytest.raises(GsilError, match="generation.compile: true needs cache: static"):
        HFGenerator(tiny_model, tokenizer, GenerationConfig(compile=True))


def test_config_rejects_unknown_cache():
    from gsil_bench.core.loading import experiment_from_dict
    from gsil_bench.core.strict import ConfigError

    data = {"name": "x", "methods": [{"loss": "sft"}], "shared": {"generation": {"cache": "paged"}}}
    with pytest.raises(ConfigError, match="cache"):
        experiment_from_dict(data)


@pytest.mark.slow
def test_real_model_static_equals_default(data_dir, embedded_dir):
    """SmolLM2-135M-Instruct, greedy, GSM8K questions: identical completions, EOS stops included."""
    from gsil_bench.core.models import load_model

    model, tok = load_model("embedded:smollm2-135m-instruct")
    rows = [json.loads(line) for line in (data_dir / "gsm8k" / "test.jsonl").open()][:4]
    prompts = [[{"role": "user", "content": r["question"]}] for r in rows] + [[{"role": "user", "content": "Hi!"}]]
    cfg = {"max_new_tokens": 48, "batch_size": 3}
    default = HFGenerator(model, tok, GenerationConfig(**cfg)).generate(prompts)
    static = HFGenerator(model, tok, GenerationConfig(cache="static", **cfg)).generate(prompts)
    assert static == default
    assert any(c.finish_reason == "stop" for c in static)  # the short greeting ends before 48 tokens


@pytest.mark.gpu
def test_compiled_cuda_greedy_matches_eager(tokenizer):
    """On a GPU: the compiled (CUDA graph) decode step gives the eager static path's tokens."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    from gsil_bench.core.models import tiny_llama

    model = tiny_llama(tokenizer, layers=4, hidden=256, heads=4).cuda().to(torch.bfloat16)
    eager = _gen(model, tokenizer, max_new_tokens=32, batch_size=4, cache="static")
    compiled = _gen(model, tokenizer, max_new_tokens=32, batch_size=4, cache="static", compile=True)
    same = sum(a == b for a, b in zip(eager, compiled))
    assert same >= len(PROMPTS) - 1, (eager, compiled)  # bf16 kernels may flip one near-tie


def test_generation_settings_are_checked_before_work():
    """What a generation block cannot do is a problem of the validation pass, with its key."""
    import importlib.util

    from gsil_bench.core.generation import generation_problems

    def keys(**kw):
        return [p.key for p in generation_problems(GenerationConfig(**kw), "shared.generation")]

    assert keys() == []
    assert keys(compile=True) == ["shared.generation.compile"]
    assert keys(cache="static", compile=True) == []
    assert keys(backend="openai") == ["shared.generation.base_url"]
    assert keys(backend="openai", base_url="http://127.0.0.1:8000/v1") == []
    assert keys(backend="hff") == ["shared.generation.backend"]
    assert keys(tensor_parallel_size=2) == ["shared.generation.tensor_parallel_size"]
    vllm = importlib.util.find_spec("vllm") is not None
    assert keys(backend="vllm") == ([] if vllm else ["shared.generation.backend"])
