"""The detection loss: objectness, class and box terms over the assigned cells.

The default terms follow the original new-YOLOv1 code. Objectness is MSE on the
sigmoid with positives weighted 5 and negatives 1, and classes get softmax
cross-entropy at positive cells. Boxes get BCE on the sub-cell offsets plus MSE on the
log sizes, weighted by 2 - box area / image area. Each term can be swapped for the focal-family losses of
``yolonb.losses.focal`` (see ``LossSpec``).

Normalisation: every term is a sum over cells divided by the number of positive cells
in the batch (at least 1). The original divided every sum by the batch size instead, so
the ratios between the terms are the same as there, and only the overall scale
changes. The objectness sum runs over all cells that are not ignored, negatives
included. With ``center3`` there are about three times as many positives, so each
negative cell weighs about a third of what it weighs with ``center``.

IoU-aware class losses ("varifocal", "quality_focal") score every cell with the sigmoid
class score, trained towards the IoU of the decoded box at positives and 0 elsewhere, as
VarifocalNet and Generalized Focal Loss do. The objectness branch is then dropped: its
loss is 0 and ``postprocess`` ignores it, because a second background score would
duplicate the one the class branch already learns.

AugFPN's auxiliary outputs (``output["aux"]``, training only) get the same loss with
the same assignment, each weighted ``AUX_LOSS_WEIGHT`` and added to each term.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torchvision

from yolonb.losses.focal import (
    distribution_focal_loss,
    focal_loss,
    modified_focal_loss,
    poly_focal_loss,
    quality_focal_loss,
    softmax_cross_entropy,
    varifocal_loss,
)
from yolonb.models.assign import ASSIGN_RULES, Assignment, assign_targets, make_grid
from yolonb.models.head import box_channels
from yolonb.models.postprocess import (
    IOU_AWARE_CLS_LOSSES,
    SIGMOID_CLS_LOSSES,
    SOFTMAX_CLS_LOSSES,
    decode_boxes,
)

logger = logging.getLogger(__name__)

OBJ_LOSSES = ("mse", "bce")
CLS_LOSSES = SOFTMAX_CLS_LOSSES + SIGMOID_CLS_LOSSES
BOX_LOSSES = ("yolo", "dfl")

# Objectness MSE weights of the original code.
POSITIVE_OBJ_WEIGHT = 5.0
NEGATIVE_OBJ_WEIGHT = 1.0
# Weight of each AugFPN auxiliary output's loss, this project's choice. It is below 1 so
# that the auxiliary heads guide the lateral features without outweighing the main output.
AUX_LOSS_WEIGHT = 0.25


@dataclass(frozen=True)
class LossSpec:
    """Loss choice and parameters for each term of ``detection_loss``.

    Attributes:
        obj_loss: "mse" (the original, positives weighted 5) or "bce" (with logits).
        cls_loss: "ce" (softmax cross-entropy, the original), "focal" (the post's softmax
            focal form), "focal_softmax_neg" and "focal_sigmoid_neg" (focal with the
            negative-class term, softmax or sigmoid probabilities), "poly_focal",
            "varifocal" or "quality_focal" (IoU-aware, over all cells).
        alpha, gamma: focal parameters, also the varifocal negative weight and power.
            The default alpha 0.25 is the post's; the varifocal paper uses 0.75.
        poly_scale, poly_pow: poly focal parameters.
        qfl_beta: quality focal exponent.
        box_loss: "yolo" (BCE on offsets, MSE on log sizes) or "dfl" (distribution focal
            loss plus GIoU loss on the decoded box).
        reg_max: index of the last DFL bin (reg_max + 1 bins per side).
        dfl_weight, giou_weight: weights of the two "dfl" box parts. The defaults 0.25
            and 2.0 are those of mmdetection's GFL config (configs/gfl/gfl_r50_fpn_1x_coco.py).
        obj_weight, cls_weight, box_weight: weights of the three terms in the total.
        assign_rule: "center" or "center3" (see ``yolonb.models.assign``).
    """

    obj_loss: str = "mse"
    cls_loss: str = "ce"
    alpha: float = 0.25
    gamma: float = 2.0
    poly_scale: float = 1.0
    poly_pow: float = 1.0
    qfl_beta: float = 2.0
    box_loss: str = "yolo"
    reg_max: int = 16
    dfl_weight: float = 0.25
    giou_weight: float = 2.0
    obj_weight: float = 1.0
    cls_weight: float = 1.0
    box_weight: float = 1.0
    assign_rule: str = "center"

    def __post_init__(self) -> None:
        for name, options in (
            ("obj_loss", OBJ_LOSSES),
            ("cls_loss", CLS_LOSSES),
            ("box_loss", BOX_LOSSES),
            ("assign_rule", ASSIGN_RULES),
        ):
            value = getattr(self, name)
            if value not in options:
                raise ValueError(f"LossSpec.{name}={value!r} is invalid; use one of {options}")

        for name, value in asdict(self).items():
            if isinstance(value, str):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"LossSpec.{name}={value!r} is invalid; it must be a finite number")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"LossSpec.alpha={self.alpha!r} is invalid; it must lie in [0, 1]")
        for name in ("gamma", "qfl_beta", "dfl_weight", "giou_weight", "obj_weight", "cls_weight", "box_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"LossSpec.{name}={getattr(self, name)!r} is invalid; it must be >= 0")
        if self.poly_pow <= 0:
            raise ValueError(f"LossSpec.poly_pow={self.poly_pow!r} is invalid; it must be > 0")
        if not isinstance(self.reg_max, int) or self.reg_max < 1:
            raise ValueError(f"LossSpec.reg_max={self.reg_max!r} is invalid; it must be an integer >= 1")


def pairwise_box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Compute the IoU of each box with the box at the same index.

    ``torchvision.ops.box_iou`` computes all pairs (M x M), which is wasted work here.

    Args:
        boxes1, boxes2: (M, 4) xyxy in pixels.

    Returns:
        (M,) IoU in [0, 1]; 0 where the union is empty.
    """
    top_left = torch.maximum(boxes1[:, :2], boxes2[:, :2])
    bottom_right = torch.minimum(boxes1[:, 2:], boxes2[:, 2:])
    intersection = (bottom_right - top_left).clamp(min=0).prod(dim=1)

    area1 = (boxes1[:, 2:] - boxes1[:, :2]).clamp(min=0).prod(dim=1)
    area2 = (boxes2[:, 2:] - boxes2[:, :2]).clamp(min=0).prod(dim=1)
    union = area1 + area2 - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), torch.zeros_like(union))


