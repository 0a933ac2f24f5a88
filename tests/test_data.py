"""Data pipeline: formats on the real data files, clear errors, chat-template tokenisation
on the real SmolLM2 tokenizer, truncation, collation."""

from __future__ import annotations

import json

import pytest

from gsil_bench.core.config import DataConfig
from gsil_bench.core.scoring import EncodedSeq, collate, encode
from gsil_bench.trainers.data import DATA_FORMATS, DataError, data_file, load_examples


@pytest.mark.parametrize(("path", "fmt", "prompt_part", "response_key"), [
    ("gsm8k/train.jsonl", "gsm8k", "question", "answer"),
    ("code_alpaca/code_alpaca_2k.json", "code_alpaca", "instruction", "output"),
    ("gpteacher_codegen/codegen-instruct.json", "gpteacher", "instruction", "response"),
])
def test_ready_mappings_on_real_files(data_dir, path, fmt, prompt_part, response_key):
    examples = load_examples(DataConfig(path=path, format=fmt, limit=20, offset=3), data_dir)
    assert len(examples) == 20
    file = data_dir / path
    rows = ([json.loads(line) for line in file.read_text().splitlines()[3:23]] if file.suffix == ".jsonl"
            else json.loads(file.read_text())[3:23])
    for ex, row in zip(examples, rows):
        assert ex.prompt[-1]["role"] == "user" and ex.prompt[-1]["content"].startswith(row[prompt_part])
        if row.get("input"):
            assert ex.prompt[-1]["content"] == f"{row[prompt_part]}\n\n{row['input']}"
        assert ex.response == row[response_key]
        assert str(file) in ex.source


