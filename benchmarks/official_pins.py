"""Regenerate tests/pinned/trl_dpo_rows.json by running the official code itself on the pinned cases.

    python benchmarks/official_pins.py TRL_CLONE HANDBOOK_CLONE [--out tests/pinned/trl_dpo_rows.json]

TRL_CLONE and HANDBOOK_CLONE are git clones of huggingface/trl and huggingface/alignment-handbook (any checkout:
the files are read with `git show` at the pinned commits). From them, unchanged:
- trl v0.9.6 (314e8eb) trl/trainer/dpo_trainer.py: `DPOTrainer.build_tokenized_answer` and
  `DPOTrainer.tokenize_row`, run as methods of a stand-in trainer holding only what they read (tokenizer,
  max_length, max_prompt_length, truncation_mode "keep_end" and label_pad_token_id -100, the DPOConfig defaults,
  decoder-only, not a vision model);
- alignment-handbook 95dc472 src/alignment/data.py: `maybe_insert_system_message`, `apply_chat_template` (task
  "dpo") and `is_openai_format`, then the column renaming of scripts/run_dpo.py:129-133;
- alignment-handbook 95dc472 src/alignment/decontaminate.py, the whole module, with `datasets.load_dataset`
  answering "openai_humaneval" from the data directory's humaneval/HumanEval.jsonl (the same 164 problems).
Nothing of that code is copied into the project: the JSON holds the cases and what the official code returned,
and tests/test_handbook.py compares trainers.handbook against it. The tokenizer is tests/helpers.bos_tokenizer
(a Llama-style `<s>`/`</s>` tokenizer built offline) with the chat template each case names.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TRL_COMMIT = "314e8eb367cbfaf74c2e9717085346360e779508"
HANDBOOK_COMMIT = "95dc47218cf109659b74466d74be950525c53e67"

# GSIL gsil/alignment/data.py:13 = handbook data.py DEFAULT_CHAT_TEMPLATE (zephyr's), and variants reaching the
# other branches: BOS written by the template, an assistant turn ending in EOS, a prompt ending in a space that
# merges with the response's first letter, a template that never names a system turn
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
          "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
          "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
          "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")
TEMPLATES = {
    "zephyr": ZEPHYR,
    "bos_in_template": "{{ bos_token }}" + ZEPHYR,
    "eos_last": ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + eos_token }}"
                 "{% else %}{{ '<' + m['role'] + '>' + m['content'] + eos_token }}{% endif %}{% endfor %}"),
    "merging": ("{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] }}"
                "{% else %}{{ m['role'] + ': ' + m['content'] + ' ' }}{% endif %}{% endfor %}"),
    "no_system": ("{% for m in messages %}{{ '[' + m['role'] + ']' + m['content'] + eos_token }}{% endfor %}"),
}


def _pair(prompt: str, chosen: str, rejected: str, history: list[dict[str, str]] | None = None) -> dict[str, Any]:
    """A row in UltraFeedback-binarized's layout (string prompt, conversations ending in the response)."""
    turns = [*(history or []), {"role": "user", "content": prompt}]
    return {"prompt": prompt, "chosen": [*turns, {"role": "assistant", "content": chosen}],
            "rejected": [*turns, {"role": "assistant", "content": rejected}]}


