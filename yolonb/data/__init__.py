"""Data layer: the Pascal VOC reader, box-aware transforms and batching.

The synthetic data set lives in ``yolonb.data.synthetic`` and is imported on demand.
"""

from yolonb.data.transforms import (
    AUGMENTATIONS,
    MultiScaleCollate,
    collate_detection,
    eval_transform,
    sanitize_boxes,
    train_transform,
)
from yolonb.data.voc import (
    IMAGE_EXTENSIONS,
    VOC_CLASSES,
    DataError,
    DetectionDataset,
    ImageRecord,
    VOCSplit,
    available_image_sets,
    continuous_to_voc,
    data_fingerprint,
    load_voc,
    load_voc_sets,
    load_voc_splits,
    parse_annotation,
    read_image,
    read_image_set,
    resolve_image_set,
    voc_to_continuous,
)

__all__ = [
    "AUGMENTATIONS",
    "IMAGE_EXTENSIONS",
    "VOC_CLASSES",
    "DataError",
    "DetectionDataset",
    "ImageRecord",
    "MultiScaleCollate",
    "VOCSplit",
    "available_image_sets",
    "collate_detection",
    "continuous_to_voc",
    "data_fingerprint",
    "eval_transform",
    "load_voc",
    "load_voc_sets",
    "load_voc_splits",
    "parse_annotation",
    "read_image",
    "read_image_set",
    "resolve_image_set",
    "sanitize_boxes",
    "train_transform",
    "voc_to_continuous",
]
