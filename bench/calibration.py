"""Calibrate every verdict rule on the committed runs' own noise, and print (and write) the table.

    python bench/calibration.py                      # >= 2,000 simulated studies per scenario
    python bench/calibration.py --sims 400 --quick   # a smoke run (rates too coarse to certify)
    python bench/calibration.py --rules "(a) in full,(d)" --out-name speed   # some rules, apart
    python bench/calibration.py --merge quality speed                        # ... then one table

Quality noise: the committed demo's probe (per-prompt rows resampled whole across schemes and
temperatures). Speed noise: per-round log decode-time residuals of the committed CPU demo's two runs
(rounds in processes of their own), of the earlier CPU demo (all rounds in one process,
``reports/calibration/pools/``), and of the H100 speed studies run on one GPU (``reports/paper_speed``,
``reports/two_gpus/replicated/one-*``). ``--rules`` runs some rules only (the table then holds those).
Writes ``reports/calibration/table.md`` and ``table.csv``; exits 1 if any false-verdict rate's
Clopper–Pearson 95 % upper bound exceeds 6.5 %.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from harness_ext.analysis import Study
from harness_ext.analysis import calibration as cal
from harness_ext.analysis import simulate as sim

REPO = Path(__file__).resolve().parent.parent
GPU_RUNS = ["reports/paper_speed/data"] + [
    f"reports/two_gpus/replicated/{r}" for r in ("one-a", "one-b", "one-ray-a", "one-ray-b")
]


DEMO_RUNS = ["reports/demo/data", "reports/demo/rerun/data"]
ONE_PROCESS = "reports/calibration/pools/cpu_demo_one_process"


def pools() -> tuple[sim.QualityPool, dict[str, sim.SpeedPool]]:
    demo = Study.load(REPO / DEMO_RUNS[0])
    quality = sim.QualityPool.of(demo, source="CPU demo, SmolLM2-135M probe")
    runs = [Study.load(REPO / p) for p in DEMO_RUNS if (REPO / p).is_dir()]
    speeds = {
        f"CPU demo rounds, fresh processes ({len(runs)} runs, 2 cores)": sim.SpeedPool.of(runs, "CPU demo"),
        "CPU demo rounds, one process (the earlier demo)": sim.SpeedPool.of([Study.load(REPO / ONE_PROCESS)], "CPU"),
        "H100 rounds (paper_speed, 5 runs)": sim.SpeedPool.of([Study.load(REPO / p) for p in GPU_RUNS], "H100"),
    }
    return quality, speeds


def markdown(tab: pd.DataFrame, quality: sim.QualityPool, speeds: dict[str, sim.SpeedPool]) -> str:
    lines = [
        "# Calibration of the verdict rules on the data's own noise",
        "",
        "Printed by `python bench/calibration.py` (docs/VERDICTS.md explains each rule and scenario). Quality noise: "
        f"{quality.source}, {quality.n} prompts resampled whole across {len(quality.schemes)} schemes and "
        f"{len(quality.temps)} temperatures. Speed noise (sd of a log-time residual): "
        + "; ".join(f"{k}: {p.sd:.3f} over {p.residuals.size} residuals" for k, p in speeds.items())
        + ". A false rate's bound is the Clopper–Pearson 95 % upper bound; every one must be ≤ 6.5 %.",
        "",
        "| rule | scenario | noise | rounds | studies | rate | value | 95 % CP interval | ok |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in tab.to_dict("records"):
        k = r.get("rounds")
        lines.append(
            f"| {r['rule']} | {r['scenario']} | {r['noise']} | {'' if pd.isna(k) else int(k)} | {r['studies']} | "
            f"{r['rate']} | {r['value']:.3f} | [{r['cp_low']:.3f}, {r['cp_high']:.3f}] | "
            f"{'' if r['ok'] is None or pd.isna(r['ok']) else ('yes' if r['ok'] else '**NO**')} |"
        )
    false = tab[tab["rate"].str.startswith("false")]
    worst = false.loc[false["cp_high"].idxmax()]
    lines += [
        "",
        f"Worst false-verdict upper bound: {worst['cp_high']:.3f} ({worst['rule']}, {worst['scenario']}, "
        f"{worst['rate']}, {worst['value']:.3f} observed over {worst['studies']} studies).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sims", type=int, default=10_000, help="studies per scenario (rules without resampling)")
    ap.add_argument("--sims-b", type=int, default=2_000, help="studies per scenario of (b) (each resamples 1,000×)")
    ap.add_argument("--rounds", type=int, nargs="+", default=[3, 5, 8])
    ap.add_argument("--out", type=Path, default=REPO / "reports/calibration")
    ap.add_argument("--quick", action="store_true", help="do not write the table (a smoke run)")
    ap.add_argument("--rules", help="comma-separated rules to run, e.g. '(a) quality,(b),(c)' (default: all)")
    ap.add_argument("--out-name", default="table", help="file stem of the written table (default: table)")
    ap.add_argument(
        "--merge",
        nargs="+",
        metavar="STEM",
        help="write the table from tables written earlier with --out-name (e.g. 'quality speed': parts run apart)",
    )
    args = ap.parse_args()
    quality, speeds = pools()
    if args.merge:
        tab = pd.concat([pd.read_csv(args.out / f"{stem}.csv") for stem in args.merge], ignore_index=True)
        tab["ok"] = tab["ok"].map(lambda v: None if pd.isna(v) else bool(v)).astype(object)
        return write(tab, quality, speeds, args)
    scenarios = cal.scenarios(quality, speeds, rounds=tuple(args.rounds))
    if args.rules:
        wanted = {r.strip() for r in args.rules.split(",")}
        scenarios = [s for s in scenarios if s.rule in wanted]
    start = time.perf_counter()

    def say(s: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f} s] {s}", flush=True)

    b = [s for s in scenarios if s.rule == "(b)"]
    rest = [s for s in scenarios if s.rule != "(b)"]
    tab = pd.concat(
        [cal.run(rest, args.sims, progress=say), cal.run(b, args.sims_b, seed=1, progress=say)], ignore_index=True
    )
    return write(tab, quality, speeds, args)


def write(tab: pd.DataFrame, quality: sim.QualityPool, speeds: dict[str, sim.SpeedPool], args: Any) -> int:
    """Print the table, write it (unless --quick), and return 1 if a false rate's bound is too high."""
    text = markdown(tab, quality, speeds)
    print(text)
    if not args.quick:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{args.out_name}.md").write_text(text, encoding="utf-8")
        tab.to_csv(args.out / f"{args.out_name}.csv", index=False)
    bad = tab[tab["ok"] == False]  # noqa: E712  (None marks power rows)
    return 1 if len(bad) else 0


if __name__ == "__main__":
    sys.exit(main())