def cases() -> list[dict[str, Any]]:
    """(name, template, max_length, max_prompt_length, row): every branch of tokenize_row's truncation and
    of its BOS/EOS/merge rules. Lengths in tokens of tests/helpers.bos_tokenizer (about one per byte)."""
    short, long_p = "What is 2+2?", "Explain the rules of chess in detail, then summarise them. " * 3
    answer, long_a = "4.", "The answer, worked out step by step: " + "two plus two is four; " * 8
    return [
        {"name": "fits", "template": "zephyr", "max_length": 256, "max_prompt_length": 64,
         "row": _pair(short, answer, "5.")},
        {"name": "prompt_cut", "template": "zephyr", "max_length": 128, "max_prompt_length": 64,
         "row": _pair(long_p, answer, "5.")},
        {"name": "prompt_and_responses_cut", "template": "zephyr", "max_length": 256, "max_prompt_length": 64,
         "row": _pair(long_p, long_a, "5.")},
        {"name": "short_prompt_responses_cut", "template": "zephyr", "max_length": 200, "max_prompt_length": 64,
         "row": _pair(short, long_a, "5.")},
        {"name": "rejected_longer_decides", "template": "zephyr", "max_length": 256, "max_prompt_length": 64,
         "row": _pair(long_p, answer, long_a)},
        {"name": "rejected_longer_cuts_both", "template": "zephyr", "max_length": 200, "max_prompt_length": 64,
         "row": _pair(short, "Four, since two and two make four.", long_a)},
        {"name": "prompt_kept_whole_below_max_length", "template": "zephyr", "max_length": 256,
         "max_prompt_length": 64, "row": _pair("Name three prime numbers above one hundred, please.", answer, "5.")},
        {"name": "multi_turn_own_system", "template": "zephyr", "max_length": 256, "max_prompt_length": 64,
         "row": _pair("And 3+3?", "6.", "7.", [{"role": "system", "content": "Be brief."},
                                               {"role": "user", "content": short},
                                               {"role": "assistant", "content": answer}])},
        {"name": "bos_in_template", "template": "bos_in_template", "max_length": 256, "max_prompt_length": 64,
         "row": _pair(short, answer, "5.")},
        {"name": "bos_in_template_prompt_cut", "template": "bos_in_template", "max_length": 128,
         "max_prompt_length": 64, "row": _pair(long_p, answer, "5.")},
        {"name": "eos_already_last", "template": "eos_last", "max_length": 256, "max_prompt_length": 64,
         "row": _pair(short, answer, "5.")},
        {"name": "merge_at_boundary", "template": "merging", "max_length": 256, "max_prompt_length": 64,
         "row": _pair(short, "the answer is 4", "then 5")},
        {"name": "template_without_system", "template": "no_system", "max_length": 256, "max_prompt_length": 64,
         "row": _pair(short, answer, "5.")},
    ]


DECONTAMINATION_TEXTS = [  # (label, chosen response); the handbook decontaminates the rendered chosen turn
    ("clean", "Paris is the capital of France."),
    ("docstring_respaced", None),  # filled from HumanEval/0's docstring, re-spaced and upper-cased
    ("solution", None),  # HumanEval/2's canonical solution inside a longer answer
    ("generic_solution_kept", "def add(x, y):\n    return x + y\n"),
]


def _git_show(repo: Path, commit: str, path: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{path}"], check=True, capture_output=True,
                          text=True).stdout


def _functions(source: str, names: set[str], where: str, namespace: dict[str, Any]) -> dict[str, Any]:
    """The named top-level functions or class methods of `source`, compiled as they are into `namespace`."""
    found: dict[str, Any] = {}
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.FunctionDef) and node.name in names and node.name not in found:
            module = ast.Module(body=[node], type_ignores=[])
            exec(compile(module, where, "exec"), namespace)  # noqa: S102 - the official code, on purpose
            found[node.name] = namespace[node.name]
    missing = names - set(found)
    if missing:
        raise SystemExit(f"{where}: not found: {sorted(missing)}")
    return found


def official(trl: Path, handbook: Path, data_dir: Path) -> tuple[Any, Any, Any]:
    """(tokenize_row(tokenizer, max_length, max_prompt_length, feature), apply_chat_template, decontaminate)."""
    from typing import Literal, Optional, Union  # noqa: UP035 - the official code's annotations

    import numpy as np
    import torch

    ns: dict[str, Any] = {"np": np, "torch": torch, "nn": torch.nn, "Dict": dict, "List": list, "Optional": Optional,
                          "Union": Union, "Literal": Literal, "Any": Any, "PreTrainedModel": object}
    trl_src = _git_show(trl, TRL_COMMIT, "trl/trainer/dpo_trainer.py")
    fns = _functions(trl_src, {"build_tokenized_answer", "tokenize_row"}, "trl/trainer/dpo_trainer.py", ns)
    hb = _functions(_git_show(handbook, HANDBOOK_COMMIT, "src/alignment/data.py"),
                    {"maybe_insert_system_message", "apply_chat_template", "is_openai_format"},
                    "src/alignment/data.py", dict(ns))

    def tokenize_row(tokenizer: Any, max_length: int, max_prompt_length: int, feature: dict[str, Any]) -> dict:
        trainer = types.SimpleNamespace(tokenizer=tokenizer, max_length=max_length, max_prompt_length=max_prompt_length,
                                        truncation_mode="keep_end", label_pad_token_id=-100, is_encoder_decoder=False,
                                        is_vision_model=False)
        trainer.build_tokenized_answer = types.MethodType(fns["build_tokenized_answer"], trainer)
        return fns["tokenize_row"](trainer, feature)

    rows = [json.loads(line) for line in (data_dir / "humaneval" / "HumanEval.jsonl").read_text().splitlines() if line]
    fake = types.ModuleType("datasets")
    fake.load_dataset = lambda path, split=None, name=None, **kw: rows  # type: ignore[attr-defined]
    sys.modules["datasets"] = fake
    module = types.ModuleType("decontaminate")
    exec(compile(_git_show(handbook, HANDBOOK_COMMIT, "src/alignment/decontaminate.py"),  # noqa: S102
                 "src/alignment/decontaminate.py", "exec"), module.__dict__)
    return tokenize_row, hb["apply_chat_template"], module.decontaminate_humaneval


