"""Label assignment: which output cells learn which ground-truth box, and their targets.

Every ground truth is assigned to exactly one pyramid level, chosen by its size
relative to the network input (see ``level_upper_bounds``), and on that level to the
cell that contains its centre. Rule ``"center"`` stops there, as the original
new-YOLOv1 code does. Rule ``"center3"`` also assigns the horizontal and the vertical
neighbour cell nearest the centre, as YOLOv5 does, and the box offsets are then
decoded as ``2 * sigmoid - 0.5`` so that a neighbour cell can reach the centre.

When several boxes claim one cell, the cell keeps a single box: a centre claim beats a
neighbour claim, and among claims of the same kind the box with the smaller area wins
(equal areas: the box listed first). Small objects thus keep their cell next to a large
one, and small objects are what the focal losses of this study are about.

Difficult boxes (``target["difficult"]``) are never positives. The cells they would
claim, if no other box takes them, are marked ``ignore`` so that the objectness loss
does not push them towards background. The original code dropped difficult boxes from
training altogether, and VOC evaluation ignores them, so learning them as background
would penalise detections that the evaluation does not count.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import torch

logger = logging.getLogger(__name__)

ASSIGN_RULES = ("center", "center3")


@dataclass(frozen=True)
class Assignment:
    """Targets for every output cell of a batch.

    B is the batch size and N the number of cells over all levels, ordered as in the
    detector's ``pred`` (levels by increasing stride, each level row-major over y, x).

    Attributes:
        positive: (B, N) bool, cells that learn a ground-truth box.
        ignore: (B, N) bool, cells left out of the objectness (and IoU-aware class)
            loss because a difficult box claims them.
        labels: (B, N) int64, class index at positives, -1 elsewhere.
        box_target: (B, N, 4) float, (tx, ty, tw, th) at positives, 0 elsewhere.
            tx, ty are the centre's offset from the cell's top-left corner in stride
            units: in [0, 1) for the centre cell, in [-0.5, 1.5] for a ``center3``
            neighbour. tw, th are log(width / stride) and log(height / stride).
        ltrb: (B, N, 4) float, distances from the cell centre to the left, top, right
            and bottom sides of the box in stride units, clamped at 0 (a neighbour
            cell centre can lie outside a thin box); 0 elsewhere.
        box_weight: (B, N) float, 2 - box area / image area at positives, 0 elsewhere.
        gt_boxes: (B, N, 4) float, matched ground truth xyxy in input pixels, 0 elsewhere.
    """

    positive: torch.Tensor
    ignore: torch.Tensor
    labels: torch.Tensor
    box_target: torch.Tensor
    ltrb: torch.Tensor
    box_weight: torch.Tensor
    gt_boxes: torch.Tensor

    @property
    def num_positives(self) -> int:
        """Number of positive cells in the batch."""
        return int(self.positive.sum())


def make_grid(
    shapes: Sequence[tuple[int, int]], strides: Sequence[int], device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build the cell coordinates of all levels, concatenated in ``pred`` order.

    Args:
        shapes: per level (H_l, W_l) in cells.
        strides: per level stride in input pixels.
        device: where the tensors are created.

    Returns:
        grid: (N, 2) float32, cell column x and row y (integers stored as floats).
        stride: (N,) float32, the stride of each cell's level in pixels.
    """
    if len(shapes) != len(strides):
        raise ValueError(
            f"make_grid got {len(shapes)} level shapes but {len(strides)} strides; "
            "pass one (height, width) per stride"
        )

    grids = []
    cell_strides = []
    for (height, width), level_stride in zip(shapes, strides):
        ys, xs = torch.meshgrid(
            torch.arange(height, device=device, dtype=torch.float32),
            torch.arange(width, device=device, dtype=torch.float32),
            indexing="ij",
        )
        grids.append(torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=1))
        cell_strides.append(torch.full((height * width,), float(level_stride), device=device))

    return torch.cat(grids), torch.cat(cell_strides)


def level_upper_bounds(strides: Sequence[int]) -> list[float]:
    """Return, per level, the largest box side (relative to the input size) it takes.

    A box goes to the first level whose bound is at least max(width, height) / input
    size. Level l takes sides up to stride_l / (2 * largest stride) of the input, and
    the coarsest level takes everything larger. For strides 8, 16, 32 that is
    (0, 1/8], (1/8, 1/4] and above 1/4 of the input. At 416 pixels these are sides up
    to 52 pixels, 52 to 104 pixels and above 104 pixels, so a box on the two finer
    levels spans at most 6.5 cells. Relative bounds keep each object on the same level
    whatever the input size, which matters with multi-scale training. A single-level
    model puts every box on its one level.

    Args:
        strides: per level stride in pixels, increasing.

    Returns:
        One bound per level; the last one is ``math.inf``.
    """
    largest = max(strides)
    bounds = [stride / (2.0 * largest) for stride in strides[:-1]]
    return bounds + [math.inf]


