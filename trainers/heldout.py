"""Evaluation during training: every `train.eval_every` optimizer steps (and at the end),
the policy's mean negative log-likelihood per response token on a held-out slice
(`train.eval_data`, e.g. the same file with an offset past the training rows), logged as
`eval/nll` in metrics.jsonl, the log file and the trackers. The same number for every
method (it needs no reference or generated responses), so runs compare on one axis.
"""

from __future__ import annotations

from typing import Any

from gsil_bench.core.config import ExperimentConfig
from gsil_bench.core.errors import Problem
from gsil_bench.core.scoring import EncodedSeq, score_batches
from gsil_bench.trainers.data import encode_examples, load_examples
from gsil_bench.trainers.logprobs import batch_logps


def heldout_problems(cfg: ExperimentConfig) -> list[Problem]:
    t = cfg.shared.train
    if t.eval_every is not None and t.eval_every < 1:
        return [Problem("shared.train.eval_every", f"must be >= 1 or null, got {t.eval_every}")]
    if t.eval_every is not None and t.eval_data is None:
        return [Problem("shared.train.eval_data", "eval_every needs a held-out slice, e.g. "
                                                  "{path: gsm8k/train.jsonl, format: gsm8k, offset: 7000, limit: 200}")]
    return []


def encode_heldout(cfg: ExperimentConfig, tokenizer: Any, root: Any) -> list[EncodedSeq] | None:
    """The held-out slice, encoded like the training data (None when not configured)."""
    t = cfg.shared.train
    if t.eval_every is None or t.eval_data is None:
        return None
    return encode_examples(tokenizer, load_examples(t.eval_data, root), max_prompt_length=t.max_prompt_length,
                           max_length=t.max_length)


def heldout_nll(model: Any, seqs: list[EncodedSeq], *, batch_size: int, chunk: int, pad_id: int,
                device: Any) -> float:
    """Mean NLL per response token of `seqs` under the policy as training holds it (the module accelerate
    wrapped: the loop's forward), through core.scoring.score_batches (eval mode, no gradients)."""
    logps, tokens = score_batches(model, seqs, pad_id=pad_id, batch_size=batch_size, chunk=chunk, forward=batch_logps,
                                  device=device)
    return -float(logps.sum()) / max(1, int(tokens.sum()))
