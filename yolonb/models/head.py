"""Prediction head: objectness, class logits and box values for every cell of one feature level."""

from __future__ import annotations

import math

import torch
from torch import nn

from yolonb.models.necks import ConvBNAct

BOX_MODES = ("yolo", "dfl")


def box_channels(box_mode: str, reg_max: int) -> int:
    """Return D, the number of box values per cell.

    "yolo" predicts (tx, ty, tw, th). "dfl" predicts reg_max + 1 bin logits for each of
    the four sides l, t, r, b, so reg_max is the top bin index, not the bin count.
    """
    if box_mode == "yolo":
        return 4
    if box_mode == "dfl":
        if reg_max < 1:
            raise ValueError(f"invalid reg_max {reg_max}; DFL needs reg_max >= 1 (reg_max + 1 bins per side)")
        return 4 * (reg_max + 1)
    raise ValueError(f"invalid box_mode {box_mode!r}; valid modes: {', '.join(BOX_MODES)}")


class DetectionHead(nn.Module):
    """A 3 x 3 conv block (optional) then a 1 x 1 conv predicting 1 + C + D values per cell.

    Args:
        in_channels: channels of the level's feature map.
        num_classes: C.
        num_box: D (see `box_channels`).
        prior_probability: initial objectness probability, and the initial class
            probability of the sigmoid class losses (under a softmax the equal class
            biases cancel, so each class starts at 1 / C). The matching bias
            log(p / (1 - p)) stops the many negative cells from dominating the first steps
            of training from scratch (the prior initialisation of RetinaNet, Lin et al.,
            ICCV 2017).
        activation: "leaky" or "silu".
        conv: put the 3 x 3 conv block before the prediction. The single neck ends in its
            own conv set and, like new-YOLOv1, predicts with the 1 x 1 conv alone.
    """

    def __init__(self, in_channels: int, num_classes: int, num_box: int, prior_probability: float = 0.01,
                 activation: str = "leaky", conv: bool = True) -> None:
        super().__init__()
        self.num_outputs = 1 + num_classes + num_box
        self.conv = ConvBNAct(in_channels, in_channels, 3, activation=activation) if conv else nn.Identity()
        self.pred = nn.Conv2d(in_channels, self.num_outputs, 1)

        prior_bias = math.log(prior_probability / (1.0 - prior_probability))
        nn.init.normal_(self.pred.weight, std=0.01)
        nn.init.zeros_(self.pred.bias)
        with torch.no_grad():
            self.pred.bias[: 1 + num_classes] = prior_bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict every cell of one level.

        Args:
            x: (B, in_channels, H, W).

        Returns:
            (B, H * W, 1 + C + D), cells row-major over (y, x).
        """
        out = self.pred(self.conv(x))
        # reshape, not view: under channels_last the permuted tensor is already contiguous,
        # otherwise reshape copies.
        return out.permute(0, 2, 3, 1).reshape(out.shape[0], -1, self.num_outputs)
