"""Any lm-evaluation-harness task, run on our model object, with per-sample records.

`LmEvalTask(name, lm_task)` runs `lm_eval.simple_evaluate` with the task exactly as lm-eval
defines it (prompts, few-shot sampling, filters, metrics). The only change: a task whose
data set is one we hold locally (`LOCAL_DATASETS`, e.g. openai/gsm8k) reads the files of
the data directory instead of the Hub, by overriding `dataset_path`/`dataset_kwargs` in
the config loaded from lm-eval's own YAML. Groups and tags are passed through by name.

The model: our loaded Hugging Face model through `HFLM(pretrained=model, tokenizer=tok)`,
or, for the `openai` generation backend, lm-eval's local-(chat-)completions client on the
same server, or lm-eval's vLLM model (registry `LM_BACKENDS`). lm-eval's response cache
(`use_cache`, a SQLite file per model identity) makes reruns free.

Metrics keep lm-eval's values; intervals come from the per-sample scores (Wilson for
0/1 scores, t otherwise) when their mean reproduces lm-eval's value, else from lm-eval's
own stderr (normal interval).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from gsil_bench.core.config import hash_view
from gsil_bench.core.facts import MetricFacts, proportion
from gsil_bench.core.generation import AUTO_START, OPENAI_NEEDS_URL
from gsil_bench.core.io import atomic_write_json, hash_obj
from gsil_bench.core.models import cache_root, resolve
from gsil_bench.core.registry import Registry, did_you_mean
from gsil_bench.core.vllm_backend import engine, engine_args
from gsil_bench.tasks.base import Sample, TaskError, TaskInfo, TaskResult
from gsil_bench.tasks.context import EvalContext
from gsil_bench.tasks.stats import Z95, Metric, sample_stderr, summarize

log = logging.getLogger(__name__)

# (Hub dataset_path, dataset_name) -> {split: file relative to the data directory}
LOCAL_DATASETS: dict[tuple[str, str | None], dict[str, str]] = {
    ("openai/gsm8k", "main"): {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
    ("gsm8k", "main"): {"train": "gsm8k/train.jsonl", "test": "gsm8k/test.jsonl"},
}
# Open LLM Leaderboard data sets (tasks.protocols): read from the Hub in real use; files under
# <data dir>/openllm/<name>/<split>.jsonl, in each data set's own format, win when present (offline tests)
for _hub, _name, _dir, _splits in (
    ("allenai/ai2_arc", "ARC-Challenge", "arc_challenge", ("train", "validation", "test")),
    ("Rowan/hellaswag", None, "hellaswag", ("train", "validation")),
    ("truthfulqa/truthful_qa", "multiple_choice", "truthfulqa_mc", ("validation",)),
    ("allenai/winogrande", "winogrande_xl", "winogrande", ("train", "validation")),
):
    LOCAL_DATASETS[(_hub, _name)] = {split: f"openllm/{_dir}/{split}.jsonl" for split in _splits}
LM_BACKENDS: Registry[Callable[..., Any]] = Registry("lm-eval model backend")  # (ctx, add_bos, chat=) -> lm-eval LM
LOGGED_ONCE = ("doc", "arguments", "resps")  # fields of lm-eval's per-filter sample records equal across its filters


def lm_eval_version() -> str:
    return metadata.version("lm-eval")


@lru_cache(maxsize=1)
def task_index() -> dict[str, tuple[str, str | None]]:
    """lm-eval's task/group/tag names -> (kind, yaml path); built once (slow) and cached on disk."""
    import lm_eval


    where = hash_obj(str(Path(lm_eval.__file__).resolve().parent))  # a moved environment re-indexes
    path = cache_root() / "lm_eval" / f"index-{lm_eval_version()}-{where}.json"
    if path.is_file():
        return {k: (v[0], v[1]) for k, v in json.loads(path.read_text()).items()}
    from lm_eval.tasks import TaskManager

    log.info("indexing lm-eval tasks (once per lm-eval version)")
    index = {name: (e.kind.name, str(e.yaml_path) if e.yaml_path else None)
             for name, e in TaskManager().task_index.items()}
    atomic_write_json(path, index)
    return index


