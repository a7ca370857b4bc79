"""Kill-and-resume bench: SIGKILL a real ``harness-ext run`` at a random moment, resume it, check the run.

What it proves. A run writes one record per cell, atomically (temporary file, fsync, rename), and a
re-run of the same command skips the cells already stored as ``ok``. If that holds, killing the
process at *any* moment (while importing, loading a model, generating, writing a record, adding the
reference metrics, exporting the tables) and running the same command again must end in the same
state as an uninterrupted run:

- every cell of the spec has exactly one record file, and there are no other record files;
- every record parses and validates (``RunStore(dir).load_records()`` reports no problems);
- every record has status ``ok``;
- a record that was already on disk when the process was killed is not recomputed: after the resume
  its file is byte-identical, or differs only by the metrics against the reference that the resume
  added (``measurements.reference_metrics`` and the metric names it lists, in ``metrics`` and in
  ``sample_metrics``).

Then it kills the report: ``harness-ext report DIR --output-dir DIR-report`` is SIGKILLed at a random
moment (uniform between 0.2 s and the duration of one uninterrupted report) and rendered again to the
end. Reporting only reads the run directory, so every file of it must be byte-identical before and
after, the second render must exit 0 and leave a complete ``index.html``, and no ``.tmp`` file may be
in the run directory. (A kill mid-write may leave a ``.tmp`` in the report's own folder: counted in
the ``rtmp`` column; the page itself is renamed into place whole or not at all.)

Each trial runs the study in a fresh folder in a subprocess
(``python -m harness_ext.cli run SPEC --output-dir DIR --no-progress``), kills it with SIGKILL after a
delay drawn uniformly between 0.5 s and the duration of one uninterrupted run (measured once, first),
then runs the same command to completion and checks the folder. Leftover temporary files (``*.tmp``,
which a SIGKILL during a write cannot clean up) are counted in the table; they never count as
records.

The study is small: a tiny random Llama built by ``tests/tiny.py`` (no downloads), schemes fp32 and
nf4 on the CPU, 4 sampling points x 2 tasks, the probe and a speed cell, torch pinned to one thread
(``threads: 1``), one ``simple_evaluate`` per cell (``grid_batching: false``) so that records land
one by one and kills fall between many different states.

Run it (a trial takes 1.5-3 min on 2 quiet cores; on a loaded machine a resume may pass this bench's
timeout, which it then says as such)::

    python bench/kill_resume.py                                # 20 trials, seed 0
    python bench/kill_resume.py --trials 3 --seed 1 --keep /tmp/kr

On a larger host, seeds run side by side (each trial pins torch to one thread): the committed
24-trial run (reports/kill_resume/) was ``for s in 1 2 3 4 5 6 7 8; do python bench/kill_resume.py
--trials 3 --seed $s --keep /tmp/kr$s > kr$s.log & done; wait`` on 16 cores.

It prints one row per trial (run kill, then report kill) and exits 1 if any trial fails. The trials
run a copy of ``harness_ext/`` taken when the bench starts (on ``PYTHONPATH``), so that edits made to
the working tree while it runs cannot mix two versions of the code into one run directory; ``--live``
runs the working tree instead.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

SPEC = """\
name: kill-resume
models:
  - {{name: tiny, pretrained: "{model}"}}
schemes: [fp32, nf4]
sampling:
  temperature: [0, 0.8]
  top_k: [null, 5]
  max_new_tokens: [4]
