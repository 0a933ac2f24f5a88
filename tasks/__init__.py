"""gsil-bench evaluation tasks: GSM8K (lm-eval), HumanEval(+)/MBPP(+) (sandboxed execution),
MT-Bench (LLM judge), and any lm-eval task by name.

- `api.evaluate(...)`: the entry point (runner and `gsil-bench eval`, see `cli`);
- `base`: Task protocol, `TASKS` registry, Sample records, the task folder (samples.jsonl,
  metrics.json, provenance.json, DONE);
- `context`: the model loaded once, its identity, and the crash-safe generation cache;
- `stats`: intervals (Wilson, t, cluster bootstrap) and pass@k;
- `lmeval` + `gsm8k`; `code`, `evalplus`, `humaneval`, `mbpp`; `sandbox` + `checker` +
  `sandbox_server` + `wire` (model-written code isolated, verdicts outside it); `mt_bench` + `judge`.
"""
