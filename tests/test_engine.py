"""Tests of the training engine: run folder contents, resume, determinism and failures."""

import csv
import json
import math
import shutil

import numpy as np
import pytest
import torch

from yolonb.config import get_profile
from yolonb.data import DataError, load_voc_splits
from yolonb.data.synthetic import ensure_synthetic
from yolonb.engine import NonFiniteLossError, load_model, rescale_boxes, run_experiment
from yolonb.engine import train as engine_train
from yolonb.engine.train import LearningRateFactor, build_optimizer
from yolonb.models import build_detector
from yolonb.train import main

SMOKE = get_profile("smoke", device="cpu", workers=0)
FOCAL = SMOKE.replace(cls_loss="focal", alpha=0.25, gamma=2.0)

METRICS_KEYS = {
    "run_id",
    "status",
    "map_voc07",
    "map_area",
    "per_class_ap",
    "per_class_ap_area",
    "n_gt",
    "final_losses",
    "wall_time_s",
    "train_time_s",
    "eval_time_s",
    "train_images_per_s",
    "device",
    "world_size",
    "backbone",
    "versions",
    "git_commit",
    "config",
    "assign_rule",
    "data",
}
DATA_KEYS = {
    "name",
    "root",
    "fingerprint",
    "classes",
    "n_train_images",
    "n_test_images",
    "n_train_objects",
    "n_test_objects",
    "is_voc",
}
HISTORY_COLUMNS = ["epoch", "lr", "loss_obj", "loss_cls", "loss_box", "loss_total", "map_voc07", "epoch_time_s"]


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    """The smoke profile's synthetic data, generated into a cache folder of this module."""
    patch = pytest.MonkeyPatch()
    patch.setenv("YOLONB_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield ensure_synthetic(seed=SMOKE.synthetic_seed, n_trainval=SMOKE.synthetic_n_trainval, n_test=SMOKE.synthetic_n_test)
    patch.undo()


@pytest.fixture(scope="module")
def splits(synthetic_root):
    return load_voc_splits(synthetic_root, SMOKE.train_sets, SMOKE.test_sets)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, synthetic_root):
    out = tmp_path_factory.mktemp("reference")
    return out, run_experiment(SMOKE, out, progress=False)


