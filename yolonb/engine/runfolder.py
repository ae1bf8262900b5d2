"""The files of a run folder, each written atomically: a temporary file, then os.replace."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from yolonb.fileio import atomic_write, write_text  # noqa: F401 - write_text is part of this module's interface

METRICS_FILE = "metrics.json"
HISTORY_FILE = "history.csv"
PR_CURVES_FILE = "pr_curves.json"
DETECTIONS_FILE = "detections_sample.json"
CHECKPOINT_FILE = Path("checkpoints") / "last.pt"
MODEL_FILE = "model.pt"

# Columns of history.csv. lr is the base learning rate of the epoch's first step (the
# backbone's is lr * backbone_lr_factor), and the losses are means over the epoch's steps.
HISTORY_COLUMNS = ("epoch", "lr", "loss_obj", "loss_cls", "loss_box", "loss_total", "map_voc07", "epoch_time_s")

# Precision and recall curves are thinned to this many points per class, enough to plot.
MAX_CURVE_POINTS = 200

# Images of the test split whose detections are kept for figures.
SAMPLE_IMAGES = 8


def write_json(path: Path, data: Any) -> None:
    """Write `data` as indented JSON atomically; NaN or infinity raise ValueError (write None instead)."""
    write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def save_torch(path: Path, data: Any) -> None:
    """Save `data` with torch.save atomically."""
    atomic_write(path, lambda file: torch.save(data, file))


def optional_float(value: float) -> float | None:
    """Return `value` as a float, or None for NaN (JSON has no NaN)."""
    value = float(value)
    return None if math.isnan(value) else value


def write_history(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write the per-epoch history as CSV; a missing map_voc07 (not evaluated that epoch) is an empty cell."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: _csv_cell(row.get(column)) for column in HISTORY_COLUMNS})
    write_text(path, buffer.getvalue())


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def thin_curve(values: np.ndarray, max_points: int = MAX_CURVE_POINTS) -> list[float]:
    """Return at most `max_points` evenly spaced entries of a curve, always keeping the first and last."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) > max_points:
        index = np.unique(np.linspace(0, len(values) - 1, max_points).round().astype(np.int64))
        values = values[index]
    return [round(float(value), 6) for value in values]


def pr_curves(classes: Sequence[str], precision: Sequence[np.ndarray], recall: Sequence[np.ndarray]) -> dict[str, Any]:
    """Return class -> {precision, recall}, each thinned to at most MAX_CURVE_POINTS points."""
    return {
        name: {"precision": thin_curve(precision[index]), "recall": thin_curve(recall[index])}
        for index, name in enumerate(classes)
    }


def detections_sample(records: Sequence, predictions: Sequence[dict[str, np.ndarray]]) -> list[dict[str, Any]]:
    """Return the detections and ground truth of the first SAMPLE_IMAGES test images, in original pixels."""
    sample = []
    for record, prediction in list(zip(records, predictions))[:SAMPLE_IMAGES]:
        sample.append(
            {
                "image_id": record.image_id,
                "image_path": str(record.image_path),
                "width": int(record.width),
                "height": int(record.height),
                "boxes": np.round(prediction["boxes"].astype(np.float64), 2).tolist(),
                "scores": np.round(prediction["scores"].astype(np.float64), 5).tolist(),
                "labels": prediction["labels"].astype(np.int64).tolist(),
                "gt_boxes": np.round(np.asarray(record.boxes, dtype=np.float64), 2).tolist(),
                "gt_labels": np.asarray(record.labels, dtype=np.int64).tolist(),
            }
        )
    return sample
