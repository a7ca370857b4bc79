"""The runner versus lm-eval's CLI once per cell, side by side in one run, on the same small grid.

Both use the same hf-quant backend and task; the runner loads each (model, scheme) once and sends
all of its cells through one process, while the CLI path starts `harness-ext lm-eval run` once per
cell (a new process, the task index, the model load, every time). Wall times include process
start-up, as a user would see them.

    python bench/runner_vs_cli.py --model smollm2-135m --threads 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--schemes", nargs="+", default=["fp32", "nf4"])
    ap.add_argument("--temperatures", type=float, nargs="+", default=[0.0, 0.7, 1.0])
    ap.add_argument("--top-k", type=int, nargs="+", default=[50])
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cli = [sys.executable, "-m", "harness_ext.cli"]
    work = Path(tempfile.mkdtemp(prefix="runner-vs-cli-"))
    spec = work / "spec.yaml"
    spec.write_text(
        f"name: runner-vs-cli\nmodels: [{{pretrained: {args.model}}}]\nschemes: [{', '.join(args.schemes)}]\n"
        f"sampling: {{temperature: [{', '.join(map(str, args.temperatures))}], "
        f"top_k: [{', '.join(map(str, args.top_k))}], max_new_tokens: [8]}}\n"
        f"tasks: [quant_nextword]\nlimit: {args.limit}\nseeds: [0]\nprobe: {{enabled: false}}\n"
        f"speed: {{enabled: false}}\ndevice: cpu\nbatch_size: 8\nthreads: {args.threads}\n"
    )
    cells = len(args.schemes) * len(args.temperatures) * len(args.top_k)
    # warm the GGUF conversion cache and the OS file cache so neither side pays for it
    subprocess.run([*cli, "validate", str(spec)], env=env, check=True, capture_output=True)

    t0 = time.perf_counter()
    subprocess.run(
        [*cli, "run", str(spec), "--output-dir", str(work / "run"), "--no-progress"],
        env=env,
        check=True,
        capture_output=True,
    )
    runner_s = time.perf_counter() - t0

    tasks_dir = subprocess.run([*cli, "tasks-dir"], env=env, check=True, capture_output=True, text=True).stdout.strip()
    t0 = time.perf_counter()
    for scheme in args.schemes:
        for t, k in ((t, k) for t in args.temperatures for k in args.top_k):
            gen = f"do_sample={t > 0},temperature={t},top_k={k},max_gen_toks=8"
            subprocess.run(
                [
                    *cli,
                    "lm-eval",
                    "run",
                    "--model",
                    "hf-quant",
                    "--model_args",
                    f"pretrained={args.model},quant={scheme}",
                    "--device",
                    "cpu",
                    "--batch_size",
                    "8",
                    "--tasks",
                    "quant_nextword",
                    "--include_path",
                    tasks_dir,
                    "--limit",
                    str(args.limit),
                    "--gen_kwargs",
                    gen,
                ],
                env=env,
                check=True,
                capture_output=True,
            )
    cli_s = time.perf_counter() - t0

    print(
        f"# {args.model}: {len(args.schemes)} schemes x {len(args.temperatures)} temperatures x "
        f"{len(args.top_k)} top-k = {cells} cells, "
        f"quant_nextword, {args.limit} prompts, threads {args.threads}"
    )
    print("| way | wall s | per cell s |")
    print("|---|---|---|")
    print(f"| harness-ext run (one process, each pair loaded once) | {runner_s:.1f} | {runner_s / cells:.1f} |")
    print(f"| lm-eval CLI once per cell ({cells} processes) | {cli_s:.1f} | {cli_s / cells:.1f} |")
    print(f"\nCLI per cell / runner = {cli_s / runner_s:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
