"""The detection loss against hand-computed sums, and every loss option for finiteness.

Layout: a 64 x 64 input with strides 8, 16, 32 (levels of 8 x 8, 4 x 4 and 2 x 2 cells,
84 cells, level 1 from flat index 64, level 2 from 80) and C = 3 classes.
Box A [4, 4, 12, 20] (label 1) goes to cell 64 with targets tx 0.5, ty 0.75,
tw log(0.5), th 0 and weight 2 - 128/4096. Box B [30, 30, 60, 62] (label 2) goes to
cell 83 with tx 0.40625, ty 0.4375, tw log(30/32), th 0 and weight 2 - 960/4096.
"""

import math

import pytest
import torch

from yolonb.losses.detection import BOX_LOSSES, CLS_LOSSES, LossSpec, detection_loss, pairwise_box_iou

IMAGE_SIZE = 64
SHAPES = [(8, 8), (4, 4), (2, 2)]
STRIDES = (8, 16, 32)
NUM_CELLS = 84
NUM_CLASSES = 3
LN2 = math.log(2.0)
LN3 = math.log(3.0)
WEIGHT_A = 2 - 128 / 4096
WEIGHT_B = 2 - 960 / 4096


def two_box_target():
    return {
        "boxes": torch.tensor([[4.0, 4, 12, 20], [30, 30, 60, 62]]),
        "labels": torch.tensor([1, 2]),
    }


def empty_target():
    return {"boxes": torch.zeros((0, 4)), "labels": torch.zeros(0, dtype=torch.int64)}


def hand_built_pred(num_box=4):
    """Zeros, except: cell 64 objectness logit ln 3 (sigmoid 0.75) and class logits
    (0, ln 2, 0), so softmax gives class 1 probability 0.5; cell 0 objectness logit
    -ln 3 (sigmoid 0.25)."""
    pred = torch.zeros(1, NUM_CELLS, 1 + NUM_CLASSES + num_box)
    pred[0, 64, 0] = LN3
    pred[0, 64, 2] = LN2
    pred[0, 0, 0] = -LN3
    return pred


def output_of(pred, aux=()):
    return {"pred": pred, "aux": list(aux), "strides": STRIDES, "shapes": SHAPES}


def test_ce_mse_yolo_hand_computed():
    losses = detection_loss(output_of(hand_built_pred()), [two_box_target()], LossSpec(), IMAGE_SIZE)

    # Objectness: positive 64 at 0.75, positive 83 at 0.5 (weight 5), negative 0 at 0.25,
    # 81 other negatives at 0.5; divided by 2 positives.
    obj = (5 * 0.25**2 + 5 * 0.5**2 + 0.25**2 + 81 * 0.5**2) / 2
    # Class: -log 0.5 at 64, -log(1/3) at 83.
    cls = (LN2 + LN3) / 2
    # Box: BCE(logit 0, t) = ln 2 for any t; MSE of log sizes against raw 0.
    box_a = (2 * LN2 + math.log(0.5) ** 2) * WEIGHT_A
    box_b = (2 * LN2 + math.log(30 / 32) ** 2) * WEIGHT_B
    box = (box_a + box_b) / 2

    assert losses["obj"].item() == pytest.approx(obj, rel=1e-5)
    assert losses["cls"].item() == pytest.approx(cls, rel=1e-5)
    assert losses["box"].item() == pytest.approx(box, rel=1e-5)
    assert losses["total"].item() == pytest.approx(obj + cls + box, rel=1e-5)


def test_term_weights_scale_total():
    spec = LossSpec(obj_weight=0.5, cls_weight=2.0, box_weight=3.0)
    losses = detection_loss(output_of(hand_built_pred()), [two_box_target()], spec, IMAGE_SIZE)

    expected = 0.5 * losses["obj"] + 2.0 * losses["cls"] + 3.0 * losses["box"]
    assert losses["total"].item() == pytest.approx(float(expected), rel=1e-6)


def test_focal_class_loss_hand_computed():
    spec = LossSpec(cls_loss="focal", alpha=0.25, gamma=2.0)
    losses = detection_loss(output_of(hand_built_pred()), [two_box_target()], spec, IMAGE_SIZE)

    # -alpha (1 - p_t)^2 log p_t with p_t = 0.5 at cell 64 and 1/3 at cell 83.
    cls = (0.25 * 0.5**2 * LN2 + 0.25 * (2 / 3) ** 2 * LN3) / 2
    assert losses["cls"].item() == pytest.approx(cls, rel=1e-5)


