"""Plant each known bug in a copy of the code and run the default-suite tests that must catch it.

    python tests/mutations.py [NAME ...]        (from the repository root; all mutations by default)

For every mutation: the repository is copied (tests/test_planted_regressions.code_copy), one
exact text is replaced in one file, and the named tests run in the copy with
`-m "not slow and not gpu"` and no golden files regenerated (GSIL_REGEN_PINNED unset). The report
lists, per mutation, which tests failed and their first assertion message; a mutation that fails
none of its tests is a hole in the suite, and the exit status is 1. The slow test
tests/test_mutations.py runs all of them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_planted_regressions import REPO, code_copy  # noqa: E402


@dataclass(frozen=True)
class Mutation:
    """One planted bug: in `file`, `old` (present exactly once) becomes `new`; `tests` must catch it."""

    file: str
    old: str
    new: str
    tests: tuple[str, ...]


CACHE_OLD = """            self.model_obj, self.tokenizer = load_model(
                self.model, revision=self.revision, dtype=pick_dtype("auto", device), device=device)"""
CACHE_NEW = """            cache = globals().setdefault("_PROCESS_MODEL", {})  # planted: keyed by nothing
            if "m" not in cache:
                cache["m"] = load_model(self.model, revision=self.revision, dtype=pick_dtype("auto", device),
                                        device=device)
            self.model_obj, self.tokenizer = cache["m"]"""
NO_FROZEN_OLD = """        inputs = LossInputs(logps[:b].float(), ref_real.to(device), logps[b:].float(),
                            None if ref_gen is None else ref_gen.to(device), n_tokens[:b], token_share)"""
NO_FROZEN_NEW = """        inputs = LossInputs(logps[:b].float(), logps[:b].detach().float(), logps[b:].float(),
                            logps[b:].detach().float(), n_tokens[:b], token_share)"""
SWAP_NEW = """        inputs = LossInputs(logps[b:].float(), ref_gen.to(device), logps[:b].float(),
                            ref_real.to(device), n_tokens[:b], token_share)"""
IDENTITY = "tests/test_checkpoint_identity.py"
ITER = "tests/test_direction.py::test_iteration2_starts_at_iteration1_weights"
REF = "tests/test_direction.py::test_policy_equals_reference_at_each_iteration_start_and_differs_after_one_step"
REF_K = "tests/test_direction.py::test_reference_of_iteration_k_is_iteration_k_minus_1"
STEP2 = "tests/test_direction.py::test_step2_loss_is_its_closed_form_at_asymmetric_log_ratios"
TEXT = "tests/test_data.py::test_training_text_is_the_tokenizers_chat_template"
SFT_NLL = "tests/test_direction.py::test_sft_step1_loss_is_the_starting_models_nll"

SWEEP = "tests/test_sweep_e2e.py::test_a_plugged_in_loss_swept_end_to_end"
PER_ITER = "tests/test_spin_schedule.py::test_per_iteration_beta_reaches_the_loss_the_loop_called"
GEN_SWEEP = "tests/test_sweep_e2e.py::test_a_swept_generation_setting_gets_its_own_shared_inputs"
LOWER = "tests/test_regression.py::test_a_lower_is_better_metric_drops_when_it_rises"
CHAT_STORED = "tests/test_stored_generations.py::test_chat_template_path_stores_the_generation_unchanged"
FIRST_MATCH = "tests/test_judge.py::test_fastchat_rating_extraction"
REBOUND = "loss=build_loss(it_method.loss, it_method.params))"
RESIDENT_OLD = """    entry = _MODELS.get(key)
    if entry is None:
        return None
    if entry.identity != files_identity(path):  # the folder changed since: never served
        del _MODELS[key]
        return None
    _MODELS.move_to_end(key)"""
RESIDENT_NEW = """    entry = next(reversed(_MODELS.values()), None)  # planted: the last model kept, whatever was asked for
    if entry is None:
        return None"""

MUTATIONS: dict[str, Mutation] = {
    "model-cache-keyed-by-nothing": Mutation("tasks/context.py", CACHE_OLD, CACHE_NEW, (IDENTITY,)),
    "resident-model-keyed-by-nothing": Mutation("core/resident.py", RESIDENT_OLD, RESIDENT_NEW, (IDENTITY,)),
    "reference-is-the-policy": Mutation("trainers/loop.py", NO_FROZEN_OLD, NO_FROZEN_NEW, (REF,)),
    "iteration-2-starts-from-base": Mutation(
        "trainers/api.py", "train_iteration(LoopRun(it_ctx, k, folder, reference,",
        "train_iteration(LoopRun(it_ctx, k, folder, cfg.shared.model,", (ITER,)),
    "iteration-2-reference-is-base": Mutation(
        "trainers/api.py", "inputs = prepare_inputs(it_ctx, k, reference, folder)",
        "inputs = prepare_inputs(it_ctx, k, cfg.shared.model, folder)", (REF_K,)),
    "swapped-real-generated": Mutation("trainers/loop.py", NO_FROZEN_OLD, SWAP_NEW, (STEP2,)),
    "dropped-chat-template": Mutation(
        "core/scoring.py",
        """    head = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*prompt, {"role": "assistant", "content": response}], tokenize=False)""",
        """    head = "\\n".join(m["content"] for m in prompt) + "\\n"
    full = head + response""", (TEXT, SFT_NLL)),
    "dropped-eos": Mutation("core/scoring.py", "ids = ids[: len(ids) - ids[::-1].index(eos)]\n    else:\n"
                            "        ids = [*ids, eos]",
                            "ids = ids[: len(ids) - ids[::-1].index(eos) - 1]\n    else:\n        ids = ids",
                            (TEXT, SFT_NLL)),
    "identical-checkpoints": Mutation(  # training saves the weights it started from
        "trainers/loop.py", "        saved = save_checkpoint(model, ctx.tokenizer, run.folder / \"checkpoint\"",
        "        saved = save_checkpoint(load_policy(run.init_model, ctx, device=\"cpu\"), ctx.tokenizer, "
        "run.folder / \"checkpoint\"", (IDENTITY,)),
    # issue 29: three plausible wrong implementations the pins once let through, and TRL's pair rule
    "truncation-by-real-length": Mutation(  # the pair's cut decided by the real response alone
        "trainers/official.py", "    longer = max(real.n_response, gen.n_response if gen is not None else 0)",
        "    longer = real.n_response",
        ("tests/test_official.py::test_generated_longer_than_real_decides_the_truncation",)),
    "trl-truncation-by-chosen-length": Mutation(
        "trainers/handbook.py", "    longer = max(chosen.n_response, rejected.n_response if rejected is not None else 0)",
        "    longer = chosen.n_response",
        ("tests/test_handbook.py::test_trl_encoding_is_the_official_ids_labels_and_truncation",)),
    "hf-prompt-ids-without-bos": Mutation(  # the hf backend ignores generation.bos when it builds the ids
        "core/generation.py", "        ids = [prompt_ids(tok, p, cfg) for p in prompts]",
        "        ids = [list(tok(render_prompt(tok, p), add_special_tokens=False)[\"input_ids\"]) for p in prompts]",
        ("tests/test_protocols_bos.py::test_protocol_prompts_reach_the_model_with_the_official_bos",)),
    "gsm8k-v03-first-n-exemplars": Mutation(  # GSM8K v0.3's five exemplars: the first training rows, not drawn
        "tasks/protocols.py", "            return self.stream.sample(self.fewshot_docs(), n)",
        "            return self.fewshot_docs()[:n]",
        ("tests/test_protocols.py::test_gsm8k_v03_runs_through_lm_eval_with_b281b09s_exemplars",)),
    "eval-scores-the-base-model": Mutation(  # every eval step scores the starting model, recorded as its own
        "harness/steps.py", "evaluate(rec[\"model\"], todo, experiment_eval(run.cfg.shared),",
        "evaluate(run.cfg.shared.model, todo, experiment_eval(run.cfg.shared),",
        (IDENTITY,)),
    # every recorded value stays right while training or comparing does the wrong thing (issue 31)
    "sweep-variants-train-with-the-first": Mutation(  # names, hashes, summary.json still say b = 0, 0.5, 1
        "trainers/api.py", REBOUND,
        "loss=build_loss(it_method.loss, next(m for m in cfg.methods if m.loss == it_method.loss).params))", (SWEEP,)),
    "per-iteration-params-never-reach-the-loss": Mutation(  # the loss built once, from iteration 1's params
        "trainers/api.py", "method=it_method,  # per-iteration params: the loss bound again\n"
        "                                 " + REBOUND, "method=it_method)", (PER_ITER,)),
    "inputs-key-ignores-generation": Mutation(  # the dry run's inputs_group still shows two groups
        "trainers/inputs.py", "    gen = hash_view(s.generation) if generate else None", "    gen = None", (GEN_SWEEP,)),
    "compare-direction-flip-deleted": Mutation(  # a rise of a lower-is-better metric counted as a gain
        "reports/regression.py", "    sign = sign if higher_is_better else -sign\n", "", (LOWER,)),
    "chat-path-official-post-processing": Mutation(  # GSIL's replace("</s>", "").lstrip() on the chat template too
        "trainers/inputs.py", "    if ctx.cfg.shared.generation.prompt_template is None:\n        return text\n", "",
        (CHAT_STORED,)),
    "mt-bench-last-match": Mutation(  # the last [[x]] instead of FastChat's first
        "tasks/judge.py", "    m = ONE_SCORE.search(text) or ONE_SCORE_BACKUP.search(text)",
        "    m = ([*ONE_SCORE.finditer(text)] or [*ONE_SCORE_BACKUP.finditer(text)] or [None])[-1]", (FIRST_MATCH,)),
}


def plant(dst: Path, name: str) -> tuple[Path, Path]:
    """A copy of the repository under `dst` with mutation `name` planted: (its source tree, where
    its tests run; the site folder its wheel installs into, what they import)."""
    m = MUTATIONS[name]
    if (REPO / m.file).read_text().count(m.old) != 1:
        raise SystemExit(f"{m.file} no longer holds the text mutation {name!r} replaces: update tests/mutations.py")
    site = code_copy(dst, (m.file, m.old, m.new))
    return dst / "src", site


def failures(junit: Path) -> dict[str, str]:
    """Failed test id -> its assertion message, from pytest's JUnit XML report."""
    import xml.etree.ElementTree as ET

    out = {}
    if not junit.is_file():
        return out
    for case in ET.parse(junit).iter("testcase"):
        for bad in [*case.iter("failure"), *case.iter("error")]:
            test = f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}"
            out[test] = " ".join((bad.get("message") or "").split())
    return out


