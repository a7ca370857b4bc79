#!/usr/bin/env bash
# The backends' GPU table (issue 29), eager mode, one round per scheme, in one device call:
# specs/backends_gpu.yaml with `rounds: 1` and `--only mode=eager` (the compiled cells and a second
# round are left for a later call: run it again with the run directory carried to resume).
#   carry: [".whl"] (with torchao, hqq, termcolor) → $OUT/backends_gpu.tgz, $OUT/table.txt
set -uo pipefail
source bench/gpu_setup.sh
export PYTHONPATH="$PWD:${PYTHONPATH:-}" TOKENIZERS_PARALLELISM=false
run=runs/backends_gpu
sed 's/^  rounds: 2 .*/  rounds: 1/' specs/backends_gpu.yaml > /tmp/backends_gpu.yaml
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout -s INT "${HX_TIMEOUT:-500}" python3 -m harness_ext.cli run /tmp/backends_gpu.yaml --output-dir "$run" \
  --time-limit "${HX_MINUTES:-7.5}" --only mode=eager --no-progress 2>&1 | grep -v "Warning:\|^WARNING bitsandbytes" \
  | tee "$OUT/run.log" | grep -E "FAILED|cells:|time limit|error" | cut -c1-300
python3 - "$run" <<'PY' 2>&1 | tee "$OUT/table.txt"
import sys
from harness_ext.analysis import Study, rounds
sp = rounds.speed_table(Study.load(sys.argv[1]))
cols = [c for c in ["scheme", "mode", "weight_bytes", "decode_ms_per_token", "floor_ms_per_token", "decode_over_floor",
                    "bandwidth_bytes_per_s", "peak_memory_bytes", "fingerprint"] if c in sp.columns]
print(sp[cols].to_string(index=False) if len(sp) else "no speed round was timed")
PY
tar czf "$OUT/backends_gpu.tgz" --exclude=artifacts "$run"
