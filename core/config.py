"""Experiment configuration: frozen dataclasses loaded strictly from YAML.

An experiment is a `shared` block (everything every method trains and is scored
with) and a list of `methods`, each adding only a loss name and its parameters.
`shared_hash` fingerprints the shared block so reports can show that every method
ran the identical configuration. Every field is documented once, here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from gsil_bench.core.errors import ConfigError, Problem, ValidationError
from gsil_bench.core.registry import did_you_mean
from gsil_bench.core.strict import Located, build_collecting, method_label, to_plain

DEFAULT_MODEL = "embedded:smollm2-135m-instruct"


@dataclass(frozen=True)
class DataConfig:
    """One data file: demonstrations (prompt + response) or preference pairs."""

    path: str  # relative to the data directory, absolute, or "hf:<dataset>[:<config>]:<split>"
    format: str = "messages"  # a registered mapping: messages, gsm8k, code_alpaca, gpteacher, fields, preference
    prompt_field: str | None = None  # for format "fields"/"preference": the prompt key
    response_field: str | None = None  # for format "fields": the response key
    chosen_field: str = "chosen"  # for format "preference"
    rejected_field: str = "rejected"  # for format "preference"
    system_prompt: str | None = None  # prepended as a system message when set
    limit: int | None = None  # keep the first N rows
    offset: int = 0  # skip the first N rows (before limit)
    # how (prompt, response) become token ids: "chat" = the chat template once, prompt cut to max_prompt_length;
    # "spin" = the official SPIN/GSIL construction (docs/reproduction.md): empty system turn + first user turn,
    # EOS tokens inside prompt and response masked from attention, one EOS appended, prompt cut only when
    # prompt + longer response exceed max_length (trainers.official); "trl" = the zephyr DPO baseline's text,
    # alignment-handbook's chat template (empty system turn) tokenised by TRL v0.9.6's DPOTrainer: BOS on the
    # prompt, TRL's labels and pair truncation (trainers.handbook)
    encoding: Literal["chat", "spin", "trl"] = "chat"
    # humaneval: drop rows whose response contains a HumanEval docstring or solution, as alignment-handbook's
    # run_dpo.py does (trainers.handbook; reads <data dir>/humaneval/HumanEval.jsonl)
    decontaminate: Literal["humaneval"] | None = None


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer shared by every method."""

    name: Literal["adamw", "rmsprop"] = "adamw"
    lr: float = 1e-5
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW only
    alpha: float = 0.99  # RMSprop smoothing constant
    eps: float = 1e-8
    max_grad_norm: float | None = 1.0  # clip the global gradient norm; null = no clipping


@dataclass(frozen=True)
class ScheduleConfig:
    """Learning-rate schedule with linear warm-up."""

    name: Literal["linear", "cosine", "constant"] = "linear"
    warmup_ratio: float = 0.1  # fraction of total optimizer steps spent warming up
    warmup_steps: int | None = None  # warm-up optimizer steps; wins over warmup_ratio when set (as in transformers)


@dataclass(frozen=True)
class LoraConfig:
    """Optional LoRA adapters (peft); null trains all weights."""

    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    save_adapter: bool = False  # also write the adapter alone (peft format) to checkpoint/adapter/, beside the merged weights


