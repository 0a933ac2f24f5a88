"""What every task needs from one evaluation: the model (loaded once, lazily), its
identity, the data directory, and generation through a crash-safe cache.

The cache (`generations.jsonl`, append-only) is keyed by a hash of the model identity,
the prompt, the stop sequences, the seed and the generation settings. Generation runs
in chunks and each chunk is appended as soon as it is done, so a crash keeps what was
finished and a repeated evaluation regenerates nothing it already has.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gsil_bench.core import models
from gsil_bench.core.config import EvalConfig, GenerationConfig
from gsil_bench.core.generation import Completion, Generator, Prompt, make_generator
from gsil_bench.core.io import append_jsonl, hash_obj, read_jsonl, sha256_file
from gsil_bench.core.models import ModelError, load_model, load_tokenizer, pick_dtype, resolve, weights_fingerprint

log = logging.getLogger(__name__)

def model_identity(model: str, gen: GenerationConfig, revision: str | None = None) -> dict[str, Any]:
    """What caches key a generating model by: a server's URL and model name, else the generation backend
    and the model's identity (core.models.model_identity: a local folder's files, a Hub id's revision)."""
    if gen.backend == "openai":
        return {"backend": "openai", "base_url": gen.base_url, "model": gen.api_model or model}
    return {"backend": gen.backend, **models.model_identity(model, revision)}


def _is_local_folder(model: str) -> bool:
    try:
        return Path(resolve(model)).is_dir()
    except ModelError:
        return False


class CachedGenerator:
    """A Generator wrapper that reads and appends `path` (JSONL) keyed by request hash."""

    def __init__(self, inner: Generator, identity: dict[str, Any], gen: GenerationConfig, path: Path,
                 chunk: int | None = None) -> None:
        self.inner, self.identity, self.gen, self.path = inner, identity, gen, path
        self.chunk = chunk or max(1, gen.batch_size) * 4
        self._cache: dict[str, dict[str, Any]] | None = None

    def _settings(self) -> dict[str, Any]:
        g = self.gen
        out: dict[str, Any] = {"max_new_tokens": g.max_new_tokens, "temperature": g.temperature, "top_p": g.top_p}
        if g.bos != "never":  # the token ids sent change; left out at the default so older caches stay valid
            out["bos"] = g.bos
        if g.max_prompt_tokens:
            out["max_prompt_tokens"] = g.max_prompt_tokens
        return out

    def key(self, prompt: Prompt, stop: Sequence[str] | None, seed: int) -> str:
        return hash_obj({"model": self.identity, "prompt": prompt, "stop": list(stop or []), "seed": seed,
                         "gen": self._settings()})

    def _load(self) -> dict[str, dict[str, Any]]:
        if self._cache is None:
            self._cache = {r["key"]: r for r in read_jsonl(self.path, repair=True) if "key" in r}
        return self._cache

    def sharing(self, store: Any) -> AbstractContextManager[None]:
        """The inner generator's prompt sharing (core.generation.HFGenerator.sharing); other backends
        compute nothing the caller could reuse: a no-op."""
        share = getattr(self.inner, "sharing", None)
        return share(store) if share is not None else nullcontext()

    def generate(self, prompts: Sequence[Prompt], *, stop: Sequence[str] | None = None, seed: int = 0,
                 desc: str = "generate") -> list[Completion]:
        cache = self._load()
        keys = [self.key(p, stop, seed) for p in prompts]
        todo: dict[str, Prompt] = {}
        for k, p in zip(keys, prompts):
            if k not in cache and k not in todo:
                todo[k] = p
        if len(todo) < len(keys):
            log.info("%s: %d of %d generations from the cache", desc, len(keys) - len(todo), len(keys))
        items = list(todo.items())
        for start in range(0, len(items), self.chunk):
            part = items[start : start + self.chunk]
            outs = self.inner.generate([p for _, p in part], stop=stop, seed=seed, desc=desc)
            recs = [{"key": k, "prompt": p, "seed": seed, "text": c.text, "tokens": c.tokens,
                     "finish_reason": c.finish_reason} for (k, p), c in zip(part, outs)]
            append_jsonl(self.path, recs)
            cache.update({str(r["key"]): r for r in recs})
        return [Completion(cache[k]["text"], cache[k]["tokens"], cache[k]["finish_reason"]) for k in keys]