def _read_history(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def _read_json(path):
    return json.loads(path.read_text(encoding="utf-8"))


def _check_run_folder(out, metrics, config, splits):
    train, test, fingerprint = splits
    classes = train.classes

    for name in ("metrics.json", "history.csv", "pr_curves.json", "detections_sample.json", "model.pt", "checkpoints/last.pt"):
        assert (out / name).is_file(), name
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"

    written = _read_json(out / "metrics.json")
    assert written == metrics
    assert set(metrics) == METRICS_KEYS
    assert metrics["status"] == "finished"
    assert metrics["run_id"] == config.run_id(fingerprint)
    assert metrics["config"] == config.to_dict()
    assert metrics["assign_rule"] == config.assign_rule
    assert set(metrics["data"]) == DATA_KEYS
    assert metrics["data"]["name"] == "synthetic"
    assert metrics["data"]["fingerprint"] == fingerprint
    assert metrics["data"]["classes"] == list(classes)
    assert metrics["data"]["n_train_images"] == len(train.records)
    assert metrics["data"]["n_test_images"] == len(test.records)
    assert metrics["data"]["n_train_objects"] == sum(len(record.labels) for record in train.records)
    assert metrics["data"]["n_test_objects"] == sum(len(record.labels) for record in test.records)
    assert metrics["data"]["is_voc"] is False

    expected_n_gt = {name: 0 for name in classes}
    for record in test.records:
        for label, difficult in zip(record.labels, record.difficult):
            if not difficult:
                expected_n_gt[classes[label]] += 1
    assert metrics["n_gt"] == expected_n_gt
    assert list(metrics["per_class_ap"]) == list(classes)
    assert list(metrics["per_class_ap_area"]) == list(classes)
    for name in classes:
        ap = metrics["per_class_ap"][name]
        assert (ap is None) == (expected_n_gt[name] == 0)
        assert ap is None or 0.0 <= ap <= 1.0
    assert 0.0 <= metrics["map_voc07"] <= 1.0
    assert 0.0 <= metrics["map_area"] <= 1.0
    assert set(metrics["final_losses"]) == {"obj", "cls", "box", "total"}
    assert all(math.isfinite(value) for value in metrics["final_losses"].values())
    assert metrics["train_time_s"] > 0
    assert metrics["wall_time_s"] >= metrics["train_time_s"]
    assert metrics["eval_time_s"] > 0
    steps = len(train.records) // config.batch_size
    assert metrics["train_images_per_s"] == pytest.approx(config.epochs * steps * config.batch_size / metrics["train_time_s"], rel=0.01)
    assert metrics["device"] == "cpu bfloat16 channels_last"
    assert metrics["world_size"] == 1
    assert set(metrics["versions"]) == {"python", "torch", "torchvision", "yolonb"}
    assert metrics["versions"]["torch"] == torch.__version__
    assert metrics["git_commit"] is None or len(metrics["git_commit"]) == 40

    history = _read_history(out / "history.csv")
    assert list(history[0]) == HISTORY_COLUMNS
    assert [int(row["epoch"]) for row in history] == list(range(1, config.epochs + 1))
    assert float(history[-1]["loss_total"]) == pytest.approx(metrics["final_losses"]["total"], rel=1e-5)
    assert float(history[-1]["map_voc07"]) == pytest.approx(metrics["map_voc07"], abs=1e-6)
    assert sum(float(row["epoch_time_s"]) for row in history) == pytest.approx(metrics["train_time_s"], abs=0.01)

    curves = _read_json(out / "pr_curves.json")
    assert list(curves) == list(classes)
    for curve in curves.values():
        assert len(curve["precision"]) == len(curve["recall"]) <= 200

    sample = _read_json(out / "detections_sample.json")
    assert len(sample) == min(8, len(test.records))
    for item, record in zip(sample, test.records):
        assert item["image_id"] == record.image_id
        assert (item["width"], item["height"]) == (record.width, record.height)
        assert item["gt_labels"] == record.labels.tolist()
        np.testing.assert_allclose(item["gt_boxes"], record.boxes.reshape(-1, 4), atol=0.01)
        assert len(item["boxes"]) == len(item["scores"]) == len(item["labels"]) <= config.max_detections
        for x_min, y_min, x_max, y_max in item["boxes"]:
            assert 0 <= x_min <= x_max <= record.width
            assert 0 <= y_min <= y_max <= record.height

    checkpoint = torch.load(out / "checkpoints" / "last.pt", weights_only=False)
    assert checkpoint["epoch"] == config.epochs
    assert checkpoint["run_id"] == metrics["run_id"]


def test_reference_run_writes_every_file(reference_run, splits):
    out, metrics = reference_run

    _check_run_folder(out, metrics, SMOKE, splits)


def test_focal_run_writes_every_file(tmp_path, splits, reference_run):
    metrics = run_experiment(FOCAL, tmp_path, progress=False)

    _check_run_folder(tmp_path, metrics, FOCAL, splits)
    assert metrics["config"]["cls_loss"] == "focal"
    assert metrics["run_id"] != reference_run[1]["run_id"]


def test_same_config_same_results(tmp_path, reference_run):
    out, metrics = reference_run

    again = run_experiment(SMOKE, tmp_path, progress=False)

    assert again["final_losses"] == metrics["final_losses"]
    assert again["per_class_ap"] == metrics["per_class_ap"]
    assert again["map_voc07"] == metrics["map_voc07"]
    first = torch.load(out / "model.pt", weights_only=False)["model"]
    second = torch.load(tmp_path / "model.pt", weights_only=False)["model"]
    for name, tensor in first.items():
        assert torch.equal(tensor, second[name]), name


def test_interrupted_run_resumes(tmp_path, monkeypatch, reference_run):
    out, metrics = reference_run
    real_train_one_epoch = engine_train.train_one_epoch

    def interrupt_second_epoch(*args, **kwargs):
        if args[8] == 2:
            raise KeyboardInterrupt
        return real_train_one_epoch(*args, **kwargs)

    monkeypatch.setattr(engine_train, "train_one_epoch", interrupt_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(SMOKE, tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    assert len(_read_history(tmp_path / "history.csv")) == 1
    assert not (tmp_path / "metrics.json").exists()

    monkeypatch.setattr(engine_train, "train_one_epoch", real_train_one_epoch)
    resumed = run_experiment(SMOKE, tmp_path, progress=False)

    assert resumed["final_losses"] == metrics["final_losses"]
    assert resumed["map_voc07"] == metrics["map_voc07"]
    resumed_history = _read_history(tmp_path / "history.csv")
    reference_history = _read_history(out / "history.csv")
    for column in ("epoch", "lr", "loss_obj", "loss_cls", "loss_box", "loss_total", "map_voc07"):
        assert [row[column] for row in resumed_history] == [row[column] for row in reference_history], column


def test_finished_run_is_not_trained_again(monkeypatch, reference_run):
    out, metrics = reference_run

    def fail(*args, **kwargs):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(engine_train, "train_one_epoch", fail)

    assert run_experiment(SMOKE, out, progress=False) == metrics


def test_finished_run_logs_stored_map(caplog, reference_run):
    out, metrics = reference_run

    with caplog.at_level("INFO", logger="yolonb.engine.train"):
        run_experiment(SMOKE, out, progress=False)

    assert f"already finished in {out}: mAP {metrics['map_voc07']:.4f}" in caplog.text
    assert "nan" not in caplog.text


def test_non_finite_loss_names_epoch_and_step(tmp_path, monkeypatch):
    real_loss = engine_train.detection_loss
    calls = {"count": 0}

    def nan_on_third_step(*args, **kwargs):
        losses = real_loss(*args, **kwargs)
        calls["count"] += 1
        if calls["count"] == 3:
            losses["cls"] = losses["cls"] * float("nan")
            losses["total"] = losses["total"] * float("nan")
        return losses

    monkeypatch.setattr(engine_train, "detection_loss", nan_on_third_step)

    # Two steps per epoch, so the third step is step 1 of epoch 2.
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, step 1 .*cls=nan.*checkpoint of epoch 1 is kept"):
        run_experiment(SMOKE, tmp_path, progress=False)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=False)["epoch"] == 1
    assert not (tmp_path / "metrics.json").exists()


def test_checkpoint_of_other_run_rejected(tmp_path, reference_run):
    out, metrics = reference_run
    shutil.copytree(out / "checkpoints", tmp_path / "checkpoints")

    with pytest.raises(RuntimeError, match=f"belongs to run '{metrics['run_id']}'"):
        run_experiment(FOCAL, tmp_path, progress=False)


def test_missing_data_root_fails_before_training(tmp_path):
    missing = tmp_path / "no-such-devkit"

    with pytest.raises(DataError, match="no-such-devkit.*--data PATH"):
        run_experiment(SMOKE.replace(data_root=str(missing)), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_saved_model_reloads(reference_run):
    out, metrics = reference_run

    model, config, saved = load_model(out)

    assert config == SMOKE
    assert saved["run_id"] == metrics["run_id"]
    assert list(saved["classes"]) == metrics["data"]["classes"]
    assert model.training is False


def test_learning_rate_factor_cosine_with_warmup():
    config = SMOKE.replace(epochs=3, warmup_epochs=1.0, lr_schedule="cosine")
    factor = LearningRateFactor(config, steps_per_epoch=2)

    # Warm-up over 2 steps: 1/2, 2/2. Cosine over steps 2..5 (span 3), final 0.01.
    assert factor(0) == pytest.approx(0.5)
    assert factor(1) == pytest.approx(1.0)
    assert factor(2) == pytest.approx(1.0)
    assert factor(3) == pytest.approx(0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi / 3)))
    assert factor(5) == pytest.approx(0.01)


def test_learning_rate_factor_steps():
    config = SMOKE.replace(epochs=5, warmup_epochs=0.0, lr_schedule="step", lr_steps=(2, 4), lr_step_factor=0.1)
    factor = LearningRateFactor(config, steps_per_epoch=10)

    assert factor(0) == 1.0
    assert factor(19) == 1.0
    assert factor(20) == pytest.approx(0.1)
    assert factor(40) == pytest.approx(0.01)


def test_rescale_boxes_to_original_size():
    boxes = torch.tensor([[16.0, 32.0, 48.0, 64.0], [-4.0, 0.0, 70.0, 64.0]])

    scaled = rescale_boxes(boxes, input_size=64, orig_size=(200, 100))

    # x scales by 100/64, y by 200/64; the second box is clipped to the 100 x 200 image.
    expected = torch.tensor([[25.0, 100.0, 75.0, 200.0], [0.0, 0.0, 100.0, 200.0]])
    torch.testing.assert_close(scaled, expected)


def test_cli_show_config(capsys):
    assert main(["--profile", "smoke", "--set", "epochs=1", "--set", "multiscale_sizes=32,64", "--show-config"]) == 0

    shown = json.loads(capsys.readouterr().out)
    assert shown["epochs"] == 1
    assert shown["multiscale_sizes"] == [32, 64]
    assert shown["input_size"] == 64


def test_cli_rejects_bad_override(capsys):
    assert main(["--profile", "smoke", "--set", "alpha=2", "--out", "unused"]) == 2

    assert "RunConfig.alpha: invalid value 2.0; expected a value in [0.0, 1.0]" in capsys.readouterr().err


def test_cli_prints_per_class_ap(capsys, reference_run):
    out, metrics = reference_run

    assert main(["--profile", "smoke", "--set", "device=cpu", "--set", "workers=0", "--out", str(out), "--no-progress"]) == 0

    printed = capsys.readouterr().out
    for name in metrics["data"]["classes"]:
        assert name in printed
    assert f"run {metrics['run_id']}: mAP {metrics['map_voc07']:.4f}" in printed


def test_backbone_learning_rate_factor():
    model = build_detector(3, neck="fpn", pretrained=False, neck_channels=16)
    config = SMOKE.replace(lr=1e-3, backbone_lr_factor=0.25)

    optimizer = build_optimizer(model, config)

    backbone = {id(parameter) for parameter in model.backbone.parameters()}
    for group in optimizer.param_groups:
        in_backbone = {id(parameter) in backbone for parameter in group["params"]}
        assert len(in_backbone) == 1
        assert group["lr"] == pytest.approx(2.5e-4 if in_backbone == {True} else 1e-3)
    assert sum(len(group["params"]) for group in optimizer.param_groups) == len(list(model.parameters()))
