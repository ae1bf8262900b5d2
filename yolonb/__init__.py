"""yolonb: a reproducible study of focal-style losses for a ResNet-18 YOLO detector."""

__version__ = "0.1.0"
