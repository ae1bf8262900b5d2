"""Pascal VOC evaluation: per-class AP (VOC2007 11-point and VOC2010+ area) and mAP."""

from yolonb.eval.ap import (
    METRICS,
    Comp4Detections,
    DetectionFileError,
    EvalResult,
    area_ap,
    comp4_path,
    evaluate_detections,
    evaluate_records,
    read_comp4_detections,
    voc07_ap,
    write_comp4_detections,
)

__all__ = [
    "METRICS",
    "Comp4Detections",
    "DetectionFileError",
    "EvalResult",
    "area_ap",
    "comp4_path",
    "evaluate_detections",
    "evaluate_records",
    "read_comp4_detections",
    "voc07_ap",
    "write_comp4_detections",
]
