"""Detector network: ResNet-18 backbone, single/FPN/BiFPN/AugFPN necks and YOLO heads."""

from yolonb.models.detector import Detector, build_detector

__all__ = ["Detector", "build_detector"]