@dataclass(frozen=True)
class TrainConfig:
    """Batching, lengths and numerics of the one training loop."""

    batch_size: int = 4  # examples per device per micro-step
    grad_accum: int = 1  # micro-steps per optimizer step
    epochs: int = 1  # passes over the data per self-play iteration
    max_steps: int | None = None  # cap on optimizer steps per iteration (null = no cap)
    max_length: int = 1024  # prompt + response tokens
    max_prompt_length: int = 512  # prompt tokens (left-truncated beyond this)
    # auto: bf16 on a GPU that supports it; bf16: fp32 weights under bf16 autocast; bf16-weights: the models hold bf16
    # weights as the official runs do (no fp32 master copy unless DeepSpeed keeps one; docs/reproduction.md);
    # fp16: autocast + loss scaling (V100, T4)
    precision: Literal["auto", "bf16", "bf16-weights", "fp16", "fp32"] = "auto"
    gradient_checkpointing: bool = False
    lora: LoraConfig | None = None
    logprob_chunk: int = 128  # sequence positions per chunk of the log-prob head
    packing: bool = True  # padding-free packed batches with per-sequence attention (same results, faster; false: padded)
    # with packing: the sequences of a step that share their prompt (a pair's real and generated responses) run it
    # once, each response attending to it and to itself only (trainers.packing.pack; same results up to float
    # rounding, fewer tokens); sdpa or eager attention (not flash_attention_2)
    share_prompts: bool = False
    save_every: int = 50  # optimizer steps between resumable checkpoints
    log_every: int = 1  # optimizer steps between metrics.jsonl lines
    eval_every: int | None = None  # optimizer steps between held-out evaluations (eval/nll); null = none
    eval_data: DataConfig | None = None  # the held-out slice for eval_every (e.g. the training file with an offset)
    report_to: list[str] = field(default_factory=list)  # experiment trackers: tensorboard, mlflow, wandb, trackio (core.tracking)
    push_to_hub: bool = False  # upload each final checkpoint (with its model card) through huggingface_hub
    hub_model_id: str | None = None  # the Hub repository for push_to_hub ("user/name"); iterations go to revisions
    # checkpoints whose weights stay on disk once nothing planned needs them (their evaluation done, the next
    # iteration trained from them): all; last (each method x seed's last iteration); none. Their metrics,
    # summary, model card and fingerprint stay (harness.retention). Not hashed: no result depends on it.
    keep_checkpoints: Literal["all", "last", "none"] = "all"
    # the weights' dtype on disk: train (as trained: fp32 weights unless precision bf16-weights) or bf16 (half
    # the disk; the next iteration and every evaluation then start from the bf16-rounded weights)
    checkpoint_dtype: Literal["train", "bf16"] = "train"


@dataclass(frozen=True)
class GenerationConfig:
    """How a model generates: self-play negatives and evaluation answers."""

    backend: str = "hf"  # a registered generator: hf, openai, vllm
    # self-play prompt: null = the chat template; else raw text with {prompt} (the first user turn), no chat
    # template, e.g. the official SPIN/GSIL "### Instruction: {prompt}\n\n### Response: "
    prompt_template: str | None = None
    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    batch_size: int = 16
    auto_batch_size: bool = False  # backend "hf": batch_size is the first size tried, halved on out-of-memory until a batch fits (then kept)
    cache: Literal["dynamic", "static"] = "dynamic"  # backend "hf": KV cache; static = preallocated, lean decode loop
    compile: bool = False  # backend "hf" with cache static: torch.compile the decode step (CUDA graphs on a GPU)
    base_url: str | None = None  # backend "openai": server URL, e.g. http://127.0.0.1:8000/v1
    api_model: str | None = None  # backend "openai": model name sent to the server
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding the key
    timeout: float = 120.0  # seconds per request (server backends)
    max_retries: int = 3
    concurrency: int = 4  # simultaneous requests (server backends)
    tensor_parallel_size: int = 1  # backend "vllm": GPUs one model is split over (vLLM's tensor_parallel_size)
    # backend "vllm" (generation and lm-eval's vLLM model): more vllm.LLM arguments, e.g. {max_model_len: 4096,
    # gpu_memory_utilization: 0.5}, over core.vllm_backend.engine_args' defaults (the hf backend's dtype; eager on a CPU)
    vllm_args: dict[str, Any] = field(default_factory=dict)
    # backends hf, vllm: "never" tokenises prompts without special tokens (the official self-play generators); "tokenizer"
    # with the tokenizer's own (BOS on Llama/Mistral tokenizers), as FastChat and vLLM on a string do (protocols set it)
    bos: Literal["never", "tokenizer"] = "never"
    # backends hf, vllm: cut prompts to this many tokens on the tokenizer's truncation side (GSIL: 1024); null = never
    max_prompt_tokens: int | None = None


