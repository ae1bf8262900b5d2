"""The ResNet-18 YOLO detector: backbone, neck and one prediction head per level."""

from __future__ import annotations

import torch
from torch import nn

from yolonb.models.backbone import ResNet18Backbone
from yolonb.models.head import DetectionHead, box_channels
from yolonb.models.necks import build_neck

# torchvision's ImageNet statistics, which the ResNet-18 weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Detector(nn.Module):
    """One-stage detector predicting objectness, classes and a box at every cell of each level.

    Args:
        backbone: returns (C3, C4, C5) and has `out_channels` and `strides`.
        neck: returns (features, aux_features) and has `out_channels` and `num_levels`.
        num_classes: C.
        box_mode: "yolo" or "dfl".
        reg_max: top DFL bin index (dfl only).
        activation: activation of the heads' conv blocks.
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, num_classes: int, box_mode: str = "yolo",
                 reg_max: int = 16, activation: str = "leaky") -> None:
        super().__init__()
        self.num_classes = num_classes
        self.box_mode = box_mode
        self.reg_max = reg_max
        self.num_box = box_channels(box_mode, reg_max)
        self.num_outputs = 1 + num_classes + self.num_box

        self.backbone = backbone
        self.neck = neck
        # The last `num_levels` backbone strides, so the single neck predicts at stride 32 only.
        self.strides = tuple(backbone.strides[-neck.num_levels:])
        self.heads = nn.ModuleList(
            DetectionHead(neck.out_channels, num_classes, self.num_box, activation=activation,
                          conv=getattr(neck, "head_conv", True))
            for _ in self.strides
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> dict:
        """Predict every cell of every level.

        Args:
            images: (B, 3, H, W) RGB in [0, 1], as the data transforms produce them; the
                ImageNet normalisation happens here.

        Returns:
            dict with
            - "pred": (B, N, 1 + C + D) float32, levels concatenated finest first, each level
              row-major over (y, x). Channel 0 is the objectness logit and 1..C are the class
              logits. The D box values follow: (tx, ty, tw, th) for "yolo", or 4 x (reg_max + 1)
              bin logits grouped per side l, t, r, b for "dfl". Under autocast the network runs
              in the lower precision, and only this output is cast back to float32 for the loss.
            - "aux": a list with one tensor shaped like "pred" (AugFPN's consistent-supervision
              predictions on the lateral features) in training mode, else [].
            - "strides": tuple of each level's stride in pixels.
            - "shapes": list of each level's (H_l, W_l) in cells.
        """
        x = (images - self.mean) / self.std
        features, aux_features = self.neck(self.backbone(x))

        shapes = [tuple(f.shape[-2:]) for f in features]
        pred = torch.cat([head(f) for head, f in zip(self.heads, features)], dim=1).float()

        # The auxiliary predictions reuse each level's head, so the lateral features are
        # pushed towards the semantics that the same head reads from the fused ones.
        aux = []
        if self.training and aux_features:
            aux.append(torch.cat([head(f) for head, f in zip(self.heads, aux_features)], dim=1).float())

        return {"pred": pred, "aux": aux, "strides": self.strides, "shapes": shapes}


def build_detector(num_classes: int, neck: str = "fpn", upsample: str = "nearest", pretrained: bool | None = None,
                   box_mode: str = "yolo", reg_max: int = 16, neck_channels: int | None = None,
                   bifpn_repeats: int = 2, activation: str = "leaky") -> Detector:
    """Build the ResNet-18 detector with the named neck.

    Args:
        num_classes: number of object classes C (background is not a class).
        neck: "single" (SPP + SAM + CSP on C5, one stride-32 head, modelled on the
            original new-YOLOv1 model), "fpn" (MultiHeadFPN), "bifpn" (MultiHeadBiFPN) or "augfpn" (MultiHeadAugFPN).
        upsample: "nearest" or "bilinear" interpolation in the top-down paths.
        pretrained: True requires torchvision's ImageNet weights, None uses them when cached
            or downloadable and otherwise warns once and trains from scratch, False never
            loads them.
        box_mode: "yolo" (4 box values) or "dfl" (4 x (reg_max + 1) bin logits).
        reg_max: top bin index of the DFL distribution (reg_max + 1 bins per side).
        neck_channels: width of the neck outputs and heads; None picks the neck's default
            (512 for "single", 128 for the others).
        bifpn_repeats: number of stacked BiFPN layers.
        activation: "leaky" (LeakyReLU 0.1) or "silu" in the neck and heads.

    Raises:
        ValueError: an invalid name, mode or size, naming the value and the valid ones.
        RuntimeError: pretrained=True and the weights are unavailable.
    """
    if num_classes < 1:
        raise ValueError(f"invalid num_classes {num_classes}; use 1 or more")
    box_channels(box_mode, reg_max)

    # The neck is checked before the backbone so a bad name fails before any weight loading.
    backbone_channels = ResNet18Backbone.out_channels
    neck_module = build_neck(neck, backbone_channels, neck_channels, upsample, activation, bifpn_repeats)
    backbone = ResNet18Backbone(pretrained)
    return Detector(backbone, neck_module, num_classes, box_mode, reg_max, activation)
