"""Decoding (the inverse of the assignment targets) and post-processing of hand-built outputs."""

import math

import pytest
import torch

from yolonb.losses.detection import LossSpec
from yolonb.models.assign import assign_targets, make_grid
from yolonb.models.postprocess import class_scores, decode_boxes, postprocess

IMAGE_SIZE = 64
SHAPES = [(8, 8), (4, 4), (2, 2)]
STRIDES = (8, 16, 32)
BOXES = torch.tensor(
    [[4.0, 4, 12, 20], [30, 30, 60, 62], [18.5, 32.25, 24, 36.75], [1, 2, 7, 5], [35, 3, 61, 23]]
)


def logit(p):
    return math.log(p / (1 - p))


def assigned(rule):
    target = {"boxes": BOXES, "labels": torch.zeros(len(BOXES), dtype=torch.int64)}
    return assign_targets([target], SHAPES, STRIDES, IMAGE_SIZE, rule, 1)


@pytest.mark.parametrize("rule", ["center", "center3"])
def test_yolo_decode_inverts_targets(rule):
    assignment = assigned(rule)
    positive = assignment.positive
    offsets = assignment.box_target[..., :2]
    if rule == "center3":
        offsets = (offsets + 0.5) / 2
    pred = torch.zeros(1, positive.shape[1], 1 + 1 + 4)
    pred[..., 1 + 1 : 1 + 1 + 2] = torch.logit(offsets.clamp(1e-6, 1 - 1e-6))
    pred[..., 1 + 1 + 2 :] = assignment.box_target[..., 2:]

    grid, stride = make_grid(SHAPES, STRIDES)
    boxes = decode_boxes(pred, grid, stride, "yolo", rule, reg_max=16)

    assert assignment.num_positives >= len(BOXES)
    torch.testing.assert_close(boxes[positive], assignment.gt_boxes[positive], atol=1e-3, rtol=0)


@pytest.mark.parametrize("rule", ["center", "center3"])
def test_dfl_decode_inverts_targets(rule):
    reg_max = 16
    assignment = assigned(rule)
    positive = assignment.positive
    # Two-hot bin probabilities around each distance, so their expectation is the distance.
    distance = assignment.ltrb[0]
    left = distance.floor().long()
    probs = torch.zeros(distance.shape[0], 4, reg_max + 1)
    probs.scatter_(-1, left[..., None], (left + 1 - distance)[..., None])
    probs.scatter_add_(-1, (left + 1)[..., None], (distance - left)[..., None])
    pred = torch.zeros(1, positive.shape[1], 1 + 1 + 4 * (reg_max + 1))
    pred[0, :, 2:] = torch.log(probs + 1e-12).flatten(1)

    grid, stride = make_grid(SHAPES, STRIDES)
    boxes = decode_boxes(pred, grid, stride, "dfl", rule, reg_max=reg_max)

    # "center3" neighbours whose centre lies outside a thin box have a clamped side.
    inside = (assignment.ltrb[0] > 0).all(dim=-1) & positive[0]
    assert int(inside.sum()) >= len(BOXES)
    torch.testing.assert_close(boxes[0, inside], assignment.gt_boxes[0, inside], atol=1e-3, rtol=0)


def test_yolo_decode_hand_computed():
    # One stride-32 cell at (1, 0): sigmoid offsets 0.5, width exp(log 2) * 32 = 64.
    pred = torch.tensor([[[0.0, 0.0, 0.0, 0.0, math.log(2), 0.0]]])
    grid = torch.tensor([[1.0, 0.0]])
    stride = torch.tensor([32.0])

    center = decode_boxes(pred, grid, stride, "yolo", "center", 16)
    center3 = decode_boxes(pred, grid, stride, "yolo", "center3", 16)

    # Centre x: (1 + 0.5) * 32 = 48 for "center", (1 + 2 * 0.5 - 0.5) * 32 = 48 for "center3".
    assert center[0, 0].tolist() == pytest.approx([16, 0, 80, 32])
    assert center3[0, 0].tolist() == pytest.approx([16, 0, 80, 32])


def hand_built_output():
    """Two images, one stride-32 level of 2 x 2 cells, C = 2, "yolo" box values.

    Image 0:
    - cell 0: objectness 0.9, class probabilities (0.75, 0.25), centre (28.8, 16),
      size 32 -> [12.8, 0, 44.8, 32]; scores 0.675 (class 0) and 0.225 (class 1);
    - cell 1: objectness 0.8, the same classes, centre (35.2, 16) -> [19.2, 0, 51.2, 32],
      IoU 2/3 with cell 0, so NMS removes both its scores (0.6 and 0.2);
    - cell 2: objectness 0.005, scores 0.0025 each, below the threshold 0.01;
    - cell 3: objectness 0.5, class probabilities (0.1, 0.9), centre (48, 48), size 64
      -> [16, 16, 80, 80], clipped to [16, 16, 64, 64]; scores 0.05 and 0.45.
    Image 1: objectness logits -20 everywhere, no detection.
    """
    pred = torch.zeros(2, 4, 1 + 2 + 4)
    pred[0, 0, :3] = torch.tensor([logit(0.9), math.log(3), 0.0])
    pred[0, 0, 3] = logit(0.9)
    pred[0, 1, :3] = torch.tensor([logit(0.8), math.log(3), 0.0])
    pred[0, 1, 3] = logit(0.1)
    pred[0, 2, 0] = logit(0.005)
    pred[0, 3, :3] = torch.tensor([0.0, 0.0, math.log(9)])
    pred[0, 3, 5:] = math.log(2)
    pred[1, :, 0] = -20.0
    return {"pred": pred, "aux": [], "strides": (32,), "shapes": [(2, 2)]}


