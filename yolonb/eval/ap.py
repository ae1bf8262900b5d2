"""Pascal VOC average precision at an IoU threshold, vectorised with numpy.

Written by hand because no well-kept library evaluates VOC AP with the devkit's
semantics (difficult objects ignored, the highest-IoU ground truth taken per
detection, the 11-point and the all-points metric) without pulling in a large
framework: pycocotools implements COCO's rules, and torchmetrics and Detectron2
bring their own frameworks.

Matching rules, as in the official VOC devkit (``VOCevaldet.m``):

- Detections of a class are taken in descending score order. Each detection
  takes the ground truth of the same class and image with the highest IoU,
  difficult boxes included. On equal IoU the first box in annotation order wins.
- If that IoU is at least ``iou_threshold`` (``>=``, as in the devkit) and the
  ground truth is difficult, the detection is ignored: neither a true nor a false
  positive. If the ground truth is not difficult and not yet taken, the detection
  is a true positive and takes it. If it is already taken, the detection is a
  false positive, even when another untaken ground truth also overlaps it by more
  than the threshold.
- Below the threshold, or with no ground truth of its class in the image, a
  detection is a false positive.
- Difficult ground truths do not count as positives (``n_gt`` excludes them).

IoU is plain continuous IoU on xyxy pixel boxes. The VOC reader shifts the
1-based inclusive file coordinates once (``x_min = xmin - 1, x_max = xmax``), so
this IoU equals the devkit's ``+1`` pixel IoU on the file coordinates: file boxes
[278, 299, 302, 326] and [286.58, 301.95, 300.10, 326.75] have IoU 0.512 here as
in the devkit, and 0.494 if the file values were used unshifted.

Equal scores: detections with the same score form one threshold, so the
precision-recall curve has one point per distinct score (as in
``sklearn.metrics.average_precision_score``). The devkit instead counts tied
detections one by one in input order, so a true and a false positive both at
score 1.0 give AP 1.0 or 0.5 depending on which comes first; here they give 0.5
in any order. The number of true positives at or above a score does not depend
on the order inside a tie, because each detection's target ground truth is fixed
before matching and each target counts once, so the same detections in any order
give the same AP. With distinct scores the result equals the devkit's, except
for the 11-point recall thresholds described at ``VOC07_RECALL_THRESHOLDS``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

logger = logging.getLogger(__name__)

# Recall thresholds of the VOC2007 11-point metric. k / 10 is the closest double to
# each threshold, so a recall of exactly 3/10 passes the 0.3 threshold. The devkit's
# 0:0.1:1 (and numpy.arange(0, 1.1, 0.1)) gives 0.30000000000000004 there instead,
# which drops such a recall point; the results differ only in that case.
VOC07_RECALL_THRESHOLDS = np.arange(11) / 10.0

METRICS = ("voc07", "area")


@dataclass
class EvalResult:
    """Per-class VOC average precision and the mean over classes with ground truth.

    Attributes:
        classes: class names, in label order.
        ap_voc07: (C,) float64, VOC2007 11-point AP; NaN for a class without
            non-difficult ground truth.
        ap_area: (C,) float64, VOC2010+ area under the interpolated
            precision-recall curve (all points); NaN as above.
        n_gt: (C,) int64, non-difficult ground truths per class.
        n_det: (C,) int64, detections per class, those ignored on difficult
            ground truths included.
        precision: per class, (T,) float64, precision at each distinct score,
            from the highest score down; empty for a class without ground truth
            or without counted detections.
        recall: per class, (T,) float64, recall at the same thresholds.
        map_voc07: mean of ``ap_voc07`` over classes with ground truth (NaN if none).
        map_area: mean of ``ap_area`` over classes with ground truth (NaN if none).
        iou_threshold: minimum IoU of a true positive.
    """

    classes: tuple[str, ...]
    ap_voc07: np.ndarray
    ap_area: np.ndarray
    n_gt: np.ndarray
    n_det: np.ndarray
    precision: list[np.ndarray] = field(repr=False)
    recall: list[np.ndarray] = field(repr=False)
    map_voc07: float
    map_area: float
    iou_threshold: float = 0.5

    def ap(self, metric: str = "voc07") -> np.ndarray:
        """Return the per-class AP of ``metric`` ("voc07" or "area")."""
        _check_metric(metric)
        return self.ap_voc07 if metric == "voc07" else self.ap_area

    def map(self, metric: str = "voc07") -> float:
        """Return the mAP of ``metric`` ("voc07" or "area")."""
        _check_metric(metric)
        return self.map_voc07 if metric == "voc07" else self.map_area

    def to_dict(self) -> dict[str, Any]:
        """Convert to JSON-ready types, per-class values keyed by class name and None for NaN.

        The keys match those of a run's ``metrics.json``: ``map_voc07``, ``map_area``,
        ``per_class_ap`` (VOC07), ``per_class_ap_area``, ``n_gt``, plus
        ``n_detections``, ``classes`` and ``iou_threshold``.
        """
        return {
            "iou_threshold": float(self.iou_threshold),
            "classes": list(self.classes),
            "map_voc07": _float_or_none(self.map_voc07),
            "map_area": _float_or_none(self.map_area),
            "per_class_ap": {name: _float_or_none(v) for name, v in zip(self.classes, self.ap_voc07)},
            "per_class_ap_area": {name: _float_or_none(v) for name, v in zip(self.classes, self.ap_area)},
            "n_gt": {name: int(n) for name, n in zip(self.classes, self.n_gt)},
            "n_detections": {name: int(n) for name, n in zip(self.classes, self.n_det)},
        }


def evaluate_detections(
    det_image: Sequence | np.ndarray,
    det_label: Sequence | np.ndarray,
    det_score: Sequence | np.ndarray,
    det_boxes: Sequence | np.ndarray,
    gt_image: Sequence | np.ndarray,
    gt_label: Sequence | np.ndarray,
    gt_boxes: Sequence | np.ndarray,
    gt_difficult: Sequence | np.ndarray,
    classes: Sequence[str],
    iou_threshold: float = 0.5,
) -> EvalResult:
    """Match detections to ground truth once and compute both VOC AP metrics per class.

    See the module docstring for the matching rules and the handling of equal scores.

    Args:
        det_image: (D,) image key of each detection, int or str; detections and
            ground truths with equal keys belong to the same image.
        det_label: (D,) int class index in ``[0, C)``.
        det_score: (D,) float confidence, higher is more confident.
        det_boxes: (D, 4) float xyxy boxes in continuous pixel coordinates.
        gt_image: (G,) image key of each ground truth.
        gt_label: (G,) int class index in ``[0, C)``.
        gt_boxes: (G, 4) float xyxy boxes in continuous pixel coordinates.
        gt_difficult: (G,) bool, True for objects marked difficult.
        classes: the C class names, in label order.
        iou_threshold: minimum IoU of a true positive, in (0, 1].

    Returns:
        EvalResult with per-class AP of both metrics, precision-recall curves,
        ground-truth counts and the mAPs.

    Raises:
        ValueError: on inconsistent lengths, boxes that are not (N, 4), non-finite
            scores or boxes, boxes with x_max < x_min or y_max < y_min, or labels
            outside ``[0, C)``.
    """
    classes = tuple(str(name) for name in classes)
    num_classes = len(classes)
    if num_classes == 0:
        raise ValueError("classes is empty; pass the class names in label order")
    if not 0.0 < float(iou_threshold) <= 1.0:
        raise ValueError(f"iou_threshold={iou_threshold} is outside (0, 1]; VOC uses 0.5")

    det_label, det_score, det_boxes = _check_arrays("detection", det_image, det_label, det_score, det_boxes, num_classes)
    gt_label, gt_difficult, gt_boxes = _check_arrays("ground truth", gt_image, gt_label, gt_difficult, gt_boxes, num_classes)
    gt_difficult = gt_difficult.astype(bool)
    det_key, gt_key = _image_class_keys(det_image, det_label, gt_image, gt_label, num_classes)

    target, ignored = _match_highest_iou(det_key, det_boxes, gt_key, gt_boxes, gt_difficult, float(iou_threshold))
    order, is_tp = _claim_targets(det_label, det_score, target, ignored)

    # Ignored detections add neither a true nor a false positive, so dropping them
    # leaves every point of the precision-recall curve unchanged.
    counted = order[~ignored[order]]
    counted_label = det_label[counted]
    counted_score = det_score[counted]
    counted_tp = is_tp[counted]

    n_gt = np.bincount(gt_label[~gt_difficult], minlength=num_classes).astype(np.int64)
    n_det = np.bincount(det_label, minlength=num_classes).astype(np.int64)
    ap_voc07 = np.full(num_classes, np.nan)
    ap_area = np.full(num_classes, np.nan)
    precision: list[np.ndarray] = []
    recall: list[np.ndarray] = []
    block_edges = np.searchsorted(counted_label, np.arange(num_classes + 1), side="left")

    for c in range(num_classes):
        if n_gt[c] == 0:
            precision.append(np.zeros(0))
            recall.append(np.zeros(0))
            continue
        start, stop = block_edges[c], block_edges[c + 1]
        class_precision, class_recall = _precision_recall(counted_tp[start:stop], counted_score[start:stop], int(n_gt[c]))
        precision.append(class_precision)
        recall.append(class_recall)
        ap_voc07[c] = voc07_ap(class_precision, class_recall)
        ap_area[c] = area_ap(class_precision, class_recall)

    missing = [name for name, n in zip(classes, n_gt) if n == 0]
    if missing:
        logger.info("classes without non-difficult ground truth, left out of the mAP: %s", ", ".join(missing))
    return EvalResult(
        classes=classes,
        ap_voc07=ap_voc07,
        ap_area=ap_area,
        n_gt=n_gt,
        n_det=n_det,
        precision=precision,
        recall=recall,
        map_voc07=_nanmean(ap_voc07),
        map_area=_nanmean(ap_area),
        iou_threshold=float(iou_threshold),
    )


def evaluate_records(
    records: Sequence[Any],
    predictions: Sequence[dict],
    classes: Sequence[str],
    iou_threshold: float = 0.5,
) -> EvalResult:
    """Evaluate per-image predictions against parsed VOC records.

    Args:
        records: ImageRecord objects (or any objects with ``boxes`` (N, 4),
            ``labels`` (N,) and ``difficult`` (N,)), boxes in continuous pixels
            of the original image.
        predictions: one dict per record, in the same order, with ``boxes``
            (K, 4) xyxy in original-image pixels, ``scores`` (K,) and ``labels``
            (K,) int64; numpy arrays or torch tensors on any device.
        classes: the class names, in label order.
        iou_threshold: minimum IoU of a true positive.

    Returns:
        EvalResult, as from ``evaluate_detections``.

    Raises:
        ValueError: if the numbers of records and predictions differ, or a
            prediction lacks a key or has inconsistent shapes.
    """
    if len(records) != len(predictions):
        raise ValueError(
            f"got {len(records)} records but {len(predictions)} predictions; "
            "pass one prediction dict per record, in the same order"
        )

    columns: dict[str, list] = {"boxes": [], "scores": [], "labels": []}
    for index, prediction in enumerate(predictions):
        try:
            for key, column in columns.items():
                value = prediction[key]
                column.append(value if hasattr(value, "shape") else np.asarray(value))
        except KeyError as error:
            raise ValueError(
                f"prediction {index} (image {getattr(records[index], 'image_id', index)!r}) lacks "
                f"{error.args[0]!r}; each prediction needs boxes, scores and labels"
            ) from None
    det_counts = np.array([_length(scores) for scores in columns["scores"]], dtype=np.int64)
    for key in ("boxes", "labels"):
        counts = np.array([value.shape[0] if value.ndim else 1 for value in columns[key]], dtype=np.int64)
        bad = np.flatnonzero(counts != det_counts)
        if bad.size:
            raise ValueError(
                f"prediction {bad[0]} (image {getattr(records[bad[0]], 'image_id', bad[0])!r}) has "
                f"{counts[bad[0]]} {key} but {det_counts[bad[0]]} scores; pass one entry per detection"
            )
    wrong_width = [i for i, boxes in enumerate(columns["boxes"]) if _length(boxes) and tuple(boxes.shape[1:]) != (4,)]
    if wrong_width:
        raise ValueError(
            f"prediction {wrong_width[0]} has boxes of shape {tuple(columns['boxes'][wrong_width[0]].shape)}; "
            "expected (K, 4) xyxy pixels"
        )

    gt_counts = np.array([len(record.labels) for record in records], dtype=np.int64)
    det = {
        "image": np.repeat(np.arange(len(records)), det_counts),
        "label": _concatenate(columns["labels"], (-1,)),
        "score": _concatenate(columns["scores"], (-1,)),
        "boxes": _concatenate(columns["boxes"], (-1, 4)),
    }
    gt = {
        "image": np.repeat(np.arange(len(records)), gt_counts),
        "label": _concatenate([record.labels for record in records], (-1,)),
        "difficult": _concatenate([record.difficult for record in records], (-1,)),
        "boxes": _concatenate([record.boxes for record in records], (-1, 4)),
    }
    return evaluate_detections(
        det["image"], det["label"], det["score"], det["boxes"],
        gt["image"], gt["label"], gt["boxes"], gt["difficult"],
        classes, iou_threshold=iou_threshold,
    )


def voc07_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Compute the VOC2007 11-point AP: the mean over t = 0, 0.1, ..., 1 of max precision at recall >= t.

    Args:
        precision: (T,) precision at each threshold, recall non-decreasing.
        recall: (T,) recall at the same thresholds.

    Returns:
        AP in [0, 1]; a recall threshold that no point reaches contributes 0.
    """
    if len(recall) == 0:
        return 0.0
    # Suffix maximum: the best precision at this point or any later (higher-recall) one.
    best_from = np.maximum.accumulate(precision[::-1])[::-1]
    first_reaching = np.searchsorted(recall, VOC07_RECALL_THRESHOLDS, side="left")
    reached = first_reaching < len(recall)
    contributions = np.zeros(len(VOC07_RECALL_THRESHOLDS))
    contributions[reached] = best_from[first_reaching[reached]]
    return float(contributions.sum() / len(VOC07_RECALL_THRESHOLDS))


