"""Tests for the detector network: backbone weights, necks, heads and the output layout."""

import math
import warnings

import pytest
import torch
from torchvision.models import resnet18

from yolonb.models import Detector, build_detector
from yolonb.models import backbone as backbone_module
from yolonb.models.head import DetectionHead
from yolonb.models.necks import (
    SAM,
    SPP,
    ResidualFeatureAugmentation,
    WeightedFusion,
    build_neck,
    upsample_to,
)

NECKS = ("single", "fpn", "bifpn", "augfpn")
BOX_MODES = ("yolo", "dfl")
NUM_CLASSES = 3
REG_MAX = 7
SMALL = 32  # neck width that keeps the tests fast; the layout does not depend on it


def expected_shapes(neck: str, size: int) -> list[tuple[int, int]]:
    strides = (32,) if neck == "single" else (8, 16, 32)
    return [(math.ceil(size / s), math.ceil(size / s)) for s in strides]


def num_outputs(box_mode: str) -> int:
    return 1 + NUM_CLASSES + (4 if box_mode == "yolo" else 4 * (REG_MAX + 1))


def small_detector(neck: str, box_mode: str = "yolo", **kwargs) -> Detector:
    torch.manual_seed(0)
    kwargs.setdefault("pretrained", False)
    return build_detector(NUM_CLASSES, neck=neck, box_mode=box_mode, reg_max=REG_MAX, neck_channels=SMALL,
                          **kwargs)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """Point the torch.hub cache at an empty folder and make every download fail, counting the attempts."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.setattr(backbone_module, "_download_failed", False)
    monkeypatch.setattr(backbone_module, "_warned_from_scratch", False)
    attempts = []

    def failing_download(path):
        attempts.append(path)
        raise OSError("network is unreachable")

    monkeypatch.setattr(backbone_module, "_download_weights", failing_download)
    return attempts


@pytest.mark.parametrize("box_mode", BOX_MODES)
@pytest.mark.parametrize("neck", NECKS)
def test_forward_backward_128(neck, box_mode):
    model = small_detector(neck, box_mode)
    model.train()
    images = torch.rand(2, 3, 128, 128)

    output = model(images)

    shapes = expected_shapes(neck, 128)
    n_cells = sum(h * w for h, w in shapes)
    assert output["shapes"] == shapes
    assert output["strides"] == ((32,) if neck == "single" else (8, 16, 32))
    assert model.strides == output["strides"]
    assert output["pred"].shape == (2, n_cells, num_outputs(box_mode))
    assert output["pred"].dtype == torch.float32

    loss = output["pred"].square().mean() + sum(aux.square().mean() for aux in output["aux"])
    loss.backward()
    assert model.backbone.stem[0].weight.grad is not None
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    for head in model.heads:
        assert head.pred.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("box_mode", BOX_MODES)
@pytest.mark.parametrize("neck", NECKS)
def test_forward_shapes_416(neck, box_mode):
    model = small_detector(neck, box_mode).eval().to(memory_format=torch.channels_last)
    images = torch.rand(2, 3, 416, 416).contiguous(memory_format=torch.channels_last)

    with torch.no_grad():
        output = model(images)

    expected = [(13, 13)] if neck == "single" else [(52, 52), (26, 26), (13, 13)]
    assert output["shapes"] == expected
    assert output["pred"].shape == (2, 3549 if neck != "single" else 169, num_outputs(box_mode))
    assert output["aux"] == []


def test_backward_416_augfpn():
    model = small_detector("augfpn", "dfl")
    model.train()
    images = torch.rand(2, 3, 416, 416)

    output = model(images)
    loss = output["pred"].square().mean() + output["aux"][0].square().mean()
    loss.backward()

    assert output["pred"].shape == (2, 3549, num_outputs("dfl"))
    assert model.neck.augmentation.spatial_weights[1].weight.grad.abs().sum() > 0
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0


def test_pred_rows_follow_levels_then_row_major():
    model = small_detector("fpn").eval()
    images = torch.rand(1, 3, 64, 96)
    level_outputs = []

    def keep_output(module, inputs, output):
        level_outputs.append(output)

    for head in model.heads:
        head.pred.register_forward_hook(keep_output)
    with torch.no_grad():
        pred = model(images)["pred"]

    # 64 x 96 pixels: levels 8 x 12, 4 x 6, 2 x 3; row (y, x) of level l sits at offset_l + y * W_l + x.
    assert [tuple(o.shape[-2:]) for o in level_outputs] == [(8, 12), (4, 6), (2, 3)]
    offsets = [0, 96, 96 + 24]
    for level, (y, x) in [(0, (5, 7)), (1, (3, 1)), (2, (1, 2))]:
        width = level_outputs[level].shape[-1]
        row = offsets[level] + y * width + x
        torch.testing.assert_close(pred[0, row], level_outputs[level][0, :, y, x].float())
    assert pred.shape[1] == 96 + 24 + 6


def test_odd_input_size_keeps_levels_aligned():
    for neck in ("bifpn", "augfpn", "fpn"):
        model = small_detector(neck).eval()
        with torch.no_grad():
            output = model(torch.rand(1, 3, 100, 100))
        assert output["shapes"] == [(13, 13), (7, 7), (4, 4)]
        assert output["pred"].shape == (1, 169 + 49 + 16, num_outputs("yolo"))


def test_aux_only_for_augfpn_in_training():
    images = torch.rand(2, 3, 64, 64)
    augfpn = small_detector("augfpn")

    augfpn.train()
    train_output = augfpn(images)
    assert len(train_output["aux"]) == 1
    assert train_output["aux"][0].shape == train_output["pred"].shape
    assert not torch.equal(train_output["aux"][0], train_output["pred"])

    augfpn.eval()
    with torch.no_grad():
        assert augfpn(images)["aux"] == []

    for neck in ("single", "fpn", "bifpn"):
        model = small_detector(neck).train()
        assert model(images)["aux"] == []


def test_upsample_to_hand_values():
    x = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
    reference = torch.zeros(1, 1, 4, 4)

    nearest = upsample_to(x, reference, "nearest")
    bilinear = upsample_to(x, reference, "bilinear")

    assert nearest[0, 0, 0].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert nearest[0, 0, :, 3].tolist() == [1.0, 1.0, 3.0, 3.0]
    # align_corners=False samples source x = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25, clamped to [0, 1].
    torch.testing.assert_close(bilinear[0, 0, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    torch.testing.assert_close(bilinear[0, 0, :, 0], torch.tensor([0.0, 0.5, 1.5, 2.0]))


@pytest.mark.parametrize("neck", ("fpn", "bifpn", "augfpn"))
def test_upsample_mode_changes_output(neck):
    nearest = small_detector(neck, upsample="nearest").eval()
    bilinear = small_detector(neck, upsample="bilinear").eval()
    bilinear.load_state_dict(nearest.state_dict())
    images = torch.rand(1, 3, 64, 64)

    with torch.no_grad():
        nearest_pred = nearest(images)["pred"]
        bilinear_pred = bilinear(images)["pred"]

    assert nearest_pred.shape == bilinear_pred.shape
    assert not torch.allclose(nearest_pred, bilinear_pred)


def test_channels_last_matches_contiguous():
    model = small_detector("bifpn").eval()
    images = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        expected = model(images)["pred"]
        model = model.to(memory_format=torch.channels_last)
        actual = model(images.contiguous(memory_format=torch.channels_last))["pred"]
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("neck", NECKS)
def test_bfloat16_autocast_trains(neck):
    model = small_detector(neck).to(memory_format=torch.channels_last).train()
    images = torch.rand(2, 3, 64, 64).contiguous(memory_format=torch.channels_last)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        output = model(images)
    loss = output["pred"].square().mean()
    loss.backward()

    assert output["pred"].dtype == torch.float32
    assert torch.isfinite(output["pred"]).all()
    assert torch.isfinite(model.backbone.stem[0].weight.grad).all()


def test_head_prior_bias():
    head = DetectionHead(16, num_classes=3, num_box=4, prior_probability=0.01)
    prior = math.log(0.01 / 0.99)  # -4.595

    assert head.pred.bias[:4].tolist() == pytest.approx([prior] * 4)
    assert head.pred.bias[4:].tolist() == [0.0] * 4

    model = small_detector("fpn").eval()
    with torch.no_grad():
        pred = model(torch.rand(2, 3, 64, 64))["pred"]
    objectness = torch.sigmoid(pred[..., 0])
    assert abs(objectness.mean().item() - 0.01) < 0.005


def test_box_channels_for_dfl():
    model = build_detector(20, neck="single", pretrained=False, box_mode="dfl", reg_max=16, neck_channels=SMALL)
    assert model.num_box == 68
    assert model.heads[0].pred.out_channels == 1 + 20 + 68


def test_weighted_fusion_hand_values():
    fusion = WeightedFusion(2)
    a = torch.full((1, 1, 2, 2), 2.0)
    b = torch.full((1, 1, 2, 2), 4.0)

    with torch.no_grad():
        fusion.weights.copy_(torch.tensor([1.0, 3.0]))
    torch.testing.assert_close(fusion([a, b]), torch.full((1, 1, 2, 2), 14.0 / (4.0 + 1e-4)))

    # A negative weight is clipped to 0 by the ReLU, so its input drops out.
    with torch.no_grad():
        fusion.weights.copy_(torch.tensor([-1.0, 2.0]))
    torch.testing.assert_close(fusion([a, b]), torch.full((1, 1, 2, 2), 8.0 / (2.0 + 1e-4)))


def test_spp_and_sam_hand_values():
    x = torch.zeros(1, 1, 9, 9)
    x[0, 0, 4, 4] = 1.0
    out = SPP((5, 9))(x)

    assert out.shape == (1, 3, 9, 9)
    torch.testing.assert_close(out[0, 0], x[0, 0])
    assert out[0, 1].sum().item() == 25.0  # the 5 x 5 pool spreads the peak over a 5 x 5 square
    assert out[0, 2].sum().item() == 81.0

    sam = SAM(2)
    with torch.no_grad():
        sam.conv.weight.zero_()
        sam.conv.bias.zero_()
    features = torch.randn(1, 2, 3, 3)
    torch.testing.assert_close(sam(features), features * 0.5)


def test_residual_feature_augmentation_pooled_sizes(monkeypatch):
    import torch.nn.functional as F

    pooled_sizes = []
    original = F.adaptive_avg_pool2d

    def recording_pool(x, size):
        pooled_sizes.append(tuple(size))
        return original(x, size)

    monkeypatch.setattr(F, "adaptive_avg_pool2d", recording_pool)
    module = ResidualFeatureAugmentation(8, 4, ratios=(0.1, 0.2, 0.3))

    assert module(torch.rand(1, 8, 13, 13)).shape == (1, 4, 13, 13)
    assert module(torch.rand(1, 8, 4, 4)).shape == (1, 4, 4, 4)
    # 13 x 13: round(1.3), round(2.6), round(3.9); 4 x 4: every size clamps to at least 1.
    assert pooled_sizes == [(1, 1), (3, 3), (4, 4), (1, 1), (1, 1), (1, 1)]


def test_bifpn_repeats():
    assert len(build_neck("bifpn", (128, 256, 512), 16, bifpn_repeats=3).layers) == 3
    with pytest.raises(ValueError, match="bifpn_repeats 0"):
        build_neck("bifpn", (128, 256, 512), 16, bifpn_repeats=0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"neck": "yolov3"}, r"'yolov3'.*single, fpn, bifpn, augfpn"),
        ({"upsample": "bicubic"}, r"'bicubic'.*nearest, bilinear"),
        ({"box_mode": "giou"}, r"'giou'.*yolo, dfl"),
        ({"activation": "relu6"}, r"'relu6'.*leaky, silu"),
        ({"box_mode": "dfl", "reg_max": 0}, r"reg_max 0"),
    ],
)
def test_invalid_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_detector(NUM_CLASSES, pretrained=False, **kwargs)


def test_invalid_num_classes_raises():
    with pytest.raises(ValueError, match="num_classes 0"):
        build_detector(0, pretrained=False)


def test_pretrained_none_warns_once_offline(offline_hub):
    with pytest.warns(UserWarning, match="trains from scratch") as record:
        model = small_detector("single", pretrained=None)
    assert len(record) == 1
    assert str(backbone_module.weights_cache_path()) in str(record[0].message)
    assert model.backbone.pretrained is False

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        small_detector("single", pretrained=None)
    assert len(offline_hub) == 1  # the failed download is not retried


def test_pretrained_true_raises_naming_cache_path(offline_hub):
    path = backbone_module.weights_cache_path()
    with pytest.raises(RuntimeError, match="weights not found") as error:
        small_detector("single", pretrained=True)
    assert str(path) in str(error.value)
    assert path.name == "resnet18-f37072fd.pth"


def test_pretrained_false_is_silent(offline_hub):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model = small_detector("single", pretrained=False)
    assert offline_hub == []
    assert model.backbone.pretrained is False


def test_cached_weights_are_loaded(offline_hub):
    state_dict = resnet18(weights=None).state_dict()
    state_dict["conv1.weight"].fill_(0.5)
    path = backbone_module.weights_cache_path()
    path.parent.mkdir(parents=True)
    torch.save(state_dict, path)

    model = small_detector("fpn", pretrained=True)

    assert offline_hub == []
    assert model.backbone.pretrained is True
    assert torch.all(model.backbone.stem[0].weight == 0.5)
