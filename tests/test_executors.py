"""Tests of run_all.py's executors: the device pool of --jobs, run folder transfer, and a Dask cluster on loopback."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import dask
import pytest
import torch

from helpers import ONE_ROW_GRID, write_notebook
from yolonb.runner import executors
from yolonb.runner.cli import main
from yolonb.runner.executors import ExecutorError, pack_folder, parse_devices, select_executor, unpack_folder
from yolonb.runner.plan import FINISHED, PlannedRun

# A stand-in for run_experiment: its mAP is the row's alpha, and it records the device it was given.
WRITE_METRICS = """\
import json, pathlib
folder = pathlib.Path(out_dir)
folder.mkdir(parents=True, exist_ok=True)
metrics = {"run_id": folder.name, "status": "finished", "map_voc07": config["alpha"], "map_area": 0.5,
           "wall_time_s": 1.0, "device": config["device"]}
(folder / "metrics.json").write_text(json.dumps(metrics))"""




def _fake_resolve(overrides: dict, seed: int) -> tuple[dict, str]:
    config = {"alpha": 0.25, "device": "auto", **overrides, "seed": seed}
    return config, f"run{config['alpha']}-{config.get('neck', 'fpn')}".replace(".", "")


def _fake_grid(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    good = {"section": "demo", "title": "Demo", "notebook": "good.ipynb", "sources": {"post": "p"},
            "tables": [{"key": "main", "caption": "demo", "rows": [
                {"key": "a", "label": "a", "overrides": {"alpha": 0.5}},
                {"key": "b", "label": "b", "overrides": {"alpha": 0.75}},
            ]}]}
    bad = {"section": "bad", "title": "Bad", "notebook": "raises.ipynb", "sources": {},
           "tables": [{"key": "t", "caption": "", "rows": [{"key": "r", "label": "r", "overrides": {"neck": "x"}}]}]}
    (folder / "demo.yaml").write_text(json.dumps(good), encoding="utf-8")
    (folder / "bad.yaml").write_text(json.dumps(bad), encoding="utf-8")
    return folder


def _fake_notebooks(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_notebook(folder / "good.ipynb", WRITE_METRICS)
    write_notebook(folder / "raises.ipynb", "raise ValueError('boom on the worker')")
    return folder


def _read_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="", encoding="utf-8") as file:
        return {row["row"]: row for row in csv.DictReader(file)}


# ---------------------------------------------------------------------------
# Options


def test_devices_parsed():
    assert parse_devices(None, 1) is None
    assert parse_devices(None, 2, "cpu") == ["cpu", "cpu"]
    assert parse_devices("cpu,cpu", 2) == ["cpu", "cpu"]
    assert parse_devices(" cpu , cpu,cpu", 2) == ["cpu", "cpu", "cpu"]


@pytest.mark.parametrize(("devices", "jobs", "message"), [
    (None, 0, "--jobs 0 is invalid"),
    ("gpu0", 1, "invalid device 'gpu0'"),
    ("cuda:0,cuda:0", 2, "cuda:0 is listed more than once"),
    ("cpu", 2, "--jobs 2 needs 2 devices but --devices cpu lists 1"),
    ("cuda:99", 1, "cuda:99 does not exist"),
    ("99", 1, "cuda:99 does not exist"),
])
def test_devices_rejected(devices, jobs, message):
    with pytest.raises(ExecutorError, match=message):
        parse_devices(devices, jobs)


@pytest.mark.parametrize(("options", "message"), [
    ({"name": "dask"}, "needs --scheduler"),
    ({"name": "dask", "scheduler": "tcp://127.0.0.1:8786", "jobs": 2}, "apply to --executor local"),
    ({"name": "dask", "scheduler": "tcp://127.0.0.1:8786", "devices": "cpu"}, "apply to --executor local"),
    ({"name": "dask", "scheduler": "tcp://127.0.0.1:8786", "results": "mail"}, "--dask-results 'mail'"),
    ({"name": "local", "scheduler": "tcp://127.0.0.1:8786"}, "add --executor dask"),
    ({"name": "slurm"}, "--executor 'slurm' is invalid"),
])
def test_executor_options_rejected(options, message):
    name = options.pop("name")
    with pytest.raises(ExecutorError, match=message):
        select_executor(name, **options)


def test_cli_rejects_bad_jobs(tmp_path, capsys):
    assert main(["--jobs", "0", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "--jobs 0 is invalid" in capsys.readouterr().err
    assert main(["--jobs", "3", "--devices", "cpu,cpu", "--dry-run", "--out", str(tmp_path)]) == 2
    assert "--jobs 3 needs 3 devices" in capsys.readouterr().err


# ---------------------------------------------------------------------------
# Local jobs


def test_parallel_never_shares_a_device(monkeypatch, tmp_path):
    busy: set[str] = set()
    seen: list[str] = []
    lock = threading.Lock()

    def fake_run_notebook(run, kernel_name, force, device):
        with lock:
            assert device not in busy, f"{device} handed to two runs at once"
            busy.add(device)
            seen.append(device)
        time.sleep(0.05)
        with lock:
            busy.remove(device)
        run.status = FINISHED
        return run

    monkeypatch.setattr(executors, "run_notebook", fake_run_notebook)
    runs = [PlannedRun(section="s", row=f"s/{index}", label=str(index), seed=0, run_id=f"id{index}", config={},
                       notebook=tmp_path / "n.ipynb", run_dir=tmp_path / f"id{index}") for index in range(6)]

    finished = list(executors.execute_parallel(runs, ["cuda:0", "cuda:1"], jobs=2))

    assert sorted(run.run_id for run in finished) == [f"id{index}" for index in range(6)]
    assert len(seen) == 6
    assert set(seen) == {"cuda:0", "cuda:1"}


def test_jobs_two_run_notebooks(tmp_path, capsys):
    grids = _fake_grid(tmp_path / "grids")
    notebooks = _fake_notebooks(tmp_path / "notebooks")
    out = tmp_path / "reports"
    argv = ["--grids", str(grids), "--notebooks", str(notebooks), "--out", str(out), "--no-report",
            "--sections", "demo", "--jobs", "2", "--devices", "cpu,cpu"]

    assert main(argv, resolve=_fake_resolve) == 0

    results = _read_csv(out / "results.csv")
    assert float(results["demo/a"]["map_voc07"]) == 0.5
    assert float(results["demo/b"]["map_voc07"]) == 0.75
    for row in results.values():
        metrics = json.loads((out / "runs" / row["run_id"] / "metrics.json").read_text())
        assert metrics["device"] == "cpu"
    assert "2 runs planned, 0 cached, 2 to execute" in capsys.readouterr().out


# ---------------------------------------------------------------------------
# Transfer of run folders


def test_pack_unpack_skips_checkpoints(tmp_path):
    source = tmp_path / "worker" / "abc"
    (source / "checkpoints").mkdir(parents=True)
    (source / "checkpoints" / "last.pt").write_bytes(b"x" * 100)
    (source / "metrics.json").write_text('{"status": "finished"}')
    (source / "model.pt").write_bytes(bytes(range(256)))
    target = tmp_path / "client" / "runs" / "abc"
    target.mkdir(parents=True)
    (target / "stale.txt").write_text("from an interrupted local run")

    unpack_folder(pack_folder(source), target)

    assert sorted(path.name for path in target.iterdir()) == ["metrics.json", "model.pt"]
    assert (target / "model.pt").read_bytes() == bytes(range(256))
    assert (target / "metrics.json").read_text() == '{"status": "finished"}'
    assert [path.name for path in target.parent.iterdir()] == ["abc"]


# ---------------------------------------------------------------------------
# Dask cluster on loopback


@pytest.fixture(scope="module")
def dask_scheduler():
    """Address of a LocalCluster: 2 worker processes with 1 thread each, bound to 127.0.0.1."""
    from distributed import LocalCluster

    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None)
    yield cluster.scheduler_address
    cluster.close()


def test_dask_transfer_and_failure(tmp_path, capsys, dask_scheduler):
    grids = _fake_grid(tmp_path / "grids")
    notebooks = _fake_notebooks(tmp_path / "notebooks")
    out = tmp_path / "reports"
    argv = ["--grids", str(grids), "--notebooks", str(notebooks), "--out", str(out), "--no-report",
            "--executor", "dask", "--scheduler", dask_scheduler, "--dask-results", "transfer"]

    assert main(argv, resolve=_fake_resolve) == 1
    stderr = capsys.readouterr().err

    results = _read_csv(out / "results.csv")
    assert results["demo/a"]["status"] == "finished"
    assert float(results["demo/a"]["map_voc07"]) == 0.5
    assert float(results["demo/b"]["map_voc07"]) == 0.75
    failed = results["bad/r"]
    assert failed["status"] == "failed"
    assert "ValueError: boom on the worker" in failed["error"]
    notebook = out / failed["notebook"]
    log = out / failed["log"]
    assert f"notebook: {notebook}" in stderr
    assert f"log: {log}" in stderr
    assert "boom on the worker" in log.read_text()
    record = json.loads((notebook.parent / "run.json").read_text())
    assert record["notebook"] == str(notebook)
    assert (out / results["demo/a"]["html"]).is_file()

    # Finished runs are never submitted again: an unreachable scheduler is not even contacted.
    rerun = argv[:argv.index("--scheduler") + 1] + ["tcp://127.0.0.1:9", "--sections", "demo"]
    assert main(rerun, resolve=_fake_resolve) == 0
    assert "2 runs planned, 2 cached, 0 to execute" in capsys.readouterr().out


def test_dask_unreachable_scheduler(tmp_path, capsys):
    grids = _fake_grid(tmp_path / "grids")
    notebooks = _fake_notebooks(tmp_path / "notebooks")
    argv = ["--grids", str(grids), "--notebooks", str(notebooks), "--out", str(tmp_path / "reports"),
            "--no-report", "--sections", "demo", "--executor", "dask", "--scheduler", "tcp://127.0.0.1:9"]

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        assert main(argv, resolve=_fake_resolve) == 2
    assert "cannot connect to the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err




def _same_metrics(remote: dict, local: dict) -> None:
    assert remote["run_id"] == local["run_id"]
    assert remote["map_voc07"] == local["map_voc07"]
    assert remote["per_class_ap"] == local["per_class_ap"]
    assert remote["final_losses"] == local["final_losses"]


def test_dask_smoke_run_matches_local(tmp_path, monkeypatch, dask_scheduler):
    from yolonb.config import RunConfig
    from yolonb.engine import run_experiment

    monkeypatch.setenv("YOLONB_CACHE", str(tmp_path / "cache"))
    grids = tmp_path / "grids"
    grids.mkdir()
    (grids / "reference.yaml").write_text(ONE_ROW_GRID, encoding="utf-8")
    out = tmp_path / "reports"
    argv = ["--profile", "smoke", "--device", "cpu", "--grids", str(grids), "--out", str(out), "--no-report",
            "--executor", "dask", "--scheduler", dask_scheduler]

    assert main(argv) == 0

    row = _read_csv(out / "results.csv")["reference/fpn"]
    assert row["status"] == "finished"
    remote = json.loads((out / "runs" / row["run_id"] / "metrics.json").read_text())
    # Dask's nanny starts workers with OMP_NUM_THREADS=1, and CPU kernels reduce in another
    # order with another thread count, so the local run uses one thread too.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = run_experiment(RunConfig.from_dict(remote["config"]), tmp_path / "local", progress=False)
    finally:
        torch.set_num_threads(threads)
    assert float(row["map_voc07"]) == local["map_voc07"]
    _same_metrics(remote, local)


@pytest.mark.slow
def test_dask_smoke_section_matches_local(tmp_path, monkeypatch, dask_scheduler):
    # The reference section's two runs through both executors of run_all.py, then the report.
    monkeypatch.setenv("YOLONB_CACHE", str(tmp_path / "cache"))
    # The local kernels get the one thread that Dask's nanny gives its workers.
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    common = ["--profile", "smoke", "--device", "cpu", "--sections", "reference"]

    assert main([*common, "--out", str(tmp_path / "local"), "--no-report"]) == 0
    assert main([*common, "--out", str(tmp_path / "dask"), "--executor", "dask", "--scheduler", dask_scheduler]) == 0

    local = _read_csv(tmp_path / "local" / "results.csv")
    remote = _read_csv(tmp_path / "dask" / "results.csv")
    assert sorted(remote) == ["reference/fpn", "reference/single"]
    assert (tmp_path / "dask" / "report.html").is_file()
    for key, row in remote.items():
        assert row["status"] == "finished"
        assert row["run_id"] == local[key]["run_id"]
        assert row["map_voc07"] == local[key]["map_voc07"]
        folder = Path("runs") / row["run_id"] / "metrics.json"
        _same_metrics(json.loads((tmp_path / "dask" / folder).read_text()),
                      json.loads((tmp_path / "local" / folder).read_text()))