def check_task_name(name: str, ours: list[str]) -> None:
    """Raise TaskError with a did-you-mean when `name` is neither ours nor lm-eval's."""
    if name in ours:
        return
    index = task_index()
    if name not in index:
        raise TaskError(f"unknown task {name!r}{did_you_mean(name, ours + sorted(index))}; ours: "
                        f"{', '.join(ours)}; or any lm-eval task (lm-eval ls tasks)")


def builtin_yaml(relative: str) -> Path:
    """A task YAML shipped with lm-eval (lm_eval/tasks/<relative>)."""
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).parent / relative


def task_spec(lm_task: str, data_dir: Path | None, yaml_path: Path | None = None) -> tuple[Any, dict[str, str]]:
    """The spec passed to lm-eval (a config dict for a single task, the name for groups and
    tags) and the local data files it reads. `yaml_path` skips the index lookup."""
    from lm_eval.tasks._yaml_loader import load_yaml

    if yaml_path is None:
        kind, found = task_index()[lm_task]
        if kind not in ("TASK", "PY_TASK") or found is None:
            return lm_task, {}
        yaml_path = Path(found)
    cfg = load_yaml(yaml_path, resolve_func=True)
    if cfg.get("task") != lm_task:
        raise TaskError(f"{yaml_path} defines task {cfg.get('task')!r}, not {lm_task!r}")
    return localize(cfg, lm_task, data_dir)


def localize(cfg: dict[str, Any], lm_task: str, data_dir: Path | None) -> tuple[Any, dict[str, str]]:
    """A task config reading our local files for its data set when they are all present (else the Hub)."""
    files = LOCAL_DATASETS.get((str(cfg.get("dataset_path")), cfg.get("dataset_name")))
    local = {split: data_dir / rel for split, rel in (files or {}).items()} if data_dir else {}
    if local and all(p.is_file() for p in local.values()):
        cfg.update(dataset_path="json", dataset_name=None,
                   dataset_kwargs={**(cfg.get("dataset_kwargs") or {}), "data_files": {k: str(v) for k, v in local.items()}})
        return cfg, {f"{split}": str(p) for split, p in local.items()}
    if files:
        log.info("%s: local files not found under %s; lm-eval reads the Hub", lm_task, data_dir)
    return cfg, {}


@LM_BACKENDS.register("hf")
def _hf_lm(ctx: EvalContext, add_bos: bool | None = None, **_: Any) -> Any:
    from lm_eval.models.huggingface import HFLM

    model, tok = ctx.hf()
    device = str(next(model.parameters()).device)
    # auto on a GPU: lm-eval's own search, from batch_size down, halving on CUDA's out-of-memory error; on a CPU
    # batch_size as is (lm-eval probes with full-length sequences, and running out of host memory kills the process)
    gen = ctx.cfg.generation
    size: int | str = "auto" if gen.auto_batch_size and device.startswith("cuda") else gen.batch_size
    return HFLM(pretrained=model, tokenizer=tok, batch_size=size, max_batch_size=max(gen.batch_size, AUTO_START),
                device=device, add_bos_token=add_bos)


@LM_BACKENDS.register("openai")
def _api_lm(ctx: EvalContext, add_bos: bool | None = None, chat: bool | None = None) -> Any:
    """The server tokenises the text it receives (llama.cpp adds BOS when the model's metadata says so; vLLM's
    /completions the tokenizer's special tokens): `add_bos` cannot be forced here (docs/reproduction.md, fidelity
    table). `chat`: whether the task applies the chat template (a task without it, e.g. the leaderboard's, needs
    the plain completions endpoint; None: the context's setting)."""
    from lm_eval.api.registry import get_model

    gen = ctx.cfg.generation
    chat = ctx.chat if chat is None else chat
    cls = get_model("local-chat-completions" if chat else "local-completions")
    key = os.environ.get(gen.api_key_env)
    if not gen.base_url:
        raise TaskError(f"eval.generation.base_url: {OPENAI_NEEDS_URL}")
    return cls(base_url=f"{gen.base_url.rstrip('/')}/{'chat/completions' if chat else 'completions'}",
               model=gen.api_model or ctx.model, tokenizer_backend=None, tokenized_requests=False,
               num_concurrent=gen.concurrency, max_retries=gen.max_retries, timeout=int(gen.timeout),
               **({"auth_token": key} if key else {}))


