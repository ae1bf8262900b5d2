"""Executors of planned runs: one at a time, several at once on local devices, or on a Dask cluster.

Each executor takes the runs to execute and yields every run as it completes, with its
status, error and wall time set, so run_all.py advances its progress bar and prints one
line per run in completion order. A failed run never stops the others.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import logging
import os
import queue
import re
import shutil
import socket
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from .execute import KERNEL_NAME, run_notebook, write_run_json
from .plan import FAILED, PlannedRun

logger = logging.getLogger(__name__)

# "cpu", "cuda", "cuda:N", or a bare GPU index N meaning cuda:N.
DEVICE_PATTERN = re.compile(r"cpu|cuda(:\d+)?|\d+")

# Transports of run folders from Dask workers into the client's --out folder.
RESULT_MODES = ("shared", "transfer")

# Transferred run folders leave out the resume checkpoint: it is the largest file (about
# 180 MB for the ResNet-18 detector with its optimizer state) and the client never resumes
# a run that a worker trains.
TRANSFER_EXCLUDED = ("checkpoints",)


class ExecutorError(ValueError):
    """Invalid executor options, or a Dask cluster that cannot run the grid; the message names the fix."""


Executor = Callable[[list[PlannedRun]], Iterator[PlannedRun]]


def select_executor(name: str, *, jobs: int = 1, devices: str | None = None, device: str | None = None,
                    scheduler: str | None = None, results: str | None = None, kernel_name: str = KERNEL_NAME,
                    force: bool = False) -> Executor:
    """Check the executor options of run_all.py and return the function that executes a list of runs.

    Nothing connects or trains here: a Dask scheduler is contacted when the first run is submitted.

    Raises:
        ExecutorError: an option that does not apply to the executor, or an invalid value.
    """
    if name == "dask":
        if not scheduler:
            raise ExecutorError("--executor dask needs --scheduler tcp://HOST:PORT, the address `dask scheduler` prints")
        if jobs != 1 or devices is not None:
            raise ExecutorError(
                "--jobs and --devices apply to --executor local; a Dask cluster runs as many runs at once as its "
                "workers have threads (start one worker per GPU with `dask worker ... --nthreads 1`)"
            )
        mode = results or "shared"
        if mode not in RESULT_MODES:
            raise ExecutorError(f"--dask-results {mode!r} is invalid; use one of {', '.join(RESULT_MODES)}")
        return lambda runs: execute_dask(runs, scheduler, mode, kernel_name, force)

    if name != "local":
        raise ExecutorError(f"--executor {name!r} is invalid; use local or dask")
    if scheduler is not None or results is not None:
        raise ExecutorError("--scheduler and --dask-results apply to --executor dask; add --executor dask")
    slots = parse_devices(devices, jobs, device)
    if slots is None:
        return lambda runs: execute_sequential(runs, kernel_name, force)
    return lambda runs: execute_parallel(runs, slots, jobs, kernel_name, force)


# ---------------------------------------------------------------------------
# Local execution


def parse_devices(text: str | None, jobs: int, default_device: str | None = None) -> list[str] | None:
    """Return the device of each concurrent job from --devices and --jobs, or None to keep the run's own device.

    Args:
        text: comma-separated devices, e.g. "0,1" or "cuda:0,cuda:1" or "cpu,cpu"; None for the default.
        jobs: number of runs at once (>= 1).
        default_device: the --device option, used to choose the default devices.

    Returns:
        None when jobs is 1 and no devices are given, so each run keeps its configured
        device. Otherwise one device name per slot, at least `jobs` of them. Without
        --devices the default is cuda:0..jobs-1 when CUDA has that many GPUs and
        --device does not ask for the CPU, else "cpu" once per job.

    Raises:
        ExecutorError: jobs < 1, an invalid device name, a GPU listed twice, a GPU index
            that does not exist, or fewer devices than jobs.
    """
    if jobs < 1:
        raise ExecutorError(f"--jobs {jobs} is invalid; give the number of runs to execute at once (>= 1)")
    if text is None:
        if jobs == 1:
            return None
        return _default_devices(jobs, default_device)

    devices = []
    for item in (part.strip() for part in text.split(",")):
        if not DEVICE_PATTERN.fullmatch(item):
            raise ExecutorError(
                f"--devices: invalid device {item!r} in {text!r}; use cpu, cuda, cuda:N or a GPU index N, "
                f"separated by commas (e.g. --devices 0,1)"
            )
        devices.append(f"cuda:{item}" if item.isdigit() else item)

    gpus = [device for device in devices if device != "cpu"]
    repeated = sorted({device for device in gpus if gpus.count(device) > 1})
    if repeated:
        raise ExecutorError(
            f"--devices {text}: {', '.join(repeated)} is listed more than once; a GPU trains one run at a time "
            f"(only cpu may repeat)"
        )
    if gpus:
        _check_gpus_exist(gpus, text)
    if len(devices) < jobs:
        raise ExecutorError(
            f"--jobs {jobs} needs {jobs} devices but --devices {text} lists {len(devices)}; "
            f"list one device per job (repeat cpu to run several CPU jobs) or lower --jobs"
        )
    return devices


def _default_devices(jobs: int, default_device: str | None) -> list[str]:
    import torch

    wants_cpu = default_device == "cpu"
    if not wants_cpu and torch.cuda.is_available():
        count = torch.cuda.device_count()
        if count < jobs:
            raise ExecutorError(
                f"--jobs {jobs} needs {jobs} GPUs but CUDA shows {count}; lower --jobs, or pass "
                f"--device cpu to run {jobs} CPU jobs"
            )
        return [f"cuda:{index}" for index in range(jobs)]
    return ["cpu"] * jobs


def _check_gpus_exist(gpus: list[str], text: str) -> None:
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in gpus:
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            raise ExecutorError(
                f"--devices {text}: {device} does not exist (this machine has {count} CUDA device(s)); "
                f"list existing GPUs or use cpu"
            )


def execute_sequential(runs: Iterable[PlannedRun], kernel_name: str = KERNEL_NAME,
                       force: bool = False) -> Iterator[PlannedRun]:
    """Execute the runs one after another, each on the device of its configuration."""
    for run in runs:
        yield run_notebook(run, kernel_name=kernel_name, force=force)


def execute_parallel(runs: Iterable[PlannedRun], devices: list[str], jobs: int, kernel_name: str = KERNEL_NAME,
                     force: bool = False) -> Iterator[PlannedRun]:
    """Execute up to `jobs` runs at once, each on a device taken from `devices` while it runs.

    Each run's kernel is a process of its own; the threads here only wait for them. A
    run's configuration gets the device it was handed ("device" is an execution field,
    so the run id stays the same).
    """
    free: queue.Queue[str] = queue.Queue()
    for device in devices:
        free.put(device)

    def execute(run: PlannedRun) -> PlannedRun:
        device = free.get()
        try:
            return run_notebook(run, kernel_name=kernel_name, force=force, device=device)
        finally:
            free.put(device)

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="run") as pool:
        futures = [pool.submit(execute, run) for run in runs]
        for future in concurrent.futures.as_completed(futures):
            yield future.result()


# ---------------------------------------------------------------------------
# Dask


@dataclass(frozen=True)
class WorkerTask:
    """Everything a Dask worker needs to execute one run: the run, its notebook's text and the options."""

    run: PlannedRun
    notebook_text: str
    kernel_name: str
    force: bool
    transfer: bool
    cache_dir: str | None


