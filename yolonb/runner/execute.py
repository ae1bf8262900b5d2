"""Execute notebooks with papermill: one run per call, its kernel output kept in a log file."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

import papermill

from yolonb.fileio import remove_stale_temporaries, write_text

from .plan import FAILED, FINISHED, PlannedRun, is_finished

logger = logging.getLogger(__name__)

KERNEL_NAME = "python3"


def execute_notebook(input_path: str | Path, output_path: str | Path, parameters: dict[str, Any],
                     log_path: str | Path, kernel_name: str = KERNEL_NAME, cwd: str | Path | None = None,
                     start_timeout: int = 120) -> None:
    """Execute `input_path` into `output_path` with `parameters` injected after the "parameters" cell.

    The kernel's stdout and stderr go to `log_path`. Papermill saves the output notebook
    after every cell, so when a cell fails the saved notebook shows the error and the cells
    after it stay unexecuted.

    Raises:
        papermill.PapermillExecutionError: a cell raised (or an unknown magic was used).
    """
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as log:
        papermill.execute_notebook(
            str(input_path), str(output_path), parameters=parameters, kernel_name=kernel_name,
            progress_bar=False, log_output=False, stdout_file=log, stderr_file=log,
            cwd=str(cwd) if cwd is not None else None, start_timeout=start_timeout,
            # The kernel logs to run_all's terminal, not to `log_path`: its start-up warnings
            # would break the progress bar, and a Ctrl-C of run_all makes it log a traceback
            # about the closed connection. Errors of the notebook's cells reach the notebook.
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],
        )


def run_notebook(run: PlannedRun, kernel_name: str = KERNEL_NAME, force: bool = False,
                 device: str | None = None) -> PlannedRun:
    """Execute the notebook of one planned run into its run folder and record the outcome.

    A finished run folder is left alone unless `force`, which removes the folder first
    so the run starts from scratch instead of resuming. The outcome is also written to
    `run_dir/run.json` (status, error, paths, wall time) for the report. `device`, when
    given, replaces the configuration's device for this execution.
    """
    if is_finished(run.run_dir) and not force:
        run.status = "cached"
        return run
    if force and run.run_dir.exists():
        shutil.rmtree(run.run_dir)
    run.run_dir.mkdir(parents=True, exist_ok=True)
    for path in remove_stale_temporaries(run.run_dir):
        logger.info("removed %s, left by a process killed while writing it", path)

    # Progress bars in a kernel without widgets print a line per step into the notebook.
    config = run.config if device is None else {**run.config, "device": device}
    parameters = {"config": config, "out_dir": str(run.run_dir.resolve()), "progress": False}
    start = time.perf_counter()
    try:
        execute_notebook(run.notebook, run.output_notebook, parameters, run.log_path, kernel_name=kernel_name,
                         cwd=run.notebook.parent)
    except papermill.PapermillExecutionError as error:
        run.status = FAILED
        run.error = _failure_message(run.output_notebook, error)
        # Tracebacks are cell outputs, not streams, so papermill does not write them to the log.
        with open(run.log_path, "a", encoding="utf-8") as log:
            log.write(f"\n{error}\n")
    except Exception as error:  # noqa: BLE001 - a kernel that dies or never starts fails this run only
        run.status = FAILED
        run.error = f"{type(error).__name__}: {error}"
    else:
        if is_finished(run.run_dir):
            run.status = FINISHED
        else:
            run.status = FAILED
            run.error = f"the notebook ended without a finished {run.run_dir / 'metrics.json'}"
    run.wall_time_s = time.perf_counter() - start

    if run.status == FAILED:
        logger.error("run %s (%s, seed %d) failed: %s\n  notebook: %s\n  log: %s", run.run_id, run.row,
                     run.seed, run.error, run.output_notebook, run.log_path)
    write_run_json(run)
    return run


def _failure_message(notebook_path: Path, error: papermill.PapermillExecutionError) -> str:
    """Return "ErrorName: message"; IPython reports some errors (an unknown magic) on stderr only."""
    if error.ename and error.evalue:
        return f"{error.ename}: {error.evalue}"
    try:
        import nbformat

        cells = nbformat.read(notebook_path, as_version=4).cells
    except (OSError, ValueError):
        return "the notebook failed; see its log"
    executed = [cell for cell in cells if cell.cell_type == "code" and cell.get("execution_count")]
    for output in reversed(executed[-1].outputs if executed else []):
        if output.get("output_type") == "stream" and output.get("name") == "stderr":
            lines = [line for line in output.get("text", "").splitlines() if line.strip()]
            if lines:
                return lines[-1]
    return "the notebook failed; see its log"


def write_run_json(run: PlannedRun) -> None:
    """Write `run_dir/run.json`: the runner's record of the run's status, error, paths and wall time."""
    record = {
        "run_id": run.run_id, "section": run.section, "row": run.row, "label": run.label, "seed": run.seed,
        "status": run.status, "error": run.error, "wall_time_s": run.wall_time_s,
        "notebook": str(run.output_notebook), "log": str(run.log_path),
    }
    write_text(run.run_dir / "run.json", json.dumps(record, indent=2))
