"""Shared pieces of the benchmarks: model shapes, the tokenizer, real variable-length
GSM8K pairs (demonstration + the model's own greedy response, cached), FLOP counts,
device ceilings (matrix-multiply rate, memory bandwidth) and timing/memory helpers.

Nothing here is imported by the library; `python -m benchmarks.training` and
`python -m benchmarks.generation` use it.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from gsil_bench.core.registry import Registry

log = logging.getLogger("benchmarks")
REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("GSIL_BENCH_PAIRS", REPO / "runs" / "bench-cache"))  # gitignored (runs/)
ASSETS = REPO / ".bench_assets"  # optional carried tokenizer/data for a device machine (gitignored locally)


@dataclass(frozen=True)
class Shape:
    """A Llama shape (random weights)."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int = 49152


SHAPES: Registry[Shape] = Registry("model shape")
SHAPES.add("tiny", Shape(hidden=64, layers=2, heads=4, kv_heads=4, intermediate=128))  # core.models.tiny_llama
SHAPES.add("smollm2-360m", Shape(hidden=960, layers=32, heads=15, kv_heads=5, intermediate=2560))
SHAPES.add("smollm2-1.7b", Shape(hidden=2048, layers=24, heads=32, kv_heads=32, intermediate=8192))


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA GPU is visible")
    return torch.device(name)


def load_tokenizer() -> Any:
    """The SmolLM2 tokenizer: $GSIL_BENCH_TOKENIZER, a carried .bench_assets/tokenizer, or the embedded model's."""
    from transformers import AutoTokenizer

    folder = os.environ.get("GSIL_BENCH_TOKENIZER") or (ASSETS / "tokenizer")
    if Path(folder).is_dir():
        tok = AutoTokenizer.from_pretrained(str(folder))
    else:
        from gsil_bench.core.models import load_tokenizer as load

        tok = load("embedded:smollm2-135m-instruct")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def build_model(shape_name: str, tokenizer: Any, device: torch.device, dtype: torch.dtype, seed: int = 0) -> Any:
    """A randomly initialised Llama of a registered shape, built directly on `device`."""
    from transformers import LlamaConfig, LlamaForCausalLM

    s = SHAPES.get(shape_name)
    config = LlamaConfig(
        vocab_size=max(s.vocab, len(tokenizer)) if shape_name != "tiny" else len(tokenizer),
        hidden_size=s.hidden, intermediate_size=s.intermediate, num_hidden_layers=s.layers,
        num_attention_heads=s.heads, num_key_value_heads=s.kv_heads, max_position_embeddings=2048,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    return model


def data_dir() -> Path:
    for cand in (os.environ.get("GSIL_DATA_DIR"), ASSETS / "data", REPO.parent / "shared" / "data"):
        if cand and (Path(cand) / "gsm8k" / "train.jsonl").is_file():
            return Path(cand)
    raise SystemExit("GSM8K not found: set GSIL_DATA_DIR to the data directory (holding gsm8k/train.jsonl)")


def gsm8k_rows(n: int, split: str = "train") -> list[dict[str, str]]:
    path = data_dir() / "gsm8k" / f"{split}.jsonl"
    rows: list[dict[str, str]] = []
    with path.open() as fh:
        for i, line in enumerate(fh):
            if len(rows) >= n:
                break
            row = json.loads(line)
            if "question" not in row or "answer" not in row:
                raise SystemExit(f"{path}:{i + 1}: expected keys question and answer")
            rows.append(row)
    if len(rows) < n:
        raise SystemExit(f"{path}: wanted {n} rows, found {len(rows)}")
    return rows


def own_responses(key: str, model: Any, tokenizer: Any, questions: list[str], *, max_new_tokens: int,
                  batch_size: int, fast: bool) -> list[str]:
    """The model's greedy responses to `questions`, generated once and cached under CACHE."""
    from gsil_bench.core.config import GenerationConfig
    from gsil_bench.core.generation import HFGenerator
    from gsil_bench.core.io import atomic_write_text

    path = CACHE / f"responses-{key}-n{len(questions)}-t{max_new_tokens}.jsonl"
    if path.is_file():
        cached = [json.loads(line)["response"] for line in path.open()]
        if len(cached) == len(questions):
            return cached
    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=batch_size,
                           cache="static" if fast else "dynamic", compile=fast and model.device.type == "cuda")
    prompts = [[{"role": "user", "content": q}] for q in questions]
    t0 = time.perf_counter()
    outs = HFGenerator(model, tokenizer, cfg).generate(prompts, desc=f"own responses ({key})")
    log.info("generated %d responses in %.1f s (cached at %s)", len(outs), time.perf_counter() - t0, path)
    atomic_write_text(path, "".join(json.dumps({"question": q, "response": c.text}) + "\n"
                                    for q, c in zip(questions, outs)))
    return [c.text for c in outs]