@LM_BACKENDS.register("vllm")
def _vllm_lm(ctx: EvalContext, add_bos: bool | None = None, **_: Any) -> Any:
    """lm-eval's vLLM model on the process's shared engine (core.vllm_backend.engine: the generation backend's,
    so an evaluation loads the model into vLLM once); `add_bos` reaches lm-eval's tokenizer (its add_bos_token)."""
    from lm_eval.api.registry import get_model

    args = engine_args(ctx.cfg.generation)
    with shared_engine(resolve(ctx.model), ctx.revision, args):
        return get_model("vllm")(pretrained=resolve(ctx.model), batch_size="auto", revision=ctx.revision,
                                 add_bos_token=add_bos, **args)


# lm-eval's VLLM passes these to vllm.LLM besides ours (lm_eval/models/vllm_causallms.py, VLLM.__init__); at these
# values its engine is the shared one (core.vllm_backend.engine_args sets lm-eval's seed, 1234)
LM_EVAL_ENGINE_DEFAULTS = {"tokenizer": None, "tokenizer_mode": "auto", "trust_remote_code": False, "max_num_seqs": None,
                           "quantization": None, "enable_lora": False, "max_lora_rank": 16, "max_model_len": None}


@contextmanager
def shared_engine(path: str, revision: str | None, args: dict[str, Any]) -> Iterator[None]:
    """While lm-eval's VLLM is built, its `LLM(**model_args)` returns the shared engine for `path` when the
    arguments it adds are lm-eval's defaults (else lm-eval builds its own engine, as it would alone)."""
    import lm_eval.models.vllm_causallms as lm_vllm

    real = lm_vllm.LLM

    def llm(**kw: Any) -> Any:
        theirs = {k: v for k, v in kw.items() if k not in args and k not in ("model", "revision", "tokenizer_revision")}
        if (kw.get("model") == path and all(kw.get(k) == v for k, v in args.items())
                and all(LM_EVAL_ENGINE_DEFAULTS.get(k, ...) == v for k, v in theirs.items())):
            return engine(path, revision, args)
        log.info("lm-eval's vLLM model builds its own engine (arguments %s)", theirs)
        return real(**kw)

    with _ENGINE_LOCK:
        lm_vllm.LLM = llm
        try:
            yield
        finally:
            lm_vllm.LLM = real


_ENGINE_LOCK = threading.Lock()


# lm-eval's registered metrics (lm_eval/api/metrics.py) and their facts; a metric lm-eval reports that is not
# here keeps lm-eval's own direction and is shown by its name
LM_EVAL_METRICS: dict[str, MetricFacts] = {
    "exact_match": proportion("exact match", "share of answers equal to the reference after the filter's extraction"),
    "acc": proportion("accuracy", "share of items whose most likely choice (summed log-prob) is the correct one"),
    "acc_norm": proportion("accuracy (length-normalised)", "share of items whose most likely choice, log-prob "
                           "divided by the choice's length in bytes, is the correct one"),
    "mc1": proportion("MC1", "share of questions whose most likely single answer is the true one"),
    "mc2": proportion("MC2", "normalised probability mass the model puts on the true answers"),
    "f1": proportion("F1", "token-overlap F1 between answer and reference"),
}
# display names of lm-eval tasks run under their own name (pass-through) or wrapped by a protocol
LM_EVAL_DISPLAY = {"gsm8k": "GSM8K", "gsm8k_cot_zeroshot": "GSM8K (chat, 0-shot CoT)", "arc_challenge": "ARC-Challenge",
                   "hellaswag": "HellaSwag", "truthfulqa_mc2": "TruthfulQA", "mmlu": "MMLU", "winogrande": "Winogrande",
                   "gsm8k_v0.3": "GSM8K (lm-eval 0.3)", "gsm8k_v0.4.0": "GSM8K (lm-eval 0.4.0)"}


def lm_eval_facts(name: str) -> MetricFacts | None:
    """`metric/filter`, `leaf/metric/filter` or `subjects/metric/filter` -> lm-eval's metric facts, the
    filter (unless lm-eval's `none`) and the subject mean in the label."""
    parts = name.split("/")
    at = next((i for i, p in enumerate(parts) if p in LM_EVAL_METRICS), None)
    if at is None:
        return None
    facts = LM_EVAL_METRICS[parts[at]]
    label = facts.label + "".join(f", {p}" for p in parts[at + 1:] if p != "none")
    if parts[0] == "subjects":
        return replace(facts, label=f"{label}, mean over subjects", glossary=f"unweighted mean over subjects of the {facts.glossary}")
    return replace(facts, label=label)


