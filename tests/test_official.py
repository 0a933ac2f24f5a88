"""The official SPIN/GSIL self-play prompt, training text and token ids, pinned byte for byte.

Sources (read with `git show`): uclaml/SPIN a12ba808a51c23bb98c7cc892d261e9c2f71ff8e and
tengxiao1/GSIL bf269e0c9dd7642a55fcb4e21cc831ef9ca76406. The token-id tests compare against
`official_tokenize` below, a line-for-line port of GSIL gsil/alignment/utils.py:66-142
(DataCollatorWithPadding.tokenize_batch_element, decoder-only branch), on the real tokenizer with
zephyr's chat template (GSIL gsil/alignment/data.py:13, DEFAULT_CHAT_TEMPLATE), on SmolLM2's tokenizer and on
one that adds BOS (tests/helpers.py). The self-play pins compare against ports of GSIL gsil/generate.py:43-60
(prompt ids) and :119 (response text). Every pin lists beside it the plausible wrong implementations it must
reject (WRONG_*), and a test checks that each of them fails it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from helpers import ZEPHYR_TEMPLATE, bos_tokenizer

from gsil_bench.core.generation import render_prompt
from gsil_bench.trainers.data import EncodedSeq, collate
from gsil_bench.trainers.official import (
    SPIN_PROMPT_TEMPLATE,
    encode_official,
    fit,
    official_texts,
    raw_prompt,
    truncate_pair,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(scope="module")
def zephyr_tok(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ZEPHYR_TEMPLATE
    return tok


def official_tokenize(tokenizer, prompt, chosen, rejected, max_length, max_prompt_length):
    """Port of GSIL gsil/alignment/utils.py:66-142 (same in SPIN spin/alignment/utils.py), truncation_mode keep_end."""
    chosen_tokens = tokenizer(chosen, add_special_tokens=False)
    rejected_tokens = tokenizer(rejected, add_special_tokens=False)
    prompt_tokens = tokenizer(prompt, add_special_tokens=False)
    eos_token_id = tokenizer.eos_token_id
    eos_indices_prompt = [i for i, x in enumerate(prompt_tokens["input_ids"]) if x == eos_token_id]
    prompt_tokens["attention_mask"] = [0 if i in eos_indices_prompt else p for i, p in enumerate(prompt_tokens["attention_mask"])]
    eos_indices_chosen = [i for i, x in enumerate(chosen_tokens["input_ids"]) if x == eos_token_id]
    chosen_tokens["attention_mask"] = [0 if i in eos_indices_chosen else p for i, p in enumerate(chosen_tokens["attention_mask"])]
    eos_indices_rejected = [i for i, x in enumerate(rejected_tokens["input_ids"]) if x == eos_token_id]
    rejected_tokens["attention_mask"] = [0 if i in eos_indices_rejected else p
                                         for i, p in enumerate(rejected_tokens["attention_mask"])]
    chosen_tokens["input_ids"].append(tokenizer.eos_token_id)
    chosen_tokens["attention_mask"].append(1)
    rejected_tokens["input_ids"].append(tokenizer.eos_token_id)
    rejected_tokens["attention_mask"].append(1)
    longer_response_length = max(len(chosen_tokens["input_ids"]), len(rejected_tokens["input_ids"]))
    if len(prompt_tokens["input_ids"]) + longer_response_length > max_length:
        prompt_tokens = {k: v[-max_prompt_length:] for k, v in prompt_tokens.items()}
    if len(prompt_tokens["input_ids"]) + longer_response_length > max_length:
        chosen_tokens = {k: v[: max_length - max_prompt_length] for k, v in chosen_tokens.items()}
        rejected_tokens = {k: v[: max_length - max_prompt_length] for k, v in rejected_tokens.items()}
    out = {}
    for name, resp in (("real", chosen_tokens), ("generated", rejected_tokens)):
        seq = {k: prompt_tokens[k] + resp[k] for k in resp}
        seq["labels"] = seq["input_ids"][:]
        seq["labels"][: len(prompt_tokens["input_ids"])] = [-100] * len(prompt_tokens["input_ids"])
        out[name] = seq
    return out


def test_self_play_prompt_is_the_official_raw_text(tokenizer):
    # SPIN spin/generate.py:80 and GSIL gsil/generate.py:88, verbatim:
    #   prompts_all = ["### Instruction: " + data[idx]['prompt'] + "\n\n### Response: " for idx in range(len(data))]
    assert SPIN_PROMPT_TEMPLATE == "### Instruction: {prompt}\n\n### Response: "
    chat = [{"role": "user", "content": "Name a prime {above} 10."}, {"role": "assistant", "content": "11"},
            {"role": "user", "content": "And another?"}]
    text = raw_prompt(SPIN_PROMPT_TEMPLATE, chat)
    assert text == "### Instruction: " + "Name a prime {above} 10." + "\n\n### Response: "  # first user turn, braces kept
    # a raw string goes to the model as is (no chat template); SPIN generate.py:40-46 tokenises with add_special_tokens=False
    assert render_prompt(tokenizer, text) == text
    for name, wrong in WRONG_RAW_PROMPTS.items():
        assert wrong(chat) != text, name


# plausible wrong self-play prompts (each differs from the official text on the chat above)
WRONG_RAW_PROMPTS = {
    "last_user_turn": lambda chat: raw_prompt(SPIN_PROMPT_TEMPLATE, [m for m in chat if m["role"] == "user"][-1:]),
    "str_format": lambda chat: "### Instruction: {prompt}\n\n### Response: ".format(
        prompt=chat[0]["content"].format(above="above")),  # format() applied to the user text too
    "no_trailing_space": lambda chat: raw_prompt(SPIN_PROMPT_TEMPLATE, chat).rstrip(),
    "one_newline": lambda chat: raw_prompt("### Instruction: {prompt}\n### Response: ", chat),
}


def test_training_text_is_the_official_one(zephyr_tok):
    # SPIN spin/run_spin.py:38-53 / GSIL gsil/run_gsil.py:100-115: empty system turn inserted, response
    # rendered alone with "<|assistant|>\n" stripped. With zephyr's template and this tokenizer's EOS:
    eos = zephyr_tok.eos_token
    prompt, response = official_texts(zephyr_tok, [{"role": "user", "content": "What is 2+2?"}], "4.")
    assert prompt == f"<|system|>\n{eos}\n<|user|>\nWhat is 2+2?{eos}\n<|assistant|>\n"
    assert response == f"4.{eos}\n"
    # the example's own system turn is kept instead of the empty one
    own = official_texts(zephyr_tok, [{"role": "system", "content": "Be brief."},
                                      {"role": "user", "content": "Hi"}], "Hello")[0]
    assert own == f"<|system|>\nBe brief.{eos}\n<|user|>\nHi{eos}\n<|assistant|>\n"
    chat = [{"role": "user", "content": "What is 2+2?"}]
    for name, wrong in WRONG_TRAINING_TEXTS.items():
        assert wrong(zephyr_tok, chat, "4.") != (prompt, response), name


def _render(tok, messages, gen=False):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)


# plausible wrong training texts: (prompt, response) built another way
WRONG_TRAINING_TEXTS = {
    "no_empty_system": lambda tok, chat, r: (_render(tok, chat, True), official_texts(tok, chat, r)[1]),
    "prefix_kept": lambda tok, chat, r: (official_texts(tok, chat, r)[0],
                                         _render(tok, [{"role": "assistant", "content": r}])),
    "whole_conversation_split": lambda tok, chat, r: (
        official_texts(tok, chat, r)[0],
        _render(tok, [{"role": "system", "content": ""}, *chat, {"role": "assistant", "content": r}])[
            len(official_texts(tok, chat, r)[0]) - 1:]),  # split one rendering at the prompt's length, off by one
}


CHAT = [{"role": "user", "content": "Explain photosynthesis to a child in two short sentences."}]
REAL = "Plants eat sunlight. They make sugar from air and water, and they give us the oxygen we breathe."
GEN = "Photosynthesis is when plants make food."


@pytest.fixture(scope="module", params=["smollm2", "bos"])
def pin_tok(request, zephyr_tok):
    """Both pins run on SmolLM2 (no BOS) and on a tokenizer that adds BOS (tests/helpers.py), zephyr's template."""
    return zephyr_tok if request.param == "smollm2" else bos_tokenizer()


