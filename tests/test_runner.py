"""`gsil-bench run`: validation before any work, the plan, model fingerprints, and
end-to-end runs on the tiny model (default) and the real embedded model (slow),
including a run killed with SIGKILL and resumed."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from independent import load

from gsil_bench.core.loading import load_experiment
from gsil_bench.core.models import weights_fingerprint
from gsil_bench.core.strict import ConfigError, load_yaml
from gsil_bench.harness.plan import plan_steps
from gsil_bench.harness.runner import run_experiment
from gsil_bench.harness.steps import fingerprint
from gsil_bench.harness.validate import validate
from gsil_bench.reports.index import RunIndex

REPO = Path(__file__).resolve().parents[1]


def write_cfg(tmp_path: Path, data: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def tiny_experiment(model_dir: Path, **eval_over) -> dict:
    """Every kind of method on the tiny random Llama, a handful of GSM8K demonstrations."""
    return {
        "name": "tiny",
        "shared": {
            "model": str(model_dir),
            "train_data": {"path": "gsm8k/train.jsonl", "format": "gsm8k", "limit": 4},
            "optimizer": {"lr": 1e-3},  # every checkpoint's weights move (its per-item log-probs: test_checkpoint_identity)
            "train": {"batch_size": 2, "max_length": 128, "max_prompt_length": 64, "save_every": 1},
            "generation": {"max_new_tokens": 8, "batch_size": 4},
            "iterations": 2,
            "seeds": [0],
            "eval": {"tasks": ["gsm8k", "humaneval"], "limit": 3, "lm_eval_gen_kwargs": "max_gen_toks=16",
                     "generation": {"max_new_tokens": 16, "batch_size": 4},
                     **eval_over},
        },
        "methods": [
            {"loss": "sft"},
            {"loss": "sft", "name": "sft-again"},  # identical training: evaluated once, results shared
            {"loss": "dpo", "params": {"beta": 0.1}},
            {"loss": "gsil-logistic", "params": {"a": 0.01, "b": 2.0}},
        ],
        "report": {"baseline": "sft", "bootstrap": 200},
    }


def cli(*args: str, cwd: Path | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "gsil_bench.harness.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd or REPO, env=env)


# --- validation: before any work ------------------------------------------------------------


def test_bad_config_key_names_file_line_and_key_and_writes_nothing(tmp_path, tiny_model_dir):
    data = tiny_experiment(tiny_model_dir)
    data["shared"]["train"]["batch_sise"] = 2
    path = write_cfg(tmp_path, data)
    out = tmp_path / "run"
    proc = cli("run", str(path), "--output", str(out))
    assert proc.returncode == 2
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "batch_sise" in t)
    assert f"{path}:{line}: unknown key 'shared.train.batch_sise' (did you mean 'batch_size'?)" in proc.stderr
    assert not out.exists()


def _validate_file(path: Path, data_dir: Path) -> None:
    _, loc = load_yaml(path)
    validate(load_experiment(path), loc, data_dir=str(data_dir))


def test_validation_names_the_key_and_line(tmp_path, tiny_model_dir, data_dir):
    data = tiny_experiment(tiny_model_dir)
    data["report"]["baseline"] = "stf"
    with pytest.raises(ConfigError, match=r"exp.yaml:\d+: report.baseline: 'stf' is not a method label "
                                          r"\(did you mean 'sft'\?\)"):
        _validate_file(write_cfg(tmp_path, data), data_dir)
    data = tiny_experiment(tiny_model_dir)
    data["methods"].append({"loss": "sft", "name": "base"})
    with pytest.raises(ConfigError, match=r"methods\[4\]: the label 'base' is reserved"):
        _validate_file(write_cfg(tmp_path, data), data_dir)
    data = tiny_experiment(tiny_model_dir)
    data["shared"]["train_data"]["path"] = "gsm8k/trian.jsonl"
    path = write_cfg(tmp_path, data)
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "trian" in t)
    with pytest.raises(ConfigError, match=rf"exp.yaml:{line}: shared.train_data.path: data file 'gsm8k/trian.jsonl' "
                                          "not found"):
        _validate_file(path, data_dir)


def test_model_and_training_settings_are_checked_before_work(tmp_path, tiny_model_dir, data_dir):
    data = tiny_experiment(tiny_model_dir)
    data["shared"]["model"] = str(tmp_path / "no-such-model")
    with pytest.raises(ConfigError, match=r"exp.yaml:\d+: shared.model: model .*no-such-model"):
        _validate_file(write_cfg(tmp_path, data), data_dir)
    data = tiny_experiment(tiny_model_dir)
    data["shared"]["train"]["max_prompt_length"] = 256
    path = write_cfg(tmp_path, data)
    line = next(i for i, t in enumerate(path.read_text().splitlines(), 1) if "max_prompt_length" in t)
    with pytest.raises(ConfigError, match=rf"exp.yaml:{line}: shared.train.max_prompt_length: must be < shared.train.max_length \(128\), got 256"):
        _validate_file(path, data_dir)


def test_unknown_eval_task_is_an_error_before_training(tmp_path, tiny_model_dir, data_dir):
    data = tiny_experiment(tiny_model_dir, tasks=["gsm8k", "humaneavl"])
    with pytest.raises(ConfigError, match=r"shared.eval.tasks: .*humaneavl.*did you mean 'humaneval'"):
        _validate_file(write_cfg(tmp_path, data), data_dir)


def test_plan_lists_every_step_in_order(tmp_path, tiny_model_dir):
    data = tiny_experiment(tiny_model_dir)
    data["shared"]["seeds"] = [0, 1]
    steps = plan_steps(load_experiment(write_cfg(tmp_path, data)))
    ids = [s.id for s in steps]
    assert ids[:4] == ["eval/base/iter-0", "train/sft/seed-0", "eval/sft/seed-0/iter-1", "train/sft/seed-1"]
    assert "eval/gsil-logistic/seed-1/iter-2" in ids and "eval/dpo/seed-0/iter-2" not in ids
    assert len(ids) == 1 + 2 * (2 + 2 + 2 + 3)
    assert all(s.depends == f"train/{s.method}/seed-{s.seed}" for s in steps if s.kind == "eval" and s.method != "base")


def test_fingerprint_is_content_based(tmp_path, tiny_model_dir):
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(tiny_model_dir, a)
    shutil.copytree(tiny_model_dir, b)
    (b / "gsil_meta.json").write_text('{"method": "other"}')  # labels and paths are not the model
    (b / "optimizer.pt").write_bytes(b"state")
    assert fingerprint(str(a)) == fingerprint(str(b))
    weights = next(b.glob("*.safetensors"))
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 1
    weights.write_bytes(bytes(raw))
    assert fingerprint(str(a)) != fingerprint(str(b))
    assert fingerprint("org/model", "v1") != fingerprint("org/model", "v2")


def test_resuming_with_another_training_config_is_refused(tmp_path, tiny_model_dir):
    from gsil_bench.harness.plan import check_same_experiment

    data = tiny_experiment(tiny_model_dir)
    root = tmp_path / "run"
    root.mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump(data))
    cfg = load_experiment(write_cfg(tmp_path, data))
    check_same_experiment(cfg, root)  # the same config resumes
    data["shared"]["eval"]["limit"] = 5
    data["shared"]["seeds"] = [0, 1]
    data["methods"].append({"loss": "spin", "params": {"beta": 0.1}})
    check_same_experiment(load_experiment(write_cfg(tmp_path, data)), root)  # eval, seeds, new methods: fine
    data["shared"]["optimizer"] = {"lr": 1e-4}
    with pytest.raises(ConfigError, match=r"another training configuration \(shared.optimizer differ"):
        check_same_experiment(load_experiment(write_cfg(tmp_path, data)), root)


# --- end to end ------------------------------------------------------------------------------


def _statuses(root: Path) -> dict[str, str]:
    return {s["id"]: s["status"] for s in json.loads((root / "plan.json").read_text())["steps"]}


def _running(root: Path) -> bool:
    """A step is running now: its own record (step.json) says so (plan.json is written between steps)."""
    from gsil_bench.harness.workers import RECORD

    return any(json.loads(p.read_text() or "{}").get("status") == "running" for p in root.rglob(RECORD))


def _weights_sha(folder: Path) -> str:
    """sha256 of a model folder's weight file (independent of harness.steps.fingerprint)."""
    return hashlib.sha256((Path(folder) / "model.safetensors").read_bytes()).hexdigest()


