"""GSM8K (Cobbe et al. 2021) through lm-evaluation-harness, on the local data files.

- `gsm8k`: lm-eval's standard `gsm8k` task: 5-shot "Question: ... Answer:" prompts from
  the train split, greedy generation until "Question:", exact match after the
  `strict-match` ("#### <number>") and `flexible-extract` (last number) filters. As on
  the Open LLM Leaderboard (the GSIL and SPIN papers' setting), no chat template unless
  EvalConfig.lm_eval_chat_template is set.
- `gsm8k_chat`: lm-eval's `gsm8k_cot_zeroshot` ("Q: ... A: Let's think step by step.")
  rendered with the model's chat template (when the model has one and
  EvalConfig.chat_template is on); `flexible-extract` is primary because chat models
  rarely end with the strict filter's "The answer is N.".

Both read <data dir>/gsm8k/{train,test}.jsonl when present (tasks.lmeval.LOCAL_DATASETS)
and lm-eval's Hub copy (openai/gsm8k) otherwise; the numbers are lm-eval's own.
"""

from __future__ import annotations

from gsil_bench.tasks.base import register_task
from gsil_bench.tasks.lmeval import LmEvalTask

register_task(lambda: LmEvalTask("gsm8k", "gsm8k", chat=None, primary="exact_match/strict-match",
                                 yaml="gsm8k/gsm8k.yaml"))
register_task(lambda: LmEvalTask("gsm8k_chat", "gsm8k_cot_zeroshot", chat=True, primary="exact_match/flexible-extract",
                                 yaml="gsm8k/gsm8k-cot-zeroshot.yaml"))
