"""Time the vectorised VOC evaluator against a per-detection loop in the style of the classic VOC tools.

Generates a deterministic data set: 5,000 images, 100 detections each, 20 classes,
annotations already parsed into ImageRecord objects. Evaluates it with
``yolonb.eval.evaluate_records`` and with ``classic_voc_ap`` below, checks that
both give the same APs, and prints a table of method, seconds and speed-up.

    python benchmarks/bench_eval.py [--images 5000] [--detections 100] [--repeats 3]

``classic_voc_ap`` follows the published algorithm of the VOC devkit (one class
at a time, detections in descending score order, one IoU computation per
detection against the ground truths of its image); it is written here from that
algorithm to serve as the baseline.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from yolonb.data import ImageRecord
from yolonb.eval import evaluate_records

IMAGE_WIDTH, IMAGE_HEIGHT = 500, 375


def make_data(n_images: int, detections_per_image: int, n_classes: int, seed: int = 0):
    """Generate ground-truth records and predictions with a seeded generator.

    Detections are noisy copies of the ground truths (some with the wrong class,
    some duplicates) plus random boxes, so each class has true positives, false
    positives, duplicates and detections on difficult objects.

    Returns:
        (records, predictions): lists of ImageRecord and of dicts with torch
        tensors ``boxes`` (K, 4) float32, ``scores`` (K,) float64 and ``labels`` (K,) int64.
    """
    rng = np.random.default_rng(seed)
    class_weights = 1.0 / np.arange(1, n_classes + 1)
    class_weights /= class_weights.sum()
    records, predictions = [], []

    for index in range(n_images):
        n_objects = int(rng.integers(1, 8))
        gt_boxes = _random_boxes(rng, n_objects)
        gt_labels = rng.choice(n_classes, size=n_objects, p=class_weights)
        difficult = rng.random(n_objects) < 0.1
        records.append(ImageRecord(
            image_id=f"{index:06d}",
            image_path=Path(f"JPEGImages/{index:06d}.jpg"),
            annotation_path=Path(f"Annotations/{index:06d}.xml"),
            width=IMAGE_WIDTH,
            height=IMAGE_HEIGHT,
            boxes=gt_boxes.astype(np.float32),
            labels=gt_labels.astype(np.int64),
            difficult=difficult,
        ))

        copies = rng.integers(0, 4, size=n_objects)
        source = np.repeat(np.arange(n_objects), copies)[:detections_per_image]
        sizes = np.concatenate((gt_boxes[source, 2:] - gt_boxes[source, :2],) * 2, axis=1)
        near = gt_boxes[source] + rng.normal(0.0, 0.08, size=(len(source), 4)) * sizes
        near_labels = np.where(rng.random(len(source)) < 0.1, rng.integers(0, n_classes, len(source)), gt_labels[source])
        n_random = detections_per_image - len(source)
        boxes = np.concatenate((near, _random_boxes(rng, n_random)))
        boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1.0)
        labels = np.concatenate((near_labels, rng.integers(0, n_classes, n_random)))
        scores = np.concatenate((0.3 + 0.7 * rng.random(len(source)), 0.6 * rng.random(n_random)))
        # float64 scores: with 100,000 detections in a class, float32 scores tie
        # often, and ties are where the two methods are meant to differ.
        predictions.append({
            "boxes": torch.from_numpy(boxes.astype(np.float32)),
            "scores": torch.from_numpy(scores),
            "labels": torch.from_numpy(labels.astype(np.int64)),
        })
    return records, predictions


def _random_boxes(rng: np.random.Generator, count: int) -> np.ndarray:
    size = rng.uniform(10.0, 200.0, size=(count, 2))
    corner = rng.uniform(0.0, 1.0, size=(count, 2)) * (np.array([IMAGE_WIDTH, IMAGE_HEIGHT]) - size)
    return np.concatenate((corner, corner + size), axis=1)


def classic_voc_ap(records, predictions, n_classes: int, iou_threshold: float = 0.5):
    """Evaluate one class at a time with a Python loop over detections, as the classic VOC tools do.

    Returns:
        (ap_voc07, ap_area): (C,) float64 arrays, NaN for a class without ground truth.
    """
    ap_voc07 = np.full(n_classes, np.nan)
    ap_area = np.full(n_classes, np.nan)
    numpy_predictions = [{key: value.numpy() for key, value in p.items()} for p in predictions]

    for c in range(n_classes):
        ground_truth = {}
        n_positive = 0
        for index, record in enumerate(records):
            mask = record.labels == c
            ground_truth[index] = {
                "boxes": record.boxes[mask].astype(np.float64),
                "difficult": record.difficult[mask],
                "taken": np.zeros(int(mask.sum()), dtype=bool),
            }
            n_positive += int((~record.difficult[mask]).sum())

        image_of, scores, boxes = [], [], []
        for index, prediction in enumerate(numpy_predictions):
            mask = prediction["labels"] == c
            image_of.extend([index] * int(mask.sum()))
            scores.extend(prediction["scores"][mask].tolist())
            boxes.extend(prediction["boxes"][mask].astype(np.float64).tolist())
        order = np.argsort(-np.array(scores, dtype=np.float64), kind="stable")

        true_positive = np.zeros(len(order))
        false_positive = np.zeros(len(order))
        for rank, d in enumerate(order):
            gt = ground_truth[image_of[d]]
            box = boxes[d]
            best_iou, best = -np.inf, -1
            if len(gt["boxes"]):
                gb = gt["boxes"]
                width = np.maximum(np.minimum(gb[:, 2], box[2]) - np.maximum(gb[:, 0], box[0]), 0.0)
                height = np.maximum(np.minimum(gb[:, 3], box[3]) - np.maximum(gb[:, 1], box[1]), 0.0)
                intersection = width * height
                union = (box[2] - box[0]) * (box[3] - box[1]) + (gb[:, 2] - gb[:, 0]) * (gb[:, 3] - gb[:, 1]) - intersection
                iou = intersection / union
                best = int(np.argmax(iou))
                best_iou = iou[best]
            if best_iou >= iou_threshold:
                if not gt["difficult"][best]:
                    if not gt["taken"][best]:
                        true_positive[rank] = 1
                        gt["taken"][best] = True
                    else:
                        false_positive[rank] = 1
            else:
                false_positive[rank] = 1

        if n_positive == 0:
            continue
        tp = np.cumsum(true_positive)
        fp = np.cumsum(false_positive)
        recall = tp / n_positive
        precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)

        total = 0.0
        for t in np.arange(11) / 10.0:
            reached = precision[recall >= t]
            total += reached.max() if reached.size else 0.0
        ap_voc07[c] = total / 11.0

        padded_recall = np.concatenate(([0.0], recall, [1.0]))
        padded_precision = np.concatenate(([0.0], precision, [0.0]))
        for i in range(len(padded_precision) - 2, -1, -1):
            padded_precision[i] = max(padded_precision[i], padded_precision[i + 1])
        steps = np.flatnonzero(padded_recall[1:] != padded_recall[:-1])
        ap_area[c] = np.sum((padded_recall[steps + 1] - padded_recall[steps]) * padded_precision[steps + 1])
    return ap_voc07, ap_area


def best_time(function, repeats: int) -> tuple[float, float, object]:
    """Run ``function`` ``repeats`` times; return the best wall and CPU seconds and the last result.

    CPU time (``time.process_time``, all threads of this process) is shown beside
    wall time because on a shared machine wall time mostly measures the other load.
    """
    best_wall, best_cpu, result = float("inf"), float("inf"), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        result = function()
        best_wall = min(best_wall, time.perf_counter() - wall)
        best_cpu = min(best_cpu, time.process_time() - cpu)
    return best_wall, best_cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="number of images (default 5000)")
    parser.add_argument("--detections", type=int, default=100, help="detections per image (default 100)")
    parser.add_argument("--classes", type=int, default=20, help="number of classes (default 20)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per method; the best is shown (default 3)")
    args = parser.parse_args()

    start = time.perf_counter()
    records, predictions = make_data(args.images, args.detections, args.classes)
    n_det = sum(len(p["scores"]) for p in predictions)
    n_gt = sum(len(r.labels) for r in records)
    print(f"data: {args.images} images, {n_det} detections, {n_gt} ground truths, {args.classes} classes "
          f"(generated in {time.perf_counter() - start:.1f} s)", flush=True)
    # Ties in score are counted differently by the two methods (one threshold
    # per distinct score against one point per detection), so the check needs
    # distinct scores.
    all_scores = np.concatenate([p["scores"].numpy() for p in predictions])
    assert len(np.unique(all_scores)) == n_det, "tied scores; change the seed"

    class_names = [f"class{c:02d}" for c in range(args.classes)]
    ours_wall, ours_cpu, ours = best_time(lambda: evaluate_records(records, predictions, class_names), args.repeats)
    classic_wall, classic_cpu, (classic_voc07, classic_area) = best_time(
        lambda: classic_voc_ap(records, predictions, args.classes), max(1, args.repeats // 3)
    )

    np.testing.assert_allclose(ours.ap_voc07, classic_voc07, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ours.ap_area, classic_area, rtol=0, atol=1e-12)
    print(f"APs agree (max difference {np.nanmax(np.abs(ours.ap_area - classic_area)):.1e}); "
          f"mAP VOC07 {ours.map_voc07:.4f}, area {ours.map_area:.4f}")

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} "
          f"at the end; best of {args.repeats} runs for yolonb, {max(1, args.repeats // 3)} for the loop")
    rows = [
        ("classic per-detection loop (per class)", classic_wall, classic_cpu),
        ("yolonb.eval.evaluate_records", ours_wall, ours_cpu),
    ]
    print(f"{'method':<40} {'wall s':>8} {'CPU s':>8} {'speed-up (wall)':>16} {'speed-up (CPU)':>15}")
    for name, wall, cpu in rows:
        print(f"{name:<40} {wall:>8.3f} {cpu:>8.3f} {classic_wall / wall:>15.1f}x {classic_cpu / cpu:>14.1f}x")

if __name__ == "__main__":
    main()
