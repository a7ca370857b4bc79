#!/usr/bin/env bash
# What it measures (issue 25, item 5; prepared, not yet run): replicated decode speed on one GPU
# in two separate invocations of specs/paper_speed.yaml into one run directory — the first times the
# spec's 3 rounds, the second adds 3 more with `--add-rounds 3` — so that the report's between-round
# CV per cell rests on time-separated replicates, each round in its own process, under the machine
# fingerprint of this GPU (an H200 or whatever is lent: a different fingerprint from the committed
# H100 run). Then the report, and `report --compare` against the committed H100 run
# (reports/paper_speed/run): its fingerprint differences come first; its speed figures are compared,
# never pooled. Also prints: per cell the between-round CV of each invocation's rounds and whether the
# speed verdicts of invocation 1 alone equal those of both (the rounds' facts are in the cells table).
#
# On the device machine (carry .whl with the wheels bench/gpu_run.sh uses, plus nvidia-ml-py so that
# the timed window samples NVML):
#   bash bench/gpu_speed_replicates.sh                      # ~2 x 4 min on one H100/H200
# Brings back $OUT/paper_speed_replicates.tgz (run directory, report, comparison) and $OUT/*.log.
set -uo pipefail
source bench/gpu_setup.sh
export PYTHONPATH="$PWD:${PYTHONPATH:-}" TOKENIZERS_PARALLELISM=false CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
run=runs/paper_speed_replicates
nvidia-smi --query-gpu=name,uuid,memory.total,driver_version,clocks.max.sm,power.limit,ecc.mode.current --format=csv,noheader
python3 -c "import pynvml" 2>/dev/null || echo "warning: nvidia-ml-py missing: GPU contention is not sampled during the timed window"
hx() { python3 -m harness_ext.cli "$@" --no-progress 2>&1 | grep -v "Warning:"; }
# 1. the spec's rounds; 2. a second invocation, later, adding rounds (time-separated replicates)
timeout -s INT 560 hx run specs/paper_speed.yaml --output-dir "$run" --time-limit 9 | tee "$OUT/invocation1.log" | tail -4
python3 - "$run" <<'PY' | tee "$OUT/verdicts1.txt"
import sys
from harness_ext.report.compare import load_study, _claims
for c in _claims(load_study(sys.argv[1], print)):
    print(c.key, c.verdict)
PY
timeout -s INT 560 hx run specs/paper_speed.yaml --output-dir "$run" --time-limit 9 --add-rounds 3 | tee "$OUT/invocation2.log" | tail -4
hx report "$run" | tail -1
hx report "$run" --compare reports/paper_speed/run --output-dir "$run/report/compare_h100" | tee "$OUT/compare.log" | head -40
python3 - "$run" <<'PY' | tee "$OUT/cv.txt"
import sys
from harness_ext.analysis import rounds
from harness_ext.report.compare import load_study, _claims
study = load_study(sys.argv[1], print)
sp = rounds.speed_table(study)
print("fingerprints:", sorted(set(sp["fingerprint"])), "contended rounds:", int(sp["contended"].sum()))
for why in sorted(set(sp.loc[sp["contended"], "contended_why"])):
    print("  contended:", why)
for inv, g in sp.groupby("invocation"):
    s = rounds.summary(study, g)
    print(f"invocation {inv}: between-round CV per cell")
    print(s[["model", "scheme", "rounds", "decode_ms_per_token", "between_round_cv"]].to_string(index=False))
print("both invocations:")
print(rounds.summary(study, sp)[["model", "scheme", "rounds", "decode_ms_per_token", "between_round_cv", "vs_reference_text"]].to_string(index=False))
print("verdicts over both invocations:", {c.key: c.verdict for c in _claims(study)})
PY
tar czf "$OUT/paper_speed_replicates.tgz" --exclude=artifacts "$run"
ls -la "$OUT"