def _gather_targets(
    targets: list[dict], num_classes: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenate the boxes of the batch: (M, 4) boxes, (M,) labels, image index, difficult."""
    boxes, labels, image_index, difficult = [], [], [], []
    for index, target in enumerate(targets):
        image_boxes = torch.as_tensor(target["boxes"]).as_subclass(torch.Tensor)
        image_boxes = image_boxes.to(device=device, dtype=torch.float32).reshape(-1, 4)
        image_labels = torch.as_tensor(target["labels"]).as_subclass(torch.Tensor)
        image_labels = image_labels.to(device=device, dtype=torch.int64).reshape(-1)
        if "difficult" in target:
            image_difficult = torch.as_tensor(target["difficult"]).as_subclass(torch.Tensor)
            image_difficult = image_difficult.to(device=device, dtype=torch.bool).reshape(-1)
        else:
            image_difficult = torch.zeros(len(image_labels), dtype=torch.bool, device=device)

        if not len(image_boxes) == len(image_labels) == len(image_difficult):
            raise ValueError(
                f"target {index} has {len(image_boxes)} boxes, {len(image_labels)} labels and "
                f"{len(image_difficult)} difficult flags; the three must have one entry per object"
            )
        boxes.append(image_boxes)
        labels.append(image_labels)
        difficult.append(image_difficult)
        image_index.append(torch.full((len(image_labels),), index, dtype=torch.int64, device=device))

    boxes_all = torch.cat(boxes) if boxes else torch.zeros((0, 4), device=device)
    labels_all = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.int64, device=device)
    index_all = torch.cat(image_index) if image_index else torch.zeros(0, dtype=torch.int64, device=device)
    difficult_all = torch.cat(difficult) if difficult else torch.zeros(0, dtype=torch.bool, device=device)

    bad = (labels_all < 0) | (labels_all >= num_classes)
    if bool(bad.any()):
        raise ValueError(
            f"class label {int(labels_all[bad][0])} is outside 0..{num_classes - 1} for num_classes="
            f"{num_classes}; the detector's class list and the data set's class list must match"
        )
    return boxes_all, labels_all, index_all, difficult_all


def _claims(
    boxes: torch.Tensor,
    image_index: torch.Tensor,
    shapes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    image_size: int,
    rule: str,
) -> dict[str, torch.Tensor]:
    """List the cells each box claims: its centre cell, plus two neighbours for "center3".

    Returns one row per claim: ``box`` (index into ``boxes``), ``cell`` (flat index into
    the (B * N) cells), ``neighbour`` (bool), ``x``, ``y`` (cell column and row) and
    ``stride`` (pixels).
    """
    device = boxes.device
    level_sizes = torch.tensor([h * w for h, w in shapes], device=device)
    level_start = torch.cumsum(level_sizes, 0) - level_sizes
    level_width = torch.tensor([w for _, w in shapes], device=device)
    level_height = torch.tensor([h for h, _ in shapes], device=device)
    level_stride = torch.tensor([float(s) for s in strides], device=device)
    num_cells = int(level_sizes.sum())

    # The level comes from the longer side relative to the input size.
    max_side = torch.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) / image_size
    bounds = torch.tensor(level_upper_bounds(strides), device=device)
    level = torch.bucketize(max_side, bounds).clamp(max=len(strides) - 1)

    stride = level_stride[level]
    width = level_width[level]
    height = level_height[level]
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2 / stride
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2 / stride

    # A centre on the far image border (or outside it) still belongs to the last cell.
    cell_x = centre_x.floor().long().clamp(min=0)
    cell_x = torch.minimum(cell_x, width - 1)
    cell_y = centre_y.floor().long().clamp(min=0)
    cell_y = torch.minimum(cell_y, height - 1)

    box_ids = torch.arange(len(boxes), device=device)
    xs, ys, ids = [cell_x], [cell_y], [box_ids]
    neighbour = [torch.zeros(len(boxes), dtype=torch.bool, device=device)]
    if rule == "center3":
        # The neighbour on the side of the cell that the centre is closer to.
        step_x = torch.where(centre_x - cell_x < 0.5, -1, 1)
        step_y = torch.where(centre_y - cell_y < 0.5, -1, 1)
        xs += [cell_x + step_x, cell_x]
        ys += [cell_y, cell_y + step_y]
        ids += [box_ids, box_ids]
        neighbour += [torch.ones(len(boxes), dtype=torch.bool, device=device)] * 2

    x = torch.cat(xs)
    y = torch.cat(ys)
    box = torch.cat(ids)
    is_neighbour = torch.cat(neighbour)

    inside = (x >= 0) & (x < width[box]) & (y >= 0) & (y < height[box])
    x, y, box, is_neighbour = x[inside], y[inside], box[inside], is_neighbour[inside]

    cell = image_index[box] * num_cells + level_start[level[box]] + y * width[box] + x
    return {"box": box, "cell": cell, "neighbour": is_neighbour, "x": x, "y": y, "stride": stride[box]}


def _resolve_conflicts(claims: dict[str, torch.Tensor], area: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Return a mask over claims keeping one claim per cell (centre first, then smaller area)."""
    if len(claims["cell"]) == 0:
        return torch.zeros(0, dtype=torch.bool, device=area.device)

    # Two stable sorts give the order: centre claims, then by area, then by box index.
    order = torch.sort(area[claims["box"]], stable=True).indices
    order = order[torch.sort(claims["neighbour"][order].to(torch.uint8), stable=True).indices]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order), device=order.device)

    # The lowest rank per cell wins; scatter_reduce is deterministic, index_put_ with
    # repeated indices is not.
    best = torch.full((num_slots,), len(order), dtype=rank.dtype, device=rank.device)
    best = best.scatter_reduce(0, claims["cell"], rank, reduce="amin")
    return rank == best[claims["cell"]]