def area_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """Compute the VOC2010+ AP: the area under the precision envelope over all recall points.

    Args:
        precision: (T,) precision at each threshold, recall non-decreasing.
        recall: (T,) recall at the same thresholds.

    Returns:
        AP in [0, 1].
    """
    if len(recall) == 0:
        return 0.0
    padded_recall = np.concatenate(([0.0], recall, [1.0]))
    padded_precision = np.concatenate(([0.0], precision, [0.0]))
    envelope = np.maximum.accumulate(padded_precision[::-1])[::-1]

    steps = np.flatnonzero(padded_recall[1:] != padded_recall[:-1])
    return float(np.sum((padded_recall[steps + 1] - padded_recall[steps]) * envelope[steps + 1]))


# --- VOC results files (comp4) -------------------------------------------------------


class DetectionFileError(ValueError):
    """A detection file in the VOC results format that cannot be read."""


class Comp4Detections(NamedTuple):
    """Detections read from VOC results files, boxes already in continuous pixels.

    Attributes:
        image_ids: (D,) str image ids.
        labels: (D,) int64 class indices.
        scores: (D,) float64.
        boxes: (D, 4) float64 xyxy continuous pixels (``xmin - 1, ymin - 1, xmax, ymax``).
    """

    image_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray


def comp4_path(directory: str | os.PathLike, split: str, class_name: str) -> Path:
    """Return the path of the VOC results file of one class: ``comp4_det_<split>_<class>.txt``."""
    return Path(directory) / f"comp4_det_{split}_{class_name}.txt"