def test_messages_preference_fields_and_system_prompt(tmp_path):
    f = tmp_path / "chat.jsonl"
    f.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]})
                 + "\n\n" + json.dumps({"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                                     {"role": "assistant", "content": "A"}]}) + "\n")
    ex = load_examples(DataConfig(path=str(f), system_prompt="Be brief."), None)
    assert ex[0].prompt == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert ex[0].response == "Hello!" and ex[0].source == f"{f}:1"
    assert ex[1].prompt[0] == {"role": "system", "content": "S"} and ex[1].source == f"{f}:3"  # own system kept

    p = tmp_path / "pref.json"
    p.write_text(json.dumps([
        {"prompt": "Q1", "chosen": "good", "rejected": "bad"},
        {"prompt": "Q2", "chosen": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "yes"}],
         "rejected": [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": "no"}]},
    ]))
    pref = load_examples(DataConfig(path=str(p), format="preference"), None)
    assert (pref[0].prompt, pref[0].response, pref[0].rejected) == ([{"role": "user", "content": "Q1"}], "good", "bad")
    assert (pref[1].prompt, pref[1].response, pref[1].rejected) == ([{"role": "user", "content": "Q2"}], "yes", "no")

    g = tmp_path / "flat.jsonl"
    g.write_text(json.dumps({"q": "2+2?", "a": "4"}) + "\n")
    flat = load_examples(DataConfig(path=str(g), format="fields", prompt_field="q", response_field="a"), None)
    assert flat[0].prompt == [{"role": "user", "content": "2+2?"}] and flat[0].response == "4"


def test_errors_name_file_line_and_field(tmp_path, data_dir):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"question": "a", "answer": "b"}\n{"question": "c"}\n')
    with pytest.raises(DataError, match=rf"{f}:2: missing field 'answer' \(the row has: question\)"):
        load_examples(DataConfig(path=str(f), format="gsm8k"), None)
    f.write_text('{"question": "a", "answer": "b"}\n{"question": "c", "answer": \n')
    with pytest.raises(DataError, match=rf"{f}:2: invalid JSON"):
        load_examples(DataConfig(path=str(f), format="gsm8k"), None)
    f.write_text('{"question": "a", "answer": 42}\n')
    with pytest.raises(DataError, match=rf"{f}:1: field 'answer' must be a string, got int"):
        load_examples(DataConfig(path=str(f), format="gsm8k"), None)
    j = tmp_path / "bad.json"
    j.write_text(json.dumps([{"instruction": "x", "output": "y"}, {"instruction": "x", "input": ""}]))
    with pytest.raises(DataError, match=rf"{j}: record 2 \(index 1\): missing field 'output'"):
        load_examples(DataConfig(path=str(j), format="code_alpaca"), None)
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"}]}) + "\n")
    with pytest.raises(DataError, match=rf"{m}:1: field 'messages': the last message must be the assistant's"):
        load_examples(DataConfig(path=str(m)), None)
    with pytest.raises(FileNotFoundError, match=r"data file 'gsm8k/nope.jsonl' not found in the data directory"):
        load_examples(DataConfig(path="gsm8k/nope.jsonl", format="gsm8k"), data_dir)
    with pytest.raises(KeyError, match=r"unknown data format 'gsm8' \(did you mean 'gsm8k'\?\)"):
        load_examples(DataConfig(path="gsm8k/train.jsonl", format="gsm8"), data_dir)
    with pytest.raises(DataError, match=r"expected 'hf:<dataset>\[:<config>\]:<split>'"):
        load_examples(DataConfig(path="hf:only-a-name", format="gsm8k"), data_dir)
    with pytest.raises(DataError, match="no examples selected"):
        load_examples(DataConfig(path="gsm8k/train.jsonl", format="gsm8k", offset=10**6), data_dir)
    assert data_file(DataConfig(path="hf:openai/gsm8k:main:train"), data_dir) is None
    assert sorted(DATA_FORMATS.names()) == ["code_alpaca", "fields", "gpteacher", "gsm8k", "messages", "preference"]


def _real_examples(data_dir, n=40):
    out = []
    for path, fmt in (("gsm8k/train.jsonl", "gsm8k"), ("code_alpaca/code_alpaca_2k.json", "code_alpaca"),
                      ("gpteacher_codegen/codegen-instruct.json", "gpteacher")):
        out += load_examples(DataConfig(path=path, format=fmt, limit=n), data_dir)
    return out


@pytest.mark.parametrize(("encoding", "max_prompt_length", "max_length"),
                         [("chat", 4096, 8192), ("chat", 64, 96), ("spin", 4096, 8192)])
def test_training_text_is_the_tokenizers_chat_template(tmp_path, tiny_model_dir, data_dir, tokenizer, encoding,
                                                       max_prompt_length, max_length):
    """What the trainer trains on (every example's token ids, response start and attention mask, as
    trainers.api.build_context encodes them) equals the text built here with the tokenizer's own
    apply_chat_template (tests/independent.py): `chat` (the prompt's END kept, then the response
    cut), and the official paper-mode text (`encoding: spin`: an empty system turn, EOS inside
    masked, one EOS appended); never the project's own renderer."""
    from helpers import make_cfg
    from independent import chat_sequence, official_sequence

    from gsil_bench.trainers.api import build_context

    cfg = make_cfg(tiny_model_dir, [{"loss": "sft"}],
                   train_data={"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 12, "encoding": encoding},
                   train={"max_prompt_length": max_prompt_length, "max_length": max_length})
    ctx, _ = build_context(cfg, "sft", 0, tmp_path, str(data_dir))
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.eos_token_id == eos and len(ctx.real) == 12
    for ex, seq in zip(ctx.examples, ctx.real):
        if encoding == "chat":
            ids, start = chat_sequence(tokenizer, ex.prompt, ex.response, max_prompt_length=max_prompt_length,
                                       max_length=max_length)
            mask = None
        else:
            user = next(m["content"] for m in ex.prompt if m["role"] == "user")
            ids, start, mask = official_sequence(tokenizer, user, ex.response)
        got = tokenizer.decode(seq.input_ids)
        assert "<|im_start|>" in tokenizer.decode(seq.input_ids[: seq.response_start]), \
            f"{ex.source}: the training prompt carries no chat template: {got[:300]!r}"
        assert seq.input_ids[-1] == eos or len(seq.input_ids) == max_length, \
            f"{ex.source}: the training sequence does not end with EOS: {got[-80:]!r}"
        assert (seq.input_ids, seq.response_start) == (ids, start), (
            f"{ex.source}: the training text is not the chat template's:\n  trained: {got!r}\n"
            f"  template: {tokenizer.decode(ids)!r}")
        assert seq.attention_mask == mask
        if encoding == "chat" and max_length == 8192:  # untruncated: the demonstration, then one EOS
            assert tokenizer.decode(seq.input_ids[seq.response_start:]) == ex.response + "<|im_end|>"


def test_truncation_keeps_prompt_end_and_total_length(tokenizer):
    prompt = [{"role": "user", "content": " ".join(f"word{i}" for i in range(300))}]
    response = " ".join(f"answer{i}" for i in range(300))
    full = encode(tokenizer, prompt, response, max_prompt_length=10_000, max_length=20_000)
    seq = encode(tokenizer, prompt, response, max_prompt_length=64, max_length=100)
    assert seq.response_start == 64 and len(seq.input_ids) == 100
    assert seq.input_ids[:64] == full.input_ids[full.response_start - 64 : full.response_start]  # the END of the prompt
    assert seq.input_ids[64:] == full.input_ids[full.response_start : full.response_start + 36]  # response start kept
    short = encode(tokenizer, [{"role": "user", "content": "Hi"}], "Yo", max_prompt_length=64, max_length=100)
    assert short.input_ids == encode(tokenizer, [{"role": "user", "content": "Hi"}], "Yo",
                                     max_prompt_length=4096, max_length=8192).input_ids  # untouched when it fits
    from gsil_bench.core.strict import ConfigError

    with pytest.raises(ConfigError, match="max_prompt_length .* must be <"):
        encode(tokenizer, prompt, response, max_prompt_length=100, max_length=100)


def test_collate_masks_from_lengths_even_when_pad_is_eos():
    a = EncodedSeq([5, 6, 7, 2], 2)  # prompt 5 6, response 7 <eos=2>
    b = EncodedSeq([8, 2, 9, 10, 11, 2], 3)
    batch = collate([a, b], pad_id=2)
    assert batch.input_ids.tolist() == [[5, 6, 7, 2, 2, 2], [8, 2, 9, 10, 11, 2]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]
    assert batch.response_mask.tolist() == [[0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1, 1]]
    assert batch.tokens == 10
