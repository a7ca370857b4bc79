#!/usr/bin/env bash
# Replicated decode speed on one GPU (issue 25): two separate invocations of specs/paper_speed.yaml
# into one run directory, in two device calls — the first times the spec's 3 rounds, the second
# (later, another process tree) adds 3 more with `--add-rounds 3` — so that the between-round CV per
# cell rests on time-separated replicates, each round in a process of its own, under this GPU's
# machine fingerprint. Then the report, `report --compare` against the committed H100 run (its
# fingerprint differences come first; figures are compared, never pooled) and bench/gpu_speed_summary.py.
#
# On the device machine, carrying .whl (bench/gpu_setup.sh) and, in phase 2, gpu_carry/ (phase 1's tgz):
#   bash bench/gpu_speed_replicates.sh 1      # invocation 1 → $OUT/paper_speed_replicates.tgz
#   bash bench/gpu_speed_replicates.sh 2      # invocation 2, report, comparison → the same tgz
set -uo pipefail
phase=${1:?phase 1 or 2}
source bench/gpu_setup.sh
export PYTHONPATH="$PWD:${PYTHONPATH:-}" TOKENIZERS_PARALLELISM=false CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
run=runs/paper_speed_replicates
nvidia-smi --query-gpu=name,uuid,memory.total,driver_version,clocks.max.sm,power.limit,ecc.mode.current --format=csv,noheader
python3 -c "import pynvml" 2>/dev/null || echo "warning: nvidia-ml-py missing: GPU contention is not sampled during the timed window"
hx() { timeout -s INT "$T" python3 -m harness_ext.cli "$@" --no-progress 2>&1 | grep -v "Warning:\|^WARNING bitsandbytes"; }
T=120
if [ "$phase" = 1 ]; then
  rm -rf "$run"   # a fresh run directory: phase 1 starts the study
  T=500 hx run specs/paper_speed.yaml --output-dir "$run" --time-limit 8 | tee "$OUT/invocation1.log" | tail -6
else
  tar xzf gpu_carry/paper_speed_replicates.tgz
  T=420 hx run specs/paper_speed.yaml --output-dir "$run" --time-limit 6.5 --add-rounds 3 | tee "$OUT/invocation2.log" | tail -6
  hx report "$run" | tail -1
  hx report "$run" --compare reports/paper_speed/run --output-dir "$run/report/compare_h100" | tee "$OUT/compare.log" | head -40
fi
python3 bench/gpu_speed_summary.py "$run" 2>&1 | tee "$OUT/summary_$phase.txt"
tar czf "$OUT/paper_speed_replicates.tgz" --exclude=artifacts "$run"
ls -la "$OUT"