def _check_each_eval_scored_its_checkpoint(root: Path, base_model: Path) -> None:
    """Every eval step recorded its own checkpoint (path and weight fingerprint), each task's
    results name that model, and results were shared only between steps with equal weights."""
    steps = [s for s in json.loads((root / "plan.json").read_text())["steps"] if s["kind"] == "eval"]
    assert len(steps) == 6
    weights: dict[Path, str] = {}
    wanted: dict[Path, str] = {}  # model folder -> sha256 of its weights
    for s in steps:
        if s["method"] == "base":
            folder, want = root / "eval" / "base" / "iter-0", base_model
        else:
            folder = root / "eval" / s["method"] / f"seed-{s['seed']}" / f"iter-{s['iteration']}"
            want = root / s["method"] / f"seed-{s['seed']}" / f"iter-{s['iteration']}" / "checkpoint"
        rec = json.loads((folder / "model.json").read_text())
        assert Path(rec["model"]) == want and rec["fingerprint"] == fingerprint(str(want)), s["id"]
        weights[folder] = _weights_sha(want)
        wanted[want] = weights[folder]
    by_fp = {}
    for folder in weights:
        by_fp.setdefault(json.loads((folder / "model.json").read_text())["fingerprint"], set()).add(weights[folder])
    assert all(len(shas) == 1 for shas in by_fp.values())  # one fingerprint, one set of weights
    assert len(set(weights.values())) == 5  # sft and sft-again train identical weights; the rest differ
    for folder, sha in weights.items():
        model = json.loads((folder / "model.json").read_text())["model"]
        for task in ("gsm8k", "humaneval"):
            shared = folder / task / "shared_from.json"
            if shared.is_file():  # copied from another step: only from one with the same weights
                source = Path(json.loads(shared.read_text())["source"]).parent
                assert source != folder and weights[source] == sha, (folder, task, source)
            else:
                metrics = json.loads((folder / task / "metrics.json").read_text())
                prov = json.loads((folder / task / "provenance.json").read_text())
                assert metrics["model"] == model and prov["model_identity"]["model"] == model, (folder, task)
    _check_scored_weights(weights, wanted)