def fewshot_for(setting: int | dict[str, int] | None, name: str, lm_task: str) -> int | None:
    """EvalConfig.num_fewshot for one task: one count for every task, or a per-task mapping (by our task
    name or lm-eval's; a task it does not name keeps its own default)."""
    if isinstance(setting, dict):
        return setting.get(name, setting.get(lm_task))
    return setting


class LmEvalTask:
    """One lm-eval task (or group) under our name; `chat`: None = EvalConfig.lm_eval_chat_template."""

    def __init__(self, name: str, lm_task: str | None = None, *, chat: bool | None = None,
                 primary: str | None = None, yaml: str | None = None, fewshot: int | None = None,
                 config: dict[str, Any] | None = None, subject_mean: str | None = None, display: str | None = None,
                 about: str | None = None, add_bos: bool | None = None, protocol: str | None = None) -> None:
        self.name, self.lm_task, self.chat_pref = name, lm_task or name, chat
        self.yaml = builtin_yaml(yaml) if yaml else None  # lm_eval/tasks/<yaml>: no index needed
        self.fewshot = fewshot  # fixed by a protocol (tasks.protocols): wins over EvalConfig.num_fewshot
        self.config = config  # a whole lm-eval task config (a protocol's own task), instead of lm-eval's YAML
        self.subject_mean = subject_mean  # a group's metric ("acc/none"): also its unweighted mean over subtasks
        self.info = TaskInfo(  # lm-eval takes the first `limit` documents of each task itself
            name, display=display or LM_EVAL_DISPLAY.get(self.lm_task, name), primary=primary or "",
            about=about or f"lm-evaluation-harness task {self.lm_task}, scored by lm-eval itself",
            metric_facts=lm_eval_facts, limit="lm-eval", backend="lm-eval", protocol=protocol)
        self.add_bos = add_bos  # lm-eval's add_bos_token (None: lm-eval's default, the tokenizer's; a protocol fixes it)
        self._spec: Any = None

    @property
    def primary(self) -> str:
        """The declared primary metric ("": the first lm-eval reports, a task run under its own name)."""
        return self.info.primary

    def load(self, ctx: EvalContext) -> list[dict[str, Any]]:
        if self.config is not None:
            self._spec, files = localize(dict(self.config), self.lm_task, ctx.data_dir)
        else:
            self._spec, files = task_spec(self.lm_task, ctx.data_dir, self.yaml)
        for split, path in files.items():
            ctx.record_data(self.name, split, path)
        return [{"lm_eval_task": self.lm_task}]  # documents are lm-eval's; it applies `limit`

    def apply_chat(self, ctx: EvalContext) -> bool:
        want = self.chat_pref if self.chat_pref is not None else ctx.cfg.lm_eval_chat_template
        return bool(want and ctx.chat)

    def evaluate(self, docs: list[dict[str, Any]], ctx: EvalContext) -> TaskResult:
        import lm_eval
        from lm_eval.tasks import TaskManager

        chat = self.apply_chat(ctx)
        lm = LM_BACKENDS.get(ctx.cfg.generation.backend)(ctx, self.add_bos, chat=chat)
        ident = ctx.identity() if self.add_bos is None else {**ctx.identity(), "add_bos_token": self.add_bos}
        cache = ctx.cache_dir() / f"lm_eval-{hash_obj(ident)}"  # lm-eval keys its cache by request text, not ids
        cache.parent.mkdir(parents=True, exist_ok=True)
        tm = TaskManager(include_defaults=False) if isinstance(self._spec, dict) else TaskManager()
        fewshot = self.fewshot if self.fewshot is not None else fewshot_for(ctx.cfg.num_fewshot, self.name, self.lm_task)
        started = time.perf_counter()
        with _one_process(ctx.cfg.generation.backend == "hf"):
            out = lm_eval.simple_evaluate(
                model=lm, tasks=[self._spec], limit=ctx.limit, num_fewshot=fewshot,
                gen_kwargs=ctx.cfg.lm_eval_gen_kwargs, apply_chat_template=chat, fewshot_as_multiturn=chat,
                log_samples=True, use_cache=str(cache), task_manager=tm,
            )
        if out is None:
            raise TaskError(f"{self.name}: lm-eval returned no results")
        samples = lm_eval_samples(out)
        metrics = lm_eval_metrics(out, samples)
        self._ran = {"chat": chat, "num_fewshot": fewshot, "lm_eval_gen_kwargs": ctx.cfg.lm_eval_gen_kwargs,
                     "generation": {t: (c or {}).get("generation_kwargs") for t, c in (out.get("configs") or {}).items()}}
        if self.subject_mean:
            metrics[f"subjects/{self.subject_mean}"] = subject_mean(metrics, list(out.get("samples", {})),
                                                                    self.subject_mean)
        info = {"lm_eval_version": lm_eval_version(), "lm_eval": {
            "task": self.lm_task, "apply_chat_template": chat, "add_bos_token": self.add_bos, "n-shot": out.get("n-shot"),
            "versions": out.get("versions"), "n-samples": out.get("n-samples"), "results": out.get("results"),
            "higher_is_better": out.get("higher_is_better"),
            "configs": out.get("configs"), **{k: out.get(k) for k in RUN_KEYS if k in out},
            "fewshot_as_multiturn": chat, "chat_template": lm_chat_template(lm) if chat else None,
            "total_evaluation_time_seconds": str(time.perf_counter() - started)}}
        return TaskResult(samples, metrics, info=json.loads(json.dumps(info, default=str)))

    def ran_with(self, ctx: EvalContext) -> dict[str, Any]:
        """The settings lm-eval ran with: its chat choice, and its own generation settings (per lm-eval
        task: its task config's generation_kwargs with eval.lm_eval_gen_kwargs) in place of the decoding
        keys of eval.generation, which an lm-eval task does not use (the backend's keys stay)."""
        ran = dict(getattr(self, "_ran", None) or {"chat": self.apply_chat(ctx)})
        lm_generation = ran.pop("generation", None)
        view = hash_view(ctx.cfg)
        decoding = ("max_new_tokens", "temperature", "top_p", "prompt_template")
        generation = {k: v for k, v in (view.get("generation") or {}).items() if k not in decoding}
        return {**ran, "eval": {**view, "generation": {**generation, "lm_eval": lm_generation}}}

    def aggregate(self, samples: list[Sample], ctx: EvalContext) -> dict[str, Metric]:
        raise NotImplementedError("lm-eval aggregates its own metrics")