@dataclass(frozen=True)
class JudgeConfig:
    """The MT-Bench judge: an OpenAI-compatible endpoint or a local HF model."""

    backend: Literal["openai", "hf"] = "openai"
    base_url: str | None = None  # "openai": e.g. https://api.openai.com/v1
    model: str = "gpt-4"  # "openai": model name; "hf": Hub id, folder or embedded:<name>
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 120.0
    max_retries: int = 3
    concurrency: int = 4
    max_tokens: int = 1024
    temperature: float = 0.0
    rating_rule: Literal["verdict", "fastchat"] = "verdict"  # verdict: a judgment with several different [[x]] ratings (e.g. one quoting the answer) is "ambiguous", not scored; fastchat: FastChat's first match (exact comparisons with published numbers)


@dataclass(frozen=True)
class EvalConfig:
    """Which tasks score every checkpoint, and how."""

    tasks: list[str] = field(default_factory=lambda: ["gsm8k", "humaneval", "mt_bench"])
    limit: int | None = None  # first N items of every task
    chat_template: bool = True  # apply the model's chat template to prompts
    num_fewshot: int | dict[str, int] | None = None  # lm-eval tasks: override the task default (one count, or per task: {gsm8k: 5})
    samples_per_task: int = 1  # code tasks: completions per problem (pass@k for k <= this)
    sample_temperature: float = 0.8  # code tasks: temperature of the samples_per_task sampled completions (pass@k)
    code_timeout: float = 10.0  # code tasks: seconds per sandboxed program (EvalPlus: at least 4x the canonical time)
    code_memory_mb: int = 4096  # code tasks: address-space limit (RLIMIT_AS) per sandboxed program (EvalPlus: 4 GiB)
    code_workers: int | None = None  # code tasks: programs run in parallel (null = CPU count)
    code_sandbox: Literal["bwrap", "process"] = "bwrap"  # code tasks: isolation of model-written code: bwrap (Linux namespaces via bubblewrap) or process (weaker, no OS isolation: explicit opt-in only)
    lm_eval_chat_template: bool = False  # lm-eval few-shot tasks (gsm8k, pass-through): apply the chat template too (off = Open LLM Leaderboard setting)
    lm_eval_gen_kwargs: str | None = None  # lm-eval generation overrides, lm-eval syntax ("max_gen_toks=256"); null = each task's own
    cache_dir: str | None = None  # shared generation/judgment cache; null = a cache/ folder inside each task folder
    # task mt_bench_fastchat: FastChat's conversation template by name ("zephyr"; FastChat picks it from the model
    # id); null = the model's own chat template
    fastchat_template: str | None = None
    # exit 0 even when a task's primary metric has no value for any item (e.g. a judge that never produced a
    # parseable rating); false: `eval` and `run` exit 1 naming the task. Not hashed: it decides the exit status only
    allow_empty: bool = False
    device: str | None = None  # the evaluated model's device (cuda, cuda:1, cpu, mps); null = cuda when available, else cpu
    reference_model: str | None = None  # held-out likelihood tasks: the model of the margin's log ratios; null = shared.model (runner) / no margin (eval)
    judge: JudgeConfig = field(default_factory=JudgeConfig)
    generation: GenerationConfig = field(
        default_factory=lambda: GenerationConfig(max_new_tokens=512, batch_size=16)
    )


@dataclass(frozen=True)
class IterationSchedule:
    """Shared settings of one self-play iteration that differ from the shared block (SPIN's schedule)."""

    iteration: int  # 1-based
    lr: float | None = None  # optimizer learning rate of this iteration
    epochs: int | None = None  # passes over this iteration's pairs


@dataclass(frozen=True)
class SelfPlayConfig:
    """Self-play iterations beyond "one round on this iteration's pairs"."""

    history: int = 1  # train iteration k on the pairs of iterations k-history+1..k (SPIN: 2)
    schedule: list[IterationSchedule] = field(default_factory=list)  # per-iteration lr / epochs


