"""``harness-ext``: validate | run | report | plan | schema | demo | tasks-dir | lm-eval.

Errors a user can cause are printed as one line (``harness-ext: error: ...``) with exit code 2 for
usage errors and 1 for runtime errors; a traceback means a bug.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

from harness_ext.errors import HarnessExtError, SpecError
from harness_ext.spec.only import check_only, parse_only

EPILOG = """\
examples:
  harness-ext validate specs/demo.yaml
  harness-ext run specs/demo.yaml --report
  harness-ext report runs/demo
  harness-ext plan specs/demo.yaml --pilot reports/demo/data
  harness-ext lm-eval run --model hf-quant --model_args pretrained=DIR,quant=nf4 \\
      --tasks quant_nextword --include_path "$(harness-ext tasks-dir)"
"""


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="harness-ext",
        description="Declarative studies of how quantized LLMs respond to sampling settings, on lm-evaluation-harness.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", help="log lm-eval and harness_ext details")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    v = sub.add_parser("validate", help="check a spec; print its cells (models x schemes x points x tasks x seeds)")
    v.add_argument("spec", help="study spec (YAML)")
    _max_cells_option(v)

    r = sub.add_parser("run", help="run a spec into its run directory (resumes: finished cells are skipped)")
    r.add_argument("spec", help="study spec (YAML)")
    r.add_argument("--output-dir", help="run directory (default: the spec's output_dir, else runs/<name>)")
    r.add_argument(
        "--report", action="store_true", help="render the report when the run ends (default: RUN_DIR/report)"
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="KEY=V1,V2",
        help="run only the cells whose model, scheme, kind, task, mode or batch (speed) is listed (repeatable); "
        "the rest stay pending for a later run",
    )
    r.add_argument("--redo", action="store_true", help="recompute the selected cells even if they are finished")
    r.add_argument(
        "--add-rounds",
        type=int,
        metavar="N",
        help="time N speed rounds beyond the highest one stored for this machine (instead of speed.rounds): "
        "rounds separated in time are the replicates a speed verdict should rest on",
    )
    r.add_argument("--executor", choices=["local", "ray"], help="override the spec's executor (local, or Ray tasks)")
    r.add_argument(
        "--time-limit",
        type=float,
        metavar="MINUTES",
        help="stop cleanly before the next cell once this much time has passed; run again to resume",
    )
    _max_cells_option(r)

    d = sub.add_parser("demo", help="run the packaged demo spec (SmolLM2-135M on the CPU) and render its report")
    d.add_argument("--output-dir", help="run directory (default runs/demo; the report goes to its report/)")
    d.add_argument("--no-progress", action="store_true", help="no progress bar")

    rp = sub.add_parser("report", help="render the HTML report of a run directory (no model, no GPU needed)")
    rp.add_argument("run_dir", help="run directory, or a folder holding its tables (e.g. reports/demo/data)")
    rp.add_argument(
        "--output-dir",
        help="where index.html goes (default: RUN_DIR/report; for a folder of tables, runs/<study>/report). "
        "The report.output_dir stored in a run directory is not used: a run directory does not choose where "
        "your files go. Nothing else in RUN_DIR is written",
    )
    rp.add_argument(
        "--compare",
        metavar="RUN_B",
        help="instead of the report, compare RUN_B against RUN_DIR: which verdicts and figures moved (compare.html "
        "and compare_*.csv in the report folder, a summary on stdout); both runs are only read",
    )

    pl = sub.add_parser(
        "plan",
        help="predict what a spec's design could detect (80 %% power), from a pilot run's variance; "
        "and how many prompts or rounds each claim part needs",
    )
    pl.add_argument("spec", help="study spec (YAML)")
    pl.add_argument(
        "--pilot", required=True, metavar="RUN_DIR", help="a finished run (or its tables) to take variances from"
    )
    pl.add_argument("--csv", metavar="FILE", help="also write the table as CSV")

    s = sub.add_parser("schema", help="write the JSON Schema of study specs (for editor completion)")
    s.add_argument("-o", "--output", help="file to write (default: stdout)")

    sub.add_parser("tasks-dir", help="print the folder of harness_ext's lm-eval tasks (for --include_path)")

    lm = sub.add_parser(
        "lm-eval",
        help="lm-eval's own CLI with the hf-quant backend registered; arguments pass unchanged",
        add_help=False,
    )
    lm.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _max_cells_option(p: argparse.ArgumentParser) -> None:
    from harness_ext.spec.bounds import MAX_CELLS

    p.add_argument(
        "--max-cells",
        type=int,
        default=MAX_CELLS,
        metavar="N",
        help=f"refuse a spec that plans more than N cells or probe grid points (default {MAX_CELLS:,}); "
        "counted from the grid's axes before anything is expanded",
    )


def main(argv: list[str] | None = None) -> int:
    """The console script: one line per error a user can cause (exit 2 usage, 1 runtime)."""
    try:
        return _main(argv)
    except BrokenPipeError:  # the reader left (`validate spec | head -1`): stop quietly, as `yes | head` does
        _silence_stdout()
        return 141


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush meets no closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file behind stdout (tests): nothing to flush into
        pass


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    if argv[:1] == ["lm-eval"]:  # hand everything after it to lm-eval untouched
        return _lm_eval(argv[1:])
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if not args.verbose:
        for noisy in ("lm_eval", "transformers", "accelerate", "datasets"):
            logging.getLogger(noisy).setLevel(logging.ERROR)
        from harness_ext import import_noise  # torchao's and torch's import-time notices

        import_noise.quiet()
    try:
        _check_options(args)
        return COMMANDS[args.command](args, argv)
    except HarnessExtError as e:
        print(f"harness-ext: error: {printable(str(e))}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("harness-ext: interrupted", file=sys.stderr)
        return 130


#: Characters never echoed raw to a terminal: C0/C1 controls (an ESC sequence in an ``--only``
#: value or a file name would drive the terminal) and bidirectional overrides.
_UNPRINTABLE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def printable(text: str) -> str:
    """``text`` with control characters shown as ``\\xNN`` / ``\\uNNNN`` (newlines kept: one per problem)."""
    return _UNPRINTABLE.sub(lambda m: repr(m.group(0))[1:-1], text)


def _check_options(args: argparse.Namespace) -> None:
    """Refuse option values that parse but mean nothing, before anything runs."""
    if getattr(args, "output_dir", None) == "":
        raise SpecError("--output-dir is empty: give a folder (an empty path would be the current directory)")
    if getattr(args, "max_cells", 1) < 1:
        raise SpecError(f"--max-cells must be a positive number of cells, not {args.max_cells}")


def _validate(args: argparse.Namespace, argv: list[str]) -> int:
    """Load, check and plan a spec without importing torch: the cell counts do not depend on the
    device, so ``device: auto`` is counted as the CPU here and resolved when the spec runs."""
    from harness_ext import preflight
    from harness_ext.spec import overview, plan
    from harness_ext.spec.bounds import check_size
    from harness_ext.spec.loading import load_spec_file

    spec, _ = load_spec_file(args.spec)
    check_size(spec, args.max_cells)
    preflight.check_paths(spec)
    print(printable(overview(spec, plan(spec, "cpu" if spec.device == "auto" else None))))
    return 0


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from harness_ext.spec.loading import load_spec_file

    spec, text = load_spec_file(args.spec)
    if args.executor:
        spec = spec.model_copy(update={"executor": args.executor})
    return _run_spec(
        spec,
        text,
        args.output_dir,
        args.report,
        not args.no_progress,
        ["harness-ext", *argv],
        args.time_limit,
        parse_only(args.only),
        args.redo,
        args.add_rounds,
        args.max_cells,
    )


def _demo(args: argparse.Namespace, argv: list[str]) -> int:
    from importlib import resources  # here, not at the top: `validate` stays fast

    from harness_ext.spec import parse_spec

    text = resources.files("harness_ext.specs").joinpath("demo.yaml").read_text(encoding="utf-8")
    spec = parse_spec(text, "demo.yaml")
    return _run_spec(spec, text, args.output_dir, True, not args.no_progress, ["harness-ext", *argv])


def _run_spec(
    spec,
    text: str,
    output_dir: str | None,
    report: bool,
    progress: bool,
    argv: list[str],
    time_limit_min: float | None = None,
    only: dict[str, set[str]] | None = None,
    redo: bool = False,
    add_rounds: int | None = None,
    max_cells: int | None = None,
) -> int:
    from harness_ext import preflight
    from harness_ext.spec.bounds import MAX_CELLS, check_size

    if time_limit_min is not None and not (math.isfinite(time_limit_min) and time_limit_min > 0):
        raise SpecError(f"--time-limit must be a positive number of minutes, not {time_limit_min:g}")
    if add_rounds is not None and not (add_rounds > 0 and spec.speed.enabled):
        raise SpecError(f"--add-rounds {add_rounds}: give a positive number of rounds, for a spec with speed enabled")
    check_size(spec, max_cells or MAX_CELLS)
    check_only(only or {}, spec)
    preflight.check_paths(spec)
    preflight.check_device(spec)
    preflight.check_hub(spec)
    from harness_ext.run import Runner  # torch: only once the spec is known to be runnable

    runner = Runner(
        spec,
        text,
        argv=argv,
        progress=progress,
        output_dir=output_dir,
        time_limit_s=time_limit_min * 60 if time_limit_min else None,
        only=only,
        redo=redo,
        add_rounds=add_rounds,
    )
    result = runner.run()
    print(f"run directory: {result.run_dir}")
    print(
        f"cells: {result.cells} (ran: {result.ok} ok, {result.failed} failed; {result.skipped} already done; "
        f"{result.missing} still missing); "
        f"model loads: {len(result.loads)} (+{len(result.scoring_loads)} reference scoring)"
    )
    if result.unexpected:
        print(
            f"harness-ext: {result.unexpected} cells failed on an unexpected error — a bug; tracebacks in the records",
            file=sys.stderr,
        )
    if result.interrupted:
        print("interrupted: finished cells are stored; run the same command again to resume", file=sys.stderr)
        return 130
    if result.timed_out:
        print("time limit reached: finished cells are stored; run the same command again to resume", file=sys.stderr)
        return 3
    if report:
        from harness_ext.report import render

        t0 = time.perf_counter()
        out = render(result.run_dir, spec.report.output_dir, warn=_warn)
        print(f"report: {out} (rendered in {time.perf_counter() - t0:.1f} s)")
    print(f"wall time: {result.wall_s / 60:.1f} min")
    return 1 if result.failed else 0


def _report(args: argparse.Namespace, argv: list[str]) -> int:
    from harness_ext.report import render

    if args.compare:
        from harness_ext.report.compare_page import main as compare

        return compare(Path(args.run_dir), Path(args.compare), args.output_dir, warn=_warn)
    out = render(Path(args.run_dir), Path(args.output_dir) if args.output_dir else None, warn=_warn)
    print(f"report: {out}")
    return 0


def _warn(line: str) -> None:
    print(f"warning: {printable(line)}", file=sys.stderr)


def _plan(args: argparse.Namespace, argv: list[str]) -> int:
    """Predict each claim part's detectable effect for the spec's design from the pilot's variance."""
    from harness_ext.analysis.planner import Design, predict, text
    from harness_ext.report.page import input_tables, study_from_tables
    from harness_ext.spec import load_spec

    spec = load_spec(args.spec)
    design = Design.of_spec(spec)
    pilot_dir = Path(args.pilot)
    pilot = study_from_tables(input_tables(pilot_dir, _warn), pilot_dir)
    table = predict(pilot, design)
    print(text(table, design))
    if args.csv:
        from harness_ext.store import atomic_write

        atomic_write(Path(args.csv), table.to_csv(index=False))
    return 0