# what simple_evaluate's result holds beside the scores (lm-eval's results file carries them; tasks.interop)
RUN_KEYS = ("config", "git_hash", "date", "pretty_env_info", "transformers_version", "upper_git_hash",
            "tokenizer_pad_token", "tokenizer_eos_token", "tokenizer_bos_token", "eot_token_id", "max_length",
            "group_subtasks", "groups")


def lm_chat_template(lm: Any) -> str | None:
    """The chat template the model's tokenizer applied (lm-eval records it when a chat template is used)."""
    template = getattr(getattr(lm, "tokenizer", None), "chat_template", None)
    return template if isinstance(template, str) else None


@contextmanager
def _one_process(local: bool) -> Iterator[None]:
    """Under a multi-process launch every process evaluates models of its own (harness.runner): lm-eval 0.4.13's
    simple_evaluate returns nothing where LOCAL_RANK is not 0 (its tensor-parallel guard, lm_eval/evaluator.py:
    382-385), so a process other than the first lost every lm-eval result. With our own in-memory model (`local`)
    the call is one process's: LOCAL_RANK reads 0 for its duration."""
    saved = os.environ.get("LOCAL_RANK")
    if local and saved not in (None, "0"):
        os.environ["LOCAL_RANK"] = "0"
    try:
        yield
    finally:
        if saved is not None:
            os.environ["LOCAL_RANK"] = saved


def _num(x: Any) -> float | None:
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _compact(arguments: Any, prompt: Any) -> Any:
    """lm-eval's request arguments with each context equal to the item's prompt as null (multiple-choice
    requests repeat it per choice); tasks.interop puts the prompt back."""
    if not isinstance(arguments, list | tuple):
        return arguments
    return [[None if j == 0 and a == prompt else a for j, a in enumerate(arg)] for arg in arguments]


