"""Command line of run_all.py: grids -> papermill runs -> results.csv -> report.html."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

from .execute import KERNEL_NAME, execute_notebook
from .executors import RESULT_MODES, Executor, ExecutorError, select_executor
from .grids import DEFAULT_GRIDS_DIR, GridError, load_grids, select_sections
from .lock import OutputFolderError, OutputLock, OutputLockedError
from .plan import FAILED, Resolver, make_resolver, plan_runs
from .results import collect_results, write_plan

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_NOTEBOOKS_DIR = REPO_ROOT / "notebooks"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_all.py",
        description="Train every configuration of the post's tables (each through its section notebook "
                    "with papermill), collect the results and build reports/report.html.")
    parser.add_argument("--data", default=None,
                        help="VOCdevkit folder or one VOC year folder (default: the embedded synthetic data set)")
    parser.add_argument("--profile", default="quick", help="training profile: smoke, quick or voc (default: quick)")
    parser.add_argument("--sections", nargs="+", default=None, metavar="SECTION",
                        help="sections to run (default: all): reference, focal, poly_focal, varifocal, dfl")
    parser.add_argument("--seeds", type=int, default=1, metavar="N",
                        help="train each configuration with seeds 0..N-1 (default: 1)")
    parser.add_argument("--force", action="store_true", help="run again even runs that already finished")
    parser.add_argument("--dry-run", action="store_true", help="list the runs and which are cached, run nothing")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N or auto (default: the profile's)")
    parser.add_argument("--out", default="reports", type=Path, help="output folder (default: reports/)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="runs executed at once on this machine, one device each (default: 1)")
    parser.add_argument("--devices", default=None, metavar="LIST",
                        help="comma-separated devices handed to the --jobs runs, e.g. 0,1 or cuda:0,cuda:1 or "
                             "cpu,cpu (default with --jobs N > 1: the first N GPUs, else cpu N times)")
    parser.add_argument("--executor", choices=("local", "dask"), default="local",
                        help="local: this machine; dask: submit each run to the Dask cluster of --scheduler "
                             "(default: local)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="Dask scheduler address for --executor dask, e.g. tcp://127.0.0.1:8786")
    parser.add_argument("--dask-results", choices=RESULT_MODES, default=None,
                        help="shared: workers write into --out, which they see at the same path; transfer: "
                             "workers return each run folder (without checkpoints/) and run_all.py writes it "
                             "(default: shared)")
    parser.add_argument("--grids", default=DEFAULT_GRIDS_DIR, type=Path, help="folder of the grid YAML files")
    parser.add_argument("--notebooks", default=DEFAULT_NOTEBOOKS_DIR, type=Path,
                        help="folder of the section notebooks and report.ipynb")
    parser.add_argument("--kernel", default=KERNEL_NAME, help="Jupyter kernel name (default: python3)")
    parser.add_argument("--no-report", action="store_true", help="skip report.ipynb and report.html")
    parser.add_argument("--wait-lock", action="store_true",
                        help="when another run_all.py is writing to --out, wait for it to end instead of stopping")
    return parser


def main(argv: list[str] | None = None, resolve: Resolver | None = None) -> int:
    """Run the grid and build the report; return the exit code (1 when a run or the report failed).

    `resolve` replaces the profile-based resolver (tests use it to avoid reading data).
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Papermill logs every notebook's paths and nbconvert warns about image alt text; the
    # per-run summary line and the run logs already contain what a user needs.
    logging.getLogger("papermill").setLevel(logging.WARNING)
    logging.getLogger("traitlets").setLevel(logging.ERROR)
    if args.seeds < 1:
        print(f"error: --seeds {args.seeds} is invalid; give a number of seeds >= 1", file=sys.stderr)
        return 2
    try:
        execute = select_executor(args.executor, jobs=args.jobs, devices=args.devices, device=args.device,
                                  scheduler=args.scheduler, results=args.dask_results, kernel_name=args.kernel,
                                  force=args.force)
    except ExecutorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # The lock comes first: it also checks, before any data is read, that --out is writable.
    lock = OutputLock(args.out)
    try:
        lock.acquire(wait=args.wait_lock)
    except (OutputFolderError, OutputLockedError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        return _plan_and_run(args, resolve, execute)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished runs are kept in {args.out / 'runs'}; run the same command again to "
              f"finish the others (an interrupted run resumes from its last finished epoch)", file=sys.stderr)
        return 130
    except OSError as error:
        if error.errno not in DISK_ERRNOS:
            raise
        print(f"error: {error}\nfinished runs are kept in {args.out / 'runs'}; fix the cause, then run the same "
              f"command again", file=sys.stderr)
        return 1
    finally:
        lock.release()


# A full disk or a folder that became read-only while the grid ran: reported as a message, not a traceback.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO})


