"""Grid sweep cost: grid point by grid point versus grid-batched, in one run, same backend.

A grid of temperatures x top-k x max-new-tokens over N prompts is generated twice with hf-quant:
  - point by point: one generate_until per grid point (what lm-eval does: it groups requests by
    gen_kwargs), N rows per pass, each pass to its own max-new-tokens;
  - grid-batched: one generate_until with every request; rows of different points share batches,
    points that differ only in max-new-tokens are one generation truncated, and each prompt is
    prefilled once for all its rows.
It prints both wall times, the ratio, the batched sweep over its single largest grid point, and the
share of tokens that differ between the two (sampling is batch-invariant up to fp32 rounding).

    python bench/grid_batching.py --model smollm2-135m --device cpu --threads 2 --prompts 16
    python bench/grid_batching.py --shape llama-2-7b --device cuda --prompts 64 --max-new 64 128
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def requests(prompts: list[str], points: list[dict], seed: int = 0) -> list:
    from lm_eval.api.instance import Instance

    return [
        Instance("generate_until", {}, (p, {"until": ["\n\n\n"], "seed": seed, **pt}), idx=0)
        for pt in points
        for p in prompts
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--model", default="smollm2-135m", help="pretrained model (hub id, folder, built-in)")
    src.add_argument("--shape", help="a shape from specs/shapes (random weights, e.g. llama-2-7b)")
    ap.add_argument("--quant", default="fp16", help="scheme (fp32, fp16, bf16, int8, nf4, fp4, ...)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.3, 0.7, 1.0, 1.5])
    ap.add_argument("--top-k", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--max-new", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--batch", type=int, default=None, help="rows per generate call when batched (default: all)")
    ap.add_argument("--repeats", type=int, default=1)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from harness_ext.backend import HFQuantLM
    from harness_ext.tasks.loaders import DATA_DIR, read_jsonl

    prompts = [r["prompt"] for r in read_jsonl(DATA_DIR / "continuation.jsonl", ("prompt",))][: args.prompts]
    points = [
        {"do_sample": t > 0, "temperature": t, "top_k": k, "max_gen_toks": n}
        for t, k, n in itertools.product(args.temperatures, args.top_k, args.max_new)
    ]
    model_dtype = "float16" if args.device.startswith("cuda") else "float32"
    t0 = time.perf_counter()
    if args.shape:
        from harness_ext.models import shape_model_args

        kwargs = shape_model_args(args.shape)
    else:
        kwargs = {"pretrained": args.model}
    lm = HFQuantLM(quant=args.quant, device=args.device, batch_size=len(prompts), model_dtype=model_dtype, **kwargs)
    lm.show_progress = False
    print(
        f"# model {args.shape or args.model} ({args.quant}) on {args.device}, "
        f"loaded in {time.perf_counter() - t0:.1f} s; "
        f"threads {torch.get_num_threads()}; {len(prompts)} prompts x {len(points)} grid points = "
        f"{len(prompts) * len(points)} rows"
    )
    lm.generate_until(requests(prompts[:4], points[:2]), disable_tqdm=True)  # warm-up

    point_times: list[list[float]] = []
    batched_times: list[float] = []
    for _ in range(args.repeats):
        lm.grid_batching, lm.batch_size_per_gpu = False, len(prompts)
        per_point, outs_a = [], []
        for pt in points:
            sync(args.device)
            t = time.perf_counter()
            outs_a += lm.generate_until(requests(prompts, [pt]), disable_tqdm=True)
            sync(args.device)
            per_point.append(time.perf_counter() - t)
        point_times.append(per_point)
        lm.grid_batching, lm.batch_size_per_gpu = True, args.batch or len(prompts) * len(points)
        sync(args.device)
        t = time.perf_counter()
        outs_b = lm.generate_until(requests(prompts, points), disable_tqdm=True)
        sync(args.device)
        batched_times.append(time.perf_counter() - t)
    calls = lm.pop_calls()

    tok = lm.tokenizer
    diff = total = 0
    for a, b in zip(outs_a, outs_b, strict=True):
        ta, tb = tok.encode(a, add_special_tokens=False), tok.encode(b, add_special_tokens=False)
        total += max(len(ta), len(tb))
        diff += sum(x != y for x, y in zip(ta, tb, strict=False)) + abs(len(ta) - len(tb))

    sweep = [sum(p) for p in point_times]
    largest = [max(p[i] for i, pt in enumerate(points) if pt["max_gen_toks"] == max(args.max_new)) for p in point_times]
    med = statistics.median
    print(f"| sweep | wall s (median of {args.repeats}) |")
    print("|---|---|")
    print(f"| point by point ({len(points)} passes of {len(prompts)} rows) | {med(sweep):.2f} |")
    print(f"| grid-batched (one pass, {len(prompts) * len(points)} requests) | {med(batched_times):.2f} |")
    biggest = max(args.max_new)
    print(f"| largest single grid point ({len(prompts)} rows, {biggest} new tokens) | {med(largest):.2f} |")
    print(
        f"\npoint by point / batched = {med(sweep) / med(batched_times):.2f}x; "
        f"batched / largest point = {med(batched_times) / med(largest):.2f}x"
    )
    if args.shape:  # the placeholder tokenizer of a random-weight shape decodes every token to nothing
        print("tokens differing between the two sweeps: not checked (shape model: its texts are empty)")
    else:
        print(f"tokens differing between the two sweeps: {diff}/{total} ({100 * diff / max(total, 1):.2f}%)")
    last = [c for c in calls][-1]
    print(
        f"batched pass: {last.rows} rows in its last generate call, {last.steps} decode steps, "
        f"decode {last.decode_ms_per_step:.1f} ms/step, peak memory {(last.peak_memory_bytes or 0) / 2**30:.2f} GiB "
        f"({last.peak_memory_kind})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
