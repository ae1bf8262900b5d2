"""Faults during a grid: killed processes, a second run_all.py on the same folder, full or unwritable disks.

The process tests start run_all.py as a real subprocess and signal it. The default test
executes a stand-in section notebook that only sleeps and writes metrics.json, so it
costs two kernel starts. The slow test kills real smoke trainings and report building.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from helpers import grid_yaml
from yolonb import fileio
from yolonb.runner.cli import main
from yolonb.runner.lock import LOCK_NAME, OutputLock, OutputLockedError

REPO = Path(__file__).resolve().parents[1]

# A section notebook used in place of training: it records its kernel's pid, sleeps
# config["epochs"] x 0.2 s (or $STAND_IN_STEPS x 0.2 s), then writes a finished
# metrics.json the way run_experiment does.
STAND_IN = """\
import json, os, pathlib, time
from yolonb.fileio import write_text
folder = pathlib.Path(out_dir)
folder.mkdir(parents=True, exist_ok=True)
(folder / "kernel.pid").write_text(str(os.getpid()))
for step in range(int(os.environ.get("STAND_IN_STEPS", config["epochs"]))):
    time.sleep(0.2)
metrics = {"run_id": folder.name, "status": "finished", "map_voc07": 0.25, "map_area": 0.3, "wall_time_s": 1.0}
write_text(folder / "metrics.json", json.dumps(metrics))"""

TWO_ROW_GRID = grid_yaml("Two runs", [
    '{key: short, label: "short", overrides: {neck: fpn, epochs: 1}, published: 0.7149, source: post}',
    '{key: long, label: "long", overrides: {neck: fpn, epochs: EPOCHS}}',
])


def _stand_in_notebooks(folder: Path) -> Path:
    folder.mkdir()
    notebook = new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [new_code_cell("config = None\nout_dir = ''\nprogress = True", metadata={"tags": ["parameters"]}),
                      new_code_cell(STAND_IN)]
    nbformat.write(notebook, folder / "reference.ipynb")
    return folder


def _two_row_grid(folder: Path, long_epochs: int) -> Path:
    folder.mkdir()
    (folder / "reference.yaml").write_text(TWO_ROW_GRID.replace("EPOCHS", str(long_epochs)), encoding="utf-8")
    return folder


def _restore_sigint() -> None:
    # A shell that starts pytest in the background makes it ignore SIGINT, and children
    # inherit that; run_all.py must see SIGINT as a user's Ctrl-C.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with open(log, "w", encoding="utf-8") as output:
        return subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT,
                                preexec_fn=_restore_sigint)


def _run_all_command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "run_all.py"), "--profile", "smoke", "--device", "cpu", "--out", str(out),
            *extra]


def _wait_for(condition, timeout: float, description: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {description}")
        time.sleep(0.1)


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie still passes the kill(pid, 0) check, but its state in /proc shows that it has exited.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return True
    return state == "Z"


def _run_folders(out: Path) -> dict[str, Path]:
    plan = json.loads((out / "plan.json").read_text(encoding="utf-8"))
    rows = plan["sections"][0]["tables"][0]["rows"]
    return {row["id"].split("/")[-1]: out / "runs" / row["run_ids"][0] for row in rows}


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def test_sigkill_then_rerun_completes(tmp_path, monkeypatch):
    notebooks = _stand_in_notebooks(tmp_path / "notebooks")
    grids = _two_row_grid(tmp_path / "grids", long_epochs=300)
    out = tmp_path / "reports"
    argv = _run_all_command(out, "--grids", str(grids), "--notebooks", str(notebooks), "--no-report")

    # The short run finished in an earlier invocation: a dry run gives its folder.
    monkeypatch.setenv("YOLONB_CACHE", str(REPO / ".cache" / "yolonb"))
    assert main(argv[2:] + ["--dry-run"]) == 0
    folders = _run_folders(out)
    short_metrics = folders["short"] / "metrics.json"
    fileio.write_text(short_metrics, json.dumps({"run_id": folders["short"].name, "status": "finished",
                                                 "map_voc07": 0.5, "map_area": 0.5, "wall_time_s": 2.0}))
    short_bytes = short_metrics.read_bytes()
    short_mtime = short_metrics.stat().st_mtime_ns

    first = _start(argv, tmp_path / "first.log")
    try:
        _wait_for(lambda: (folders["long"] / "kernel.pid").exists(), 90, "the kernel of the long run")
        plan_mtime = (out / "plan.json").stat().st_mtime_ns

        # A second run_all.py on the same folder stops at once, names the holder and writes nothing.
        second = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
        assert second.returncode == 2
        assert str(out / LOCK_NAME) in second.stderr
        assert f"pid {first.pid}" in second.stderr
        assert "--wait-lock" in second.stderr
        assert (out / "plan.json").stat().st_mtime_ns == plan_mtime

        kernel_pid = int((folders["long"] / "kernel.pid").read_text())
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()

    # The kernel of the killed run_all.py exits by itself (ipykernel polls its parent).
    _wait_for(lambda: _process_gone(kernel_pid), 15, f"the orphaned kernel {kernel_pid} to exit")
    assert not (folders["long"] / "metrics.json").exists()

    # The rerun shortens the stand-in's sleep; the run id stays the same.
    rerun = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "STAND_IN_STEPS": "1"})
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "2 runs planned, 1 cached, 1 to execute" in rerun.stdout
    assert "ended without releasing its lock" in rerun.stderr
    assert short_metrics.read_bytes() == short_bytes
    assert short_metrics.stat().st_mtime_ns == short_mtime
    rows = {row["label"]: row for row in _read_csv(out / "results.csv")}
    assert rows["long"]["status"] == "finished"
    assert rows["short"]["status"] == "finished"
    assert float(rows["short"]["map_voc07"]) == 0.5
    assert (out / LOCK_NAME).read_text() == ""


@pytest.mark.slow
def test_kill_training_and_report_then_rerun(tmp_path):
    # Real smoke trainings through the section notebooks: SIGINT and SIGKILL during training,
    # SIGKILL while the report is built, then a rerun that completes everything.
    grids = _two_row_grid(tmp_path / "grids", long_epochs=40)
    out = tmp_path / "reports"
    argv = _run_all_command(out, "--grids", str(grids))

    def long_run_trained(epochs: int):
        def check() -> bool:
            history = folders["long"] / "history.csv"
            return history.exists() and len(history.read_text().splitlines()) > epochs
        return check

    # SIGINT (Ctrl-C) during the long run's training.
    first = _start(argv, tmp_path / "first.log")
    try:
        _wait_for(lambda: (out / "plan.json").exists(), 120, "plan.json")
        folders = _run_folders(out)
        _wait_for(long_run_trained(2), 300, "two epochs of the long run")
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=60) == 130
    finally:
        if first.poll() is None:
            first.kill()
    assert "interrupted" in (tmp_path / "first.log").read_text()
    assert (out / LOCK_NAME).read_text() == ""
    short_metrics = folders["short"] / "metrics.json"
    short_bytes = short_metrics.read_bytes()
    short_mtime = short_metrics.stat().st_mtime_ns
    assert not (folders["long"] / "metrics.json").exists()
    checkpoint = folders["long"] / "checkpoints" / "last.pt"
    assert checkpoint.is_file()

    # SIGKILL during training, two epochs later.
    epochs_before = len((folders["long"] / "history.csv").read_text().splitlines()) - 1
    second = _start(argv, tmp_path / "second.log")
    try:
        _wait_for(long_run_trained(epochs_before + 2), 300, "two more epochs of the long run")
        second.send_signal(signal.SIGKILL)
        second.wait(timeout=30)
    finally:
        if second.poll() is None:
            second.kill()
    assert not (folders["long"] / "metrics.json").exists()

    # SIGKILL while report.ipynb executes: results.csv is whole, report.html absent.
    third = _start(argv, tmp_path / "third.log")
    try:
        _wait_for(lambda: (out / "report.ipynb").exists(), 600, "the report to start")
        third.send_signal(signal.SIGKILL)
        third.wait(timeout=30)
    finally:
        if third.poll() is None:
            third.kill()
    rows = {row["label"]: row for row in _read_csv(out / "results.csv")}
    assert rows["long"]["status"] == "finished"
    assert rows["short"]["status"] == "finished"
    assert not (out / "report.html").exists()

    # The last rerun trains nothing and builds the whole report.
    final = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    assert "2 runs planned, 2 cached, 0 to execute" in final.stdout
    assert short_metrics.read_bytes() == short_bytes
    assert short_metrics.stat().st_mtime_ns == short_mtime
    html = (out / "report.html").read_text(encoding="utf-8")
    assert html.rstrip().endswith("</html>")
    assert "Two runs" in html

    # The resumed run trained each epoch once: the interrupts lost no epoch and repeated none.
    history = _read_csv(folders["long"] / "history.csv")
    assert [int(row["epoch"]) for row in history] == list(range(1, 41))
    assert json.loads((folders["long"] / "metrics.json").read_text())["status"] == "finished"
    assert not list(out.rglob("*.tmp"))


# ---------------------------------------------------------------------------
# The lock, in one process: flock locks of two open files conflict even there.


def test_lock_rejects_second_holder(tmp_path):
    with OutputLock(tmp_path / "out") as first:
        assert first.held
        with pytest.raises(OutputLockedError) as raised:
            OutputLock(tmp_path / "out").acquire()
    message = str(raised.value)
    assert str(tmp_path / "out" / LOCK_NAME) in message
    assert f"pid {os.getpid()}" in message
    assert raised.value.holder["pid"] == os.getpid()
    assert (tmp_path / "out" / LOCK_NAME).read_text() == ""


def test_lock_of_killed_holder_is_free(tmp_path):
    # The holder takes the lock, then kills itself without releasing it.
    holder = (f"import os, signal, sys; sys.path.insert(0, {str(REPO)!r})\n"
              f"from yolonb.runner.lock import OutputLock\n"
              f"OutputLock({str(tmp_path / 'out')!r}).acquire()\n"
              f"os.kill(os.getpid(), signal.SIGKILL)\n")
    completed = subprocess.run([sys.executable, "-c", holder], timeout=60)
    assert completed.returncode == -signal.SIGKILL
    assert json.loads((tmp_path / "out" / LOCK_NAME).read_text())["pid"] > 0

    lock = OutputLock(tmp_path / "out").acquire()
    try:
        assert lock.previous is not None
        assert lock.previous["pid"] != os.getpid()
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    finally:
        lock.release()


def test_wait_lock_waits_for_release(tmp_path):
    import threading

    holder = OutputLock(tmp_path).acquire()
    timer = threading.Timer(1.0, holder.release)
    timer.start()
    start = time.monotonic()
    waiter = OutputLock(tmp_path).acquire(wait=True)
    waited = time.monotonic() - start
    waiter.release()
    timer.join()
    assert waited >= 0.5
    assert waiter.previous is None


# ---------------------------------------------------------------------------
# run_all.py's main, in process, with a resolver that must not be reached or that fails.


def _unreachable_resolve(overrides, seed):
    raise AssertionError("planning started although the output folder is unusable")


def test_unwritable_out_stops_before_planning(tmp_path, capsys):
    # As root, chmod cannot make a folder unwritable; a regular file in the path can.
    blocker = tmp_path / "blocker"
    blocker.write_text("a file, not a folder")
    out = blocker / "reports"
    assert main(["--out", str(out), "--profile", "smoke"], resolve=_unreachable_resolve) == 2
    stderr = capsys.readouterr().err
    assert f"the output folder {out} is not writable" in stderr
    assert "Not a directory" in stderr
    assert "choose another --out" in stderr


def test_locked_out_stops_before_planning(tmp_path, capsys):
    with OutputLock(tmp_path):
        assert main(["--out", str(tmp_path), "--profile", "smoke"], resolve=_unreachable_resolve) == 2
    assert "is locked: pid" in capsys.readouterr().err


def test_wait_lock_option_waits(tmp_path, capsys):
    import threading

    grids = _two_row_grid(tmp_path / "grids", 3)
    notebooks = _stand_in_notebooks(tmp_path / "notebooks")
    holder = OutputLock(tmp_path / "out").acquire()
    timer = threading.Timer(1.0, holder.release)
    timer.start()
    argv = ["--out", str(tmp_path / "out"), "--grids", str(grids), "--notebooks", str(notebooks), "--dry-run",
            "--wait-lock"]
    try:
        assert main(argv, resolve=lambda overrides, seed: ({**overrides, "seed": seed}, f"run{overrides['epochs']}")) == 0
    finally:
        timer.join()
    assert not holder.held
    assert "2 runs, 0 cached" in capsys.readouterr().out


def test_interrupt_releases_lock(tmp_path, capsys):
    def interrupted(overrides, seed):
        raise KeyboardInterrupt

    assert main(["--out", str(tmp_path), "--profile", "smoke"], resolve=interrupted) == 130
    assert "run the same command again" in capsys.readouterr().err
    assert (tmp_path / LOCK_NAME).read_text() == ""
    OutputLock(tmp_path).acquire().release()


def _open_on_full_disk(path, mode="r", *args, **kwargs):
    # The file gets created, then the first write fails, as on a full disk.
    open(path, mode, *args, **kwargs).close()
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))


def test_full_disk_names_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(fileio, "open", _open_on_full_disk, raising=False)
    out = tmp_path / "reports"
    argv = ["--out", str(out), "--profile", "smoke", "--grids", str(_two_row_grid(tmp_path / "grids", 3)),
            "--notebooks", str(_stand_in_notebooks(tmp_path / "notebooks"))]

    def resolve(overrides, seed):
        return {**overrides, "seed": seed}, f"run{overrides['epochs']}"

    assert main(argv, resolve=resolve) == 1
    stderr = capsys.readouterr().err
    assert f"writing {out / 'plan.json'} failed: No space left on device" in stderr
    assert "free space on that file system" in stderr
    assert not list(out.glob(".*.tmp"))
    assert (out / LOCK_NAME).read_text() == ""


# ---------------------------------------------------------------------------
# Atomic writes


def test_atomic_write_keeps_old_file_on_crash(tmp_path):
    path = tmp_path / "results.csv"
    fileio.write_text(path, "old,whole\n")

    def crash_halfway(file):
        file.write(b"new,ha")
        raise RuntimeError("killed halfway")

    with pytest.raises(RuntimeError):
        fileio.atomic_write(path, crash_halfway)
    assert path.read_text() == "old,whole\n"
    assert list(tmp_path.iterdir()) == [path]


def test_atomic_write_full_disk_names_target(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    fileio.write_text(path, "{}")
    monkeypatch.setattr(fileio, "open", _open_on_full_disk, raising=False)
    with pytest.raises(OSError) as raised:
        fileio.write_text(path, '{"status": "finished"}')
    assert raised.value.errno == errno.ENOSPC
    assert f"writing {path} failed" in str(raised.value)
    assert path.read_text() == "{}"
    assert list(tmp_path.iterdir()) == [path]


def test_stale_temporaries_removed(tmp_path):
    dead_pid = _dead_pid()
    stale = tmp_path / "checkpoints" / f".last.pt.{dead_pid}.0123abcd.tmp"
    live = tmp_path / f".metrics.json.{os.getpid()}.89abcdef.tmp"
    other = tmp_path / ".notes.tmp"
    stale.parent.mkdir()
    for path in (stale, live, other):
        path.write_text("partial")

    assert fileio.remove_stale_temporaries(tmp_path) == [stale]
    assert not stale.exists()
    assert live.exists()
    assert other.exists()


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid
