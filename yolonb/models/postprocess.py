"""Decoding of the raw box values and post-processing into per-image detections."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torchvision

from yolonb.models.assign import make_grid
from yolonb.models.head import box_channels

if TYPE_CHECKING:
    from yolonb.losses.detection import LossSpec

# Class losses trained on softmax probabilities; the others use one sigmoid per class.
SOFTMAX_CLS_LOSSES = ("ce", "focal", "focal_softmax_neg", "poly_focal")
SIGMOID_CLS_LOSSES = ("focal_sigmoid_neg", "varifocal", "quality_focal")
# Class losses whose class score already estimates the IoU with the object, so the
# objectness branch is neither trained nor used.
IOU_AWARE_CLS_LOSSES = ("varifocal", "quality_focal")

# Raw log sizes are clamped to this before exp(), so that a diverging head still gives
# finite boxes and GIoU values. A size of e^10 strides is far beyond any input size.
_MAX_LOG_SIZE = 10.0
# Candidates per image kept before NMS, so that an untrained model with every score
# above the threshold does not make NMS quadratic in N * C.
_PRE_NMS_TOP_K = 1000


def dfl_distances(box_raw: torch.Tensor, reg_max: int) -> torch.Tensor:
    """Turn DFL bin logits into side distances: the expectation over bins 0..reg_max.

    Args:
        box_raw: (..., 4 * (reg_max + 1)) logits, grouped per side l, t, r, b.
        reg_max: index of the last bin; there are reg_max + 1 bins.

    Returns:
        (..., 4) distances from the cell centre in stride units, in [0, reg_max].
    """
    logits = box_raw.unflatten(-1, (4, reg_max + 1))
    bins = torch.arange(reg_max + 1, dtype=logits.dtype, device=logits.device)
    return (logits.softmax(dim=-1) * bins).sum(dim=-1)


def decode_boxes(
    pred: torch.Tensor,
    grid: torch.Tensor,
    stride: torch.Tensor,
    box_mode: str = "yolo",
    assign_rule: str = "center",
    reg_max: int = 16,
) -> torch.Tensor:
    """Decode the raw box values of every cell into boxes, the inverse of the assignment targets.

    "yolo": centre x = (cell x + sigmoid(tx)) * stride for the "center" rule, and
    (cell x + 2 * sigmoid(tx) - 0.5) * stride for "center3" (YOLOv5); the same for y;
    width = exp(tw) * stride, height = exp(th) * stride.
    "dfl": each side lies at the expected bin distance from the cell centre
    ((cell x + 0.5) * stride), in stride units.

    Args:
        pred: (B, N, 1 + C + D); the box values are the last D channels.
        grid: (N, 2) cell x, y from ``make_grid``.
        stride: (N,) stride of each cell in pixels.
        box_mode: "yolo" or "dfl".
        assign_rule: "center" or "center3" (only changes "yolo" decoding).
        reg_max: index of the last DFL bin.

    Returns:
        (B, N, 4) boxes xyxy in input pixels, not clipped.
    """
    box_raw = pred[..., -box_channels(box_mode, reg_max):]
    stride = stride[:, None]

    if box_mode == "dfl":
        distances = dfl_distances(box_raw, reg_max) * stride
        centre = (grid + 0.5) * stride
        return torch.cat((centre - distances[..., :2], centre + distances[..., 2:]), dim=-1)

    if assign_rule == "center3":
        offset = 2.0 * box_raw[..., :2].sigmoid() - 0.5
    elif assign_rule == "center":
        offset = box_raw[..., :2].sigmoid()
    else:
        raise ValueError(f"assign rule {assign_rule!r} is unknown; use 'center' or 'center3'")
    centre = (grid + offset) * stride
    size = box_raw[..., 2:].clamp(max=_MAX_LOG_SIZE).exp() * stride
    return torch.cat((centre - size / 2, centre + size / 2), dim=-1)


def class_scores(pred: torch.Tensor, cls_loss: str, num_classes: int) -> torch.Tensor:
    """Score every class of every cell, as the class loss defines it.

    Softmax losses: sigmoid(objectness) x softmax class probability. "focal_sigmoid_neg":
    sigmoid(objectness) x sigmoid class probability. Varifocal and quality focal: the
    sigmoid class score alone, which those losses train to be the IoU with the object.

    Args:
        pred: (B, N, 1 + C + D) raw outputs.
        cls_loss: the class loss name the model was trained with.
        num_classes: C.

    Returns:
        (B, N, C) scores in [0, 1].
    """
    cls_logits = pred[..., 1 : 1 + num_classes]
    if cls_loss in IOU_AWARE_CLS_LOSSES:
        return cls_logits.sigmoid()
    if cls_loss in SOFTMAX_CLS_LOSSES:
        cls_prob = cls_logits.softmax(dim=-1)
    elif cls_loss in SIGMOID_CLS_LOSSES:
        cls_prob = cls_logits.sigmoid()
    else:
        raise ValueError(
            f"class loss {cls_loss!r} is unknown; use one of {SOFTMAX_CLS_LOSSES + SIGMOID_CLS_LOSSES}"
        )
    return pred[..., :1].sigmoid() * cls_prob


def postprocess(
    output: dict,
    spec: LossSpec,
    image_size: int,
    conf_threshold: float = 0.01,
    nms_threshold: float = 0.5,
    max_detections: int = 100,
    num_classes: int | None = None,
) -> list[dict]:
    """Turn a batch of raw outputs into detections: score, threshold, clip, per-class NMS.

    Each (cell, class) pair whose score (see ``class_scores``) exceeds
    ``conf_threshold`` is a candidate, so one cell can give boxes of several classes.
    At most max(1000, max_detections) candidates per image, the highest scored, go
    into NMS.
    Boxes are clipped to the input before NMS. NMS runs per image and class
    (``torchvision.ops.batched_nms``), then each image keeps its ``max_detections`` best.

    Args:
        output: the detector's output with ``pred`` (B, N, 1 + C + D), ``strides`` and
            ``shapes``.
        spec: the loss specification the model was trained with (class loss, box loss,
            reg_max and assignment rule decide the decoding and the score).
        image_size: side of the square network input in pixels.
        conf_threshold: minimum score of a detection.
        nms_threshold: IoU above which NMS suppresses the lower-scored box of a class.
        max_detections: detections kept per image.
        num_classes: C; default inferred from the width of ``pred``.

    Returns:
        One dict per image: ``boxes`` (K, 4) float32 xyxy in input pixels,
        ``scores`` (K,) float32 and ``labels`` (K,) int64, sorted by decreasing score.
    """
    pred = output["pred"].detach().float()
    batch_size, _, width = pred.shape
    if num_classes is None:
        num_classes = width - 1 - box_channels(spec.box_loss, spec.reg_max)
    if num_classes < 1:
        raise ValueError(
            f"pred has {width} channels, too few for box loss {spec.box_loss!r} with reg_max="
            f"{spec.reg_max}; the LossSpec must match the detector's box_mode and reg_max"
        )

    grid, stride = make_grid(output["shapes"], output["strides"], device=pred.device)
    boxes = decode_boxes(pred, grid, stride, spec.box_loss, spec.assign_rule, spec.reg_max)
    boxes = boxes.clamp(min=0, max=float(image_size))
    scores = class_scores(pred, spec.cls_loss, num_classes).reshape(batch_size, -1)

    # Best candidates per image first, so the threshold and NMS see a bounded set.
    top_k = min(max(_PRE_NMS_TOP_K, max_detections), scores.shape[1])
    top_scores, top_index = scores.topk(top_k, dim=1)
    image_index = torch.arange(batch_size, device=pred.device)[:, None].expand(-1, top_k)
    keep = top_scores > conf_threshold
    image_index = image_index[keep]
    flat_index = top_index[keep]
    candidate_scores = top_scores[keep]
    candidate_cells = flat_index // num_classes
    candidate_labels = flat_index % num_classes
    candidate_boxes = boxes[image_index, candidate_cells]

    # NMS per image: above 4000 box coordinates on the CPU, torchvision 0.29's batched_nms
    # loops over the groups in Python, and one call for a whole batch would cross that.
    detections = []
    for image in range(batch_size):
        mine = image_index == image
        image_boxes = candidate_boxes[mine]
        image_scores = candidate_scores[mine]
        image_labels = candidate_labels[mine]
        kept = torchvision.ops.batched_nms(image_boxes, image_scores, image_labels, nms_threshold)
        kept = kept[:max_detections]
        detections.append({"boxes": image_boxes[kept], "scores": image_scores[kept], "labels": image_labels[kept]})
    return detections
