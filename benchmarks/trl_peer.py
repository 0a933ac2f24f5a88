"""The peer in the training benchmark: TRL's DPOTrainer on the same model, pairs and limits.

Its fastest single-GPU settings: reference log-probs precomputed before training
(`precompute_ref_log_probs=True`, so no reference forward per step), no gradient
checkpointing (TRL's default turns it on, trading speed for memory), its fused
log-prob head, fused AdamW on CUDA, constant learning rate, gradient clipping at 1.0 as
gsil-bench. Batches are the same pairs in the same order (a sequential sampler).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks import common


def _timer(device: torch.device, warmup: int, total: int) -> Any:
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        """Step-end clock (the interval between step ends includes TRL's collation, as gsil-bench's does)."""

        def __init__(self) -> None:
            self.ends: list[float] = []
            self.losses: list[float] = []

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            common.sync(device)
            self.ends.append(time.perf_counter())
            if state.global_step == warmup:
                common.reset_peak(device)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    return StepTimer()


def _same_tokens(dataset: Any, pairs: list[dict[str, Any]]) -> bool:
    """Did TRL tokenise exactly the sequences gsil-bench trains on?"""
    for row, p in zip(dataset, pairs):
        if row["prompt_ids"] + row["chosen_ids"] != p["real"] or row["prompt_ids"] + row["rejected_ids"] != p["gen"]:
            return False
    return True


def trl_worker(spec: dict[str, Any]) -> dict[str, Any]:
    from datasets import Dataset
    from torch.utils.data import SequentialSampler
    from transformers import PrinterCallback
    from trl import DPOConfig, DPOTrainer

    class SequentialDPOTrainer(DPOTrainer):
        def _get_train_sampler(self, *args: Any, **kwargs: Any) -> Any:
            return SequentialSampler(self.train_dataset)  # type: ignore[arg-type]

    device = torch.device(spec["device"])
    tok = common.load_tokenizer()
    model = common.build_model(spec["shape"], tok, device, getattr(torch, spec["dtype"]), seed=0)
    pairs = json.loads(Path(spec["pairs"]).read_text())["pairs"]
    total = spec["warmup"] + spec["steps"]
    pairs = pairs[: spec["batch"] * total]
    data = Dataset.from_list([{"prompt": p["prompt"], "chosen": p["chosen"], "rejected": p["rejected"]}
                              for p in pairs])
    cuda = device.type == "cuda"
    timer = _timer(device, spec["warmup"], total)
    with tempfile.TemporaryDirectory(prefix="trl-bench-") as out:
        args = DPOConfig(
            output_dir=out, per_device_train_batch_size=spec["batch"], gradient_accumulation_steps=1,
            max_steps=total, learning_rate=spec["lr"], lr_scheduler_type="constant", warmup_steps=0,
            max_length=spec["max_length"], precompute_ref_log_probs=True, precompute_ref_batch_size=spec["batch"],
            gradient_checkpointing=False, bf16=cuda, use_cpu=not cuda, beta=0.1, loss_type=["sigmoid"],
            max_grad_norm=1.0, optim="adamw_torch_fused" if cuda else "adamw_torch", logging_steps=1,
            save_strategy="no", report_to=[], dataloader_num_workers=0, seed=0, disable_tqdm=True,
        )
        t_init = time.perf_counter()
        trainer = SequentialDPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                                       callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # keep the losses (timer.on_log), not a printed dict per step
        init_s = time.perf_counter() - t_init
        same = _same_tokens(trainer.train_dataset, pairs)
        trainer.train()
    losses = timer.losses or [float("nan")]
    from benchmarks.training import step_times

    return {"step_s": step_times(timer.ends, spec["warmup"]), "peak_gib": common.peak_memory_gib(device), "loss_first": losses[0],
            "loss_last": losses[-1], "same_tokens": same, "init_s": init_s,
            "step_impl": "trl.DPOTrainer (precompute_ref_log_probs)"}