def run_mutation(name: str, work: Path) -> dict[str, str]:
    """Plant `name` in a copy under `work`, run its tests there; {failed test: message}."""
    code, site = plant(work / name, name)
    env = {k: v for k, v in os.environ.items() if k != "GSIL_REGEN_PINNED"}
    env.update(PYTHONPATH=str(site), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    junit = work / f"{name}.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}",
                           "-m", "not slow and not gpu", *MUTATIONS[name].tests], cwd=code, env=env,
                          capture_output=True, text=True, timeout=1800)
    found = failures(junit)
    if proc.returncode not in (0, 1):  # collection or usage error: the tests did not run
        found["<pytest>"] = f"exit {proc.returncode}: {proc.stdout[-1500:]}{proc.stderr[-1500:]}"
    return found


def main(names: list[str]) -> int:
    names = names or list(MUTATIONS)
    missed = []
    with tempfile.TemporaryDirectory(prefix="mutations-") as tmp:
        for name in names:
            found = run_mutation(name, Path(tmp))
            print(f"{name}: {'CAUGHT' if found else 'MISSED'} ({MUTATIONS[name].file})", flush=True)
            for test, message in found.items():
                print(f"    {test}: {message[:400]}", flush=True)
            if not found or "<pytest>" in found:
                missed.append(name)
    print(f"{len(names) - len(missed)} of {len(names)} mutations caught" + (f"; missed: {', '.join(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