def _schema(args: argparse.Namespace, argv: list[str]) -> int:
    from harness_ext.spec import StudySpec

    text = json.dumps(StudySpec.model_json_schema(), indent=2) + "\n"
    if args.output:
        from harness_ext.store import atomic_write

        atomic_write(Path(args.output), text, through_links=True)  # the user's own path: a link is meant
        print(f"wrote {args.output}")
    else:
        sys.stdout.write(text)
    return 0


def _tasks_dir(args: argparse.Namespace, argv: list[str]) -> int:
    from harness_ext.tasks import TASKS_DIR

    print(TASKS_DIR)
    return 0


def _lm_eval(rest: list[str]) -> int:
    """Register ``hf-quant`` with lm-eval's registry, then run lm-eval's CLI on ``rest`` unchanged."""
    from lm_eval.__main__ import cli_evaluate

    import harness_ext.backend  # noqa: F401  (registers hf-quant)

    sys.argv = ["lm-eval", *rest]
    try:
        cli_evaluate()
    except HarnessExtError as e:
        print(f"harness-ext: error: {e}", file=sys.stderr)
        return e.exit_code
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


COMMANDS = {
    "validate": _validate,
    "run": _run,
    "demo": _demo,
    "report": _report,
    "plan": _plan,
    "schema": _schema,
    "tasks-dir": _tasks_dir,
}

if __name__ == "__main__":
    raise SystemExit(main())

__all__ = ["main"]