def _lengths(tok):
    p, r = official_texts(tok, CHAT, REAL)
    g = official_texts(tok, CHAT, GEN)[1]
    n = lambda text: len(tok(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    return n(p), n(r) + 1, n(g) + 1  # + the appended EOS


def pin_cases(tok):
    """(max_length, max_prompt_length) cases chosen from the real lengths, each one ruling out a wrong rule below:
    untouched; exact fit (P + L == max: `>` not `>=`); the prompt alone cut (its end kept); the prompt shorter than
    its budget but the pair too long (responses cut to max - max_prompt, not max - P); the shorter response alone
    would fit (the LONGER one decides for both); both cut."""
    n_p, n_r, n_g = _lengths(tok)
    longer = max(n_r, n_g)
    assert n_r > n_g + 6 and n_p > 12  # the cases below need these
    return [(1024, 512), (n_p + longer, n_p - 5), (n_p + longer - 1, n_p - 5), (n_p + longer - 3, n_p + 2),
            (n_p + n_g + 1, n_p - 4), (n_p - 4 + 8, n_p - 4)]


def _pair(tok, cut, max_length, max_prompt_length):
    return cut(encode_official(tok, CHAT, REAL), encode_official(tok, CHAT, GEN),
               max_prompt_length=max_prompt_length, max_length=max_length)


def _matches(tok, pair, max_length, max_prompt_length) -> bool:
    p_text, real_text = official_texts(tok, CHAT, REAL)
    want = official_tokenize(tok, p_text, real_text, official_texts(tok, CHAT, GEN)[1], max_length, max_prompt_length)
    return all(seq is not None and seq.input_ids == want[name]["input_ids"]
               and seq.attention_mask == want[name]["attention_mask"]
               and [-100] * seq.response_start + seq.input_ids[seq.response_start:] == want[name]["labels"]
               for name, seq in zip(("real", "generated"), pair))


def _rule(real, gen, *, max_prompt_length, max_length, wrong=""):
    """The truncation written out with one plausible mistake switched on by `wrong` (each must fail the pin):
    "ge": `>=` where the official has `>`; "keep_start": the prompt keeps its first tokens; "own_length": each
    sequence decided by its own response, not the longer of the pair; "budget_after_prompt": responses cut to
    max - kept prompt, not max - max_prompt_length; "prompt_off_by_one": the prompt keeps max_prompt_length - 1;
    "response_first": responses cut first, to what the prompt leaves. (Cutting responses first to
    max - max_prompt_length and the prompt after is no mistake: it gives the official result in every case.)"""
    def too_long(n_p, seqs):
        total = n_p + max(s.n_response for s in seqs)
        return total >= max_length if wrong == "ge" else total > max_length

    def cut(seq, n_p, n_r):
        start = seq.response_start - n_p if wrong != "keep_start" else 0
        ids = seq.input_ids[start:start + n_p] + seq.input_ids[seq.response_start:][:n_r]
        mask = seq.attention_mask[start:start + n_p] + seq.attention_mask[seq.response_start:][:n_r]
        return EncodedSeq(ids, n_p, mask)

    groups = [[real], [gen]] if wrong == "own_length" else [[real, gen]]
    out = []
    for seqs in groups:
        n_p, n_r = seqs[0].response_start, None
        budget = max_prompt_length - (wrong == "prompt_off_by_one")
        if wrong == "response_first" and too_long(n_p, seqs):  # responses fit to what the prompt leaves first
            n_r = max(max_length - n_p, 0)
            n_p = min(n_p, budget) if n_p + n_r > max_length else n_p
        elif too_long(n_p, seqs):
            n_p = min(n_p, budget)
            if too_long(n_p, seqs):
                n_r = max_length - (n_p if wrong == "budget_after_prompt" else max_prompt_length)
        out += [cut(s, n_p, n_r if n_r is not None else s.n_response) for s in seqs]
    return out[0], out[1]


WRONG_TRUNCATIONS = ["ge", "keep_start", "own_length", "budget_after_prompt", "prompt_off_by_one", "response_first"]


def test_token_ids_equal_the_official_collator(pin_tok):
    """Every case: ids, attention mask and labels equal the port of the official collator."""
    for max_length, max_prompt_length in pin_cases(pin_tok):
        ours = _pair(pin_tok, truncate_pair, max_length, max_prompt_length)
        assert _matches(pin_tok, ours, max_length, max_prompt_length), (max_length, max_prompt_length)
    n_p, n_r, n_g = _lengths(pin_tok)
    real, _ = _pair(pin_tok, truncate_pair, 1024, 512)  # untouched: EOS masked inside, the appended one attended
    eos = pin_tok.eos_token_id
    assert real.input_ids[-1] == eos and real.attention_mask[-1] == 1 and real.input_ids[0] != pin_tok.bos_token_id
    assert [m for t, m in zip(real.input_ids[:-1], real.attention_mask[:-1]) if t == eos] == [0, 0, 0]
    real, gen = _pair(pin_tok, truncate_pair, n_p - 4 + 8, n_p - 4)  # both cut: prompt end + 8 response tokens
    assert (real.response_start, real.n_response, gen.n_response) == (n_p - 4, 8, 8)
    # the padded collator carries the attention mask into the batch
    p_text, real_text = official_texts(pin_tok, CHAT, REAL)
    want = official_tokenize(pin_tok, p_text, real_text, official_texts(pin_tok, CHAT, GEN)[1], 1024, 512)
    batch = collate([_pair(pin_tok, truncate_pair, 1024, 512)[0]], pad_id=pin_tok.pad_token_id)
    assert batch.attention_mask[0].tolist() == want["real"]["attention_mask"]
    assert batch.response_mask[0].tolist() == [int(v != -100) for v in want["real"]["labels"]]


def test_generated_longer_than_real_decides_the_truncation(pin_tok):
    """The same cases with the roles swapped: the GENERATED response is the longer one, so the decision (and the
    response budget) must come from it. A rule reading the real response's length alone passes every case above
    (the real one is longer there) and fails here (tests/mutations.py: truncation-by-real-length)."""
    p_text, long_text = official_texts(pin_tok, CHAT, REAL)
    short_text = official_texts(pin_tok, CHAT, GEN)[1]
    for max_length, max_prompt_length in pin_cases(pin_tok):
        real, gen = truncate_pair(encode_official(pin_tok, CHAT, GEN), encode_official(pin_tok, CHAT, REAL),
                                  max_prompt_length=max_prompt_length, max_length=max_length)
        want = official_tokenize(pin_tok, p_text, short_text, long_text, max_length, max_prompt_length)
        for name, seq in (("real", real), ("generated", gen)):
            assert seq is not None and seq.input_ids == want[name]["input_ids"], (name, max_length, max_prompt_length)
            assert [-100] * seq.response_start + seq.input_ids[seq.response_start:] == want[name]["labels"]
            assert seq.attention_mask == want[name]["attention_mask"]


def test_the_written_out_rule_is_the_official_one(zephyr_tok):
    for case in pin_cases(zephyr_tok):
        assert _matches(zephyr_tok, _pair(zephyr_tok, _rule, *case), *case), case


@pytest.mark.parametrize("wrong", WRONG_TRUNCATIONS)
def test_wrong_truncations_fail_the_pin(zephyr_tok, wrong):
    def rule(real, gen, **kw):
        return _rule(real, gen, wrong=wrong, **kw)

    failed = [case for case in pin_cases(zephyr_tok) if not _matches(zephyr_tok, _pair(zephyr_tok, rule, *case), *case)]
    assert failed, f"{wrong} passes every case: the pin does not rule it out"


def test_chat_encoding_is_untouched_by_fit(tokenizer):
    from gsil_bench.trainers.data import encode

    seq = encode(tokenizer, [{"role": "user", "content": "hi"}], "hello", max_prompt_length=8, max_length=16)
    assert fit("chat", seq, None, max_prompt_length=8, max_length=16) == (seq, None)
    assert seq.attention_mask is None


# --- self-play generation: prompt token ids, truncation, post-processing -----------------------------------------

def gsil_generate_ids(tokenizer, prompts):
    """Port of GSIL gsil/generate.py:43-60 (prepare_prompts; :85 sets pad = EOS): left padding to a multiple of 8,
    1024-token truncation on the tokenizer's side, no special tokens; the padding is dropped again here."""
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    batch = tokenizer(prompts, max_length=1024, return_tensors="pt", padding="longest", truncation=True,
                      pad_to_multiple_of=8, add_special_tokens=False)
    tokenizer.padding_side = "right"
    return [ids[mask.bool()].tolist() for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]


# Plausible wrong prompt encodings (each must differ from the port on the prompts below)
WRONG_PROMPT_IDS = {
    "bos_added": lambda tok, text: tok(text, truncation=True, max_length=1024)["input_ids"],  # vLLM given a string
    "untruncated": lambda tok, text: tok(text, add_special_tokens=False)["input_ids"],  # SPIN's rule, not GSIL's
    "other_side": lambda tok, text: (lambda ids: ids[:1024] if tok.truncation_side == "left" else ids[-1024:])(
        tok(text, add_special_tokens=False)["input_ids"]),  # cut on the other side than the tokenizer's
    "chars_cut": lambda tok, text: tok(text[:1024], add_special_tokens=False)["input_ids"],  # 1024 characters
    "budget_1023": lambda tok, text: tok(text, add_special_tokens=False, truncation=True, max_length=1023)["input_ids"],
}


@pytest.mark.parametrize("side", ["right", "left"])
def test_self_play_prompt_ids_are_gsils(side):
    """paper-zephyr's generation settings send GSIL's ids on every backend that takes ids (hf, vllm)."""
    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import prompt_ids, vllm_requests
    from gsil_bench.core.loading import load_experiment

    gen = load_experiment(CONFIGS / "paper-zephyr.yaml").shared.generation
    assert (gen.bos, gen.max_prompt_tokens) == ("never", 1024)
    tok = bos_tokenizer(truncation_side=side)
    long_q = " ".join(f"word{i} the other" for i in range(400))  # > 1024 tokens, few characters per token
    texts = [raw_prompt(SPIN_PROMPT_TEMPLATE, [{"role": "user", "content": q}]) for q in ("Hi there.", long_q)]
    want = gsil_generate_ids(copy.deepcopy(tok), texts)
    assert len(want[1]) == 1024 and tok.bos_token_id not in want[0]
    assert [prompt_ids(tok, t, gen) for t in texts] == want
    assert [r["prompt_token_ids"] for r in vllm_requests(tok, texts, gen)] == want
    for name, wrong in WRONG_PROMPT_IDS.items():
        assert [list(wrong(tok, t)) for t in texts] != want, name
    # SPIN (paper-spin) does not truncate (spin/generate.py:44)
    spin = load_experiment(CONFIGS / "paper-spin.yaml").shared.generation
    assert prompt_ids(tok, texts[1], spin) == tok(texts[1], add_special_tokens=False)["input_ids"]
    assert prompt_ids(tok, texts[0], GenerationConfig(bos="tokenizer"))[0] == tok.bos_token_id


def gsil_response(decoded):
    """GSIL gsil/generate.py:119 (SPIN spin/generate.py:106, spin/generate_vllm.py:70), verbatim."""
    return decoded.replace("</s>", "").lstrip()


DECODED = ["\n\nThe answer is 4.</s></s></s>", "</s> hello", " Sure</s>", "a</s>b  ", "\t\n", "ok", "  two\n\nlines \n</s>"]
WRONG_RESPONSES = {"strip": lambda t: t.replace("</s>", "").strip(), "no_lstrip": lambda t: t.replace("</s>", ""),
                   "eos_kept": lambda t: t.lstrip(), "trailing_eos_only": lambda t: t.lstrip().removesuffix("</s>"),
                   "lstrip_then_replace": lambda t: t.lstrip().replace("</s>", "")}


def test_self_play_response_post_processing_is_official():
    from gsil_bench.trainers.official import official_response

    want = [gsil_response(t) for t in DECODED]
    assert [official_response(t, "</s>") for t in DECODED] == want
    for name, wrong in WRONG_RESPONSES.items():
        assert [wrong(t) for t in DECODED] != want, name


def test_hf_backend_decodes_from_the_shared_prompt_ids(tmp_path):
    """The hf backend generates from `prompt_ids` (the ids vLLM gets too): greedy continuation of exactly those ids,
    on a real tiny model whose tokenizer adds BOS; with bos "tokenizer" the BOS is there, by default it is not."""
    import torch

    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import HFGenerator, prompt_ids
    from gsil_bench.core.models import tiny_llama

    tok = bos_tokenizer()
    model = tiny_llama(tok)
    text = raw_prompt(SPIN_PROMPT_TEMPLATE, [{"role": "user", "content": "Name a colour."}])
    for bos in ("never", "tokenizer"):
        cfg = GenerationConfig(max_new_tokens=5, bos=bos)
        ids = prompt_ids(tok, text, cfg)
        assert (ids[0] == tok.bos_token_id) == (bos == "tokenizer")
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 do_sample=False, max_new_tokens=5, pad_token_id=tok.eos_token_id)
        new = out[0, len(ids):].tolist()
        want = tok.decode(new[: new.index(tok.eos_token_id)] if tok.eos_token_id in new else new,
                          skip_special_tokens=True)
        assert HFGenerator(model, tok, cfg).generate([text])[0].text == want


def test_self_play_stores_the_official_response_and_ids(tmp_path, data_dir):
    """A real self-play iteration on a tiny model whose tokenizer adds BOS, with paper-zephyr's generation
    settings: each stored response is the official post-processing of what the model generates from GSIL's ids."""
    import torch
    from helpers import make_cfg

    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import prompt_ids
    from gsil_bench.core.io import read_jsonl
    from gsil_bench.core.models import save_tiny_llama
    from gsil_bench.trainers.api import train_method
    from gsil_bench.trainers.official import official_response
    from gsil_bench.trainers.reference import load_causal_lm

    tok = bos_tokenizer()
    model_dir = save_tiny_llama(tmp_path / "model", tok)
    gen = {"prompt_template": SPIN_PROMPT_TEMPLATE, "max_prompt_tokens": 1024, "max_new_tokens": 8, "batch_size": 4}
    cfg = make_cfg(model_dir, [{"loss": "gsil-logistic", "params": {"a": 0.5, "b": 0.0}}], generation=gen,
                   train={"max_steps": 1, "max_length": 512, "max_prompt_length": 256})
    (res,) = train_method(cfg, "gsil-logistic", 0, tmp_path / "run")
    model = load_causal_lm(str(model_dir), revision=None, device="cpu").eval()
    for rec in read_jsonl(res.folder / "generations.jsonl"):
        ids = prompt_ids(tok, rec["prompt_text"], GenerationConfig(**gen))
        assert ids[0] != tok.bos_token_id
        with torch.no_grad():
            out = model.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=8,
                                 pad_token_id=tok.eos_token_id)[0, len(ids):].tolist()
        decoded = tok.decode(out)  # GSIL generate.py:114 batch_decode: special tokens kept, so "</s>" shows
        assert rec["response"] == official_response(decoded, tok.eos_token) == gsil_response(decoded)


