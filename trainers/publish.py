"""What a finished checkpoint carries out of gsil-bench: a model card (README.md with the
Hub's YAML metadata: method, loss and parameters, configuration hashes, training data,
evaluation scores once known) and an optional upload to the Hugging Face Hub
(`train.push_to_hub`, `train.hub_model_id`) through `huggingface_hub`.

Also the validation problems of the settings that send results elsewhere: trackers
(`train.report_to`), fp16 (needs CUDA), and the Hub push.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import yaml

from gsil_bench.core.config import ExperimentConfig
from gsil_bench.core.errors import Problem
from gsil_bench.core.io import atomic_write_text
from gsil_bench.core.tracking import tracker_problems

log = logging.getLogger(__name__)
CARD = "README.md"


def publish_problems(cfg: ExperimentConfig) -> list[Problem]:
    """train.report_to, precision fp16 and push_to_hub, as problems for the validation pass."""
    t = cfg.shared.train
    out = tracker_problems(t.report_to, "shared.train.report_to")
    if t.precision == "fp16":
        import torch

        if not torch.cuda.is_available():
            out.append(Problem("shared.train.precision", "fp16 mixed precision needs a CUDA GPU; use fp32 or auto "
                                                         "on this machine"))
    if t.push_to_hub and not t.hub_model_id:
        out.append(Problem("shared.train.hub_model_id", "push_to_hub needs the Hub repository, e.g. user/gsil-zephyr"))
    return out


def hub_revision(method: str, seed: int, iteration: int) -> str:
    """The branch of `hub_model_id` one checkpoint is pushed to."""
    return f"{method}-seed-{seed}-iter-{iteration}".replace("/", "-")


def model_card(summary: dict[str, Any], cfg: ExperimentConfig, scores: dict[str, dict[str, Any]] | None = None) -> str:
    """README.md text of a checkpoint from its summary.json (and its tasks' metrics.json)."""
    s = cfg.shared
    tags = list(dict.fromkeys(["gsil-bench", summary["loss"], summary["method"]]))
    meta: dict[str, Any] = {"library_name": "transformers", "tags": tags,
                            "base_model": s.model.removeprefix("embedded:"), "pipeline_tag": "text-generation"}
    if scores:
        meta["model-index"] = [{"name": f"{cfg.name}-{summary['method']}", "results": [
            {"task": {"type": "text-generation"}, "dataset": {"name": task, "type": task},
             "metrics": [{"type": name, "value": m["value"]} for name, m in rec.get("metrics", {}).items()
                         if isinstance(m, dict) and m.get("value") is not None]}
            for task, rec in scores.items()]}]
    params = ", ".join(f"{k}={v}" for k, v in sorted(summary.get("params", {}).items())) or "none (the loss's defaults)"
    lines = [
        "---", yaml.safe_dump(meta, sort_keys=False).rstrip(), "---", "",
        f"# {cfg.name}: {summary['method']} (seed {summary['seed']}, iteration {summary['iteration']})", "",
        f"Trained with [gsil-bench](https://github.com/tengxiao1/GSIL) from `{s.model}`"
        f"{f' (revision {s.model_revision})' if s.model_revision else ''}.", "",
        "| | |", "|---|---|",
        f"| method | {summary['method']} (loss `{summary['loss']}`, parameters {params}) |",
        f"| started from | `{summary.get('init_model')}` |",
        f"| training data | `{s.train_data.path}` (format {s.train_data.format}) |",
        f"| optimizer | {s.optimizer.name}, lr {s.optimizer.lr}, {s.schedule.name} schedule |",
        f"| steps / examples / tokens | {summary['steps']} / {summary.get('examples')} / {summary.get('train_tokens')} |",
        f"| precision | {summary.get('precision')} |",
        f"| shared configuration hash | `{summary.get('shared_hash')}` |",
        f"| training key | `{summary.get('train_key')}` |", "",
        "## Evaluation", "",
    ]
    if not scores:
        lines.append("Not evaluated yet (`gsil-bench run` adds the scores after scoring this checkpoint).")
    else:
        lines += ["| task | metric | value | 95% interval | n |", "|---|---|---|---|---|"]
        for task, rec in scores.items():
            for name, m in rec.get("metrics", {}).items():
                if not isinstance(m, dict) or m.get("value") is None:
                    continue
                ci = f"[{m['ci_low']:.4g}, {m['ci_high']:.4g}]" if m.get("ci_low") is not None else ""
                lines.append(f"| {task} | {name} | {m['value']:.4g} | {ci} | {m.get('n', '')} |")
    return "\n".join(lines) + "\n"


def write_model_card(checkpoint: Path, summary: dict[str, Any], cfg: ExperimentConfig,
                     scores: dict[str, dict[str, Any]] | None = None) -> Path:
    """Write (or rewrite, with scores) the checkpoint's README.md."""
    path = Path(checkpoint) / CARD
    atomic_write_text(path, model_card(summary, cfg, scores))
    return path


def push_checkpoint(checkpoint: Path, repo_id: str, revision: str, *, private: bool = True) -> str:
    """Upload a checkpoint folder (weights, tokenizer, card) to `repo_id` at branch `revision`
    through huggingface_hub (token from `hf auth login` or $HF_TOKEN); returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
    api.create_branch(repo_id, branch=revision, exist_ok=True)
    info = api.upload_folder(repo_id=repo_id, folder_path=str(checkpoint), revision=revision,
                             commit_message=f"gsil-bench: {revision}", ignore_patterns=[".*"])
    log.info("pushed %s to %s@%s", checkpoint, repo_id, revision)
    return str(getattr(info, "commit_url", info))