def execute_dask(runs: Iterable[PlannedRun], scheduler: str, results: str = "shared", kernel_name: str = KERNEL_NAME,
                 force: bool = False, worker_timeout_s: float = 60.0) -> Iterator[PlannedRun]:
    """Submit every run to the Dask cluster at `scheduler` and yield each run as its future completes.

    With results="shared" the workers write into the run folders themselves, so --out
    must be a folder that every worker can read and write at the same path. With results="transfer"
    each worker trains in a scratch folder and returns the run folder (without
    checkpoints/) as a tar archive, which this process unpacks into --out.

    Raises:
        ExecutorError: the scheduler cannot be reached, no worker joins within
            `worker_timeout_s`, or a worker runs another yolonb version or lacks the kernel.
    """
    if results not in RESULT_MODES:
        raise ExecutorError(f"--dask-results {results!r} is invalid; use one of {', '.join(RESULT_MODES)}")
    runs = list(runs)
    if not runs:
        return
    client = connect(scheduler, kernel_name, worker_timeout_s)
    cache_dir = os.environ.get("YOLONB_CACHE")
    try:
        from distributed import as_completed

        futures = {}
        for run in runs:
            task = WorkerTask(run=run, notebook_text=run.notebook.read_text(encoding="utf-8"),
                              kernel_name=kernel_name, force=force, transfer=results == "transfer",
                              cache_dir=cache_dir)
            # pure=False, so the scheduler never returns a stored result of an earlier call for a run.
            future = client.submit(run_on_worker, task, key=f"yolonb-run-{run.run_id}", pure=False)
            futures[future] = run

        for future in as_completed(futures):
            run = futures[future]
            try:
                outcome = future.result()
            except Exception as error:  # noqa: BLE001 - a lost worker or a task error fails this run only
                _record_lost_run(run, error)
            else:
                _apply_outcome(run, outcome)
            yield run
    finally:
        client.close()