def _objectness_loss(obj_logit: torch.Tensor, assignment: Assignment, spec: LossSpec) -> torch.Tensor:
    """Sum of the objectness loss over the cells that are not ignored; obj_logit is (B, N)."""
    target = assignment.positive.to(obj_logit.dtype)
    counted = (~assignment.ignore).to(obj_logit.dtype)

    if spec.obj_loss == "mse":
        weight = torch.where(assignment.positive, POSITIVE_OBJ_WEIGHT, NEGATIVE_OBJ_WEIGHT)
        loss = weight * (obj_logit.sigmoid() - target) ** 2
    else:
        loss = F.binary_cross_entropy_with_logits(obj_logit, target, reduction="none")
    return (loss * counted).sum()


def _class_loss(
    cls_logits: torch.Tensor, assignment: Assignment, spec: LossSpec, iou: torch.Tensor
) -> torch.Tensor:
    """Sum of the class loss: at positives for most losses, over all counted cells if IoU-aware.

    Args:
        cls_logits: (B, N, C) class logits.
        iou: (P,) detached IoU of each positive's decoded box with its ground truth.
    """
    positive = assignment.positive

    if spec.cls_loss in IOU_AWARE_CLS_LOSSES:
        counted = ~assignment.ignore
        target_score = torch.zeros_like(cls_logits)
        target_score[positive, assignment.labels[positive]] = iou.to(cls_logits.dtype)
        logits = cls_logits[counted]
        target_score = target_score[counted]
        if spec.cls_loss == "varifocal":
            return varifocal_loss(logits, target_score, alpha=spec.alpha, gamma=spec.gamma, reduction="sum")
        return quality_focal_loss(logits, target_score, beta=spec.qfl_beta, reduction="sum")

    logits = cls_logits[positive]
    labels = assignment.labels[positive]
    if spec.cls_loss == "ce":
        return softmax_cross_entropy(logits, labels, reduction="sum")
    if spec.cls_loss == "focal":
        return focal_loss(logits, labels, alpha=spec.alpha, gamma=spec.gamma, reduction="sum")
    if spec.cls_loss == "poly_focal":
        return poly_focal_loss(
            logits,
            labels,
            alpha=spec.alpha,
            gamma=spec.gamma,
            poly_scale=spec.poly_scale,
            poly_pow=spec.poly_pow,
            reduction="sum",
        )
    activation = "softmax" if spec.cls_loss == "focal_softmax_neg" else "sigmoid"
    return modified_focal_loss(
        logits, labels, alpha=spec.alpha, gamma=spec.gamma, activation=activation, reduction="sum"
    )