def test_postprocess_scores_nms_and_clipping():
    detections = postprocess(hand_built_output(), LossSpec(), IMAGE_SIZE, conf_threshold=0.01)

    assert len(detections) == 2
    first = detections[0]
    assert first["scores"].tolist() == pytest.approx([0.675, 0.45, 0.225, 0.05], abs=1e-5)
    assert first["labels"].tolist() == [0, 1, 1, 0]
    expected_boxes = torch.tensor(
        [[12.8, 0, 44.8, 32], [16, 16, 64, 64], [12.8, 0, 44.8, 32], [16, 16, 64, 64]]
    )
    torch.testing.assert_close(first["boxes"], expected_boxes, atol=1e-4, rtol=0)
    assert first["labels"].dtype == torch.int64

    assert detections[1]["boxes"].shape == (0, 4)
    assert detections[1]["scores"].shape == (0,)


def test_postprocess_nms_threshold_keeps_overlap():
    # At an NMS threshold of 0.7 the IoU of 2/3 no longer suppresses cell 1.
    detections = postprocess(hand_built_output(), LossSpec(), IMAGE_SIZE, conf_threshold=0.1, nms_threshold=0.7)

    assert detections[0]["scores"].tolist() == pytest.approx([0.675, 0.6, 0.45, 0.225, 0.2], abs=1e-5)


def test_postprocess_threshold_and_max_detections():
    strict = postprocess(hand_built_output(), LossSpec(), IMAGE_SIZE, conf_threshold=0.3)
    capped = postprocess(hand_built_output(), LossSpec(), IMAGE_SIZE, conf_threshold=0.01, max_detections=2)

    assert strict[0]["scores"].tolist() == pytest.approx([0.675, 0.45], abs=1e-5)
    assert capped[0]["scores"].tolist() == pytest.approx([0.675, 0.45], abs=1e-5)
    assert capped[0]["labels"].tolist() == [0, 1]


def test_iou_aware_score_ignores_objectness():
    output = hand_built_output()
    spec = LossSpec(cls_loss="varifocal")
    detections = postprocess(output, spec, IMAGE_SIZE, conf_threshold=0.01, nms_threshold=1.0)

    # Sigmoid class scores alone: cell 2 of image 0 scores 0.5 despite objectness 0.005.
    scores = class_scores(output["pred"], "varifocal", 2)
    assert scores[0, 2].tolist() == pytest.approx([0.5, 0.5])
    assert scores[0, 0].tolist() == pytest.approx([0.75, 0.5])
    assert len(detections[1]["scores"]) == 8
    assert detections[1]["scores"].tolist() == pytest.approx([0.5] * 8)


def test_sigmoid_focal_score_uses_objectness():
    scores = class_scores(hand_built_output()["pred"], "focal_sigmoid_neg", 2)

    # Cell 3 of image 0: 0.5 x sigmoid(0) and 0.5 x sigmoid(ln 9) = 0.5 x 0.9.
    assert scores[0, 3].tolist() == pytest.approx([0.25, 0.45])


def test_postprocess_dfl_boxes():
    reg_max = 4
    pred = torch.full((1, 1, 1 + 1 + 4 * (reg_max + 1)), -30.0)
    pred[0, 0, :2] = 10.0
    # Sides l, t, r, b at bins 1, 2, 3, 4 of stride 32 around the centre (16, 16).
    for side, bin_index in enumerate([1, 2, 3, 4]):
        pred[0, 0, 2 + side * (reg_max + 1) + bin_index] = 30.0
    output = {"pred": pred, "aux": [], "strides": (32,), "shapes": [(1, 1)]}

    detections = postprocess(output, LossSpec(box_loss="dfl", reg_max=reg_max), 200)

    torch.testing.assert_close(detections[0]["boxes"], torch.tensor([[0.0, 0.0, 112.0, 144.0]]))


def test_postprocess_bfloat16_input():
    output = hand_built_output()
    output["pred"] = output["pred"].to(torch.bfloat16)
    detections = postprocess(output, LossSpec(), IMAGE_SIZE)

    assert detections[0]["scores"].dtype == torch.float32
    assert detections[0]["labels"].tolist() == [0, 1, 1, 0]


def test_postprocess_many_candidates_capped():
    torch.manual_seed(0)
    pred = torch.randn(2, 84, 1 + 20 + 4)
    output = {"pred": pred, "aux": [], "strides": (8, 16, 32), "shapes": [(8, 8), (4, 4), (2, 2)]}
    detections = postprocess(output, LossSpec(), IMAGE_SIZE, conf_threshold=0.0, max_detections=100)

    for image in detections:
        assert len(image["scores"]) <= 100
        assert (image["scores"][:-1] >= image["scores"][1:]).all()
        assert (image["boxes"] >= 0).all()
        assert (image["boxes"] <= IMAGE_SIZE).all()