def _check_scored_weights(weights: dict[Path, str], wanted: dict[Path, str]) -> None:
    """Each task's result carries the fingerprint of the weights it scored, equal to that of its own
    model folder loaded here (per-item log-probs recomputed on each checkpoint: test_checkpoint_identity)."""
    loaded = {sha: weights_fingerprint(load(folder)) for folder, sha in wanted.items()}
    for folder, sha in weights.items():
        model = json.loads((folder / "model.json").read_text())["model"]
        for task in ("gsm8k", "humaneval"):
            scored = json.loads((folder / task / "metrics.json").read_text())["weights_fingerprint"]
            named = [str(f) for f, s in wanted.items() if loaded[s] == scored]
            assert scored == loaded[sha], f"{folder}/{task} scored the weights of {named}, not {model}'s"


def test_tiny_run_end_to_end_and_rerun_skips(tmp_path, tiny_model_dir, data_dir):
    cfg_path = write_cfg(tmp_path, tiny_experiment(tiny_model_dir))
    root, index = tmp_path / "runs" / "tiny", tmp_path / "runs" / "runs.sqlite"
    _, loc = load_yaml(cfg_path)
    assert run_experiment(load_experiment(cfg_path), root, data_dir=str(data_dir), loc=loc) == 0
    assert set(_statuses(root).values()) == {"done"} and len(_statuses(root)) == 1 + 2 + 2 + 2 + 3
    for name in ("config.yaml", "provenance.json", "report/index.html", "report/tables.md", "report/tables.tex",
                 "report/costs.md", "report/plots/training.png", "report/plots/iterations.png",
                 "report/plots/ablation.png"):
        assert (root / name).is_file(), name
    prov = json.loads((root / "provenance.json").read_text())
    assert prov["shared_hash"] == json.loads((root / "plan.json").read_text())["shared_hash"]
    assert "train_data" in prov["data"] and prov["packages"]["torch"]
    md = (root / "report" / "tables.md").read_text()
    for row in ("| base ", "| sft ", "| sft-again ", "| dpo ", "| gsil-logistic "):
        assert row in md
    assert "identical configuration: every method (4)" in md
    # identical weights (same loss, params, seed and data) were evaluated once
    again = root / "eval" / "sft-again" / "seed-0" / "iter-1"
    assert json.loads((again / "model.json").read_text())["fingerprint"] == \
        json.loads((root / "eval" / "sft" / "seed-0" / "iter-1" / "model.json").read_text())["fingerprint"]
    assert (again / "gsm8k" / "shared_from.json").is_file()
    _check_each_eval_scored_its_checkpoint(root, tiny_model_dir)
    # every evaluated model is in the index, with the experiment's hash
    rows = RunIndex(index).metrics(primary_only=True)
    assert len(rows) == 2 * (1 + 1 + 1 + 1 + 2) and set(rows.shared_hash) == {prov["shared_hash"]}
    # a rerun does nothing but the report
    stamp = (root / "eval" / "dpo" / "seed-0" / "iter-1" / "gsm8k" / "metrics.json").stat().st_mtime_ns
    records = {p: p.stat().st_mtime_ns for p in root.rglob("step.json")}  # every step's record: none rewritten
    assert run_experiment(load_experiment(cfg_path), root, data_dir=str(data_dir)) == 0
    assert {p: p.stat().st_mtime_ns for p in root.rglob("step.json")} == records
    assert (root / "eval" / "dpo" / "seed-0" / "iter-1" / "gsm8k" / "metrics.json").stat().st_mtime_ns == stamp
    assert (root / "report" / "tables.md").read_text() == md
    assert json.loads((root / "plan.json").read_text())["sessions"] == 2