def lm_eval_samples(out: dict[str, Any]) -> list[Sample]:
    """One Sample per (task, document) from lm-eval's logged samples (one entry per filter)."""
    leaves = list(out.get("samples", {}))
    merged: dict[tuple[str, int], Sample] = {}
    for leaf in leaves:
        for rec in out["samples"][leaf]:
            key = (leaf, int(rec["doc_id"]))
            s = merged.get(key)
            if s is None:
                args = rec.get("arguments") or [[None]]
                resps = rec.get("resps") or [[None]]
                sid = str(rec["doc_id"]) if len(leaves) == 1 else f"{leaf}/{rec['doc_id']}"
                s = merged[key] = Sample(sid, args[0][0], resps[0][0] if len(resps[0]) == 1 else resps[0], {},
                                         rec.get("target"), {}, {"doc": rec.get("doc"), "lm_eval": {
                                             "task": leaf, "arguments": _compact(rec.get("arguments"), args[0][0]),
                                             "resps": rec.get("resps"), "records": []}})
            # lm-eval's own record per filter (its keys in its order; doc, arguments and resps kept once above),
            # so tasks.interop writes samples_<task>.jsonl exactly as `lm_eval --log_samples` does
            s.extra["lm_eval"]["records"].append({k: None if k in LOGGED_ONCE else v for k, v in rec.items()})
            flt = rec.get("filter", "none")
            filtered = rec.get("filtered_resps")
            s.extracted[flt] = filtered[0] if isinstance(filtered, list) and len(filtered) == 1 else filtered
            for m in rec.get("metrics", []):
                v = _num(rec.get(m))
                if v is not None:
                    name = f"{m}/{flt}" if len(leaves) == 1 else f"{leaf}/{m}/{flt}"
                    s.scores[name] = v
    return [merged[k] for k in sorted(merged)]


def subject_mean(metrics: dict[str, Metric], leaves: list[str], name: str) -> Metric:
    """The unweighted mean of `name` over a group's leaf tasks (the Open LLM Leaderboard v1's MMLU: the mean
    of the 57 subjects), with a normal interval from the subjects' standard errors."""
    found = [metrics[f"{leaf}/{name}"] for leaf in leaves if f"{leaf}/{name}" in metrics]
    values = [m.value for m in found if m.value is not None]
    if not values:
        raise TaskError(f"no {name} among the subtasks {leaves[:3]}...")
    value = sum(values) / len(values)
    errs = [m.stderr for m in found]
    if any(e is None for e in errs):
        return Metric(value, None, None, sum(m.n for m in found), None, "none")
    stderr = (sum(e * e for e in errs if e is not None) ** 0.5) / len(values)
    return Metric(value, value - Z95 * stderr, value + Z95 * stderr, sum(m.n for m in found), stderr,
                  "normal (subject stderrs)")


def lm_eval_metrics(out: dict[str, Any], samples: list[Sample]) -> dict[str, Metric]:
    """lm-eval's reported values, with intervals (see the module docstring)."""
    metrics: dict[str, Metric] = {}
    results = out.get("results", {})
    single = len(out.get("samples", {})) == 1
    directions = out.get("higher_is_better", {})
    for leaf, res in results.items():
        for key, value in res.items():
            if "," not in key or "_stderr" in key or _num(value) is None:
                continue
            metric, flt = key.split(",", 1)
            name = f"{metric}/{flt}" if single and leaf in out.get("samples", {}) else f"{leaf}/{metric}/{flt}"
            per_item = [s.scores[name] for s in samples if name in s.scores]
            higher = bool((directions.get(leaf) or {}).get(metric, True))  # lm-eval's own per-metric direction
            value = float(value)
            stderr = _num(res.get(f"{metric}_stderr,{flt}"))
            if per_item and abs(sum(per_item) / len(per_item) - value) < 1e-9:
                m = summarize(per_item)
                metrics[name] = Metric(value, m.ci_low, m.ci_high, m.n, sample_stderr(per_item), m.ci_method, higher)
            else:
                n = len(per_item) or int(res.get("sample_len") or 0)
                lo, hi = (value - Z95 * stderr, value + Z95 * stderr) if stderr is not None else (None, None)
                metrics[name] = Metric(value, lo, hi, n, stderr, "normal (lm-eval stderr)" if stderr else "none", higher)
    return metrics
