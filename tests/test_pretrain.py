"""Backbone pretraining on object crops: the crops, the cache, the weights and the run."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.models import resnet18

from yolonb.config import get_profile
from yolonb.data.voc import ImageRecord
from yolonb.engine import pretrain
from yolonb.engine.pretrain import crop_examples, pretrained_backbone
from yolonb.engine.train import run_experiment
from yolonb.models.backbone import ResNet18Backbone

RED = (220, 30, 30)


def make_record(folder, name, box, label, size=96):
    """A black image with one red square object at `box` (continuous xyxy pixels)."""
    pixels = np.zeros((size, size, 3), dtype=np.uint8)
    x_min, y_min, x_max, y_max = box
    pixels[y_min:y_max, x_min:x_max] = RED
    path = folder / f"{name}.png"
    Image.fromarray(pixels).save(path)
    return ImageRecord(image_id=name, image_path=path, annotation_path=folder / f"{name}.xml", width=size,
                       height=size, boxes=np.array([box], dtype=np.float32), labels=np.array([label]),
                       difficult=np.zeros(1, dtype=bool))


def test_crops_centre_on_objects(tmp_path):
    record = make_record(tmp_path, "a", (32, 32, 64, 64), label=2)

    crops, labels = crop_examples([record], num_classes=3)

    assert crops.shape[1:] == (3, 64, 64)
    assert crops.dtype == torch.uint8
    assert labels[:3].tolist() == [2, 2, 2]
    assert set(labels[3:].tolist()) <= {3}
    # The object fills at least 1 / 1.8 of each object crop's side around its centre.
    for crop in crops[:3]:
        assert crop[:, 30:34, 30:34].float().mean(dim=(1, 2)).tolist() == pytest.approx(list(RED), abs=1)


def test_background_crops_avoid_objects(tmp_path):
    record = make_record(tmp_path, "a", (32, 32, 64, 64), label=0)

    crops, labels = crop_examples([record] * 20, num_classes=1)

    background = crops[labels == 1]
    assert len(background) > 0
    # A background square overlaps the object by IoU <= 0.1, so red covers well under half of it.
    red_share = (background[:, 0] > 128).float().mean(dim=(1, 2))
    assert float(red_share.max()) < 0.5


def test_backbone_loads_torchvision_keys():
    torch.manual_seed(0)
    source = resnet18(num_classes=5)
    backbone = ResNet18Backbone(pretrained=False)

    backbone.load_torchvision_weights(source.state_dict())

    assert torch.equal(backbone.stem[0].weight, source.conv1.weight)
    assert torch.equal(backbone.stem[1].running_var, source.bn1.running_var)
    assert torch.equal(backbone.layer4[1].conv2.weight, source.layer4[1].conv2.weight)


def test_backbone_rejects_other_shapes():
    backbone = ResNet18Backbone(pretrained=False)
    state = resnet18().state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(1)

    with pytest.raises(RuntimeError, match="layer1.0.conv1.weight"):
        backbone.load_torchvision_weights(state)


def test_frozen_stages_keep_weights_and_statistics():
    torch.manual_seed(0)
    backbone = ResNet18Backbone(pretrained=False)
    backbone.freeze(2)
    stem_weight = backbone.stem[0].weight.clone()
    layer1_mean = backbone.layer1[0].bn1.running_mean.clone()
    layer2_mean = backbone.layer2[0].bn1.running_mean.clone()
    optimizer = torch.optim.SGD([p for p in backbone.parameters() if p.requires_grad], lr=0.1)

    backbone.train()
    sum(level.mean() for level in backbone(torch.randn(2, 3, 64, 64))).backward()
    optimizer.step()

    assert torch.equal(backbone.stem[0].weight, stem_weight)
    assert backbone.stem[0].weight.grad is None
    assert torch.equal(backbone.layer1[0].bn1.running_mean, layer1_mean)
    assert not backbone.layer1.training
    assert backbone.layer2.training
    assert not torch.equal(backbone.layer2[0].bn1.running_mean, layer2_mean)
    assert backbone.layer2[0].conv1.weight.grad is not None


def test_smaller_freeze_trains_again():
    backbone = ResNet18Backbone(pretrained=False)
    backbone.freeze(3)

    backbone.freeze(1)

    assert not backbone.stem[0].weight.requires_grad
    assert backbone.layer1[0].conv1.weight.requires_grad
    assert backbone.layer2[0].conv1.weight.requires_grad
    assert backbone.layer1.training


def test_freeze_rejects_stage_count():
    with pytest.raises(ValueError, match="frozen_stages=6 is invalid: use 0"):
        ResNet18Backbone(pretrained=False).freeze(6)


def test_pretrained_backbone_is_cached(tmp_path, monkeypatch):
    records = [make_record(tmp_path, f"i{index}", (8 * index, 10, 8 * index + 30, 40), label=index % 2)
               for index in range(4)]

    first = pretrained_backbone(records, ("a", "b"), "f" * 16, epochs=1, cache_dir=tmp_path / "cache",
                                progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("the cached backbone was trained again")

    monkeypatch.setattr(pretrain, "_train", fail)
    second = pretrained_backbone(records, ("a", "b"), "f" * 16, epochs=1, cache_dir=tmp_path / "cache",
                                 progress=False)

    assert len(list((tmp_path / "cache").glob("crops-*.pt"))) == 1
    assert first.info["epochs"] == 1
    assert first.info["crops"] == 12 + first.info["background_crops"]
    assert 0.0 <= first.info["val_accuracy"] <= 1.0
    assert second.info["cache_file"] == first.info["cache_file"]
    assert first.info["from_cache"] is False
    assert second.info["from_cache"] is True
    assert "fc.weight" not in first.state_dict
    assert torch.equal(second.state_dict["conv1.weight"], first.state_dict["conv1.weight"])


def test_cache_key_changes_with_epochs_and_data():
    key = pretrain.cache_key("0" * 16, ("a", "b"), 4)

    assert pretrain.cache_key("0" * 16, ("a", "b"), 5) != key
    assert pretrain.cache_key("1" * 16, ("a", "b"), 4) != key
    assert pretrain.cache_key("0" * 16, ("a", "c"), 4) != key
    assert pretrain.cache_key("0" * 16, ("a", "b"), 4, flips=False) != key
    assert pretrain.cache_key("0" * 16, ("a", "b"), 4) == key


def test_run_same_with_cached_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLONB_CACHE", str(tmp_path / "cache"))
    config = get_profile("smoke", device="cpu", workers=0, epochs=1, crop_pretrain_epochs=1)

    trained = run_experiment(config, tmp_path / "first", progress=False)
    cached = run_experiment(config, tmp_path / "second", progress=False)

    assert trained["backbone"]["init"] == "crops"
    assert trained["backbone"]["pretraining"]["epochs"] == 1
    assert len(list((tmp_path / "cache" / "backbones").glob("crops-*.pt"))) == 1
    assert cached["final_losses"] == trained["final_losses"]
    assert cached["per_class_ap"] == trained["per_class_ap"]
    saved = json.loads((tmp_path / "second" / "metrics.json").read_text(encoding="utf-8"))
    assert saved["backbone"]["pretraining"]["cache_file"] == trained["backbone"]["pretraining"]["cache_file"]


def test_scratch_run_records_its_backbone(tmp_path, monkeypatch):
    monkeypatch.setenv("YOLONB_CACHE", str(tmp_path / "cache"))
    config = get_profile("smoke", device="cpu", workers=0, epochs=1)

    metrics = run_experiment(config, tmp_path / "run", progress=False)

    assert metrics["backbone"] == {"init": "scratch", "pretraining": None, "frozen_stages": 0}
    assert not (tmp_path / "cache" / "backbones").exists()