def test_model_free_tasks_and_the_after_eval_part_of_every_step(tmp_path, tiny_model_dir, data_dir, monkeypatch):
    """The scorer canaries (model-free: scored on the base step only) beside a per-model task: every
    step's own record says done, and each checkpoint's model card carries its scores. A failure after
    the scores exist (trackers, model card, Hub push) leaves the step unfinished; the rerun redoes
    only that part."""
    import gsil_bench.harness.steps as steps
    from gsil_bench.harness.workers import read_record

    data = tiny_experiment(tiny_model_dir, tasks=["heldout_gsm8k", "scorer_canaries"])
    data["shared"]["iterations"], data["methods"] = 1, [{"loss": "sft"}]
    cfg_path = write_cfg(tmp_path, data)
    root = tmp_path / "run"
    calls = []
    real_after = steps._after_eval

    def failing_once(run, step, out):
        calls.append(step.id)
        if step.id == "eval/sft/seed-0/iter-1" and calls.count(step.id) == 1:
            raise OSError("tracker unreachable")
        return real_after(run, step, out)

    monkeypatch.setattr(steps, "_after_eval", failing_once)
    assert run_experiment(load_experiment(cfg_path), root, data_dir=str(data_dir)) == 1
    assert _statuses(root)["eval/sft/seed-0/iter-1"] == "failed"
    sft_eval = root / "eval" / "sft" / "seed-0" / "iter-1"
    assert read_record(sft_eval)["error"] == "OSError: tracker unreachable"
    assert sorted(p.name for p in sft_eval.iterdir() if p.is_dir()) == ["heldout_gsm8k"]  # canaries: base only
    stamp = (sft_eval / "heldout_gsm8k" / "metrics.json").stat().st_mtime_ns
    assert run_experiment(load_experiment(cfg_path), root, data_dir=str(data_dir)) == 0
    assert (sft_eval / "heldout_gsm8k" / "metrics.json").stat().st_mtime_ns == stamp  # not scored again
    assert calls.count("eval/sft/seed-0/iter-1") == 2 and calls.count("eval/base/iter-0") == 1
    assert set(_statuses(root).values()) == {"done"}
    assert read_record(sft_eval)["status"] == read_record(root / "eval" / "base" / "iter-0")["status"] == "done"
    card = (root / "sft" / "seed-0" / "iter-1" / "checkpoint" / "README.md").read_text()
    assert "heldout_gsm8k" in card and "scorer_canaries" not in card
    base = json.loads((root / "eval" / "base" / "iter-0" / "scorer_canaries" / "metrics.json").read_text())
    assert base["metrics"]["agreement"]["value"] == 1.0