def generate(trl: Path, handbook: Path, data_dir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from helpers import bos_tokenizer

    tokenize_row, apply_chat_template, decontaminate = official(trl, handbook, data_dir)
    out: dict[str, Any] = {"trl": TRL_COMMIT, "alignment_handbook": HANDBOOK_COMMIT,
                           "generated_by": "benchmarks/official_pins.py", "templates": TEMPLATES, "cases": [],
                           "decontamination": []}
    for case in cases():
        tok = bos_tokenizer(chat_template=TEMPLATES[case["template"]])
        tok.truncation_side = "left"  # run_dpo.py:92 (no effect here: nothing is tokenised with truncation)
        example = apply_chat_template(json.loads(json.dumps(case["row"])), tok, "dpo", True)
        feature = {"prompt": example["text_prompt"], "chosen": example["text_chosen"],
                   "rejected": example["text_rejected"]}  # run_dpo.py:129-133's renaming
        batch = tokenize_row(tok, case["max_length"], case["max_prompt_length"], feature)
        out["cases"].append({**case, "texts": feature, "official": {
            k: batch[k] for k in ("chosen_input_ids", "chosen_labels", "chosen_attention_mask", "rejected_input_ids",
                                  "rejected_labels", "rejected_attention_mask")}})
    rows = [json.loads(line) for line in (data_dir / "humaneval" / "HumanEval.jsonl").read_text().splitlines() if line]
    doc0 = rows[0]["prompt"].split('"""')[1].strip()
    fill = {"docstring_respaced": "Sure:\n" + "  ".join(doc0.upper().split()) + "\nDone.",
            "solution": "Here it is:\n" + rows[2]["canonical_solution"] + "\nHope it helps."}
    tok = bos_tokenizer(chat_template=ZEPHYR)
    for label, text in DECONTAMINATION_TEXTS:
        response = text if text is not None else fill[label]
        rendered = tok.apply_chat_template([{"role": "assistant", "content": response}], tokenize=False)
        keep = decontaminate({"text_chosen": [rendered]}, text_column="text_chosen")[0]
        out["decontamination"].append({"label": label, "response": response, "official_keep": bool(keep)})
    return out


def dumps(data: dict[str, Any]) -> str:
    """JSON with one line per key, per case and per decontamination text (the id lists stay on their line)."""
    lines = []
    for key, value in data.items():
        if isinstance(value, list):
            items = ",\n  ".join(json.dumps(v) for v in value)
            lines.append(f" {json.dumps(key)}: [\n  {items}\n ]")
        else:
            lines.append(f" {json.dumps(key)}: {json.dumps(value)}")
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trl", type=Path)
    parser.add_argument("handbook", type=Path)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("GSIL_DATA_DIR", REPO.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=REPO / "tests" / "pinned" / "trl_dpo_rows.json")
    args = parser.parse_args(argv)
    data = generate(args.trl, args.handbook, args.data_dir)
    args.out.write_text(dumps(data))
    print(f"wrote {args.out}: {len(data['cases'])} cases, {len(data['decontamination'])} decontamination texts")
    return 0


if __name__ == "__main__":
    sys.exit(main())