def _plan_and_run(args: argparse.Namespace, resolve: Resolver | None, execute: Executor) -> int:
    try:
        sections = select_sections(load_grids(args.grids), args.sections)
        if resolve is None:
            resolve = make_resolver(args.profile, args.data, args.device)
        runs = plan_runs(sections, args.seeds, resolve, args.out, args.notebooks)
    except (GridError, FileNotFoundError, ValueError) as error:  # ConfigError and DataError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    # Kernels run in the notebooks folder; an absolute cache path makes them reuse the data
    # set that planning generated instead of generating it again under notebooks/.
    os.environ.setdefault("YOLONB_CACHE", str(Path(".cache", "yolonb").resolve()))
    write_plan(sections, runs, args.out, profile=args.profile, data=args.data, seeds=args.seeds,
               device=args.device)

    if args.dry_run:
        _print_plan(runs, args.force)
        return 0

    from yolonb.report.html import notebook_to_html

    to_run = [run for run in runs if args.force or run.status != "cached"]
    print(f"{len(runs)} runs planned, {len(runs) - len(to_run)} cached, {len(to_run)} to execute", flush=True)
    try:
        with tqdm(total=len(to_run), desc="runs", unit="run", disable=not to_run) as bar:
            for run in execute(to_run):
                _convert_quietly(notebook_to_html, run.output_notebook, run.html_path)
                mark = _run_summary(run) if run.status != FAILED else f"FAILED ({run.error})"
                tqdm.write(f"{run.run_id}  {run.row} seed {run.seed}: {mark}")
                bar.update()
    except ExecutorError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # NOTE: a run killed after writing metrics.json but before papermill saved its last cell
    # is cached with a run.ipynb that lacks the last outputs, and its run.html shows that.
    for run in runs:
        if run.status == "cached" and not run.html_path.exists() and run.output_notebook.exists():
            _convert_quietly(notebook_to_html, run.output_notebook, run.html_path)

    collect_results(runs, args.out)
    failed = [run for run in runs if run.status == FAILED]

    report_ok = True
    if not args.no_report:
        report_ok = build_report(args.out, args.notebooks, args.kernel)

    for run in failed:
        print(f"FAILED {run.run_id} ({run.row}, seed {run.seed}): {run.error}\n"
              f"  notebook: {run.output_notebook}\n  log: {run.log_path}", file=sys.stderr)
    return 1 if failed or not report_ok else 0


def _run_summary(run) -> str:
    """Return "mAP 0.2215, 66 s", naming the backbone pretraining when this run paid for it."""
    import json

    metrics = json.loads((run.run_dir / "metrics.json").read_text(encoding="utf-8"))
    text = f"mAP {float(metrics['map_voc07']):.4f}, {run.wall_time_s:.0f} s"
    pretraining = (metrics.get("backbone") or {}).get("pretraining") or {}
    if pretraining.get("from_cache") is False:
        text += f" (including {pretraining['seconds']:.0f} s of backbone pretraining, once per data set)"
    return text


def _convert_quietly(convert, notebook: Path, html: Path) -> None:
    # A broken notebook file must not stop the other runs; its log still records what happened.
    if not notebook.exists():
        return
    try:
        convert(notebook, html, exclude_input=False)
    except Exception as error:  # noqa: BLE001
        logger.error("converting %s to HTML failed: %s", notebook, error)


def build_report(out_dir: Path, notebooks_dir: Path, kernel_name: str = KERNEL_NAME) -> bool:
    """Execute report.ipynb on `out_dir` and convert it to `out_dir/report.html`; True when both worked."""
    from yolonb.report.html import notebook_to_html

    out_dir = Path(out_dir)
    executed = out_dir / "report.ipynb"
    log = out_dir / "report.log"
    start = time.perf_counter()
    try:
        execute_notebook(Path(notebooks_dir) / "report.ipynb", executed, {"out_dir": str(out_dir.resolve())},
                         log, kernel_name=kernel_name, cwd=out_dir)
    except Exception as error:  # noqa: BLE001 - reported with the paths that show the cause
        print(f"FAILED report: {error}\n  notebook: {executed}\n  log: {log}", file=sys.stderr)
        if executed.exists():
            _convert_quietly(notebook_to_html, executed, out_dir / "report.html")
        return False

    notebook_to_html(executed, out_dir / "report.html", exclude_input=True)
    print(f"report: {out_dir / 'report.html'} ({time.perf_counter() - start:.0f} s)", flush=True)
    return True


def _print_plan(runs, force: bool) -> None:
    print(f"{'run_id':12}  {'status':8}  {'seed':>4}  row")
    for run in runs:
        status = "cached" if run.status == "cached" and not force else "to run"
        print(f"{run.run_id:12}  {status:8}  {run.seed:>4}  {run.row}")
    cached = sum(run.status == "cached" for run in runs)
    print(f"{len(runs)} runs, {cached} cached" + (" (--force runs them again)" if force and cached else ""))