def read_comp4_detections(
    directory: str | os.PathLike,
    split: str,
    classes: Sequence[str],
    image_ids: Sequence[str] | None = None,
) -> Comp4Detections:
    """Read one VOC results file per class and convert the boxes to continuous pixels.

    Each line is ``image_id score xmin ymin xmax ymax`` in VOC 1-based inclusive
    coordinates, separated by whitespace. A class without a file has no
    detections (logged as a warning).

    Args:
        directory: folder holding ``comp4_det_<split>_<class>.txt`` files.
        split: the split part of the file names, e.g. "test".
        classes: class names, in label order.
        image_ids: if given, every detection's image id must be one of them.

    Returns:
        Comp4Detections with all classes' detections.

    Raises:
        DetectionFileError: if the folder contains no file of the split, a file names
            a class outside ``classes``, or a line is malformed (the message names
            the file, the line number and the fix).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DetectionFileError(f"detection folder {directory} not found; pass the folder that contains comp4_det_{split}_<class>.txt files")

    prefix = f"comp4_det_{split}_"
    found = sorted(path for path in directory.glob(f"{prefix}*.txt") if path.is_file())
    if not found:
        raise DetectionFileError(
            f"no {prefix}<class>.txt files in {directory}; check the folder and the split name "
            f"(files present: {', '.join(sorted(p.name for p in directory.iterdir())[:5]) or 'none'})"
        )
    class_index = {name: i for i, name in enumerate(classes)}
    unknown = [path.name for path in found if path.name[len(prefix):-len(".txt")] not in class_index]
    if unknown:
        raise DetectionFileError(
            f"{directory / unknown[0]} names a class that is not in the class list "
            f"({', '.join(classes)}); rename or remove the file, or evaluate with that class"
        )
    known_ids = None if image_ids is None else set(image_ids)

    parts: list[tuple[list[str], list[list[float]]]] = []
    labels: list[np.ndarray] = []
    without_file = []
    for label, name in enumerate(classes):
        path = comp4_path(directory, split, name)
        if not path.is_file():
            without_file.append(name)
            continue
        ids, rows = _read_comp4_file(path, known_ids, split)
        parts.append((ids, rows))
        labels.append(np.full(len(ids), label, dtype=np.int64))

    if without_file:
        logger.warning(
            "no %s<class>.txt file in %s for %d of %d classes, counted as having no detections: %s",
            prefix, directory, len(without_file), len(classes), ", ".join(without_file),
        )

    all_ids = [image_id for ids, _ in parts for image_id in ids]
    values = np.array([row for _, rows in parts for row in rows], dtype=np.float64).reshape(-1, 5)
    boxes = _voc_to_continuous(values[:, 1:])
    return Comp4Detections(
        image_ids=np.array(all_ids, dtype=str),
        labels=np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64),
        scores=values[:, 0].copy(),
        boxes=boxes,
    )


def write_comp4_detections(
    directory: str | os.PathLike,
    split: str,
    classes: Sequence[str],
    image_ids: Sequence[str],
    predictions: Sequence[dict],
) -> list[Path]:
    """Write predictions as one VOC results file per class, in VOC 1-based coordinates.

    Every class gets a file, empty when it has no detections, so the VOC devkit
    can read the folder too. Values are written with Python's shortest round-trip
    float format, so reading the files back gives the same boxes up to the
    rounding of the +1 shift.

    Args:
        directory: output folder, created if missing.
        split: the split part of the file names, e.g. "test".
        classes: class names, in label order.
        image_ids: one id per prediction.
        predictions: per image, ``boxes`` (K, 4) xyxy continuous pixels,
            ``scores`` (K,) and ``labels`` (K,); numpy arrays or torch tensors.

    Returns:
        The written paths, in class order.
    """
    if len(image_ids) != len(predictions):
        raise ValueError(f"got {len(image_ids)} image ids but {len(predictions)} predictions; pass one id per prediction")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)

    lines: list[list[str]] = [[] for _ in classes]
    for image_id, prediction in zip(image_ids, predictions):
        boxes = _continuous_to_voc(_to_numpy(prediction["boxes"])).tolist()
        scores = _to_numpy(prediction["scores"]).reshape(-1).astype(np.float64).tolist()
        labels = _to_numpy(prediction["labels"]).reshape(-1).tolist()
        for label, score, (xmin, ymin, xmax, ymax) in zip(labels, scores, boxes):
            lines[int(label)].append(f"{image_id} {score!r} {xmin!r} {ymin!r} {xmax!r} {ymax!r}\n")

    paths = []
    for name, class_lines in zip(classes, lines):
        path = comp4_path(directory, split, name)
        path.write_text("".join(class_lines), encoding="utf-8")
        paths.append(path)
    return paths


# --- helpers -------------------------------------------------------------------------


# The same conversion as the VOC reader's, kept here so that the evaluator imports
# without the data layer (which imports torch and torchvision).
def _voc_to_continuous(voc_boxes: np.ndarray) -> np.ndarray:
    """Convert (N, 4) VOC 1-based inclusive boxes to continuous xyxy pixels (xmin - 1, ymin - 1, xmax, ymax)."""
    boxes = np.array(voc_boxes, dtype=np.float64).reshape(-1, 4)
    boxes[:, :2] -= 1.0
    return boxes


def _continuous_to_voc(boxes: np.ndarray) -> np.ndarray:
    """Convert (N, 4) continuous xyxy pixel boxes to VOC 1-based inclusive numbers."""
    voc_boxes = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    voc_boxes[:, :2] += 1.0
    return voc_boxes


def _read_comp4_file(path: Path, known_ids: set[str] | None, split: str) -> tuple[list[str], list[list[float]]]:
    ids: list[str] = []
    rows: list[list[float]] = []
    expected = "expected 'image_id score xmin ymin xmax ymax'"
    with path.open(encoding="utf-8-sig") as handle:
        for line_number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}, line {line_number}"
            if len(fields) != 6:
                raise DetectionFileError(f"{where}: {len(fields)} fields in {line.strip()!r}; {expected} separated by spaces")
            try:
                values = [float(v) for v in fields[1:]]
            except ValueError:
                raise DetectionFileError(f"{where}: a non-number in {line.strip()!r}; {expected}, the last five numbers") from None
            if not all(math.isfinite(v) for v in values):
                raise DetectionFileError(f"{where}: a non-finite value in {line.strip()!r}; write finite scores and coordinates")
            # The file is 1-based inclusive, so a box is valid while xmax >= xmin - 1
            # (zero width once shifted to continuous pixels).
            _, xmin, ymin, xmax, ymax = values
            if xmax < xmin - 1.0 or ymax < ymin - 1.0:
                raise DetectionFileError(
                    f"{where}: box ({xmin}, {ymin}, {xmax}, {ymax}) has xmax < xmin - 1 or ymax < ymin - 1; "
                    "write xmin ymin xmax ymax in that order, in VOC 1-based pixels"
                )
            if known_ids is not None and fields[0] not in known_ids:
                raise DetectionFileError(
                    f"{where}: image id {fields[0]!r} is not in split {split!r}; "
                    "write detections only for the images of the evaluated split, with the ids of its image-set file"
                )
            ids.append(fields[0])
            rows.append(values)
    return ids, rows


def _check_arrays(kind: str, image, label, third, boxes, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate one side's arrays. ``third`` is the scores of detections or the difficult flags of ground truths."""
    label = np.asarray(label).reshape(-1)
    third = np.asarray(third).reshape(-1)
    boxes = np.asarray(boxes, dtype=np.float64)
    count = len(label)
    if boxes.size == 0 and count == 0:
        boxes = boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"{kind} boxes have shape {boxes.shape}; expected (N, 4) xyxy pixels")
    lengths = {"images": len(np.asarray(image).reshape(-1)), "labels": count, "scores/difficult": len(third), "boxes": len(boxes)}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{kind} arrays have different lengths {lengths}; pass one entry per box in each")

    if count and not np.issubdtype(label.dtype, np.integer):
        if not np.all(np.equal(np.mod(label, 1), 0)):
            raise ValueError(f"{kind} labels contain non-integer values; pass class indices")
    label = label.astype(np.int64)
    bad = np.flatnonzero((label < 0) | (label >= num_classes))
    if bad.size:
        raise ValueError(f"{kind} {bad[0]} has label {label[bad[0]]}, outside [0, {num_classes}); labels index the class list")
    if not np.all(np.isfinite(boxes)):
        raise ValueError(f"{kind} {np.flatnonzero(~np.isfinite(boxes).all(axis=1))[0]} has a non-finite box; pass finite pixel coordinates")
    inverted = np.flatnonzero((boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1]))
    if inverted.size:
        raise ValueError(f"{kind} {inverted[0]} has box {boxes[inverted[0]].tolist()} with x_max < x_min or y_max < y_min; pass xyxy boxes")
    if kind == "detection":
        third = third.astype(np.float64)
        if not np.all(np.isfinite(third)):
            raise ValueError(f"detection {np.flatnonzero(~np.isfinite(third))[0]} has a non-finite score; pass finite scores")
    return label, third, boxes


