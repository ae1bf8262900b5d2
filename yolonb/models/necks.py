"""Necks between the ResNet-18 feature maps and the prediction heads: single-level, FPN, BiFPN and AugFPN.

Every neck takes (C3, C4, C5) and returns `(features, aux_features)`: one feature map
per prediction level, finest first, each with `out_channels` channels, and the
feature maps that only the training-time auxiliary heads read (empty except for AugFPN).

The building blocks (SPP, SAM, CSP block, BiFPN layer, residual feature augmentation)
are written by hand because torchvision ships only a plain top-down FPN
(`torchvision.ops.FeaturePyramidNetwork`) without any of them. The "fpn" neck is
written here too, so that every neck shares the same conv block, activation and
upsampling option.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

UPSAMPLE_MODES = ("nearest", "bilinear")
ACTIVATIONS = ("leaky", "silu")


def make_activation(name: str) -> nn.Module:
    """Build the activation named `name`: "leaky" (LeakyReLU, slope 0.1, as in YOLO) or "silu"."""
    if name == "leaky":
        return nn.LeakyReLU(0.1, inplace=True)
    if name == "silu":
        return nn.SiLU(inplace=True)
    raise ValueError(f"invalid activation {name!r}; valid names: {', '.join(ACTIVATIONS)}")


def upsample_to(x: torch.Tensor, reference: torch.Tensor, mode: str) -> torch.Tensor:
    """Resize `x` (B, C, h, w) to the spatial size of `reference` (B, C', H, W).

    The target is a size, not a factor of 2, because odd maps (13 x 13 at 416 pixels)
    do not double to the next level's size exactly when the input is not a multiple of 32.
    """
    size = reference.shape[-2:]
    if mode == "bilinear":
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return F.interpolate(x, size=size, mode="nearest")


def check_upsample(mode: str) -> str:
    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"invalid upsample mode {mode!r}; valid modes: {', '.join(UPSAMPLE_MODES)}")
    return mode


class ConvBNAct(nn.Sequential):
    """Conv2d without bias, BatchNorm and an activation; padding keeps the size at stride 1."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 1, stride: int = 1,
                 groups: int = 1, activation: str = "leaky") -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out_channels),
            make_activation(activation),
        )


class SeparableConv(nn.Sequential):
    """Depthwise 3 x 3 conv followed by a pointwise 1 x 1 conv, BatchNorm and an activation (as in EfficientDet)."""

    def __init__(self, channels: int, activation: str = "leaky") -> None:
        super().__init__(
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels, bias=False),
            nn.Conv2d(channels, channels, 1, bias=False),
            nn.BatchNorm2d(channels),
            make_activation(activation),
        )


