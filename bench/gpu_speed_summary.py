"""Print what a replicated GPU speed run shows: fingerprints, contended rounds, the between-round CV
per cell for each invocation alone and for all, and the speed verdicts of each invocation and of all.

    python bench/gpu_speed_summary.py runs/paper_speed_replicates
"""

from __future__ import annotations

import sys

from harness_ext.analysis import Study, claims, rounds

COLUMNS = ["model", "scheme", "rounds", "decode_ms_per_token", "between_round_cv", "vs_reference_text"]


def verdicts(study: Study) -> dict[str, str]:
    return {c.key: c.verdict for c in claims(study) if c.key in ("a", "d", "d2")}


def main(run_dir: str) -> None:
    study = Study.load(run_dir)
    sp = rounds.speed_table(study)
    if sp.empty:
        print("no speed round was timed (the cells table says why)")
        return
    contended = int(sp["contended"].sum())
    print("fingerprints:", sorted(set(sp["fingerprint"])), "| contended rounds:", contended, "of", len(sp))
    for why in sorted(set(sp.loc[sp["contended"], "contended_why"])):
        print("  contended:", why)
    for inv, g in sp.groupby("invocation"):
        print(f"\ninvocation {inv} alone:")
        print(rounds.speed_summary(study, g)[COLUMNS].to_string(index=False))
    print("\nall invocations:")
    print(rounds.speed_summary(study, sp)[COLUMNS].to_string(index=False))
    print("\nspeed verdicts over all rounds:", verdicts(study))


if __name__ == "__main__":
    main(sys.argv[1])
