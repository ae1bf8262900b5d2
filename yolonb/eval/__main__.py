"""Score detections in the VOC results format against a VOC split.

Usage::

    python -m yolonb.eval --annotations PATH --split NAME --detections DIR [--metric voc07|area] [--json]

DIR contains one ``comp4_det_<split>_<class>.txt`` file per class, where ``<split>``
is the last part of NAME ("test" for "2007/test"). Each line is
``image_id score xmin ymin xmax ymax`` in VOC 1-based pixel coordinates.
Exit status: 0 on success, 1 on invalid data or detection files, 2 on invalid
arguments.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from yolonb.eval.ap import METRICS, DetectionFileError, EvalResult, evaluate_detections, read_comp4_detections

logger = logging.getLogger("yolonb.eval")

METRIC_NAMES = {"voc07": "VOC2007 11-point", "area": "VOC2010+ area"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m yolonb.eval",
        description="Compute per-class VOC AP and mAP at IoU 0.5 for detections in the VOC results format.",
    )
    parser.add_argument("--annotations", required=True, type=Path, metavar="PATH",
                        help="a VOCdevkit folder, one VOC year folder, or the folder containing VOCdevkit")
    parser.add_argument("--split", required=True, metavar="NAME",
                        help="image set to evaluate on, 'SPLIT' or 'YEAR/SPLIT' (e.g. 'test' or '2007/test')")
    parser.add_argument("--detections", required=True, type=Path, metavar="DIR",
                        help="folder of comp4_det_<split>_<class>.txt files, one line per detection: "
                             "image_id score xmin ymin xmax ymax (VOC 1-based pixels)")
    parser.add_argument("--metric", choices=METRICS, default="voc07",
                        help="AP shown in the table and as mAP: 'voc07' (11-point, default) or 'area' (VOC2010+)")
    parser.add_argument("--classes", default=None, metavar="NAMES",
                        help="comma-separated class list in label order (default: the 20 VOC classes for VOC "
                             "data, else the sorted names in the annotations and detection file names)")
    parser.add_argument("--json", action="store_true", help="print the result as JSON instead of a table")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")

    # Imported here so that the evaluator itself does not need the data layer.
    from yolonb.data import DataError, VOC_CLASSES, load_voc

    file_split = args.split.rsplit("/", 1)[-1]
    try:
        given = None if args.classes is None else [name.strip() for name in args.classes.split(",")]
        split = load_voc(args.annotations, [args.split], classes=given)
        classes = _class_list(split.classes, given, VOC_CLASSES, args.detections, file_split)
        image_ids = [record.image_id for record in split.records]
        detections = read_comp4_detections(args.detections, file_split, classes, image_ids=image_ids)
    except (DataError, DetectionFileError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    result = _evaluate(split.records, split.classes, detections, classes)
    if args.json:
        payload = result.to_dict()
        payload["metric"] = args.metric
        payload["map"] = payload["map_voc07" if args.metric == "voc07" else "map_area"]
        print(json.dumps(payload, indent=2))
    else:
        print(format_table(result, args.metric))
    return 0


def format_table(result: EvalResult, metric: str) -> str:
    """Format the per-class AP of ``metric``, ground-truth and detection counts, and the mAP."""
    ap = result.ap(metric)
    width = max([len("class")] + [len(name) for name in result.classes])
    header = f"{'class':<{width}}  {'AP':>15}  {'n_gt':>6}  {'detections':>10}"
    lines = [f"AP at IoU {result.iou_threshold:g}, {METRIC_NAMES[metric]} metric", header, "-" * len(header)]
    for name, value, n_gt, n_det in zip(result.classes, ap, result.n_gt, result.n_det):
        shown = "no ground truth" if math.isnan(value) else f"{value:.4f}"
        lines.append(f"{name:<{width}}  {shown:>15}  {int(n_gt):>6}  {int(n_det):>10}")

    lines.append("-" * len(header))
    counted = int(np.sum(~np.isnan(ap)))
    mean = result.map(metric)
    shown = "undefined (no class has ground truth)" if math.isnan(mean) else f"{mean:.4f}"
    lines.append(f"mAP over {counted} of {len(result.classes)} classes with ground truth: {shown}")
    return "\n".join(lines)


def _class_list(loaded: Sequence[str], given, voc_classes: Sequence[str], directory: Path, file_split: str) -> tuple[str, ...]:
    """Return the evaluation class list, adding classes that only the detection files name.

    A class with a detection file but no object in this split gets AP "no ground
    truth" instead of an error. When the class list is fixed (given, or the 20 VOC
    classes), such a file is an error, raised by the reader.
    """
    loaded = tuple(loaded)
    if given is not None or loaded == tuple(voc_classes) or not directory.is_dir():
        return loaded
    prefix = f"comp4_det_{file_split}_"
    named = {path.name[len(prefix):-len(".txt")] for path in directory.glob(f"{prefix}*.txt")}
    extra = named - set(loaded)
    if not extra:
        return loaded
    logger.info("classes with detections but no object in this split: %s", ", ".join(sorted(extra)))
    return tuple(sorted(set(loaded) | extra))


def _evaluate(records, loaded_classes: Sequence[str], detections, classes: Sequence[str]) -> EvalResult:
    # Index images by position so ids repeated in an image-set file stay one image.
    position = {record.image_id: i for i, record in enumerate(records)}
    det_image = np.array([position[image_id] for image_id in detections.image_ids], dtype=np.int64)

    gt_image = np.repeat(np.arange(len(records)), [len(record.labels) for record in records])
    gt_label = np.concatenate([np.asarray(record.labels, dtype=np.int64) for record in records])
    gt_boxes = np.concatenate([np.asarray(record.boxes).reshape(-1, 4) for record in records])
    gt_difficult = np.concatenate([np.asarray(record.difficult, dtype=bool) for record in records])

    # The loader's labels index its own class list, which _class_list may have extended.
    remap = np.array([list(classes).index(name) for name in loaded_classes], dtype=np.int64)
    gt_label = remap[gt_label] if len(remap) else gt_label
    return evaluate_detections(
        det_image, detections.labels, detections.scores, detections.boxes,
        gt_image, gt_label, gt_boxes, gt_difficult, classes,
    )

if __name__ == "__main__":
    sys.exit(main())