def _box_loss(
    box_raw: torch.Tensor, pred_boxes: torch.Tensor, assignment: Assignment, spec: LossSpec
) -> torch.Tensor:
    """Sum of the box loss over positives.

    Args:
        box_raw: (P, D) raw box values of the positive cells.
        pred_boxes: (P, 4) their decoded boxes, xyxy pixels.
    """
    positive = assignment.positive

    if spec.box_loss == "yolo":
        box_target = assignment.box_target[positive]
        offset_target = box_target[:, :2]
        if spec.assign_rule == "center3":
            # 2 sigmoid - 0.5 = t is sigmoid = (t + 0.5) / 2, a valid BCE target in [0, 1].
            offset_target = (offset_target + 0.5) / 2
        offset_loss = F.binary_cross_entropy_with_logits(box_raw[:, :2], offset_target, reduction="none")
        size_loss = F.mse_loss(box_raw[:, 2:], box_target[:, 2:], reduction="none")
        per_box = offset_loss.sum(dim=1) + size_loss.sum(dim=1)
        return (per_box * assignment.box_weight[positive]).sum()

    # DFL: the mean over the four sides per box, as Generalized Focal Loss averages it.
    bin_logits = box_raw.unflatten(-1, (4, spec.reg_max + 1))
    dfl = distribution_focal_loss(bin_logits, assignment.ltrb[positive], reduction="sum") / 4
    giou = torchvision.ops.generalized_box_iou_loss(pred_boxes, assignment.gt_boxes[positive], reduction="sum")
    return spec.dfl_weight * dfl + spec.giou_weight * giou


def _output_loss(
    pred: torch.Tensor,
    assignment: Assignment,
    spec: LossSpec,
    grid: torch.Tensor,
    stride: torch.Tensor,
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return the (obj, cls, box) sums of one output tensor (B, N, 1 + C + D)."""
    positive = assignment.positive
    pred = pred.float()

    # Decoded boxes of the positives give the GIoU loss and the IoU-aware class targets.
    pred_boxes = decode_boxes(pred, grid, stride, spec.box_loss, spec.assign_rule, spec.reg_max)[positive]
    iou = pairwise_box_iou(pred_boxes.detach(), assignment.gt_boxes[positive])

    if spec.cls_loss in IOU_AWARE_CLS_LOSSES:
        obj = pred.new_zeros(())
    else:
        obj = _objectness_loss(pred[..., 0], assignment, spec)
    cls = _class_loss(pred[..., 1 : 1 + num_classes], assignment, spec, iou)
    box_raw = pred[..., 1 + num_classes :][positive]
    box = _box_loss(box_raw, pred_boxes, assignment, spec)
    return obj, cls, box


def detection_loss(output: dict, targets: list[dict], spec: LossSpec, image_size: int) -> dict:
    """Compute the detection loss of a batch (terms and normalisation in the module docstring).

    Args:
        output: the detector's output: ``pred`` (B, N, 1 + C + D) raw values, ``aux``
            (a list of tensors shaped like ``pred``, may be empty), ``strides`` and
            ``shapes`` per level.
        targets: one dict per image with ``boxes`` (K, 4) xyxy in input pixels,
            ``labels`` (K,) int64 and optionally ``difficult`` (K,) bool.
        spec: the losses and their parameters.
        image_size: side of the square network input in pixels.

    Returns:
        dict with scalar tensors ``obj``, ``cls``, ``box`` (each normalised, auxiliary
        outputs included) and ``total`` = obj_weight obj + cls_weight cls + box_weight box,
        differentiable with respect to ``pred`` and ``aux``.
    """
    pred = output["pred"]
    batch_size, num_cells, width = pred.shape
    num_classes = width - 1 - box_channels(spec.box_loss, spec.reg_max)
    if num_classes < 1:
        raise ValueError(
            f"pred has {width} channels, too few for box loss {spec.box_loss!r} with reg_max="
            f"{spec.reg_max}; the LossSpec must match the detector's box_mode and reg_max"
        )
    if len(targets) != batch_size:
        raise ValueError(f"got {len(targets)} targets for a batch of {batch_size} images; pass one dict per image")

    grid, stride = make_grid(output["shapes"], output["strides"], device=pred.device)
    if len(grid) != num_cells:
        raise ValueError(
            f"output shapes {output['shapes']} give {len(grid)} cells but pred has {num_cells}; "
            "pass the detector's output dict unchanged"
        )
    assignment = assign_targets(
        targets,
        output["shapes"],
        output["strides"],
        image_size,
        rule=spec.assign_rule,
        num_classes=num_classes,
        device=pred.device,
    )
    normaliser = max(assignment.num_positives, 1)

    obj, cls, box = _output_loss(pred, assignment, spec, grid, stride, num_classes)
    for aux_pred in output.get("aux") or []:
        aux_obj, aux_cls, aux_box = _output_loss(aux_pred, assignment, spec, grid, stride, num_classes)
        obj = obj + AUX_LOSS_WEIGHT * aux_obj
        cls = cls + AUX_LOSS_WEIGHT * aux_cls
        box = box + AUX_LOSS_WEIGHT * aux_box

    obj = obj / normaliser
    cls = cls / normaliser
    box = box / normaliser
    total = spec.obj_weight * obj + spec.cls_weight * cls + spec.box_weight * box
    return {"obj": obj, "cls": cls, "box": box, "total": total}
