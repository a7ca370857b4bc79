"""Two GPUs for real (issue 20): one speed study on one GPU and on two, a model split across both,
and a Ray worker killed mid-pair. Run on a machine with two GPUs (``nvidia-h100-x2``); each step
writes its run directory under ``--out`` and a line of ``steps.jsonl``; ``table`` prints the summary
from those files alone (so it can be re-printed anywhere from a fetched tarball).

    python bench/two_gpus.py one   --spec specs/paper_speed.yaml     # local executor, GPU 0 only
    python bench/two_gpus.py two   --spec specs/paper_speed.yaml     # Ray, a pair per GPU
    python bench/two_gpus.py split --spec specs/split_70b.yaml       # one Ray task over both GPUs
    python bench/two_gpus.py fault --spec specs/paper_speed.yaml --only model=tinyllama-1.1b
    python bench/two_gpus.py table

``one`` and ``two`` run the same spec the same way (``harness-ext run``, fresh run directory, no
``--time-limit``), one after the other on the same machine: their wall times compare the executors.
``fault`` runs the spec in this process with a Ray task that SIGKILLs its own worker right after its
first record is computed (once, in the whole study); Ray retries the pair, and the check is that
every cell ends with exactly one record file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def _log(out: Path, step: str, **fields: Any) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "steps.jsonl", "a") as f:
        f.write(json.dumps({"step": step, **fields}) + "\n")
    print(json.dumps({"step": step, **fields}), flush=True)


def _cli_run(
    spec: str, run_dir: Path, extra: list[str], env: dict[str, str], minutes: float | None
) -> tuple[float, int]:
    cmd = [sys.executable, "-m", "harness_ext.cli", "run", spec, "--output-dir", str(run_dir), "--no-progress", *extra]
    if minutes:
        cmd += ["--time-limit", str(minutes)]  # stops cleanly before the next pair; a rerun resumes
    t0 = time.perf_counter()
    rc = subprocess.run(cmd, env=env, cwd=REPO).returncode
    return time.perf_counter() - t0, rc


def _tagged(step: str, tag: str | None) -> str:
    return f"{step}-{tag}" if tag else step


def one(args: argparse.Namespace) -> None:
    """The study on GPU 0 alone, with the local executor (or Ray, ``--executor ray``: then the
    comparison with ``two`` holds the executor fixed and changes only the number of GPUs)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "0"}
    name = _tagged("one" if args.executor == "local" else "one-ray", args.tag)
    wall, rc = _cli_run(args.spec, args.out / name, ["--executor", args.executor], env, args.time_limit)
    _log(args.out, name, spec=args.spec, wall_s=wall, rc=rc, gpus=1, executor=args.executor)


def two(args: argparse.Namespace) -> None:
    name = _tagged("two", args.tag)
    wall, rc = _cli_run(args.spec, args.out / name, ["--executor", "ray"], dict(os.environ), args.time_limit)
    _log(args.out, name, spec=args.spec, wall_s=wall, rc=rc, gpus=2, executor="ray")


def split(args: argparse.Namespace) -> None:
    wall, rc = _cli_run(args.spec, args.out / "split", ["--executor", "ray"], dict(os.environ), args.time_limit)
    _log(args.out, "split", spec=args.spec, wall_s=wall, rc=rc)


def fault(args: argparse.Namespace) -> None:
    """A worker SIGKILLs itself after its first computed record (once per study); Ray retries it."""
    from harness_ext.cli import parse_only
    from harness_ext.run import Runner
    from harness_ext.run.executors import RayExecutor
    from harness_ext.spec import load_spec

    marker = args.out / "killed-worker.pid"
    marker.unlink(missing_ok=True)
    spec = load_spec(args.spec).model_copy(update={"executor": "ray"})
    runner = Runner(
        spec,
        Path(args.spec).read_text(),
        progress=False,
        output_dir=args.out / "fault",
        only=parse_only(args.only) if args.only else None,
        executor=RayExecutor(task_fn=_die_once(marker)),
    )
    t0 = time.perf_counter()
    result = runner.run()
    files = list((args.out / "fault" / "records").glob("*.json"))
    ids = [json.loads(f.read_text())["cell_id"] for f in files]
    _log(
        args.out,
        "fault",
        spec=args.spec,
        wall_s=time.perf_counter() - t0,
        killed_pid=marker.read_text() if marker.exists() else None,
        ok=result.ok,
        failed=result.failed,
        record_files=len(files),
        distinct_cells=len(set(ids)),
        loads=len(runner.loads),
    )


def _die_once(marker: Path) -> Any:
    def task(payload: dict[str, Any]) -> dict[str, Any]:
        import signal

        from harness_ext.run import runner as runner_module
        from harness_ext.run.executors import pair_task

        save = runner_module.Runner.save

        def save_then_die(self: Any, rec: Any, records: Any) -> None:
            save(self, rec, records)
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                os.kill(os.getpid(), signal.SIGKILL)

        runner_module.Runner.save = save_then_die
        try:
            return pair_task(payload)
        finally:
            runner_module.Runner.save = save

    return task


