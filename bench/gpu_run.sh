#!/usr/bin/env bash
# Run a spec on the lent GPU machine (see ../shared/device/README.md): carry ".whl" (wheels of
# bitsandbytes, lm-eval, pydantic, ...) and the run directory, resume it within a time limit,
# and bring the run directory back as $OUT/<name>.tgz.
#   bash bench/gpu_run.sh specs/paper_speed.yaml runs/paper_speed 6.5 [extra command]
set -uo pipefail
spec=$1 run=$2 minutes=$3
source bench/gpu_setup.sh
export PYTHONPATH="$PWD:${PYTHONPATH:-}" TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
python3 -c "import torch, transformers, bitsandbytes, lm_eval; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'transformers', transformers.__version__, 'bnb', bitsandbytes.__version__, 'lm_eval', lm_eval.__version__)"
mkdir -p "$run"
if [ -n "${HX_BEFORE:-}" ]; then bash -c "$HX_BEFORE" 2>&1 | tee "$OUT/before.log"; fi  # e.g. a benchmark
# shellcheck disable=SC2086  # HX_ARGS: extra `run` arguments, e.g. --redo --only model=llama-2-7b
# SIGINT at HX_TIMEOUT (540) s: the runner stops cleanly (like Ctrl-C) so that the tarball below still gets made
timeout -s INT "${HX_TIMEOUT:-540}" python3 -m harness_ext.cli -v run "$spec" --output-dir "$run" --time-limit "$minutes" \
  --no-progress ${HX_ARGS:-} 2>&1 \
  | grep -v "^WARNING bitsandbytes\|Warning:" | tee "$OUT/run.log" | grep -E "harness_ext|cells:|time limit|error|Error" | cut -c1-220
shift 3
if [ $# -gt 0 ]; then "$@" 2>&1 | tee "$OUT/extra.log"; fi
tar czf "$OUT/$(basename "$run").tgz" --exclude=artifacts "$run"
ls -la "$OUT"