def test_varifocal_hand_computed():
    spec = LossSpec(cls_loss="varifocal", alpha=0.75, gamma=2.0)
    losses = detection_loss(output_of(hand_built_pred()), [two_box_target()], spec, IMAGE_SIZE)

    # Decoded boxes from raw zeros: cell 64 -> [0, 0, 16, 16], IoU with A = 96 / 288;
    # cell 83 -> [32, 32, 64, 64], IoU with B = 840 / 1144.
    iou_a = 96 / 288
    iou_b = 840 / 1144
    # Positive at cell 64, class 1: sigmoid(ln 2) = 2/3, q * BCE(2/3, q).
    p = 2 / 3
    positive_a = iou_a * -(iou_a * math.log(p) + (1 - iou_a) * math.log(1 - p))
    # Positive at cell 83, class 2: p = 0.5, so BCE = ln 2 for any q.
    positive_b = iou_b * LN2
    # The other 84 * 3 - 2 entries have p = 0.5: alpha p^2 ln 2 each.
    negatives = 250 * 0.75 * 0.25 * LN2

    assert losses["obj"].item() == 0.0
    assert losses["cls"].item() == pytest.approx((positive_a + positive_b + negatives) / 2, rel=1e-5)


def test_dfl_giou_hand_computed():
    spec = LossSpec(box_loss="dfl", reg_max=16, dfl_weight=0.25, giou_weight=2.0)
    losses = detection_loss(output_of(hand_built_pred(num_box=4 * 17)), [two_box_target()], spec, IMAGE_SIZE)

    # Equal bin logits: DFL = ln 17 per side for any target, and every side decodes to
    # the mean bin 8. Cell 64 (centre (8, 8), stride 16) -> [-120, -120, 136, 136],
    # cell 83 (centre (48, 48), stride 32) -> [-208, -208, 304, 304]. Both contain their
    # ground truth, so the enclosing box is the prediction and GIoU = IoU.
    dfl = 2 * math.log(17)
    giou = (1 - 128 / 256**2) + (1 - 960 / 512**2)
    assert losses["box"].item() == pytest.approx((0.25 * dfl + 2.0 * giou) / 2, rel=1e-5)


def test_bce_objectness_hand_computed():
    pred = torch.zeros(1, NUM_CELLS, 1 + NUM_CLASSES + 4)
    losses = detection_loss(output_of(pred), [two_box_target()], LossSpec(obj_loss="bce"), IMAGE_SIZE)

    # BCE at logit 0 is ln 2 for target 0 or 1, over all 84 cells, over 2 positives.
    assert losses["obj"].item() == pytest.approx(84 * LN2 / 2, rel=1e-5)


def test_empty_image_is_all_negative():
    pred = torch.zeros(1, NUM_CELLS, 1 + NUM_CLASSES + 4, requires_grad=True)
    losses = detection_loss(output_of(pred), [empty_target()], LossSpec(), IMAGE_SIZE)

    # Every cell is a negative at sigmoid 0.5; the normaliser is at least 1.
    assert losses["obj"].item() == pytest.approx(84 * 0.25)
    assert losses["cls"].item() == 0.0
    assert losses["box"].item() == 0.0

    losses["total"].backward()
    assert pred.grad[0, :, 0].abs().min() > 0
    assert (pred.grad[0, :, 1:] == 0).all()


def test_difficult_cell_left_out_of_objectness():
    target = two_box_target()
    target["difficult"] = torch.tensor([True, False])
    pred = torch.zeros(1, NUM_CELLS, 1 + NUM_CLASSES + 4)
    losses = detection_loss(output_of(pred), [target], LossSpec(), IMAGE_SIZE)

    # One positive (cell 83 at 5 * 0.5^2), cell 64 ignored, 82 negatives at 0.5^2.
    assert losses["obj"].item() == pytest.approx(5 * 0.25 + 82 * 0.25)
    assert losses["cls"].item() == pytest.approx(LN3, rel=1e-5)