def assign_targets(
    targets: list[dict],
    shapes: Sequence[tuple[int, int]],
    strides: Sequence[int],
    image_size: int,
    rule: str = "center",
    num_classes: int | None = None,
    device: torch.device | str | None = None,
) -> Assignment:
    """Assign the ground-truth boxes of a batch to output cells (rules in the module docstring).

    Args:
        targets: one dict per image with ``boxes`` (K, 4) xyxy in input pixels,
            ``labels`` (K,) int64 and optionally ``difficult`` (K,) bool.
            An image with no boxes gives no positives (a negative image).
        shapes: per level (H_l, W_l) in cells, as in the detector's output.
        strides: per level stride in pixels, increasing.
        image_size: side of the square network input in pixels.
        rule: "center" or "center3".
        num_classes: number of classes; labels outside 0..num_classes-1 raise.
        device: device of the returned tensors; default the device of the first boxes.

    Returns:
        An ``Assignment`` with (B, N, ...) tensors.
    """
    if rule not in ASSIGN_RULES:
        raise ValueError(f"assign rule {rule!r} is unknown; use one of {ASSIGN_RULES}")
    if num_classes is None or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is invalid; pass the number of classes (at least 1)")
    if device is None:
        device = torch.as_tensor(targets[0]["boxes"]).device if targets else torch.device("cpu")
    device = torch.device(device)

    batch_size = len(targets)
    num_cells = sum(h * w for h, w in shapes)
    boxes, labels, image_index, difficult = _gather_targets(targets, num_classes, device)

    # Boxes without area (e.g. cut to a line by a crop) have no log width to learn.
    degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
    if bool(degenerate.any()):
        logger.debug("skipped %d boxes with zero width or height", int(degenerate.sum()))
        keep = ~degenerate
        boxes, labels, image_index, difficult = boxes[keep], labels[keep], image_index[keep], difficult[keep]

    claims = _claims(boxes, image_index, shapes, strides, image_size, rule)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])

    # Conflicts are settled among ordinary boxes only; difficult boxes then mark what is left.
    ordinary = ~difficult[claims["box"]]
    ordinary_claims = {key: value[ordinary] for key, value in claims.items()}
    wins = _resolve_conflicts(ordinary_claims, area, batch_size * num_cells)
    won = {key: value[wins] for key, value in ordinary_claims.items()}

    positive = torch.zeros(batch_size * num_cells, dtype=torch.bool, device=device)
    positive[won["cell"]] = True
    ignore = torch.zeros(batch_size * num_cells, dtype=torch.bool, device=device)
    ignore[claims["cell"][~ordinary]] = True
    ignore &= ~positive

    box = boxes[won["box"]]
    stride = won["stride"]
    x = won["x"].float()
    y = won["y"].float()
    width = box[:, 2] - box[:, 0]
    height = box[:, 3] - box[:, 1]
    box_target = torch.stack(
        (
            (box[:, 0] + box[:, 2]) / 2 / stride - x,
            (box[:, 1] + box[:, 3]) / 2 / stride - y,
            torch.log(width / stride),
            torch.log(height / stride),
        ),
        dim=1,
    )
    ltrb = torch.stack(
        (
            x + 0.5 - box[:, 0] / stride,
            y + 0.5 - box[:, 1] / stride,
            box[:, 2] / stride - x - 0.5,
            box[:, 3] / stride - y - 0.5,
        ),
        dim=1,
    ).clamp(min=0)

    labels_out = torch.full((batch_size * num_cells,), -1, dtype=torch.int64, device=device)
    labels_out[won["cell"]] = labels[won["box"]]
    box_target_out = torch.zeros((batch_size * num_cells, 4), device=device)
    box_target_out[won["cell"]] = box_target
    ltrb_out = torch.zeros((batch_size * num_cells, 4), device=device)
    ltrb_out[won["cell"]] = ltrb
    weight_out = torch.zeros(batch_size * num_cells, device=device)
    weight_out[won["cell"]] = 2.0 - area[won["box"]] / float(image_size * image_size)
    gt_out = torch.zeros((batch_size * num_cells, 4), device=device)
    gt_out[won["cell"]] = box

    return Assignment(
        positive=positive.view(batch_size, num_cells),
        ignore=ignore.view(batch_size, num_cells),
        labels=labels_out.view(batch_size, num_cells),
        box_target=box_target_out.view(batch_size, num_cells, 4),
        ltrb=ltrb_out.view(batch_size, num_cells, 4),
        box_weight=weight_out.view(batch_size, num_cells),
        gt_boxes=gt_out.view(batch_size, num_cells, 4),
    )