@dataclass
class EvalContext:
    """One evaluation of one model (or one completions file) on some tasks."""

    model: str
    cfg: EvalConfig
    data_dir: Path | None = None
    model_obj: Any = None
    tokenizer: Any = None
    completions: Path | None = None
    revision: str | None = None  # the Hub revision of `model` (default: pins.get(model))
    pins: dict[str, str] = field(default_factory=dict)  # model name -> Hub revision (shared.model_revision)
    task_folder: Path | None = None
    data_files: dict[str, dict[str, str]] = field(default_factory=dict)
    _identity: dict[str, Any] | None = None
    _generators: dict[str, CachedGenerator] = field(default_factory=dict)
    _dtype: str | None = None  # set by `model_dtype` while the hf model runs in another dtype (cache keys)

    def __post_init__(self) -> None:
        if self.revision is None:
            self.revision = self.pins.get(self.model)

    def revision_of(self, name: str) -> str | None:
        """The Hub revision `name` is pinned to wherever it is loaded (evaluated, or as a reference)."""
        return self.revision if name == self.model else self.pins.get(name)

    def identity(self) -> dict[str, Any]:
        """What caches are keyed by: the completions file, or the model and its chat template. A
        model folder is identified by its files (whether or not `model_obj` holds it already, so
        the runner's in-memory evaluation and a later CLI run share caches); an in-memory model
        under any other name by a fingerprint of its weights (a name alone may label any weights)."""
        if self._identity is None:
            if self.completions is not None:
                ident = {"completions": str(self.completions), "sha256": sha256_file(self.completions)}
            elif self.model_obj is not None and not _is_local_folder(self.model):
                ident = {"backend": self.cfg.generation.backend, "model": self.model,
                         "weights": weights_fingerprint(self.model_obj)}
            else:  # a checkpoint folder (loaded or not: `model_obj` holds its weights) or a Hub id
                ident = model_identity(self.model, self.cfg.generation, self.revision)
            if self.completions is None and self.cfg.generation.backend != "openai":
                ident["chat_template"] = hash_obj(getattr(self.get_tokenizer(), "chat_template", None))
            self._identity = ident
        return self._identity

    @property
    def limit(self) -> int | None:
        """First N items of every task: `cfg.limit`, the only place it is set."""
        return self.cfg.limit

    def record_data(self, task: str, label: str, path: str | Path) -> None:
        self.data_files.setdefault(task, {})[label] = str(path)

    def cache_dir(self) -> Path:
        """Where this task's append-only caches live."""
        if self.cfg.cache_dir:
            assert self.task_folder is not None
            return Path(self.cfg.cache_dir).expanduser() / self.task_folder.name
        assert self.task_folder is not None, "cache_dir() is only available while a task runs"
        return self.task_folder / "cache"

    def hf(self) -> tuple[Any, Any]:
        """The loaded Hugging Face model and tokenizer (loaded once, on the best device)."""
        if self.model_obj is None:
            import torch

            device = self.cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
            log.info("loading %s on %s", self.model, device)
            self.model_obj, self.tokenizer = load_model(
                self.model, revision=self.revision, dtype=pick_dtype("auto", device), device=device)
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.model, self.revision)
        return self.model_obj, self.tokenizer

    def get_tokenizer(self) -> Any:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.model, self.revision)
        return self.tokenizer

    @property
    def chat(self) -> bool:
        """Chat prompts: the chat template is on and the model has one (servers: assumed)."""
        if not self.cfg.chat_template:
            return False
        if self.cfg.generation.backend == "openai":
            return True
        return bool(getattr(self.get_tokenizer(), "chat_template", None))

    @contextmanager
    def model_dtype(self, by_device: dict[str, Any]) -> Iterator[None]:
        """Run the hf model in the dtype an official tool loads it in on this device (`by_device`: device type ->
        torch dtype; FastChat: fp16 on CUDA, fp32 on the CPU), then give it back its own weights exactly (kept on
        the CPU meanwhile). Generations made meanwhile are cached under that dtype."""
        if not by_device:  # not an hf model: nothing to load
            yield
            return
        model, _ = self.hf()
        first = next(model.parameters())
        want = by_device.get(first.device.type)
        if want is None or want == first.dtype:
            yield
            return
        tensors = [*model.parameters(), *model.buffers()]
        kept = [t.data.to("cpu", copy=True) for t in tensors]
        model.to(want)
        self._dtype = str(want).removeprefix("torch.")
        try:
            yield
        finally:
            self._dtype = None
            for t, old in zip(tensors, kept):
                t.data = old.to(t.device)

    def generator(self, **overrides: Any) -> CachedGenerator:
        """The cached generator for the current task (settings overridden by `overrides`)."""
        gen_cfg = replace(self.cfg.generation, **overrides)
        path = self.cache_dir() / "generations.jsonl"
        key = hash_obj([str(path), gen_cfg, self._dtype])
        if key not in self._generators:
            if gen_cfg.backend == "hf":
                model, tok = self.hf()
                inner = make_generator(gen_cfg, model=model, tokenizer=tok, model_name=self.model)
            else:
                inner = make_generator(gen_cfg, model_name=self.model, tokenizer=self.tokenizer, revision=self.revision)
            ident = self.identity() if self._dtype is None else {**self.identity(), "dtype": self._dtype}
            self._generators[key] = CachedGenerator(inner, ident, gen_cfg, path)
        return self._generators[key]