def connect(scheduler: str, kernel_name: str = KERNEL_NAME, worker_timeout_s: float = 60.0):
    """Connect to the scheduler, wait for a worker and check that every worker can execute the runs.

    Raises:
        ExecutorError: see execute_dask.
    """
    import yolonb
    from distributed import Client

    # The connection timeout is Dask's distributed.comm.timeouts.connect (30 s by default).
    try:
        client = Client(scheduler)
    except (OSError, TimeoutError) as error:
        raise ExecutorError(
            f"cannot connect to the Dask scheduler at {scheduler}: {error}; start one with "
            f"`dask scheduler` and pass its address (tcp://HOST:PORT) with --scheduler"
        ) from None

    try:
        client.wait_for_workers(1, timeout=worker_timeout_s)
    except TimeoutError:
        client.close()
        raise ExecutorError(
            f"no Dask worker joined the scheduler at {scheduler} within {worker_timeout_s:.0f} s; start workers "
            f"with `dask worker {scheduler} --nthreads 1`"
        ) from None

    try:
        reports = client.run(describe_worker, kernel_name)
    except Exception as error:  # noqa: BLE001 - e.g. ModuleNotFoundError raised on a worker
        client.close()
        raise ExecutorError(
            f"a Dask worker of {scheduler} cannot load yolonb ({type(error).__name__}: {error}); start the workers "
            f"in the same environment as run_all.py"
        ) from None

    problems = []
    for address, report in sorted(reports.items()):
        if report["yolonb"] != yolonb.__version__:
            problems.append(f"{address} runs yolonb {report['yolonb']}, this client {yolonb.__version__}")
        if not report["kernel"]:
            problems.append(f"{address} has no Jupyter kernel {kernel_name!r} (install it with "
                            f"`python -m ipykernel install --sys-prefix --name {kernel_name}`)")
    if problems:
        client.close()
        raise ExecutorError("Dask workers not ready: " + "; ".join(problems))
    logger.info("Dask scheduler %s: %d worker(s)", scheduler, len(reports))
    return client


def describe_worker(kernel_name: str) -> dict[str, Any]:
    """Return the yolonb version of this worker and whether it has the Jupyter kernel (runs on a worker)."""
    import yolonb
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        KernelSpecManager().get_kernel_spec(kernel_name)
        has_kernel = True
    except NoSuchKernel:
        has_kernel = False
    return {"yolonb": yolonb.__version__, "kernel": has_kernel, "host": socket.gethostname()}