@dataclass(frozen=True)
class SharedConfig:
    """Everything every method of an experiment shares; hashed as a whole."""

    model: str = DEFAULT_MODEL  # Hub id, local folder, GGUF file, or embedded:<name>
    model_revision: str | None = None  # pin a Hub revision
    data_dir: str | None = None  # where local data files live (else $GSIL_DATA_DIR, else the Hub); relative: to the config file
    train_data: DataConfig = field(default_factory=lambda: DataConfig(path="gsm8k/train.jsonl", format="gsm8k"))
    preference_data: DataConfig | None = None  # DPO on real preference pairs; null = self-generated pairs
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)  # self-play generation
    iterations: int = 2  # self-play iterations for self-play losses (GSIL, SPIN)
    self_play: SelfPlayConfig = field(default_factory=SelfPlayConfig)
    seeds: list[int] = field(default_factory=lambda: [0])
    eval: EvalConfig = field(default_factory=EvalConfig)

    def pins(self) -> dict[str, str]:
        """Model name -> Hub revision: `model_revision` pins `model` wherever it is loaded (training,
        reference log-probs, the base model's evaluation, held-out margins), on `run` and `eval` alike."""
        return {self.model: self.model_revision} if self.model_revision else {}


@dataclass(frozen=True)
class IterationParams:
    """A method's loss parameters for one self-play iteration (merged over `params`)."""

    iteration: int  # 1-based
    params: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodConfig:
    """One method: a label, a registered loss and its keyword parameters."""

    loss: str
    name: str | None = None  # label in reports (default: the loss name)
    params: dict[str, float] = field(default_factory=dict)
    # loss parameters of single self-play iterations, e.g. [{iteration: 4, params: {beta: 5.0}}] (SPIN)
    per_iteration: list[IterationParams] = field(default_factory=list)
    # shared keys this method changes, dotted below `shared` (e.g. {"optimizer.name": "adamw"}); explicit,
    # validated and shown in the report beside the shared hash, which still covers the unchanged block
    overrides: dict[str, Any] = field(default_factory=dict)
    # set by a sweep's expansion (core.sweeps): the swept keys ("params.b", "overrides.optimizer.lr") with this
    # variant's values, and the label the variant was expanded from
    sweep: dict[str, Any] = field(default_factory=dict)
    sweep_of: str | None = None

    @property
    def label(self) -> str:
        return method_label(self)

    def params_at(self, iteration: int) -> dict[str, float]:
        """The loss parameters of one self-play iteration: `params` with that iteration's
        `per_iteration` entries merged over them (the one merge: training and validation use it)."""
        merged = dict(self.params)
        for p in self.per_iteration:
            if p.iteration == iteration:
                merged.update(p.params)
        return merged


@dataclass(frozen=True)
class ReportConfig:
    """Report options."""

    baseline: str = "sft"  # method label the significance marks compare against
    bootstrap: int = 2000  # paired-bootstrap resamples
    alpha: float = 0.05
    # published numbers (CSV: model, iteration, one column per task; docs/reproduction.md) shown beside ours,
    # with our value minus the published one; relative to the data directory, or absolute
    published: str | None = None
    tolerance: dict[str, float] = field(default_factory=dict)  # compare: per-metric smallest drop that counts ("task/metric" or "metric" -> units), over the defaults in reports.regression