def test_openai_backend_refuses_prompt_truncation():
    """A server tokenises the text it gets: truncation to GSIL's 1024 tokens cannot be honoured, so it is refused."""
    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import OpenAIGenerator

    with pytest.raises(ValueError, match="max_prompt_tokens: the openai backend sends text"):
        OpenAIGenerator(GenerationConfig(backend="openai", base_url="http://127.0.0.1:9", max_prompt_tokens=1024))
    OpenAIGenerator(GenerationConfig(backend="openai", base_url="http://127.0.0.1:9"))  # no truncation: fine


@pytest.mark.slow  # a llama.cpp server and a 135M model on CPU
def test_self_play_through_the_openai_backend_stores_the_official_response(tmp_path, llama_server):
    """The post-processing holds on the server backend too: each stored response is the official post-processing
    of what the server returns for the raw self-play prompt (the same request, asked again, is deterministic)."""
    from helpers import make_cfg

    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import make_generator
    from gsil_bench.core.io import read_jsonl
    from gsil_bench.core.models import load_tokenizer
    from gsil_bench.trainers.api import train_method
    from gsil_bench.trainers.official import official_response

    gen = {"backend": "openai", "base_url": llama_server, "api_model": "smollm2", "max_new_tokens": 8,
           "prompt_template": SPIN_PROMPT_TEMPLATE}
    cfg = make_cfg("embedded:smollm2-135m-instruct", [{"loss": "spin"}], generation=gen,
                   train={"max_steps": 1, "batch_size": 1, "max_length": 256, "max_prompt_length": 192})
    (res,) = train_method(cfg, "spin", 0, tmp_path / "run")
    server = make_generator(GenerationConfig(**gen))
    eos = load_tokenizer("embedded:smollm2-135m-instruct").eos_token
    recs = read_jsonl(res.folder / "generations.jsonl")
    for rec in recs:
        (comp,) = server.generate([rec["prompt_text"]], seed=0)
        assert rec["response"] == official_response(comp.text, eos) == rec["response"].lstrip()