def encode(tokenizer: Any, question: str, response: str, *, max_prompt_length: int, max_length: int) -> Any:
    """The training loop's own tokenisation (trainers.data.encode)."""
    from gsil_bench.trainers.data import encode as loop_encode

    return loop_encode(tokenizer, [{"role": "user", "content": question}], response,
                       max_prompt_length=max_prompt_length, max_length=max_length)


# --- FLOPs and ceilings ---------------------------------------------------------------


def forward_flops(cfg: Any, lengths: list[int], scored: list[int]) -> float:
    """Model FLOPs of one forward over sequences of `lengths` (causal attention, GQA-aware),
    with the LM head on the `scored` (response) positions only."""
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    dense = 2 * layers * (d * q + 2 * d * kv + q * d + 3 * d * cfg.intermediate_size)
    total = 0.0
    for n, m in zip(lengths, scored):
        total += dense * n + layers * 2 * n * n * q  # QK^T and AV over the causal half
        total += 2 * m * d * cfg.vocab_size
    return total


def decode_bytes(cfg: Any, batch: int, context: float, dtype_bytes: int) -> float:
    """Bytes one decode step must read: every weight once, plus the KV cache of `context` tokens per row."""
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    params = param_count(cfg)
    kv = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * hd * context * batch
    return (params + kv) * dtype_bytes


def param_count(cfg: Any) -> int:
    d, layers = cfg.hidden_size, cfg.num_hidden_layers
    hd = getattr(cfg, "head_dim", None) or d // cfg.num_attention_heads
    q, kv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
    per_layer = d * q + 2 * d * kv + q * d + 3 * d * cfg.intermediate_size + 2 * d
    return layers * per_layer + cfg.vocab_size * d + d


@dataclass
class Ceilings:
    matmul_tflops: float | None = None  # bf16 8192^3 matrix products, median
    bandwidth_gbs: float | None = None  # device-to-device copy, bytes read + written


def measure_ceilings(device: torch.device) -> Ceilings:
    """Measured on this device in this run: on a GPU the bf16 matrix-multiply rate and the
    copy bandwidth; on a CPU the copy bandwidth only (CPU figures are reported as ratios)."""
    if device.type != "cuda":
        x = torch.empty(1 << 28, dtype=torch.uint8).random_()
        y = torch.empty_like(x)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            y.copy_(x)
            times.append(time.perf_counter() - t0)
        return Ceilings(None, round(2 * x.numel() / min(times) / 1e9, 1))
    n = 8192
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    tflops = 2 * n**3 / sorted(times)[len(times) // 2] / 1e12
    del a, b
    x = torch.empty(1 << 30, dtype=torch.uint8, device=device).random_()
    y = torch.empty_like(x)
    y.copy_(x)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        y.copy_(x)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    bw = 2 * x.numel() / sorted(times)[len(times) // 2] / 1e9
    del x, y
    torch.cuda.empty_cache()
    return Ceilings(round(tflops, 1), round(bw, 1))


# --- timing and memory ----------------------------------------------------------------


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak GPU memory allocated since the last reset; on CPU the process's peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB


def hardware_line(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} ({p.total_memory / 2**30:.0f} GiB), torch {torch.__version__}"
    return f"CPU x{os.cpu_count()} ({torch.get_num_threads()} torch threads), torch {torch.__version__}"


def as_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)
