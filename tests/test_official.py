"""The official SPIN/GSIL self-play prompt, training text and token ids, pinned byte for byte.

Sources (read with `git show`): uclaml/SPIN a12ba808a51c23bb98c7cc892d261e9c2f71ff8e and
tengxiao1/GSIL bf269e0c9dd7642a55fcb4e21cc831ef9ca76406. The token-id tests compare against
`official_tokenize` below, a line-for-line port of GSIL gsil/alignment/utils.py:66-142
(DataCollatorWithPadding.tokenize_batch_element, decoder-only branch), on the real tokenizer with
zephyr's chat template (GSIL gsil/alignment/data.py:13, DEFAULT_CHAT_TEMPLATE).
"""

from __future__ import annotations

import copy

import pytest

from gsil_bench.core.generation import render_prompt
from gsil_bench.trainers.data import collate
from gsil_bench.trainers.official import (
    SPIN_PROMPT_TEMPLATE,
    encode_official,
    fit,
    official_texts,
    raw_prompt,
    truncate_pair,
)

# GSIL gsil/alignment/data.py:13 (alignment-handbook's zephyr template), copied verbatim
ZEPHYR_TEMPLATE = "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"  # noqa: E501


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


@pytest.mark.parametrize("max_length,max_prompt_length", [(1024, 512), (40, 16), (24, 16)])
def test_token_ids_equal_the_official_collator(zephyr_tok, max_length, max_prompt_length):
    """(1024, 512): no truncation; (40, 16): the prompt keeps its end; (24, 16): both responses cut too."""
    chat = [{"role": "user", "content": "Explain photosynthesis to a child in two short sentences."}]
    real, gen = "Plants eat sunlight. They make sugar from air and water.", "Photosynthesis is when plants make food."
    p_text, real_text = official_texts(zephyr_tok, chat, real)
    gen_text = official_texts(zephyr_tok, chat, gen)[1]
    want = official_tokenize(zephyr_tok, p_text, real_text, gen_text, max_length, max_prompt_length)
    ours = truncate_pair(encode_official(zephyr_tok, chat, real), encode_official(zephyr_tok, chat, gen),
                         max_prompt_length=max_prompt_length, max_length=max_length)
    for name, seq in zip(("real", "generated"), ours):
        assert seq is not None
        assert seq.input_ids == want[name]["input_ids"]
        assert seq.attention_mask == want[name]["attention_mask"]
        assert [-100] * seq.response_start + seq.input_ids[seq.response_start:] == want[name]["labels"]
    n_prompt, n_real = ours[0].response_start, ours[0].n_response
    assert (n_prompt, n_real) == {1024: (len(encode_official(zephyr_tok, chat, real).input_ids) - n_real, n_real),
                                  40: (16, n_real), 24: (16, 8)}[max_length]
    if max_length == 1024:  # untouched: EOS masked inside prompt and response, the appended one attended
        eos = zephyr_tok.eos_token_id
        r = ours[0]
        assert r.input_ids[-1] == eos and r.attention_mask[-1] == 1
        assert [m for t, m in zip(r.input_ids[:-1], r.attention_mask[:-1]) if t == eos] == [0, 0, 0]
    # the padded collator carries the attention mask into the batch
    batch = collate([ours[0]], pad_id=zephyr_tok.pad_token_id)
    assert batch.attention_mask[0].tolist() == want["real"]["attention_mask"]
    assert batch.response_mask[0].tolist() == [int(v != -100) for v in want["real"]["labels"]]


def test_chat_encoding_is_untouched_by_fit(tokenizer):
    from gsil_bench.trainers.data import encode

    seq = encode(tokenizer, [{"role": "user", "content": "hi"}], "hello", max_prompt_length=8, max_length=16)
    assert fit("chat", seq, None, max_prompt_length=8, max_length=16) == (seq, None)
    assert seq.attention_mask is None