class SPP(nn.Module):
    """Spatial pyramid pooling as in YOLOv3-SPP: the input concatenated with stride-1 max-pools.

    Output channels are `in_channels * (1 + len(kernel_sizes))`; the spatial size is unchanged.
    """

    def __init__(self, kernel_sizes: Sequence[int] = (5, 9, 13)) -> None:
        super().__init__()
        self.pools = nn.ModuleList(nn.MaxPool2d(k, stride=1, padding=k // 2) for k in kernel_sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x] + [pool(x) for pool in self.pools], dim=1)


class SAM(nn.Module):
    """Spatial attention module in the point-wise form of YOLOv4 (Bochkovskiy et al., 2020): x * sigmoid(conv1x1(x)).

    Unlike CBAM's spatial attention, which pools over channels first, the gate has one
    value per channel and position.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class Bottleneck(nn.Sequential):
    """1 x 1 then 3 x 3 conv at the same width, without a shortcut (the CSP conv set of YOLOv5's BottleneckCSP)."""

    def __init__(self, channels: int, activation: str) -> None:
        super().__init__(
            ConvBNAct(channels, channels, 1, activation=activation),
            ConvBNAct(channels, channels, 3, activation=activation),
        )


class CSPBlock(nn.Module):
    """Cross-stage partial block (Wang et al., CSPNet, 2020): half the channels pass through
    `depth` bottlenecks, the other half skip them, and a 1 x 1 conv merges both halves."""

    def __init__(self, in_channels: int, out_channels: int, depth: int = 1, activation: str = "leaky") -> None:
        super().__init__()
        hidden = out_channels // 2
        self.main = nn.Sequential(
            ConvBNAct(in_channels, hidden, 1, activation=activation),
            *[Bottleneck(hidden, activation) for _ in range(depth)],
        )
        self.skip = ConvBNAct(in_channels, hidden, 1, activation=activation)
        self.merge = ConvBNAct(2 * hidden, out_channels, 1, activation=activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.merge(torch.cat([self.main(x), self.skip(x)], dim=1))


class SingleNeck(nn.Module):
    """The single-head neck, modelled on new-YOLOv1: 1 x 1 reduction, SPP, a CSP block, SAM and a CSP conv set.

    It differs from the new-YOLOv1 code in one way: the CSP block has the layout of
    YOLOv5's C3 (the original copies YOLOv5's BottleneckCSP). As in the original, the
    head predicts with one 1 x 1 conv (`head_conv = False`): the 3 x 3 convs sit in
    the CSP conv set before it.

    It feeds one stride-32 head. Input C5 (B, 512, H/32, W/32); output one map
    (B, out_channels, H/32, W/32).
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 512, activation: str = "leaky",
                 upsample: str = "nearest") -> None:
        super().__init__()
        # `upsample` is accepted for a uniform signature; one level needs no resizing.
        check_upsample(upsample)
        c5 = in_channels[-1]
        reduced = c5 // 2
        self.out_channels = out_channels
        self.num_levels = 1
        self.head_conv = False
        self.reduce = ConvBNAct(c5, reduced, 1, activation=activation)
        self.spp = SPP((5, 9, 13))
        self.fuse = CSPBlock(reduced * 4, out_channels, depth=1, activation=activation)
        self.sam = SAM(out_channels)
        self.conv_set = CSPBlock(out_channels, out_channels, depth=3, activation=activation)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = self.spp(self.reduce(features[-1]))
        x = self.sam(self.fuse(x))
        x = self.conv_set(x)
        return [x], []


class FPNNeck(nn.Module):
    """Top-down FPN (Lin et al., CVPR 2017) over C3..C5 with a 3 x 3 smoothing conv and a SAM per level.

    This is the post's MultiHeadFPN: lateral 1 x 1 convs, the coarser level upsampled and
    added, then a head per level. Outputs at strides 8, 16 and 32, `out_channels` each.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128, activation: str = "leaky",
                 upsample: str = "nearest") -> None:
        super().__init__()
        self.upsample = check_upsample(upsample)
        self.out_channels = out_channels
        self.num_levels = len(in_channels)
        self.laterals = nn.ModuleList(ConvBNAct(c, out_channels, 1, activation=activation) for c in in_channels)
        self.smooth = nn.ModuleList(ConvBNAct(out_channels, out_channels, 3, activation=activation)
                                    for _ in in_channels)
        self.sams = nn.ModuleList(SAM(out_channels) for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        laterals = [conv(x) for conv, x in zip(self.laterals, features)]
        return top_down(laterals, self.smooth, self.sams, self.upsample), []


def top_down(laterals: list[torch.Tensor], smooth: nn.ModuleList, post: nn.ModuleList | None,
             mode: str) -> list[torch.Tensor]:
    """Add each coarser map, upsampled, to the next finer lateral map, then smooth every level.

    Args:
        laterals: per level (B, C, H_l, W_l), finest first.
        smooth: one module per level applied after the sum.
        post: optional module per level applied after `smooth` (SAM in the FPN neck).
        mode: upsampling mode.

    Returns:
        The fused maps, finest first, same shapes as `laterals`.
    """
    merged = [laterals[-1]]
    for lateral in reversed(laterals[:-1]):
        merged.append(lateral + upsample_to(merged[-1], lateral, mode))
    merged.reverse()

    outputs = []
    for level, x in enumerate(merged):
        x = smooth[level](x)
        if post is not None:
            x = post[level](x)
        outputs.append(x)
    return outputs


class WeightedFusion(nn.Module):
    """Fast normalised fusion from EfficientDet (Tan et al., CVPR 2020): sum_i w_i x_i / (eps + sum_j w_j), w = ReLU(w)."""

    def __init__(self, num_inputs: int, eps: float = 1e-4) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.ones(num_inputs))
        self.eps = eps

    def forward(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        weights = F.relu(self.weights)
        weights = weights / (weights.sum() + self.eps)

        fused = inputs[0] * weights[0]
        for weight, x in zip(weights[1:], inputs[1:]):
            fused = fused + x * weight
        return fused


class BiFPNLayer(nn.Module):
    """One BiFPN layer over three levels: a top-down then a bottom-up path.

    Each output node fuses its inputs with `WeightedFusion` and applies a depthwise-separable
    conv. The middle level's bottom-up node also takes its own input (the skip edge that
    EfficientDet adds between nodes of the same level). Downsampling is a 3 x 3 max-pool
    with stride 2 and padding 1, whose ceil(H / 2) output matches ResNet's stride-2 sizes.
    """

    def __init__(self, channels: int, activation: str, upsample: str) -> None:
        super().__init__()
        self.upsample = upsample
        self.fuse_p4_td = WeightedFusion(2)
        self.fuse_p3_out = WeightedFusion(2)
        self.fuse_p4_out = WeightedFusion(3)
        self.fuse_p5_out = WeightedFusion(2)
        self.conv_p4_td = SeparableConv(channels, activation)
        self.conv_p3_out = SeparableConv(channels, activation)
        self.conv_p4_out = SeparableConv(channels, activation)
        self.conv_p5_out = SeparableConv(channels, activation)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        p3, p4, p5 = features

        p4_td = self.conv_p4_td(self.fuse_p4_td([p4, upsample_to(p5, p4, self.upsample)]))
        p3_out = self.conv_p3_out(self.fuse_p3_out([p3, upsample_to(p4_td, p3, self.upsample)]))

        p4_out = self.conv_p4_out(self.fuse_p4_out([p4, p4_td, F.max_pool2d(p3_out, 3, 2, 1)]))
        p5_out = self.conv_p5_out(self.fuse_p5_out([p5, F.max_pool2d(p4_out, 3, 2, 1)]))
        return [p3_out, p4_out, p5_out]


class BiFPNNeck(nn.Module):
    """BiFPN from EfficientDet (Tan et al., CVPR 2020) over C3..C5, repeated `repeats` times.

    Kept from the paper: lateral 1 x 1 projections, top-down and bottom-up paths, fast
    normalised weighted fusion and depthwise-separable convs. Different: three levels
    (P3..P5) instead of five, because the heads predict at strides 8, 16 and 32 only,
    and no compound scaling of width and depth.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128, activation: str = "leaky",
                 upsample: str = "nearest", repeats: int = 2) -> None:
        super().__init__()
        if len(in_channels) != 3:
            raise ValueError(f"BiFPN needs three input levels (C3, C4, C5), got {len(in_channels)}")
        if repeats < 1:
            raise ValueError(f"invalid bifpn_repeats {repeats}; use 1 or more")
        check_upsample(upsample)
        self.out_channels = out_channels
        self.num_levels = 3
        self.laterals = nn.ModuleList(ConvBNAct(c, out_channels, 1, activation=activation) for c in in_channels)
        self.layers = nn.ModuleList(BiFPNLayer(out_channels, activation, upsample) for _ in range(repeats))

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        x = [conv(f) for conv, f in zip(self.laterals, features)]
        for layer in self.layers:
            x = layer(x)
        return x, []


class ResidualFeatureAugmentation(nn.Module):
    """AugFPN's residual feature augmentation: context from ratio-invariant pooling of C5, fused adaptively.

    C5 (B, in_channels, h, w) is average-pooled to max(1, round(r * h)) x max(1, round(r * w))
    for each ratio r, projected by a 1 x 1 conv, and upsampled back to h x w. Adaptive
    spatial fusion then predicts one weight map per context map (1 x 1 conv, 3 x 3 conv,
    sigmoid) and sums the maps weighted by them. Output (B, out_channels, h, w).
    """

    def __init__(self, in_channels: int, out_channels: int, ratios: Sequence[float] = (0.1, 0.2, 0.3),
                 activation: str = "leaky", upsample: str = "bilinear") -> None:
        super().__init__()
        self.ratios = tuple(ratios)
        self.upsample = upsample
        # Plain convs without BatchNorm: a pooled map can be 1 x 1, where batch statistics
        # over a small batch are noise (and a batch of one fails in training mode).
        self.projections = nn.ModuleList(nn.Conv2d(in_channels, out_channels, 1) for _ in self.ratios)
        self.spatial_weights = nn.Sequential(
            ConvBNAct(out_channels * len(self.ratios), out_channels, 1, activation=activation),
            nn.Conv2d(out_channels, len(self.ratios), 3, padding=1),
            nn.Sigmoid(),
        )

    def forward(self, c5: torch.Tensor) -> torch.Tensor:
        height, width = c5.shape[-2:]
        contexts = []
        for ratio, projection in zip(self.ratios, self.projections):
            pooled_size = (max(1, round(ratio * height)), max(1, round(ratio * width)))
            pooled = F.adaptive_avg_pool2d(c5, pooled_size)
            contexts.append(upsample_to(projection(pooled), c5, self.upsample))

        weights = self.spatial_weights(torch.cat(contexts, dim=1))

        fused = contexts[0] * weights[:, 0:1]
        for index in range(1, len(contexts)):
            fused = fused + contexts[index] * weights[:, index:index + 1]
        return fused


class AugFPNNeck(nn.Module):
    """The parts of AugFPN (Guo et al., CVPR 2020) that apply to a one-stage detector, on a top-down FPN.

    In:
    - Residual feature augmentation: context from ratio-invariant adaptive pooling of C5,
      combined by adaptive spatial fusion (`ResidualFeatureAugmentation`) and added to
      the top lateral feature, so the top level no longer loses information in the
      lateral 1 x 1 projection.
    - Consistent supervision: the lateral features, taken before the top-down fusion, are
      returned as `aux_features` in training mode only. The detector runs heads on them
      and returns their predictions in "aux", so the loss can supervise them with the
      same targets as the main predictions. Inference pays nothing for them.

    Out:
    - Soft RoI selection, because it pools RoI features from every level for the second
      stage of a two-stage detector, and this detector has no RoIs and no second stage.

    Other differences: three levels (P3..P5) instead of P2..P6, and the weighting of the
    auxiliary loss is left to the loss function.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int = 128, activation: str = "leaky",
                 upsample: str = "bilinear", ratios: Sequence[float] = (0.1, 0.2, 0.3)) -> None:
        super().__init__()
        self.upsample = check_upsample(upsample)
        self.out_channels = out_channels
        self.num_levels = len(in_channels)
        self.laterals = nn.ModuleList(ConvBNAct(c, out_channels, 1, activation=activation) for c in in_channels)
        self.augmentation = ResidualFeatureAugmentation(in_channels[-1], out_channels, ratios, activation, upsample)
        self.smooth = nn.ModuleList(ConvBNAct(out_channels, out_channels, 3, activation=activation)
                                    for _ in in_channels)

    def forward(self, features: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        laterals = [conv(x) for conv, x in zip(self.laterals, features)]
        top = laterals[-1] + self.augmentation(features[-1])
        outputs = top_down(laterals[:-1] + [top], self.smooth, None, self.upsample)

        aux_features = laterals if self.training else []
        return outputs, aux_features


NECKS = {
    "single": SingleNeck,
    "fpn": FPNNeck,
    "bifpn": BiFPNNeck,
    "augfpn": AugFPNNeck,
}

# The single neck keeps the original model's 512 channels because it works at stride 32
# only. The multi-level necks pay for 52 x 52 maps at 416 pixels, so 128 channels give
# every neck about the same cost: 14.0 to 14.9 forward GFLOPs per 416-pixel image,
# most of it in ResNet-18 (measured by benchmarks/bench_models.py).
DEFAULT_NECK_CHANNELS = {"single": 512, "fpn": 128, "bifpn": 128, "augfpn": 128}


def build_neck(name: str, in_channels: Sequence[int], out_channels: int | None = None, upsample: str = "nearest",
               activation: str = "leaky", bifpn_repeats: int = 2) -> nn.Module:
    """Build the neck named `name` ("single", "fpn", "bifpn" or "augfpn").

    Args:
        name: neck name.
        in_channels: channels of C3, C4, C5.
        out_channels: width of every output level; None takes DEFAULT_NECK_CHANNELS[name].
        upsample: "nearest" or "bilinear".
        activation: "leaky" or "silu".
        bifpn_repeats: number of BiFPN layers (bifpn only).

    Raises:
        ValueError: an unknown name, upsampling mode or activation.
    """
    if name not in NECKS:
        raise ValueError(f"invalid neck {name!r}; valid names: {', '.join(NECKS)}")
    check_upsample(upsample)
    make_activation(activation)
    if out_channels is None:
        out_channels = DEFAULT_NECK_CHANNELS[name]

    if name == "bifpn":
        return BiFPNNeck(in_channels, out_channels, activation, upsample, repeats=bifpn_repeats)
    return NECKS[name](in_channels, out_channels, activation, upsample)
