"""`gsil-bench` with every optimizer step and every iteration's end observed, for tests/test_paper_launch.py.

    [accelerate launch ...] tests/paper_trace.py TRACE_DIR run CONFIG [...]   (the rest: gsil-bench's arguments)

Runs `gsil_bench.harness.cli.main` unchanged in this process, with two observers wrapped around the loop
(trainers.loop), each appending JSON lines to TRACE_DIR/rank-<r>.jsonl:

- every optimizer step: its learning rate, the dtypes of the values the optimizer holds and of the weights the
  model holds, and the share of the optimizer's values the step changed (under FSDP: this process's shard);
- every iteration's end: the iteration's loss over ALL its training pairs, computed on the CPU in fp32 with the
  weights it started from and with the weights it trained to (the optimizer's full-precision values: the fp32
  master copy, or FSDP's gathered fp32 shards), the same loss function and cached reference log-probs. In fp32 a
  change below bf16's resolution still shows, so the paper learning rate's small steps can be seen to descend.

Nothing of the project is replaced: the wrappers call the loop's own functions and only read.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import torch

import gsil_bench.trainers.loop as loop
from gsil_bench.trainers.reference import load_causal_lm
from gsil_bench.trainers.sharding import full_state

TRACE = Path(sys.argv[1])
RANK = int(os.environ.get("RANK", "0"))
TRAINABLES: dict[str, Any] = {}  # iteration folder -> the loop's Trainable


def _write(rec: dict[str, Any]) -> None:
    TRACE.mkdir(parents=True, exist_ok=True)
    with open(TRACE / f"rank-{RANK}.jsonl", "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _values(tr: Any) -> list[torch.Tensor]:
    return [_local(p.detach()) for g in tr.optimizer.param_groups for p in g["params"]]


def _where(run: Any) -> dict[str, Any]:
    return {"method": run.ctx.method.label, "iteration": run.iteration}


real_prepare, real_step, real_finish = loop.prepare, loop.optimizer_step, loop.finish


def prepare(run: Any, plan: Any) -> Any:
    tr = real_prepare(run, plan)
    TRAINABLES[str(run.folder)] = tr
    return tr


def optimizer_step(run: Any, tr: Any, plan: Any, step: int, info: dict[str, Any]) -> dict[str, Any]:
    before = [v.clone() for v in _values(tr)]
    record = real_step(run, tr, plan, step, info)
    after = _values(tr)
    changed = sum(int((a != b).sum()) for a, b in zip(before, after))
    _write({"kind": "step", **_where(run), "step": step + 1, "lr": record["lr"],
            "moved": changed / max(1, sum(v.numel() for v in after)),
            "optimizer_dtypes": sorted({str(v.dtype) for v in after}),
            "model_dtypes": sorted({str(p.dtype) for p in tr.model.parameters()})})
    return record


def _trained_fp32(run: Any, tr: Any) -> dict[str, torch.Tensor] | None:
    """The optimizer's full-precision values by parameter name (a collective under FSDP); None off the main process."""
    if tr.sharded:
        state = full_state(run.ctx.accelerator, tr.wrapped)
        return {k: v.float() for k, v in state.items()} if run.ctx.accelerator.is_main_process else None
    if tr.master is not None:
        return {**{n: p.detach().float() for n, p in tr.model.named_parameters()}, **tr.master.weights()}
    return {n: p.detach().float() for n, p in tr.model.named_parameters()}


@torch.no_grad()
def _loss(run: Any, weights: dict[str, torch.Tensor] | None) -> float:
    """The iteration's loss over all its items, fp32 on the CPU, at the start weights or at `weights`."""
    model = load_causal_lm(run.init_model, revision=None, device="cpu", dtype=torch.float32).eval()
    if weights is not None:
        model.load_state_dict(weights, strict=False)
    total, n = 0.0, 0
    for at in range(0, len(run.items), 8):
        items = run.items[at : at + 8]
        out, _ = loop.forward_loss(run, model, items, "cpu", sum(it.real.n_response for it in items))
        total += float(out.loss) * len(items)
        n += len(items)
    return total / n


def finish(run: Any, model: Any, total: int, info: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    tr = TRAINABLES.pop(str(run.folder))
    trained = _trained_fp32(run, tr)
    if run.ctx.accelerator.is_main_process:
        _write({"kind": "iteration", **_where(run), "steps": total, "items": len(run.items),
                "loss_start": _loss(run, None), "loss_end": _loss(run, trained)})
    return real_finish(run, model, total, info, last)


loop.prepare, loop.optimizer_step, loop.finish = prepare, optimizer_step, finish

if __name__ == "__main__":
    from gsil_bench.harness.cli import main

    sys.exit(main(sys.argv[2:]))