tasks: [quant_nextword, quant_continuation]
limit: 3
seeds: [0]
probe: {{limit: 3}}
speed: {{batch_sizes: [1], prompt_tokens: 8, new_tokens: 4, warmup: 0, repeats: 3}}
device: cpu
batch_size: 8
grid_batching: false
threads: 1
"""


def child_env(work: Path) -> dict[str, str]:
    src = work / "src"
    path = [str(src)] if src.is_dir() else []
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([*path, *filter(None, [os.environ.get("PYTHONPATH")])]),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HARNESS_EXT_CACHE": str(work / "cache"),
    }


def start(spec: Path, out: Path, log: Path, work: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "harness_ext.cli", "run", str(spec), "--output-dir", str(out), "--no-progress"]
    with log.open("ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=work, env=child_env(work))


def start_report(out: Path, report: Path, log: Path, work: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "harness_ext.cli", "report", str(out), "--output-dir", str(report)]
    with log.open("ab") as f:
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=work, env=child_env(work))


def wait(proc: subprocess.Popen[bytes], timeout: float) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return -9


def digest(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path -> bytes): what reporting must leave untouched."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def kill_report(out: Path, report: Path, log: Path, work: Path, kill_at: float) -> tuple[int, list[str]]:
    """SIGKILL a report of ``out`` after ``kill_at`` s, render it again; (stray .tmp in the report
    folder, problems)."""
    before = digest(out)
    t0 = time.perf_counter()
    proc = start_report(out, report, log, work)
    while proc.poll() is None and time.perf_counter() - t0 < kill_at:
        time.sleep(0.01)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    problems = []
    if digest(out) != before:
        problems.append("the killed report changed the run directory")
    stray = len(tmp_files(report))
    code = wait(start_report(out, report, log, work), timeout=600)
    if code != 0:
        problems.append(f"report exit code {code}")
    index = report / "index.html"
    if not index.is_file() or not index.read_text(encoding="utf-8").rstrip().endswith("</html>"):
        problems.append("no complete index.html after the second report")
    if digest(out) != before:
        problems.append("the report changed the run directory")
    return stray, problems


def run_to_end(spec: Path, out: Path, log: Path, work: Path, timeout: float) -> tuple[int | None, float]:
    """Exit code and seconds of a run to its end; ``None`` where it ran past ``timeout`` and this
    bench stopped it (not a result of the run: an overloaded machine, or a hang — see its log)."""
    t0 = time.perf_counter()
    proc = start(spec, out, log, work)
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    return code, time.perf_counter() - t0


def snapshot(out: Path) -> dict[str, bytes]:
    """The record files on disk (name -> bytes)."""
    return {p.name: p.read_bytes() for p in sorted((out / "records").glob("*.json"))}


def tmp_files(out: Path) -> list[Path]:
    return sorted(out.rglob("*.tmp")) if out.is_dir() else []


def without_reference_metrics(rec: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """``rec`` without ``measurements.reference_metrics`` and the metrics it added (``names``)."""
    rec = copy.deepcopy(rec)
    rec.get("measurements", {}).pop("reference_metrics", None)
    for n in names:
        rec.get("metrics", {}).pop(n, None)
    rows = [{k: v for k, v in row.items() if k not in names} for row in rec.get("sample_metrics", [])]
    rec["sample_metrics"] = [row for row in rows if set(row) != {"doc_id"}]
    return rec


def check(out: Path, cell_ids: set[str], before: dict[str, bytes]) -> list[str]:
    """Problems with a finished run directory (empty list: all good)."""
    from harness_ext.store import RunStore

    problems: list[str] = []
    files = snapshot(out)
    stems = {name.removesuffix(".json") for name in files}
    if missing := cell_ids - stems:
        problems.append(f"{len(missing)} cells without a record")
    if extra := stems - cell_ids:
        problems.append(f"{len(extra)} record files of no cell")
    store = RunStore(out)
    try:
        records = store.load_records()
    except Exception as e:  # a StoreError (newer version) or worse: the folder is not readable
        return [*problems, f"load_records raised {type(e).__name__}: {e}"]
    if store.problems:
        problems.append(f"invalid records: {store.problems[:3]}")
    not_ok = [r.cell_id for r in records.values() if r.status != "ok"]
    if not_ok:
        problems.append(f"{len(not_ok)} records not ok, e.g. {records[not_ok[0]].error!r}")
    for name, old_bytes in before.items():
        new_bytes = files.get(name)
        if new_bytes is None:
            problems.append(f"{name}: stored before the kill, gone after the resume")
            continue
        if new_bytes == old_bytes:
            continue
        try:
            old = json.loads(old_bytes)
        except json.JSONDecodeError:
            problems.append(f"{name}: half-written at the kill")
            continue
        new = json.loads(new_bytes)
        if old.get("status") != "ok":
            continue  # a failed cell is meant to be recomputed
        if old.get("measurements", {}).get("reference_metrics"):
            problems.append(f"{name}: had its reference metrics before the kill, but was rewritten")
            continue
        added = new.get("measurements", {}).get("reference_metrics")
        if not added:
            problems.append(f"{name}: recomputed after the resume (no reference metrics added)")
            continue
        names = set(added.get("metrics", []))
        if without_reference_metrics(new, names) != without_reference_metrics(old, names):
            problems.append(f"{name}: changed beyond the added reference metrics")
    return problems


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20, help="kill-and-resume trials (default 20)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times (default 0)")
    ap.add_argument("--keep", metavar="DIR", help="work in DIR and keep it (default: a temporary folder, removed)")
    ap.add_argument("--live", action="store_true", help="run the working tree, not a copy taken at the start")
    args = ap.parse_args(argv)

    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="kill-resume-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    keep = bool(args.keep)
    try:
        shutil.rmtree(work / "src", ignore_errors=True)
        if not args.live:
            ignore = shutil.ignore_patterns("__pycache__")
            shutil.copytree(REPO / "harness_ext", work / "src" / "harness_ext", ignore=ignore)
            for data in ("templates", "specs"):  # installed as harness_ext.templates / .specs (pyproject)
                shutil.copytree(REPO / data, work / "src" / "harness_ext" / data, ignore=ignore)
            sys.path.insert(0, str(work / "src"))
        sys.path.insert(0, str(REPO / "tests"))
        from tiny import build_tiny_model

        import harness_ext
        from harness_ext.spec import load_spec, plan

        print(f"code: {Path(harness_ext.__file__).parent}", flush=True)
        model = work / "model"
        if not (model / "config.json").is_file():
            build_tiny_model(model)
        spec = work / "spec.yaml"
        spec.write_text(SPEC.format(model=model), encoding="utf-8")
        cell_ids = {c.id for c in plan(load_spec(spec))}

        base = work / "uninterrupted"
        shutil.rmtree(base, ignore_errors=True)
        code, duration = run_to_end(spec, base, work / "uninterrupted.log", work, timeout=1800)
        base_problems = check(base, cell_ids, {}) if code == 0 else [f"exit code {code}"]
        print(f"study: {len(cell_ids)} cells; uninterrupted run: {duration:.1f} s, exit {code}", flush=True)
        if base_problems:
            print(f"the uninterrupted run is not clean: {base_problems}; see {work / 'uninterrupted.log'}")
            keep = True
            return 1

        t0 = time.perf_counter()
        rcode = wait(start_report(base, work / "uninterrupted-report", work / "uninterrupted.log", work), 600)
        report_s = time.perf_counter() - t0
        print(f"uninterrupted report: {report_s:.1f} s, exit {rcode}", flush=True)
        if rcode != 0:
            print(f"the uninterrupted report failed; see {work / 'uninterrupted.log'}")
            keep = True
            return 1

        header = (
            f"{'trial':>5}  {'kill at':>8}  {'at kill':>7}  {'after':>5}  {'tmp':>3}  "
            f"{'report kill':>11}  {'rtmp':>4}  result"
        )
        print(header)
        print("-" * len(header), flush=True)
        failures = 0
        for trial in range(1, args.trials + 1):
            out, log = work / f"trial-{trial:02d}", work / f"trial-{trial:02d}.log"
            shutil.rmtree(out, ignore_errors=True)
            log.unlink(missing_ok=True)
            kill_at = rng.uniform(0.5, duration)
            t0 = time.perf_counter()
            proc = start(spec, out, log, work)
            while proc.poll() is None and time.perf_counter() - t0 < kill_at:
                time.sleep(0.01)
            finished_first = proc.poll() is not None
            if not finished_first:
                proc.send_signal(signal.SIGKILL)
            proc.wait()
            before = snapshot(out) if out.is_dir() else {}
            stale = len(tmp_files(out))
            timeout = max(600.0, 10 * duration)
            code, _ = run_to_end(spec, out, log, work, timeout=timeout)
            if code is None:
                stored = len(list((out / "records").glob("*.json")))
                problems = [f"resume stopped by this bench after {timeout:.0f} s ({stored} records stored by then)"]
            else:
                problems = [f"resume exit code {code}"] if code != 0 else []
            problems += check(out, cell_ids, before)
            after = len(snapshot(out))
            report_kill_at = rng.uniform(0.2, report_s)
            rtmp, report_problems = kill_report(out, work / f"trial-{trial:02d}-report", log, work, report_kill_at)
            problems += report_problems
            result = "ok" if not problems else "FAIL: " + "; ".join(problems)
            if finished_first and not problems:
                result = "ok (finished before the kill)"
            failures += bool(problems)
            print(
                f"{trial:>5}  {kill_at:>7.2f}s  {len(before):>7}  {after:>5}  {stale:>3}  "
                f"{report_kill_at:>10.2f}s  {rtmp:>4}  {result}",
                flush=True,
            )
            if problems:
                print(f"       log: {log}")
        print(f"{args.trials - failures}/{args.trials} trials ok")
        keep = keep or bool(failures)
        return 1 if failures else 0
    finally:
        if keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
