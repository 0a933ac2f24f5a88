"""TRL / alignment-handbook / transformers argument names -> the gsil-bench key that does the
same, so a user typing `learning_rate` is pointed at `shared.optimizer.lr` instead of only
seeing the allowed keys of the block they are in (core.strict uses `alias_hint`)."""

from __future__ import annotations

ALIASES: dict[str, str] = {
    "learning_rate": "shared.optimizer.lr",
    "lr": "shared.optimizer.lr",
    "optim": "shared.optimizer.name",
    "weight_decay": "shared.optimizer.weight_decay",
    "adam_beta1": "shared.optimizer.betas[0]",
    "adam_beta2": "shared.optimizer.betas[1]",
    "adam_epsilon": "shared.optimizer.eps",
    "max_grad_norm": "shared.optimizer.max_grad_norm",
    "lr_scheduler_type": "shared.schedule.name",
    "warmup_ratio": "shared.schedule.warmup_ratio",
    "warmup_steps": "shared.schedule.warmup_ratio (a fraction of the steps)",
    "per_device_train_batch_size": "shared.train.batch_size",
    "train_batch_size": "shared.train.batch_size",
    "gradient_accumulation_steps": "shared.train.grad_accum",
    "num_train_epochs": "shared.train.epochs",
    "max_steps": "shared.train.max_steps",
    "max_length": "shared.train.max_length",
    "max_seq_length": "shared.train.max_length",
    "max_prompt_length": "shared.train.max_prompt_length",
    "bf16": "shared.train.precision: bf16",
    "fp16": "shared.train.precision: fp16",
    "torch_dtype": "shared.train.precision",
    "gradient_checkpointing": "shared.train.gradient_checkpointing",
    "logging_steps": "shared.train.log_every",
    "save_steps": "shared.train.save_every",
    "report_to": "shared.train.report_to",
    "push_to_hub": "shared.train.push_to_hub",
    "hub_model_id": "shared.train.hub_model_id",
    "packing": "shared.train.packing",
    "use_peft": "shared.train.lora (a block; null = full fine-tuning)",
    "lora_r": "shared.train.lora.r",
    "lora_alpha": "shared.train.lora.alpha",
    "lora_dropout": "shared.train.lora.dropout",
    "lora_target_modules": "shared.train.lora.target_modules",
    "model_name_or_path": "shared.model",
    "model_revision": "shared.model_revision",
    "dataset_name": "shared.train_data.path",
    "dataset_mixer": "shared.train_data.path",
    "dataset_splits": "shared.train_data.path (hf:<dataset>[:<config>]:<split>)",
    "seed": "shared.seeds (a list)",
    "beta": "methods[i].params.beta",
    "loss_type": "methods[i].loss",
    "output_dir": "the --output option of the command",
    "per_device_eval_batch_size": "shared.eval.generation.batch_size",
    "max_new_tokens": "shared.generation.max_new_tokens",
}


def alias_hint(key: str, full: str = "") -> str:
    """' (TRL / alignment-handbook name: gsil-bench calls it X)' when `key` is a known foreign
    name for a key that is not where the user wrote it; else ''."""
    target = ALIASES.get(key)
    if target is None or target.split(":")[0].strip() == full:
        return ""
    return f" (a TRL / alignment-handbook name; gsil-bench calls it {target})"
