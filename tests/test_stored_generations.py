"""What a self-play iteration stores as the generated response, on both generation paths, from a model
whose generation is known: the official post-processing (EOS text dropped, left-stripped: GSIL
gsil/generate.py:119, SPIN spin/generate.py:106) applies on the official raw prompt
(`generation.prompt_template`) only; on the chat-template path (`prompt_template: null`) the text is
stored as decoded, leading whitespace and EOS text included (trainers.inputs._response)."""

from __future__ import annotations

import pytest
import torch
from helpers import bos_tokenizer, make_cfg, zeroed_llama

from gsil_bench.core.io import read_jsonl
from gsil_bench.trainers.api import train_method
from gsil_bench.trainers.official import SPIN_PROMPT_TEMPLATE

# after any token but these, " " (GPT-2 byte "Ġ"); then each of these writes the next, and "y" ends with EOS
CHAIN = ["Ġ", "x", "<", "/", "s", ">", "y"]
CHAT_TEXT = " x</s>y"  # from the chat template's last token ("\n"): leading whitespace, then the EOS text "</s>"
RAW_TEXT = "x</s>y"  # from the raw prompt's last token (its trailing " ", "Ġ")


@pytest.fixture(scope="module")
def chain_model_dir(tmp_path_factory):
    """A one-layer Llama with set weights over a tokenizer whose EOS text is "</s>" (tests/helpers.bos_tokenizer,
    byte-level, so "</s>" can be written as plain tokens): attention and MLP are zero, so the next token depends
    on the current one only, and greedy decoding writes CHAIN from wherever the prompt ends."""
    tok = bos_tokenizer()
    ids = tok.convert_tokens_to_ids(CHAIN)
    assert tok.unk_token_id not in ids and len(set(ids)) == len(CHAIN)
    model = zeroed_llama(tok)
    with torch.no_grad():
        emb, head = model.model.embed_tokens.weight, model.lm_head.weight
        emb[:, 0] = 1.0  # every other token -> direction 0 -> "Ġ"
        head[ids[0], 0] = 1.0
        for d, (cur, nxt) in enumerate(zip(ids, [*ids[1:], tok.eos_token_id]), start=1):
            emb[cur, 0], emb[cur, d] = 0.0, 1.0
            head[nxt, d] = 1.0
    folder = tmp_path_factory.mktemp("chain") / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def _stored(model_dir, tmp_path, prompt_template):
    gen = {"max_new_tokens": 12, "batch_size": 2, "prompt_template": prompt_template}
    cfg = make_cfg(model_dir, [{"loss": "gsil-logistic", "params": {"a": 0.5, "b": 0.0}}], generation=gen,
                   train={"max_steps": 1, "max_length": 512, "max_prompt_length": 256}, train_data={"limit": 2})
    (res,) = train_method(cfg, "gsil-logistic", 0, tmp_path / "run")
    return [g["response"] for g in read_jsonl(res.folder / "generations.jsonl")]


def test_chat_template_path_stores_the_generation_unchanged(chain_model_dir, tmp_path, data_dir):
    """prompt_template null: the model writes " x</s>y" (leading space, EOS text inside) and that is what is
    stored; stripping it or dropping "</s>" (the official raw-prompt post-processing) trains on another text."""
    stored = _stored(chain_model_dir, tmp_path, None)
    assert stored == [CHAT_TEXT] * 2, (
        f"the chat-template path stored {stored!r}, not the generation {CHAT_TEXT!r} as decoded: the official "
        "raw-prompt post-processing (EOS text dropped, left-stripped) was applied where prompt_template is null")


def test_official_raw_prompt_path_applies_the_official_post_processing(chain_model_dir, tmp_path, data_dir):
    """The same model on SPIN's raw prompt writes "x</s>y"; stored: GSIL's r.replace("</s>", "").lstrip()."""
    stored = _stored(chain_model_dir, tmp_path, SPIN_PROMPT_TEMPLATE)
    assert stored == [RAW_TEXT.replace("</s>", "").lstrip()] * 2, stored