def _image_class_keys(det_image, det_label, gt_image, gt_label, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Encode (image, class) as one int64 per box, equal for boxes of the same image and class."""
    det_image = np.asarray(det_image).reshape(-1)
    gt_image = np.asarray(gt_image).reshape(-1)
    kinds = {a.dtype.kind for a in (det_image, gt_image) if a.size}
    if kinds <= {"i", "u"}:
        merged = np.concatenate((det_image.astype(np.int64), gt_image.astype(np.int64)))
        lowest = int(merged.min()) if merged.size else 0
        highest = int(merged.max()) if merged.size else 0
        if (highest - lowest + 1) * num_classes < 2**62:
            # Integer keys need no np.unique (a full sort): shifting them to start at 0 is enough.
            image_code = merged - lowest
        else:
            image_code = np.unique(merged, return_inverse=True)[1].reshape(-1).astype(np.int64)
    else:
        # Mixed or string keys compare as strings, so an int 5 and a "5" are one image.
        merged = np.concatenate((det_image.astype(str), gt_image.astype(str)))
        image_code = np.unique(merged, return_inverse=True)[1].reshape(-1).astype(np.int64)

    keys = image_code * num_classes + np.concatenate((det_label, gt_label))
    return keys[: len(det_image)], keys[len(det_image):]


def _match_highest_iou(
    det_key: np.ndarray,
    det_boxes: np.ndarray,
    gt_key: np.ndarray,
    gt_boxes: np.ndarray,
    gt_difficult: np.ndarray,
    iou_threshold: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Find each detection's highest-IoU ground truth of its image and class.

    Returns:
        target: (D,) int64 index of that ground truth when its IoU reaches the
            threshold, else -1.
        ignored: (D,) bool, True where the target is difficult.
    """
    num_det = len(det_key)
    target = np.full(num_det, -1, dtype=np.int64)
    ignored = np.zeros(num_det, dtype=bool)

    # Every (detection, ground truth) pair of the same image and class, as flat
    # arrays grouped by detection. A stable sort keeps annotation order within a
    # group, so the first of equal IoUs is the first box in the file, as in the devkit.
    gt_order = np.argsort(gt_key, kind="stable")
    key_space = int(max(det_key.max(initial=0), gt_key.max(initial=0))) + 1
    if key_space <= 4 * (len(det_key) + len(gt_key)):
        # Dense keys: a table lookup per detection instead of two binary searches.
        gt_per_key = np.bincount(gt_key, minlength=key_space)
        first_of_key = np.cumsum(gt_per_key) - gt_per_key
        first_gt = first_of_key[det_key]
        count = gt_per_key[det_key]
    else:
        sorted_gt_key = gt_key[gt_order]
        first_gt = np.searchsorted(sorted_gt_key, det_key, side="left")
        count = np.searchsorted(sorted_gt_key, det_key, side="right") - first_gt
    pair_det = np.repeat(np.arange(num_det), count)
    if pair_det.size == 0:
        return target, ignored
    pair_start = np.cumsum(count) - count
    pair_gt = gt_order[first_gt[pair_det] + np.arange(pair_det.size) - pair_start[pair_det]]

    iou = _paired_iou(det_boxes[pair_det], gt_boxes[pair_gt])

    has_pairs = count > 0
    best_iou = np.full(num_det, -np.inf)
    best_iou[has_pairs] = np.maximum.reduceat(iou, pair_start[has_pairs])
    at_best = np.flatnonzero(iou == best_iou[pair_det])
    first_best = at_best[np.concatenate(([True], pair_det[at_best][1:] != pair_det[at_best][:-1]))]
    best_gt = np.full(num_det, -1, dtype=np.int64)
    best_gt[pair_det[first_best]] = pair_gt[first_best]

    matched = best_iou >= iou_threshold
    target[matched] = best_gt[matched]
    ignored[matched] = gt_difficult[best_gt[matched]]
    return target, ignored


def _paired_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """IoU of row i of boxes_a with row i of boxes_b, both (P, 4) xyxy.

    torchvision.ops.box_iou returns the full (N, M) matrix, which here would be
    mostly pairs from different images, so the element-wise form is written out.
    Two zero-area boxes have IoU 0.
    """
    width = np.clip(np.minimum(boxes_a[:, 2], boxes_b[:, 2]) - np.maximum(boxes_a[:, 0], boxes_b[:, 0]), 0.0, None)
    height = np.clip(np.minimum(boxes_a[:, 3], boxes_b[:, 3]) - np.maximum(boxes_a[:, 1], boxes_b[:, 1]), 0.0, None)
    intersection = width * height

    area_a = (boxes_a[:, 2] - boxes_a[:, 0]) * (boxes_a[:, 3] - boxes_a[:, 1])
    area_b = (boxes_b[:, 2] - boxes_b[:, 0]) * (boxes_b[:, 3] - boxes_b[:, 1])
    union = area_a + area_b - intersection
    return np.divide(intersection, union, out=np.zeros_like(intersection), where=union > 0)


def _claim_targets(
    det_label: np.ndarray, det_score: np.ndarray, target: np.ndarray, ignored: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Order detections by class, then descending score, and mark true positives.

    A detection is a true positive when its target is a non-difficult ground truth
    that no earlier detection in this order targets. This equals the devkit's
    sequential loop, because a detection's target does not depend on which
    ground truths are already taken.

    Returns:
        order: (D,) detection indices sorted by class, then descending score;
            the order among equal scores is unspecified, and no output depends on it.
        is_tp: (D,) bool per detection.
    """
    # Two passes are faster than np.lexsort here: a quicksort by descending score,
    # then a stable radix sort of small-integer labels that keeps the score order.
    order = np.argsort(-det_score)
    label_type = np.int16 if det_label.size and det_label.max() < 2**15 else np.int64
    order = order[np.argsort(det_label[order].astype(label_type), kind="stable")]
    eligible = order[(target[order] >= 0) & ~ignored[order]]
    _, first = np.unique(target[eligible], return_index=True)

    is_tp = np.zeros(len(det_label), dtype=bool)
    is_tp[eligible[first]] = True
    return order, is_tp


def _precision_recall(is_tp: np.ndarray, scores: np.ndarray, n_gt: int) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score of one class's detections, sorted by descending score."""
    if len(is_tp) == 0:
        return np.zeros(0), np.zeros(0)
    true_positives = np.cumsum(is_tp)
    detections = np.arange(1, len(is_tp) + 1)

    # The last detection of each run of equal scores closes one threshold.
    closes = np.concatenate((scores[1:] != scores[:-1], [True]))
    true_positives = true_positives[closes]
    return true_positives / detections[closes], true_positives / n_gt


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _length(value: Any) -> int:
    return int(value.shape[0]) if value.ndim else 1


def _concatenate(parts: list, shape: tuple[int, ...]) -> np.ndarray:
    """Concatenate per-image numpy arrays or torch tensors into one numpy array of ``shape``."""
    if not parts:
        return np.zeros((0,) + shape[1:])

    # One concatenation and one copy to the host, instead of a conversion per image.
    torch = sys.modules.get("torch")
    try:
        if torch is not None and all(isinstance(part, torch.Tensor) for part in parts):
            return torch.cat(parts).detach().reshape(shape).cpu().numpy()
        if all(isinstance(part, np.ndarray) for part in parts):
            return np.concatenate(parts).reshape(shape)
    except (RuntimeError, ValueError):
        pass  # mixed devices or shapes: convert the parts one by one below
    return np.concatenate([_to_numpy(part).reshape(shape) for part in parts])


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else float("nan")


def _float_or_none(value: float) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not one of {METRICS}")
