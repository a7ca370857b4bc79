"""The exact next-token probe versus Monte-Carlo sampling to a stated standard error, in one run.

Both estimate, for every prompt and every (temperature, top-k) grid point, the probability that one
sample's first token is the gold token:
  - probe: one forward pass per prompt, then every grid point in closed form (zero sampling error);
  - Monte Carlo: R sampled first tokens per prompt and grid point through hf-quant (batched, prompt
    prefilled once per prompt), with R chosen so that a per-prompt estimate's standard error is at
    most --se even at p = 0.5 (R = ceil(0.25 / se^2)).
It prints both wall times, the ratio, and the largest and mean gap between the two estimates (the
Monte-Carlo error, which the probe does not have).

    python bench/probe_vs_sampling.py --model smollm2-135m --threads 2 --prompts 32 --se 0.05
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from pathlib import Path

import torch
from _common import add_model_options, pin_threads  # bench/ is the script's folder: on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap)
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.3, 0.7, 1.0, 1.5])
    ap.add_argument("--top-k", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--se", type=float, default=0.05, help="target standard error of a per-prompt estimate")
    args = ap.parse_args()
    pin_threads(args)

    from harness_ext.backend import HFQuantLM
    from harness_ext.backend import probe as probes
    from harness_ext.backend.sampler import Row, row_key
    from harness_ext.point import SamplingPoint
    from harness_ext.tasks.loaders import DATA_DIR, read_jsonl

    docs = read_jsonl(DATA_DIR / "nextword.jsonl", ("context", "target"))[: args.prompts]
    lm = HFQuantLM(pretrained=args.model, quant=args.quant, device=args.device, batch_size=64)
    lm.show_progress = False
    ids, gold = [], []
    for d in docs:
        ctx = lm.tok_encode(d["context"])
        whole = lm.tok_encode(d["context"] + " " + d["target"])
        ids.append(ctx)
        gold.append(whole[len(ctx)])
    points = [SamplingPoint(temperature=t, top_k=k) for t, k in itertools.product(args.temperatures, args.top_k)]
    reps = math.ceil(0.25 / args.se**2)

    t0 = time.perf_counter()
    logits = probes.next_token_logits(lm.model, ids, lm.device)
    exact = probes.probe_metrics(logits, torch.tensor(gold), points)
    probe_s = time.perf_counter() - t0

    t0 = time.perf_counter()
    mc: dict[SamplingPoint, list[float]] = {p: [] for p in points}
    for i, d in enumerate(docs):
        rows = [Row(p, row_key(0, d["context"], r)) for p in points for r in range(reps)]
        enc = torch.tensor([ids[i]] * len(rows))
        out = lm.generate_rows(enc, torch.ones_like(enc), rows, [1] * len(rows))
        for j, p in enumerate(points):
            hits = [r.tokens[0] == gold[i] for r in out[j * reps : (j + 1) * reps]]
            mc[p].append(sum(hits) / reps)
    mc_s = time.perf_counter() - t0

    gaps = [abs(a - b) for p in points for a, b in zip(mc[p], exact[p]["p_gold"], strict=True)]
    print(
        f"# {args.model} ({args.quant}) on {args.device}, threads {torch.get_num_threads()}; {len(docs)} prompts x "
        f"{len(points)} grid points; Monte Carlo: {reps} samples per prompt and point (SE <= {args.se})"
    )
    print("| method | wall s | forward passes |")
    print("|---|---|---|")
    print(f"| exact probe | {probe_s:.2f} | {len(docs)} (one per prompt) |")
    print(
        f"| Monte-Carlo sampling | {mc_s:.2f} | {len(docs) * len(points) * reps} single-token samples, "
        f"prompt prefilled once per prompt |"
    )
    print(
        f"\nMonte Carlo / probe = {mc_s / probe_s:.1f}x; |MC - exact| per prompt and point: "
        f"mean {sum(gaps) / len(gaps):.4f}, max {max(gaps):.4f} (the sampling error the probe does not have)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
