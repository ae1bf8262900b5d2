"""Losses of the study: the focal family as pure functions, and the detection loss.

The detection loss (``LossSpec``, ``detection_loss``) lives in ``yolonb.losses.detection``
and is imported on first access, so importing the pure functions does not depend on it.
"""

from __future__ import annotations

import importlib
from typing import Any

from yolonb.losses.focal import (
    DFL_CLAMP_EPS,
    distribution_focal_loss,
    focal_loss,
    modified_focal_loss,
    poly_focal_loss,
    quality_focal_loss,
    softmax_cross_entropy,
    varifocal_loss,
)

__all__ = [
    "DFL_CLAMP_EPS",
    "distribution_focal_loss",
    "focal_loss",
    "modified_focal_loss",
    "poly_focal_loss",
    "quality_focal_loss",
    "softmax_cross_entropy",
    "varifocal_loss",
]

_DETECTION_NAMES = ("LossSpec", "detection_loss")


def __getattr__(name: str) -> Any:
    if name in _DETECTION_NAMES:
        return getattr(importlib.import_module("yolonb.losses.detection"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
