"""What hf-quant's per-call instrumentation costs: the same generate with and without it.

Instrumented = hf-quant's generate_rows (step timer logits processor, clock marks, peak-memory
reset/read, per-row finish bookkeeping). Bare = the same model.generate with the same per-row
sampler and stopping rule, nothing else. Interleaved repeats after a warm-up; medians and the
relative overhead are printed. The goal is < 2 %.

    python bench/instrumentation_overhead.py --model smollm2-135m --threads 1 --batch 8 --new 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from _common import add_model_options, pin_threads, sync  # bench/ is the script's folder: on sys.path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(ap, threads=1)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    pin_threads(args)

    from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

    from harness_ext.backend import HFQuantLM, RowStops
    from harness_ext.backend.sampler import Row, RowSampler
    from harness_ext.backend.speed import special_token_ids, synthetic_prompts
    from harness_ext.point import SamplingPoint

    lm = HFQuantLM(pretrained=args.model, quant=args.quant, device=args.device, batch_size=args.batch)
    tok = lm.tokenizer
    ids = synthetic_prompts(
        lm.model.get_input_embeddings().weight.shape[0],
        args.batch,
        args.prompt,
        special_token_ids(tok),
    ).to(args.device)
    mask = torch.ones_like(ids)
    params = [Row(SamplingPoint(temperature=0.8, top_k=50), i) for i in range(args.batch)]
    caps = [args.new] * args.batch

    def bare() -> None:
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=args.new,
            min_new_tokens=args.new,
            pad_token_id=tok.pad_token_id,
            eos_token_id=lm._eos_ids(),
        )
        stops = RowStops(tok, [], lm._eos_ids(), caps, ids.shape[1], lm.device)
        with torch.no_grad():
            lm.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                logits_processor=LogitsProcessorList(
                    [RowSampler(params, ids.shape[1], torch.zeros(args.batch, dtype=torch.long), lm.device)]
                ),
                stopping_criteria=StoppingCriteriaList([stops]),
            )
        sync(args.device)

    def instrumented() -> None:
        lm.generate_rows(ids, mask, params, caps, (), min_new_tokens=args.new)

    for f in (bare, instrumented):
        f()  # warm-up
    times: dict[str, list[float]] = {"bare": [], "instrumented": []}
    for _ in range(args.repeats):
        for name, f in (("bare", bare), ("instrumented", instrumented)):
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    b, i = statistics.median(times["bare"]), statistics.median(times["instrumented"])
    print(
        f"# {args.model} {args.quant} on {args.device}, threads {torch.get_num_threads()}, batch {args.batch}, "
        f"prompt {args.prompt}, {args.new} new tokens, {args.repeats} interleaved repeats"
    )
    print("| variant | median s | min s | max s |")
    print("|---|---|---|---|")
    for name, v in times.items():
        print(f"| {name} | {statistics.median(v):.4f} | {min(v):.4f} | {max(v):.4f} |")
    print(f"\ninstrumentation overhead: {100 * (i - b) / b:+.2f}% of generate time (median vs median)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
