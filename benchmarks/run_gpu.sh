#!/usr/bin/env bash
# Every GPU measurement of docs/performance.md, in one command on a CUDA machine:
#   bash benchmarks/run_gpu.sh [checks] [training] [generation]     (default: all three)
# Issue 13's device check (about 8 minutes): bash benchmarks/run_gpu.sh training-loop checks
# Results (JSON) and logs go to $OUT (default runs/gpu). On a machine without network,
# carry wheels in .whl/ (transformers, trl, datasets, dill, multiprocess) and the tokenizer and
# GSM8K in .bench_assets/{tokenizer,data/gsm8k}; they are used when present.
set -u -o pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
# gsil_bench as a wheel installs it (the folders are mapped by pyproject.toml; benchmarks/ runs from $PWD)
python3 -c "import gsil_bench.core" 2>/dev/null || {
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade --target /tmp/gsil-site . || exit 1
  export PYTHONPATH=/tmp/gsil-site:${PYTHONPATH:-$PWD}; }
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
[ -d .bench_assets/data ] && export GSIL_DATA_DIR=${GSIL_DATA_DIR:-$PWD/.bench_assets/data}
PY=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  $PY -c "import torch, transformers, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__); from gsil_bench.trainers.packing import _varlen_fn; print('varlen', _varlen_fn())"
} 2>&1 | tee "$OUT/env.txt"
parts=${*:-checks training generation}
for part in $parts; do
  case $part in
    checks) timeout 240 $PY -m benchmarks.gpu_checks --out "$OUT/gpu_checks.json" 2>&1 | tee "$OUT/checks.log" ;;
    decode-check) timeout 150 $PY -m benchmarks.gpu_checks --only compiled_decode --out "$OUT/decode_check.json" 2>&1 \
      | tee -a "$OUT/run.log" ;;
    training) timeout 480 $PY -m benchmarks.training --device cuda --warmup 2 --steps 8 --out "$OUT/training.json" 2>&1 \
      | grep -v "it/s\]$\|examples/s\]$" | tee "$OUT/training.log" ;;
    generation) timeout 540 $PY -m benchmarks.generation --device cuda --out "$OUT/generation.json" 2>&1 \
      | tee "$OUT/generation.log" ;;
    generation-360m|generation-1.7b) timeout 300 $PY -m benchmarks.generation --device cuda --models smollm2-${part#generation-} \
      --configs hf-default static-compiled --out "$OUT/$part.json" 2>&1 | tee -a "$OUT/run.log" ;;
    training-loop) timeout 420 $PY -m benchmarks.training --device cuda --models smollm2-1.7b --methods dpo \
      --contestants loop gsil trl --warmup 2 --steps 8 --out "$OUT/training_loop.json" 2>&1 \
      | grep -v "it/s\]$\|examples/s\]$" | tee -a "$OUT/run.log" ;;
    training-1.7b-b32) timeout 150 $PY -m benchmarks.training --device cuda --models smollm2-1.7b --contestants gsil \
      --methods dpo --batch 32 --warmup 2 --steps 6 --out "$OUT/$part.json" 2>&1 | grep -v "it/s\]$" | tee -a "$OUT/run.log" ;;
    generation-builtin-1.7b) timeout 300 $PY -m benchmarks.generation --device cuda --models smollm2-1.7b \
      --configs hf-default static-compiled --reference --out "$OUT/generation_builtin_1.7b.json" 2>&1 | tee -a "$OUT/run.log" ;;
    generation-reference) timeout 300 $PY -m benchmarks.generation --device cuda --models smollm2-360m \
      --configs hf-default --reference --out "$OUT/generation_reference.json" 2>&1 | tee -a "$OUT/run.log" ;;
    *) echo "unknown part $part"; exit 2 ;;
  esac
done