@dataclass(frozen=True)
class ExperimentConfig:
    """A whole experiment: shared block + methods + report options."""

    name: str
    methods: list[MethodConfig]
    shared: SharedConfig = field(default_factory=SharedConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    plugins: list[str] = field(default_factory=list)  # modules imported first (e.g. new losses, tasks)

    def method(self, label: str) -> MethodConfig:
        for m in self.methods:
            if m.label == label:
                return m
        labels = [m.label for m in self.methods]
        raise ConfigError(f"method {label!r} is not in this experiment{did_you_mean(label, labels)}; has: {', '.join(labels)}")


# shared keys a method may override (training only: model, data, seeds and evaluation stay identical)
OVERRIDABLE = ("optimizer", "schedule", "train", "generation", "self_play")


def override_problems(cfg: ExperimentConfig) -> list[Problem]:
    """methods[i].overrides: every key dotted below an overridable shared block, and the result valid."""
    return [p for i, m in enumerate(cfg.methods) if m.overrides for p in _method_shared(cfg, i)[1]]


def _method_shared(cfg: ExperimentConfig, index: int) -> tuple[SharedConfig | None, list[Problem]]:
    """The shared block with methods[index]'s overrides applied, and the problems doing so."""
    at = f"methods[{index}].overrides"
    data, problems = to_plain(cfg.shared), []
    for dotted, value in cfg.methods[index].overrides.items():
        key, parts = f"{at}.{dotted}", str(dotted).split(".")
        if parts[0] not in OVERRIDABLE:
            problems.append(Problem(key, f"only keys below {', '.join(OVERRIDABLE)} may differ per method", at=at))
            continue
        node = data
        for part in parts[:-1]:
            node = node.get(part) if isinstance(node.get(part), dict) else {}
        if parts[-1] not in node:
            problems.append(Problem(key, f"no shared key {dotted!r}", at=at))
            continue
        node[parts[-1]] = value
    if problems:
        return None, problems
    shared, errs = build_collecting(SharedConfig, data, Located("<overrides>"), prefix=f"{at} -> shared")
    return shared, [replace(p, at=at) for p in errs]


def method_shared(cfg: ExperimentConfig, label: str, loc: Located | None = None) -> SharedConfig:
    """The shared block as `label` trains with it: the experiment's, with the method's explicit overrides."""
    method = cfg.method(label)
    if not method.overrides:
        return cfg.shared
    shared, problems = _method_shared(cfg, [m.label for m in cfg.methods].index(label))
    raise_problems(problems, loc or Located("<config>"), shared)
    assert shared is not None
    return shared


def for_method(cfg: ExperimentConfig, label: str) -> ExperimentConfig:
    """`cfg` with the shared block `label` trains with (its overrides applied)."""
    shared = method_shared(cfg, label)
    return cfg if shared is cfg.shared else replace(cfg, shared=shared)


def self_play_problems(cfg: ExperimentConfig) -> list[Problem]:
    """shared.self_play and methods[i].per_iteration: iterations >= 1 (entries beyond shared.iterations are
    simply not reached, so `shared.iterations=1` tries a long recipe), values sane."""
    sp, out = cfg.shared.self_play, []
    if sp.history < 1:
        out.append(Problem("shared.self_play.history", f"must be >= 1, got {sp.history}"))
    for j, it in enumerate(sp.schedule):
        key = f"shared.self_play.schedule[{j}]"
        if it.iteration < 1:
            out.append(Problem(f"{key}.iteration", f"must be >= 1, got {it.iteration}", at=key))
        if it.lr is not None and it.lr <= 0:
            out.append(Problem(f"{key}.lr", f"must be > 0, got {it.lr}", at=key))
        if it.epochs is not None and it.epochs < 1:
            out.append(Problem(f"{key}.epochs", f"must be >= 1, got {it.epochs}", at=key))
    seen = [it.iteration for it in sp.schedule]
    if len(seen) != len(set(seen)):
        out.append(Problem("shared.self_play.schedule", f"an iteration appears twice ({seen})"))
    for i, m in enumerate(cfg.methods):
        for j, per in enumerate(m.per_iteration):
            key = f"methods[{i}].per_iteration[{j}]"
            if per.iteration < 1:
                out.append(Problem(f"{key}.iteration", f"must be >= 1, got {per.iteration}", at=key))
    return out


def schedule_problems(cfg: ExperimentConfig) -> list[Problem]:
    """shared.schedule.warmup_steps >= 0 and shared.generation.prompt_template contains {prompt}."""
    out, steps = [], cfg.shared.schedule.warmup_steps
    if steps is not None and steps < 0:
        out.append(Problem("shared.schedule.warmup_steps", f"must be >= 0, got {steps}"))
    template = cfg.shared.generation.prompt_template
    if template is not None and "{prompt}" not in template:
        out.append(Problem("shared.generation.prompt_template",
                           f"must contain {{prompt}} (or be null for the chat template), got {template!r}"))
    return out


def iteration_config(cfg: ExperimentConfig, label: str, iteration: int) -> tuple[ExperimentConfig, MethodConfig]:
    """(cfg, method) for one self-play iteration: shared.self_play.schedule's lr/epochs and the
    method's per_iteration params applied (the experiment's own values elsewhere)."""
    method = cfg.method(label)
    shared = cfg.shared
    for it in shared.self_play.schedule:
        if it.iteration == iteration:
            if it.lr is not None:
                shared = replace(shared, optimizer=replace(shared.optimizer, lr=it.lr))
            if it.epochs is not None:
                shared = replace(shared, train=replace(shared.train, epochs=it.epochs))
    return replace(cfg, shared=shared), replace(method, params=method.params_at(iteration))


def raise_problems(problems: list[Problem], loc: Located, cfg: Any = True) -> None:
    """Raise one ValidationError with every problem rendered (file:line, key, message), if any; a problem
    the variants of one swept method share is rendered once (at the method as written)."""
    if problems or cfg is None:
        raise ValidationError(loc.render_all(problems) or [f"{loc.file}: the experiment cannot be built"])


def canonical_json(obj: Any) -> str:
    return json.dumps(to_plain(obj), sort_keys=True, separators=(",", ":"))


# fields added after run folders were recorded: left out of hashes while at their defaults, so a configuration
# that does not use them keeps the hash (shared_hash, training keys) it had before they existed
LATER_FIELDS = {(DataConfig, "encoding"), (DataConfig, "decontaminate"), (ScheduleConfig, "warmup_steps"), (GenerationConfig, "prompt_template"),
                (SharedConfig, "self_play"), (EvalConfig, "fastchat_template"), (EvalConfig, "code_sandbox"),
                (JudgeConfig, "rating_rule"), (GenerationConfig, "tensor_parallel_size"), (LoraConfig, "save_adapter"),
                (TrainConfig, "eval_every"), (TrainConfig, "eval_data"), (TrainConfig, "report_to"),
                (TrainConfig, "push_to_hub"), (TrainConfig, "hub_model_id"), (EvalConfig, "reference_model"),
                (EvalConfig, "device"), (GenerationConfig, "auto_batch_size"),
                (GenerationConfig, "bos"), (GenerationConfig, "max_prompt_tokens"), (GenerationConfig, "vllm_args"),
                (TrainConfig, "checkpoint_dtype"), (TrainConfig, "share_prompts")}


# settings of what a command does with finished results (its exit status), never of the results: not hashed
UNHASHED = {(EvalConfig, "allow_empty"), (TrainConfig, "keep_checkpoints")}


def hash_view(obj: Any) -> Any:
    """Plain data of `obj` for hashing: `to_plain` without LATER_FIELDS that hold their defaults, nor UNHASHED."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {}
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if (type(obj), f.name) in UNHASHED:
                continue
            if (type(obj), f.name) in LATER_FIELDS:
                default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
                if value == default:
                    continue
            out[f.name] = hash_view(value)
        return out
    if isinstance(obj, list | tuple):
        return [hash_view(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): hash_view(v) for k, v in obj.items()}
    return obj


def shared_hash(cfg: ExperimentConfig | SharedConfig) -> str:
    """sha256 (first 16 hex) of the shared block: equal hash = identical configuration."""
    shared = cfg.shared if isinstance(cfg, ExperimentConfig) else cfg
    text = json.dumps(hash_view(shared), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