@pytest.mark.slow
def test_kill_9_then_rerun_gives_the_same_tables(tmp_path, tiny_model_dir, data_dir):
    cfg_path = write_cfg(tmp_path, tiny_experiment(tiny_model_dir))
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    proc = cli("run", str(cfg_path), "--output", str(clean), "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for min_done in (2, 5):  # kill twice: once early (training), once later
        p = subprocess.Popen([sys.executable, "-m", "gsil_bench.harness.cli", "run", str(cfg_path), "--output", str(killed),
                              "--data-dir", str(data_dir)], cwd=REPO, env=env, start_new_session=True,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 600
        while time.time() < deadline and p.poll() is None:
            plan = killed / "plan.json"
            if plan.is_file():
                try:
                    statuses = list(_statuses(killed).values())
                except json.JSONDecodeError:
                    statuses = []
                if statuses.count("done") >= min_done and _running(killed):
                    break
            time.sleep(0.05)
        assert p.poll() is None, "the run finished before it could be killed"
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    proc = cli("run", str(cfg_path), "--output", str(killed), "--data-dir", str(data_dir))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(_statuses(killed).values()) == {"done"}
    assert (killed / "report" / "tables.md").read_text() == (clean / "report" / "tables.md").read_text()


@pytest.mark.slow
def test_smoke_config_on_the_embedded_model(tmp_path, data_dir):
    """The README's main command, configs/smoke.yaml, on the real embedded model."""
    out = tmp_path / "smoke"
    t0 = time.time()
    proc = cli("run", "configs/smoke.yaml", "--output", str(out), "--data-dir", str(data_dir), timeout=3600)
    wall = time.time() - t0
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert set(_statuses(out).values()) == {"done"}
    cfg = load_experiment(REPO / "configs" / "smoke.yaml")
    md = (out / "report" / "tables.md").read_text()
    for m in cfg.methods:
        assert f"| {m.label} " in md
    html = (out / "report" / "index.html").read_text()
    assert html.count("data:image/png;base64,") == 4  # ablation, training curves, per-iteration, loss anatomy
    # the main job measures something: GSIL's held-out margin separates methods (disjoint 95% intervals)
    from gsil_bench.reports.rundata import load_run
    from gsil_bench.reports.tables import build_comparison

    comp = build_comparison(load_run(out), baseline="sft", n_boot=500)
    assert "heldout_gsm8k/margin" in comp.columns and "| heldout_gsm8k margin" in md.replace("|  ", "| ")
    margins = {m: c.interval for (m, _, col), c in comp.cells.items() if col == "heldout_gsm8k/margin"}
    assert set(margins) == {"base"} | {m.label for m in cfg.methods}
    assert margins["base"].value == 0.0  # the starting model is its own reference
    separated = [(a, b) for a in margins for b in margins
                 if margins[a].ci_high < margins[b].ci_low]
    assert ("base", "sft") in separated and len(separated) >= 10, separated
    # every loss trains its own way: no two methods end on the same held-out log-likelihood
    logp = [round(c.interval.value, 6) for (_, _, col), c in comp.cells.items() if col == "heldout_gsm8k"]
    assert len(set(logp)) == len(logp), logp
    print(f"smoke run wall time: {wall:.0f} s")
