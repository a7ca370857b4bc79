"""Grid sweep cost: grid point by grid point versus grid-batched, in one run, same backend.

A grid of temperatures x top-k x max-new-tokens over N prompts is generated twice with hf-quant:
  - point by point: one generate_until per grid point (what lm-eval does: it groups requests by
    gen_kwargs), N rows per pass, each pass to its own max-new-tokens;
  - grid-batched: one generate_until with every request; rows of different points share batches,
    points that differ only in max-new-tokens are one generation truncated, and each prompt is
    prefilled once for all its rows.
It prints both wall times, the ratio, the batched sweep over its single largest grid point, the
decode cost per step of both kinds of pass, and the share of tokens that differ between the two
(sampling is batch-invariant up to rounding). A shape model (random weights) gets random prompts of
``--prompt-tokens`` token ids; its placeholder tokenizer writes token i as the word ``t<i>``.

The README's figures came from (CPU, then the lent H100):

    python bench/grid_batching.py --model smollm2-135m --quant fp32 --device cpu --threads 2 --prompts 16 \
        --max-new 16 64
    python bench/grid_batching.py --shape llama-2-7b --device cuda --prompts 64 --max-new 64 128 \
        --kv-cache static dynamic --repeats 2 --profile
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import add_model_options, pin_threads, sync  # bench/ is the script's folder: on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


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
    add_model_options(ap, quant="fp16", model_group=src)
    src.add_argument("--shape", help="a shape from specs/shapes (random weights, e.g. llama-2-7b)")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.3, 0.7, 1.0, 1.5])
    ap.add_argument("--top-k", type=int, nargs="+", default=[10, 50])
    ap.add_argument("--max-new", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--batch", type=int, default=None, help="rows per generate call when batched (default: all)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--prompt-tokens", type=int, default=64, help="prompt length of a shape model's random prompts")
    ap.add_argument(
        "--kv-cache", nargs="+", default=["auto"], choices=["auto", "dynamic", "static"], help="one sweep pair each"
    )
    ap.add_argument("--profile", action="store_true", help="profile one more batched pass: top kernels by time")
    args = ap.parse_args()
    pin_threads(args)

    from harness_ext.backend import HFQuantLM
    from harness_ext.tasks.loaders import DATA_DIR, read_jsonl

    points = [
        {"do_sample": t > 0, "temperature": t, "top_k": k, "max_gen_toks": n}
        for t, k, n in itertools.product(args.temperatures, args.top_k, args.max_new)
    ]
    model_dtype = "float16" if args.device.startswith("cuda") else "float32"
    t0 = time.perf_counter()
    if args.shape:
        from harness_ext.backend.shapes import shape_model_args

        kwargs = shape_model_args(args.shape)
    else:
        kwargs = {"pretrained": args.model}
    lm = HFQuantLM(quant=args.quant, device=args.device, batch_size=args.prompts, model_dtype=model_dtype, **kwargs)
    lm.show_progress = False
    if args.shape:
        from harness_ext.backend.speed import special_token_ids, synthetic_prompts

        special = special_token_ids(lm.tokenizer)
        ids = synthetic_prompts(lm.model.config.vocab_size, args.prompts, args.prompt_tokens, special)
        prompts = [" ".join(f"t{i}" for i in row) for row in ids.tolist()]
    else:
        prompts = [r["prompt"] for r in read_jsonl(DATA_DIR / "continuation.jsonl", ("prompt",))][: args.prompts]
    print(
        f"# model {args.shape or args.model} ({args.quant}) on {args.device}, "
        f"loaded in {time.perf_counter() - t0:.1f} s; "
        f"threads {torch.get_num_threads()}; {len(prompts)} prompts x {len(points)} grid points = "
        f"{len(prompts) * len(points)} rows"
    )
    biggest = max(args.max_new)
    print(
        f"\n| KV cache | point by point ({len(points)} passes of {len(prompts)} rows) | grid-batched (one pass) "
        f"| ratio | largest point ({biggest} new tokens) | batched / largest | decode ms/step: {len(prompts)} rows "
        "| batched rows, ms/step | batched peak memory | tokens differing |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|", flush=True)
    profiles = []
    for kv in args.kv_cache:
        r = sweep_pair(lm, prompts, points, args, kv)
        print(
            f"| {r['kv']} | {r['sweep']:.2f} s | {r['batched']:.2f} s | **{r['sweep'] / r['batched']:.2f}x** "
            f"| {r['largest']:.2f} s | {r['batched'] / r['largest']:.2f}x | {r['point_ms']:.1f} "
            f"| {r['rows']} rows, {r['batched_ms']:.1f} | {r['peak']} | {r['diff']} |",
            flush=True,
        )
        if args.profile:
            profiles.append(profile(lm, prompts, points, args.device, wait=max(args.max_new) // 2))
    print("\n".join(profiles))
    print(f"(wall times: median of {args.repeats}; decode ms/step: median over the steps of the passes)")
    return 0


def sweep_pair(lm, prompts: list[str], points: list[dict], args, kv: str) -> dict:
    """Point by point, then grid-batched, ``args.repeats`` times, with the given KV cache."""
    lm.kv_cache = kv if kv != "auto" else ("static" if args.device.startswith("cuda") else "dynamic")
    lm.grid_batching, lm.batch_size_per_gpu = True, 8
    lm.generate_until(requests(prompts[:4], points[:2]), disable_tqdm=True)  # warm-up
    lm.pop_calls()
    point_times: list[list[float]] = []
    batched_times: list[float] = []
    point_calls, batched_calls = [], []
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
        point_calls += lm.pop_calls()
        lm.grid_batching, lm.batch_size_per_gpu = True, args.batch or len(prompts) * len(points)
        sync(args.device)
        t = time.perf_counter()
        outs_b = lm.generate_until(requests(prompts, points), disable_tqdm=True)
        sync(args.device)
        batched_times.append(time.perf_counter() - t)
        batched_calls += lm.pop_calls()

    tok = lm.tokenizer
    diff = total = 0
    for a, b in zip(outs_a, outs_b, strict=True):
        ta, tb = tok.encode(a, add_special_tokens=False), tok.encode(b, add_special_tokens=False)
        total += max(len(ta), len(tb))
        diff += sum(x != y for x, y in zip(ta, tb, strict=False)) + abs(len(ta) - len(tb))
    med = statistics.median
    biggest = max(args.max_new)
    largest = [max(p[i] for i, pt in enumerate(points) if pt["max_gen_toks"] == biggest) for p in point_times]
    peak = max((c.peak_memory_bytes or 0) for c in batched_calls)
    return {
        "kv": lm.kv_cache,
        "sweep": med([sum(p) for p in point_times]),
        "batched": med(batched_times),
        "largest": med(largest),
        "point_ms": med([s for c in point_calls for s in c.step_ms]),
        "batched_ms": med([s for c in batched_calls for s in c.step_ms]),
        "rows": "+".join(str(c.rows) for c in batched_calls[: len(batched_calls) // args.repeats]),
        "peak": f"{peak / 2**30:.1f} GiB ({batched_calls[0].peak_memory_kind})",
        "diff": f"{diff}/{total} ({100 * diff / max(total, 1):.2f}%)",
    }


def profile(lm, prompts: list[str], points: list[dict], device: str, wait: int = 60, active: int = 3) -> str:
    """One more grid-batched pass with torch.profiler recording ``active`` decode steps after
    ``wait`` of them: the 15 costliest ops and kernels of those steps."""
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as torch_profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    forward = lm.model.forward

    def stepping_forward(*a, **k):
        out = forward(*a, **k)
        prof.step()
        return out

    with torch_profile(activities=activities, schedule=schedule(wait=wait, warmup=1, active=active)) as prof:
        lm.model.forward = stepping_forward
        try:
            lm.generate_until(requests(prompts, points), disable_tqdm=True)
        finally:
            lm.model.forward = forward
        sync(device)
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    title = f"\n# profile: {active} decode steps after {wait + 1} of a grid-batched pass, {lm.kv_cache} cache, by {key}"
    return title + "\n" + prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=60)


if __name__ == "__main__":
    raise SystemExit(main())
