"""The DPO baseline's text (`encoding: trl`) and HumanEval decontamination, token for token as the official code
produces them: alignment-handbook 95dc472 (src/alignment/data.py apply_chat_template, task "dpo";
src/alignment/decontaminate.py) with TRL v0.9.6 314e8eb (DPOTrainer.tokenize_row).

tests/pinned/trl_dpo_rows.json holds what that code itself returned on each case (benchmarks/official_pins.py
runs it unchanged, read from clones at those commits): the chosen and rejected input ids, labels and attention
masks. The cases reach every branch of TRL's rules: nothing cut; the prompt cut; prompt and responses cut;
responses cut under a short prompt; the longer REJECTED response deciding for both sides; a prompt longer than
max_prompt_length kept whole; BOS already in the text (kept once, and lost when the prompt is cut); EOS already
last; a prompt token merging into the response; templates with and without a system turn. WRONG_ENCODINGS
lists plausible wrong implementations; a test checks each of them fails the pins.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import bos_tokenizer

from gsil_bench.core.scoring import EncodedSeq
from gsil_bench.trainers.data import Example
from gsil_bench.trainers.handbook import (
    contaminated,
    decontaminate,
    encode_trl,
    handbook_texts,
    humaneval_strings,
    rendered_response,
    truncate_trl,
)
from gsil_bench.trainers.official import fit

PINNED = json.loads((Path(__file__).parent / "pinned" / "trl_dpo_rows.json").read_text())
CASES = {c["name"]: c for c in PINNED["cases"]}


def _example(row: dict) -> tuple[list[dict], str, str]:
    """(prompt turns, chosen, rejected) of an UltraFeedback-layout row."""
    return row["chosen"][:-1], row["chosen"][-1]["content"], row["rejected"][-1]["content"]


def _official(case: dict) -> dict:
    o = case["official"]
    return {side: (o[f"{side}_input_ids"], o[f"{side}_labels"]) for side in ("chosen", "rejected")}


def _ours(seqs: tuple[EncodedSeq, EncodedSeq | None]) -> dict:
    out = {}
    for side, s in zip(("chosen", "rejected"), seqs):
        assert s is not None
        out[side] = (s.input_ids, [-100] * s.response_start + s.input_ids[s.response_start:])
    return out


def ours(tok, case: dict) -> dict:
    prompt, chosen, rejected = _example(case["row"])
    lengths = {"max_prompt_length": case["max_prompt_length"], "max_length": case["max_length"]}
    return _ours(fit("trl", encode_trl(tok, prompt, chosen), encode_trl(tok, prompt, rejected), **lengths))


def _tok(case: dict):
    return bos_tokenizer(chat_template=PINNED["templates"][case["template"]])


@pytest.mark.parametrize("name", sorted(CASES))
def test_trl_encoding_is_the_official_ids_labels_and_truncation(name):
    case = CASES[name]
    tok = _tok(case)
    assert ours(tok, case) == _official(case)
    o = case["official"]
    assert set(o["chosen_attention_mask"]) == set(o["rejected_attention_mask"]) == {1}  # no inner mask (unlike SPIN)
    prompt, chosen, _ = _example(case["row"])
    assert handbook_texts(tok, prompt, chosen) == (case["texts"]["prompt"], case["texts"]["chosen"])


def test_the_pinned_cases_reach_every_branch():
    """What each case is for, read off the official output: a case that stopped reaching its branch fails here."""
    tok = bos_tokenizer()
    n_prompt = {n: sum(x == -100 for x in c["official"]["chosen_labels"]) for n, c in CASES.items()}
    first = {n: c["official"]["chosen_input_ids"][0] for n, c in CASES.items()}
    assert n_prompt["prompt_cut"] == n_prompt["prompt_and_responses_cut"] == 64 and first["prompt_cut"] != 1
    assert len(CASES["prompt_and_responses_cut"]["official"]["chosen_input_ids"]) == 256  # 64 + (256 - 64)
    assert len(CASES["short_prompt_responses_cut"]["official"]["chosen_input_ids"]) == 36 + 200 - 64  # not 200
    assert len(CASES["rejected_longer_cuts_both"]["official"]["rejected_input_ids"]) == 36 + 200 - 64
    assert n_prompt["rejected_longer_decides"] == 64  # the chosen side's prompt is cut for the rejected's length
    assert n_prompt["prompt_kept_whole_below_max_length"] > CASES["prompt_kept_whole_below_max_length"]["max_prompt_length"]
    assert first["bos_in_template"] == 1 and CASES["bos_in_template"]["official"]["chosen_input_ids"][1] != 1
    assert CASES["eos_already_last"]["official"]["chosen_input_ids"][-2:] != [tok.eos_token_id] * 2
    merge = CASES["merge_at_boundary"]
    full = tok(merge["texts"]["prompt"] + merge["texts"]["chosen"], add_special_tokens=False)["input_ids"]
    alone = tok(merge["texts"]["prompt"], add_special_tokens=False)["input_ids"]
    assert full[: len(alone)] != alone  # the prompt's last token merged into the response's
    assert "<|system|>\n</s>" in CASES["fits"]["texts"]["prompt"]
    assert "Be brief." in CASES["multi_turn_own_system"]["texts"]["prompt"]
    assert "system" not in CASES["template_without_system"]["texts"]["prompt"]


# --- plausible wrong implementations: each must fail at least one pinned case --------------------------------


def _encode_chat(tok, prompt, response, **lengths):
    from gsil_bench.trainers.data import encode

    return encode(tok, prompt, response, **lengths)


def _wrong_truncation(longer_of):
    def run(tok, case):
        prompt, chosen, rejected = _example(case["row"])
        c, r = encode_trl(tok, prompt, chosen), encode_trl(tok, prompt, rejected)
        mp, ml = case["max_prompt_length"], case["max_length"]
        out = []
        for s in (c, r):
            longer = longer_of(c, r, s)
            p, a = s.input_ids[: s.response_start], s.input_ids[s.response_start:]
            if len(p) + longer > ml:
                p = p[-mp:]
            if len(p) + longer > ml:
                a = a[: ml - mp]
            out.append(EncodedSeq([*p, *a], len(p)))
        return _ours((out[0], out[1]))
    return run


def _chat_encoding(tok, case):  # the project's "chat" encoding (the DPO baseline's text before this change)
    prompt, chosen, rejected = _example(case["row"])
    lengths = {"max_prompt_length": case["max_prompt_length"], "max_length": case["max_length"]}
    return _ours((_encode_chat(tok, prompt, chosen, **lengths), _encode_chat(tok, prompt, rejected, **lengths)))


def _variant(**change):
    """encode_trl with one rule changed."""
    def run(tok, case):
        prompt, chosen, rejected = _example(case["row"])
        seqs = []
        for response in (chosen, rejected):
            tp, tr = handbook_texts(tok, prompt if not change.get("no_system") else [dict(m) for m in prompt], response)
            if change.get("no_system"):
                tp = tok.apply_chat_template(prompt, tokenize=False)
            if change.get("generation_prompt"):
                tp = tok.apply_chat_template([{"role": "system", "content": ""}, *prompt], tokenize=False,
                                             add_generation_prompt=True)
                tr = response + tok.eos_token
            p = tok(tp, add_special_tokens=False)["input_ids"]
            a = tok(tr, add_special_tokens=False)["input_ids"]  # separately: no merge rule
            if not change.get("no_bos"):
                p = [tok.bos_token_id, *p] if change.get("always_bos") or not p or p[0] != tok.bos_token_id else p
            if not change.get("no_eos") and (not a or a[-1] != tok.eos_token_id):
                a = [*a, tok.eos_token_id]
            seqs.append(EncodedSeq([*p, *a], len(p)))
        cut = truncate_trl(seqs[0], seqs[1], max_prompt_length=case["max_prompt_length"], max_length=case["max_length"])
        if change.get("bos_restored"):
            cut = tuple(EncodedSeq([tok.bos_token_id, *s.input_ids], s.response_start + 1)
                        if s.input_ids[0] != tok.bos_token_id else s for s in cut)
        return _ours(cut)
    return run


def _fit_to_length(tok, case):  # responses cut to what fits beside the prompt, not to max_length - max_prompt_length
    prompt, chosen, rejected = _example(case["row"])
    c, r = encode_trl(tok, prompt, chosen), encode_trl(tok, prompt, rejected)
    ml, mp = case["max_length"], case["max_prompt_length"]
    out = []
    longer = max(c.n_response, r.n_response)
    for s in (c, r):
        p, a = s.input_ids[: s.response_start], s.input_ids[s.response_start:]
        if len(p) + longer > ml:
            p = p[-mp:]
        a = a[: ml - len(p)]
        out.append(EncodedSeq([*p, *a], len(p)))
    return _ours((out[0], out[1]))


WRONG_ENCODINGS = {
    "chat_encoding": _chat_encoding,
    "decided_by_chosen_alone": _wrong_truncation(lambda c, r, s: c.n_response),
    "decided_by_own_side": _wrong_truncation(lambda c, r, s: s.n_response),
    "responses_fit_to_length": _fit_to_length,
    "no_empty_system_turn": _variant(no_system=True),
    "generation_prompt_in_prompt": _variant(generation_prompt=True),
    "no_bos": _variant(no_bos=True),
    "bos_always_added": _variant(always_bos=True),
    "bos_restored_after_cut": _variant(bos_restored=True),
    "no_trl_eos": _variant(no_eos=True),
    "tokenised_separately": _variant(),  # prompt and response tokenised apart: the merge rule is lost
}


@pytest.mark.parametrize("name", sorted(WRONG_ENCODINGS))
def test_each_wrong_encoding_fails_a_pinned_case(name):
    wrong = WRONG_ENCODINGS[name]
    failing = [n for n, case in CASES.items() if wrong(_tok(case), case) != _official(case)]
    assert failing, f"{name} passes every pinned case"


# --- HumanEval decontamination ---------------------------------------------------------------------------------


def test_decontamination_keeps_and_drops_what_the_handbook_does(data_dir):
    tok = bos_tokenizer()
    strings = humaneval_strings(data_dir)
    # every docstring; every solution but the generic ones of HumanEval/23, /41 and /53 (the fourth "generic"
    # string, Python's join of "return " ".join(strings)", matches no solution: HumanEval/28's stays filtered)
    assert len(strings) == 164 + 164 - 3
    for rec in PINNED["decontamination"]:
        keep = not contaminated(rendered_response(tok, rec["response"]), strings)
        assert keep == rec["official_keep"], rec["label"]
    # wrong: matching without whitespace normalisation or case folding keeps the re-spaced docstring
    respaced = next(r["response"] for r in PINNED["decontamination"] if r["label"] == "docstring_respaced")
    assert not any(s in rendered_response(tok, respaced) for s in strings)


def test_decontaminate_drops_rows_and_names_a_missing_humaneval_file(data_dir, tmp_path):
    from gsil_bench.core.errors import ConfigError

    tok = bos_tokenizer()
    contaminated_row = next(r for r in PINNED["decontamination"] if r["label"] == "solution")["response"]
    rows = [Example([{"role": "user", "content": "q"}], "Paris.", "Lyon."),
            Example([{"role": "user", "content": "q"}], contaminated_row, "no")]
    assert [ex.response for ex in decontaminate(rows, tok, data_dir)] == ["Paris."]
    with pytest.raises(ConfigError, match=r"humaneval/HumanEval.jsonl"):
        decontaminate(rows, tok, tmp_path)


# --- the ids the policy receives when DPO trains on preference data with `encoding: trl` ----------------------


def test_dpo_trains_on_the_trl_ids_and_without_contaminated_rows(data_dir, tmp_path, monkeypatch):
    """paper-zephyr's preference_data block (encoding trl, decontaminate humaneval) on a local copy of
    UltraFeedback-binarized: every sequence the policy's forward receives is TRL's encoding of a kept row (BOS
    first, zephyr's `<|assistant|>` turn and `</s>\\n</s>` as labels), and the row holding a HumanEval solution
    never reaches it."""
    from helpers import make_cfg
    from test_hub_data import _write_repo

    import gsil_bench.trainers.loop as loop
    from gsil_bench.core.loading import load_experiment
    from gsil_bench.core.models import save_tiny_llama
    from gsil_bench.trainers.api import train_method

    root = tmp_path / "data"
    root.mkdir()
    for sub in ("gsm8k", "humaneval"):
        (root / sub).symlink_to(data_dir / sub)
    solution = next(r for r in PINNED["decontamination"] if r["label"] == "solution")["response"]
    questions = ["What is 2+2?", "Name a colour.", "Spell cat.", "Write code."]
    answers = ["4.", "Blue.", "C-A-T.", solution]
    pairs = [{"prompt": q, "chosen": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
              "rejected": [{"role": "user", "content": q}, {"role": "assistant", "content": "No idea."}]}
             for q, a in zip(questions, answers)]
    _write_repo(root / "hf" / "HuggingFaceH4" / "ultrafeedback_binarized",
                "- config_name: default\n  data_files:\n  - split: train_prefs\n    path: data/train_prefs-*\n",
                {"data/train_prefs-00000-of-00001.parquet": pairs})
    shipped = load_experiment(Path(__file__).resolve().parents[1] / "configs" / "paper-zephyr.yaml").shared
    pref = shipped.preference_data
    assert pref is not None and (pref.encoding, pref.decontaminate) == ("trl", "humaneval")
    tok = bos_tokenizer()
    model = save_tiny_llama(tmp_path / "model", tok)
    cfg = make_cfg(model, [{"loss": "dpo"}], data_dir=str(root), preference_data={
        "path": pref.path, "format": pref.format, "encoding": pref.encoding, "decontaminate": pref.decontaminate},
        train={"batch_size": 2, "max_steps": 1, "packing": False, "max_length": 96, "max_prompt_length": 40})
    seen: list[list[int]] = []
    real_load = loop.load_policy

    def watched_load(name, ctx, device=None):
        policy = real_load(name, ctx, device)

        def hook(module, args, kwargs):
            ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
            seen.extend(row[: int(m.sum())].tolist() for row, m in zip(ids, mask))
        policy.base_model.register_forward_pre_hook(hook, with_kwargs=True)  # the decoder: ids and mask as sent
        return policy

    monkeypatch.setattr(loop, "load_policy", watched_load)
    train_method(cfg, "dpo", 0, tmp_path / "run")
    want = []
    for q, a in zip(questions[:3], answers[:3]):
        prompt = [{"role": "user", "content": q}]
        c, r = truncate_trl(encode_trl(tok, prompt, a), encode_trl(tok, prompt, "No idea."), max_prompt_length=40,
                            max_length=96)
        want += [c.input_ids, r.input_ids]
    assert seen and all(s in want for s in seen), "the policy received ids other than TRL's encoding of kept rows"
    assert len({tuple(s) for s in seen}) == 4  # one step of 2 pairs: both sides of each
    assert all(s[0] == tok.bos_token_id for s in seen)
    assert not any(solution.strip() in tok.decode(s) for s in seen)


def test_decontamination_without_humaneval_fails_validation(tmp_path):
    """Refused in the one validation pass, naming the key, before any work."""
    from gsil_bench.core.loading import load_experiment
    from gsil_bench.core.strict import ConfigError, load_yaml
    from gsil_bench.harness.validate import validate

    path = Path(__file__).resolve().parents[1] / "configs" / "paper-zephyr.yaml"
    (tmp_path / "data").mkdir()
    cfg = load_experiment(path)
    with pytest.raises(ConfigError, match=r"shared.preference_data.decontaminate: humaneval needs "
                                          r"humaneval/HumanEval.jsonl"):
        validate(cfg, load_yaml(path)[1], data_dir=str(tmp_path / "data"))