# -- the summary ---------------------------------------------------------------------------------
def _records(run_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(p.read_text()) for p in sorted((run_dir / "records").glob("*.json"))]


def _span_s(recs: list[dict[str, Any]]) -> float:
    """Seconds from the earliest cell start to the latest cell end (records keep whole seconds; a cell's
    start is taken after its model loaded, so the first load counts as start-up)."""
    from datetime import datetime

    starts = [datetime.fromisoformat(r["started_at"]) for r in recs]
    ends = [datetime.fromisoformat(r["finished_at"]) for r in recs]
    return (max(ends) - min(starts)).total_seconds()


def _kind(step: str) -> str:
    """``one``/``one-ray``/``two`` from a step name with or without its replicate tag."""
    if step == "one-ray" or step.startswith("one-ray-"):
        return "one-ray"
    for kind in ("one", "two"):
        if step == kind or step.startswith(kind + "-"):
            return kind
    return step


def table(args: argparse.Namespace) -> None:
    steps = [json.loads(line) for line in (args.out / "steps.jsonl").read_text().splitlines()]
    last = {s["step"]: s for s in steps}
    timed = [s for s in last.values() if _kind(s["step"]) in ("one", "one-ray", "two")]
    print("| step | executor | GPUs | wall s | first cell start to last cell end, s | start-up s | cells ok | failed |")
    print("|---|---|---|---|---|---|---|---|")
    spans: dict[str, float] = {}
    for s in timed:
        recs = _records(args.out / s["step"])
        ok = sum(r["status"] == "ok" for r in recs)
        spans[s["step"]] = _span_s(recs)
        print(
            f"| {s['step']} | {s['executor']} | {s['gpus']} | {s['wall_s']:.1f} | {spans[s['step']]:.0f} | "
            f"{s['wall_s'] - spans[s['step']]:.0f} | {ok} | {len(recs) - ok} |"
        )
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for s in timed:
        by_kind.setdefault(_kind(s["step"]), []).append(s)
    for base in ("one", "one-ray"):
        ones, twos = by_kind.get(base, []), by_kind.get("two", [])
        if not ones or not twos:
            continue
        walls = [a["wall_s"] / b["wall_s"] for a, b in zip(ones, twos, strict=False)]
        inner = [spans[a["step"]] / spans[b["step"]] for a, b in zip(ones, twos, strict=False)]
        print(
            f"\n{base} (GPU 0, {ones[0]['executor']}) / two (Ray, both GPUs), replicate by replicate in the order "
            f"run: wall time {', '.join(f'{w:.2f}x' for w in walls)}; "
            f"first cell start to last cell end {', '.join(f'{w:.2f}x' for w in inner)}"
        )
    for s in by_kind.get("two", [])[:1]:
        recs = _records(args.out / s["step"])
        gpus = sorted({str((r["measurements"].get("placement") or {}).get("ray_gpu_ids")) for r in recs})
        print(f"GPU ids the two-GPU run's records were computed on: {', '.join(gpus)}")
    if "split" in last:
        for r in _records(args.out / "split"):
            m = r["measurements"]
            print(f"\nsplit: {r['label']}: {r['status']} {r.get('error') or ''}")
            for key in sorted(m):
                if any(w in key for w in ("peak", "floor", "device", "bandwidth", "weight_bytes", "placement")):
                    print(f"  {key}: {m[key]}")
            dec = m.get("decode_ms_per_token") or {}
            print(f"  decode ms/token: median {dec.get('median')} (p10 {dec.get('p10')}, p90 {dec.get('p90')})")
    if "fault" in last:
        f = last["fault"]
        print(
            f"\nfault: worker {f['killed_pid']} killed; {f['ok']} ok, {f['failed']} failed; "
            f"{f['record_files']} record files for {f['distinct_cells']} distinct cells; {f['loads']} completed loads"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("step", choices=["one", "two", "split", "fault", "table"])
    ap.add_argument("--executor", choices=["local", "ray"], default="local", help="one: the executor on GPU 0")
    ap.add_argument("--tag", help="one/two: a replicate's name (run dir and step become STEP-TAG)")
    ap.add_argument("--spec", default="specs/paper_speed.yaml")
    ap.add_argument("--out", type=Path, default=Path("runs/two_gpus"))
    ap.add_argument("--time-limit", type=float, help="minutes, as `run --time-limit` (a rerun resumes)")
    ap.add_argument("--only", nargs="*", help="fault: run only these cells (KEY=V1,V2, as `run --only`)")
    args = ap.parse_args()
    {"one": one, "two": two, "split": split, "fault": fault, "table": table}[args.step](args)


if __name__ == "__main__":
    main()
