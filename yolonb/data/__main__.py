"""Command line of the data layer.

    python -m yolonb.data summary PATH [--split NAME ...] [--classes a,b] [--json]

prints images and objects per class and per split, difficult counts and box-size
percentiles in pixels. Bad data gives one error line on stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import numpy as np

from yolonb.data.voc import DataError, VOCSplit, available_image_sets, load_voc_sets

PERCENTILES: tuple[int, ...] = (0, 5, 25, 50, 75, 95, 100)


def summarize_split(split: VOCSplit) -> dict:
    """Count images, objects and difficult objects per class, and box-size percentiles.

    Returns:
        A JSON-ready dict: "images", "negative_images" (no boxes), "objects", "difficult",
        "clipped_boxes", "dropped_boxes", "per_class" (class -> {images, objects,
        difficult}), "box_size" ({width, height, area} -> {"p0": ..., "p100": ...} in pixels,
        pixels squared for area, empty without boxes) and "image_size" likewise for images.
    """
    n_classes = len(split.classes)
    objects = np.zeros(n_classes, dtype=np.int64)
    difficult = np.zeros(n_classes, dtype=np.int64)
    images = np.zeros(n_classes, dtype=np.int64)
    for record in split.records:
        objects += np.bincount(record.labels, minlength=n_classes)
        difficult += np.bincount(record.labels[record.difficult], minlength=n_classes)
        images[np.unique(record.labels)] += 1

    boxes = np.concatenate([r.boxes for r in split.records]) if split.records else np.zeros((0, 4))
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    image_widths = np.array([r.width for r in split.records], dtype=np.float64)
    image_heights = np.array([r.height for r in split.records], dtype=np.float64)

    return {
        "image_sets": list(split.image_sets),
        "images": len(split.records),
        "negative_images": sum(1 for r in split.records if len(r.labels) == 0),
        "objects": int(objects.sum()),
        "difficult": int(difficult.sum()),
        "clipped_boxes": split.n_clipped_boxes,
        "dropped_boxes": split.n_dropped_boxes,
        "per_class": {
            name: {"images": int(images[i]), "objects": int(objects[i]), "difficult": int(difficult[i])}
            for i, name in enumerate(split.classes)
        },
        "box_size": {
            "width": _percentiles(widths),
            "height": _percentiles(heights),
            "area": _percentiles(widths * heights),
        },
        "image_size": {"width": _percentiles(image_widths), "height": _percentiles(image_heights)},
    }


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {}
    return {f"p{q}": round(float(np.percentile(values, q)), 2) for q in PERCENTILES}


def summarize(root, splits: Sequence[str] | None = None, classes: str | Sequence[str] | None = None) -> dict:
    """Load each image set of ``root`` with one class list and summarize it.

    Args:
        root: a VOCdevkit folder, one VOC year folder, or the folder containing VOCdevkit.
        splits: image-set names; None means every image set present (trainval, train, val, test, ...).
        classes: the class list, or None to pick it as ``load_voc`` does.

    Returns:
        {"root": str, "classes": [...], "fingerprint": per-split sha256, "splits": {name: summarize_split(...)}}.

    Raises:
        DataError: on bad data, or when no image set is found.
    """
    names = list(splits) if splits else available_image_sets(root)
    if not names:
        raise DataError(
            f"{root}: no image-set files found in ImageSets/Main. Fix: pass --split NAME, or add "
            f"ImageSets/Main/<name>.txt files listing image ids."
        )
    loaded = load_voc_sets(root, [[name] for name in names], classes)
    return {
        "root": str(root),
        "classes": list(loaded[0].classes),
        "is_voc": loaded[0].is_voc,
        "fingerprint": {name: split.fingerprint[:16] for name, split in zip(names, loaded)},
        "splits": {name: summarize_split(split) for name, split in zip(names, loaded)},
    }


def format_summary(summary: dict) -> str:
    """Render ``summarize``'s output as plain-text tables."""
    names = list(summary["splits"])
    lines = [f"data: {summary['root']}", f"classes: {len(summary['classes'])}" + (" (Pascal VOC)" if summary["is_voc"] else "")]

    header = f"{'':16}" + "".join(f"{name:>22}" for name in names)
    lines += ["", "split totals (images / objects / difficult)", header]
    for key in ("images", "negative_images", "objects", "difficult", "clipped_boxes", "dropped_boxes"):
        lines.append(f"{key:16}" + "".join(f"{summary['splits'][n][key]:>22}" for n in names))

    lines += ["", "per class: images / objects / difficult", header]
    for name in summary["classes"]:
        cells = []
        for split in names:
            counts = summary["splits"][split]["per_class"][name]
            cells.append(f"{counts['images']} / {counts['objects']} / {counts['difficult']}")
        lines.append(f"{name[:16]:16}" + "".join(f"{c:>22}" for c in cells))

    quantiles = [f"p{q}" for q in PERCENTILES]
    for split in names:
        lines += ["", f"box size in pixels, {split} (percentiles)", f"{'':16}" + "".join(f"{q:>10}" for q in quantiles)]
        for key, stats in summary["splits"][split]["box_size"].items():
            if stats:
                lines.append(f"{key:16}" + "".join(f"{stats[q]:>10g}" for q in quantiles))
        for key, stats in summary["splits"][split]["image_size"].items():
            if stats:
                lines.append(f"{'image ' + key:16}" + "".join(f"{stats[q]:>10g}" for q in quantiles))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 bad data, 2 usage error)."""
    parser = argparse.ArgumentParser(prog="python -m yolonb.data", description="Inspect a VOC-layout data set.")
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summary", help="print images, objects and box sizes per class and split")
    summary.add_argument("path", help="a VOCdevkit folder or one VOC year folder")
    summary.add_argument(
        "--split",
        action="append",
        metavar="NAME",
        help="image set to summarize, SPLIT or YEAR/SPLIT; repeat for several (default: all present)",
    )
    summary.add_argument("--classes", help="comma-separated class list (default: VOC classes or the names found)")
    summary.add_argument("--json", action="store_true", help="print JSON instead of tables")
    args = parser.parse_args(argv)

    try:
        result = summarize(args.path, args.split, args.classes)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    print(json.dumps(result, indent=2, ensure_ascii=False) if args.json else format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
