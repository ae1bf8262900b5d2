"""Data-parallel training under torchrun: two CPU processes with the gloo backend on loopback."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import pytest
import torch

from yolonb.config import ConfigError, get_profile
from yolonb.engine import run_experiment
from yolonb.engine.distributed import ProcessGroup, _backend

SMOKE = get_profile("smoke", device="cpu")


def _torchrun(out, cache, nproc: int = 2) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "yolonb.train", "--profile", "smoke", "--set", "device=cpu", "--out", str(out), "--no-progress"]
    # Gloo binds to the loopback interface only; each process gets one of the two cores.
    env = {**os.environ, "YOLONB_CACHE": str(cache), "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)


def _history(path) -> list[dict]:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def test_batch_split_over_processes():
    assert ProcessGroup(rank=1, world_size=4).local_batch_size(32) == 8
    with pytest.raises(ConfigError, match="batch_size: 8 does not split evenly over 3 processes"):
        ProcessGroup(world_size=3).local_batch_size(8)


def test_one_gpu_index_rejected_under_torchrun():
    with pytest.raises(ConfigError, match="'cuda:1' names one GPU"):
        _backend(SMOKE.replace(device="cuda:1"))
    assert _backend(SMOKE) == "gloo"


def test_gloo_two_processes_match_single_files(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("YOLONB_CACHE", str(cache))
    single = run_experiment(SMOKE, tmp_path / "single", progress=False)

    result = _torchrun(tmp_path / "ddp", cache)

    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "ddp"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert single["world_size"] == 1
    assert set(metrics) == set(single)
    assert metrics["run_id"] == single["run_id"]
    assert metrics["status"] == "finished"
    assert set(metrics["per_class_ap"]) == set(single["per_class_ap"])
    assert 0.0 <= metrics["map_voc07"] <= 1.0
    # 16 training images in global batches of 8 (4 per process): 2 steps per epoch, 2 epochs.
    assert metrics["train_images_per_s"] == pytest.approx(32 / metrics["train_time_s"], rel=0.01)
    for name in ("history.csv", "pr_curves.json", "detections_sample.json", "model.pt", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp"))
    history = _history(out / "history.csv")
    assert list(history[0]) == list(_history(tmp_path / "single" / "history.csv")[0])
    assert [row["epoch"] for row in history] == ["1", "2"]
    assert float(history[-1]["loss_total"]) == pytest.approx(metrics["final_losses"]["total"], rel=1e-5)
    # One table from rank 0 only.
    assert result.stdout.count("mAP  ") == 1

    weights = torch.load(out / "model.pt", weights_only=False)["model"]
    assert not [name for name in weights if name.startswith("module.")]


@pytest.mark.slow
def test_gloo_two_processes_resume(tmp_path):
    # A run whose metrics.json is lost resumes from its last checkpoint and only evaluates.
    cache = tmp_path / "cache"
    out = tmp_path / "ddp"
    first = _torchrun(out, cache)
    assert first.returncode == 0, first.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").unlink()

    again = _torchrun(out, cache)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming after epoch 2 of 2" in again.stdout + again.stderr
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["final_losses"] == metrics["final_losses"]
    assert resumed["map_voc07"] == metrics["map_voc07"]