def run_on_worker(task: WorkerTask) -> dict[str, Any]:
    """Execute one run on a Dask worker and return its outcome (and its run folder when transferring).

    The notebook comes with the task, so a worker needs yolonb installed but not a
    checkout at the client's path. The kernel inherits YOLONB_CACHE from the client
    unless the worker sets its own, so workers that share a cache folder reuse the
    embedded data set generated there.
    """
    if task.cache_dir is not None:
        os.environ.setdefault("YOLONB_CACHE", task.cache_dir)

    with tempfile.TemporaryDirectory(prefix=f"yolonb-{task.run.run_id}-") as scratch_name:
        scratch = Path(scratch_name)
        notebook = scratch / task.run.notebook.name
        notebook.write_text(task.notebook_text, encoding="utf-8")
        if task.transfer:
            run_dir = scratch / task.run.run_id
        else:
            run_dir = task.run.run_dir
            _check_shared_folder(run_dir)
        run = dataclasses.replace(task.run, notebook=notebook, run_dir=run_dir)

        run_notebook(run, kernel_name=task.kernel_name, force=task.force)
        outcome = {"status": run.status, "error": run.error, "wall_time_s": run.wall_time_s,
                   "host": socket.gethostname(), "archive": None}
        if task.transfer:
            outcome["archive"] = pack_folder(run_dir)
    return outcome


def _check_shared_folder(run_dir: Path) -> None:
    runs_dir = run_dir.parent
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ExecutorError(
            f"worker {socket.gethostname()} cannot create {runs_dir} ({error}); with --dask-results shared, "
            f"--out must be a folder every worker sees at the same path, else use --dask-results transfer"
        ) from None


def pack_folder(folder: Path) -> bytes:
    """Return `folder`'s files as an uncompressed tar archive, without the TRANSFER_EXCLUDED subfolders."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for path in sorted(folder.rglob("*")):
            relative = path.relative_to(folder)
            if relative.parts[0] in TRANSFER_EXCLUDED or not path.is_file():
                continue
            archive.add(path, arcname=str(relative), recursive=False)
    return buffer.getvalue()


def unpack_folder(data: bytes, folder: Path) -> None:
    """Replace `folder` by the archive's files: unpack beside it, then swap, so a reader never sees half a folder."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    incoming = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        if not hasattr(tarfile, "data_filter"):
            raise ExecutorError("--dask-results transfer needs Python 3.10.12, 3.11.4 or newer (tarfile's data "
                                "filter); upgrade Python or use --dask-results shared")
        with tarfile.open(fileobj=io.BytesIO(data), mode="r") as archive:
            # The "data" filter rejects absolute paths, links out of the folder and device files.
            archive.extractall(incoming, filter="data")
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(incoming, folder)
    finally:
        if incoming.exists():
            shutil.rmtree(incoming, ignore_errors=True)


def _apply_outcome(run: PlannedRun, outcome: dict[str, Any]) -> None:
    run.status = outcome["status"]
    run.error = outcome["error"]
    run.wall_time_s = outcome["wall_time_s"]
    if outcome["archive"] is not None:
        unpack_folder(outcome["archive"], run.run_dir)
        # run.json came from the worker's scratch folder; record the client's paths.
        write_run_json(run)
    if run.status == FAILED:
        logger.error("run %s (%s, seed %d) failed on %s: %s\n  notebook: %s\n  log: %s", run.run_id, run.row,
                     run.seed, outcome["host"], run.error, run.output_notebook, run.log_path)


def _record_lost_run(run: PlannedRun, error: BaseException) -> None:
    run.status = FAILED
    run.error = f"{type(error).__name__} on the Dask cluster: {error}"
    with contextlib.suppress(OSError):
        run.run_dir.mkdir(parents=True, exist_ok=True)
        write_run_json(run)
    logger.error("run %s (%s, seed %d) failed: %s\n  notebook: %s\n  log: %s", run.run_id, run.row, run.seed,
                 run.error, run.output_notebook, run.log_path)