def test_aux_outputs_add_quarter_weight():
    pred = hand_built_pred()
    main = detection_loss(output_of(pred), [two_box_target()], LossSpec(), IMAGE_SIZE)
    with_aux = detection_loss(output_of(pred, aux=[pred.clone()]), [two_box_target()], LossSpec(), IMAGE_SIZE)

    for name in ("obj", "cls", "box", "total"):
        assert with_aux[name].item() == pytest.approx(1.25 * main[name].item(), rel=1e-6)


def test_batch_normalises_by_all_positives():
    pred = torch.zeros(2, NUM_CELLS, 1 + NUM_CLASSES + 4)
    losses = detection_loss(output_of(pred), [two_box_target(), empty_target()], LossSpec(), IMAGE_SIZE)

    # Image 0: 2 positives at 5 * 0.25 and 82 negatives; image 1: 84 negatives.
    assert losses["obj"].item() == pytest.approx((2 * 1.25 + 82 * 0.25 + 84 * 0.25) / 2)


@pytest.mark.parametrize("rule", ["center", "center3"])
@pytest.mark.parametrize("box_loss", BOX_LOSSES)
@pytest.mark.parametrize("cls_loss", CLS_LOSSES)
def test_every_option_finite_with_gradients(cls_loss, box_loss, rule):
    torch.manual_seed(0)
    num_box = 4 if box_loss == "yolo" else 4 * 9
    pred = (3 * torch.randn(2, NUM_CELLS, 1 + NUM_CLASSES + num_box)).requires_grad_()
    aux = (3 * torch.randn(2, NUM_CELLS, 1 + NUM_CLASSES + num_box)).requires_grad_()
    spec = LossSpec(cls_loss=cls_loss, box_loss=box_loss, reg_max=8, assign_rule=rule)

    losses = detection_loss(output_of(pred, aux=[aux]), [two_box_target(), empty_target()], spec, IMAGE_SIZE)
    losses["total"].backward()

    for name in ("obj", "cls", "box", "total"):
        assert torch.isfinite(losses[name]), name
    assert losses["cls"].item() != 0.0
    assert losses["box"].item() > 0.0
    assert torch.isfinite(pred.grad).all()
    assert torch.isfinite(aux.grad).all()
    assert pred.grad.abs().sum() > 0


def test_pairwise_iou():
    boxes1 = torch.tensor([[0.0, 0, 16, 16], [32, 32, 64, 64], [0, 0, 1, 1]])
    boxes2 = torch.tensor([[4.0, 4, 12, 20], [30, 30, 60, 62], [5, 5, 6, 6]])

    torch.testing.assert_close(pairwise_box_iou(boxes1, boxes2), torch.tensor([96 / 288, 840 / 1144, 0.0]))


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("cls_loss", "softmax", "LossSpec.cls_loss='softmax' is invalid"),
        ("alpha", 1.5, r"LossSpec.alpha=1.5 is invalid; it must lie in \[0, 1\]"),
        ("reg_max", 0, "LossSpec.reg_max=0 is invalid"),
        ("gamma", float("nan"), "LossSpec.gamma=nan is invalid"),
        ("assign_rule", "atss", "LossSpec.assign_rule='atss' is invalid"),
    ],
)
def test_spec_validation(field, value, message):
    with pytest.raises(ValueError, match=message):
        LossSpec(**{field: value})


def test_mismatched_box_mode_raises():
    pred = torch.zeros(1, NUM_CELLS, 1 + NUM_CLASSES + 4)
    with pytest.raises(ValueError, match="LossSpec must match the detector's box_mode"):
        detection_loss(output_of(pred), [two_box_target()], LossSpec(box_loss="dfl"), IMAGE_SIZE)


def test_real_detector_loss_backward():
    from yolonb.models import build_detector

    torch.manual_seed(0)
    model = build_detector(NUM_CLASSES, neck="augfpn", pretrained=False, neck_channels=32)
    model.train()
    output = model(torch.rand(2, 3, IMAGE_SIZE, IMAGE_SIZE))
    assert len(output["aux"]) == 1

    spec = LossSpec(cls_loss="focal", assign_rule="center3")
    losses = detection_loss(output, [two_box_target(), empty_target()], spec, IMAGE_SIZE)
    losses["total"].backward()

    assert torch.isfinite(losses["total"])
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert gradients
    assert all(torch.isfinite(g).all() for g in gradients)
