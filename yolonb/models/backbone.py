"""ResNet-18 backbone returning the C3, C4 and C5 feature maps, with ImageNet weights when available."""

from __future__ import annotations

import logging
import os
import socket
import warnings
from pathlib import Path

import torch
from torch import nn
from torchvision.models import ResNet18_Weights, resnet18

logger = logging.getLogger(__name__)

WEIGHTS = ResNet18_Weights.IMAGENET1K_V1

# Seconds to wait for the weights server before treating the weights as unavailable, so
# that an offline machine falls back to training from scratch instead of hanging.
DOWNLOAD_TIMEOUT_S = 20.0

# One outcome per process: once a download has failed, later builds neither retry it nor
# warn again.
_download_failed = False
_warned_from_scratch = False


def weights_cache_path() -> Path:
    """Return the file where torch.hub caches torchvision's ResNet-18 ImageNet weights.

    The folder follows torch.hub: `$TORCH_HOME/hub/checkpoints`, by default
    `~/.cache/torch/hub/checkpoints`.
    """
    filename = os.path.basename(WEIGHTS.url)
    return Path(torch.hub.get_dir()) / "checkpoints" / filename


def _download_weights(path: Path) -> None:
    """Download the ImageNet weights to `path`, giving up after DOWNLOAD_TIMEOUT_S per socket operation."""
    path.parent.mkdir(parents=True, exist_ok=True)

    # torch.hub has no timeout argument, so the socket default is set for the download only.
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        torch.hub.download_url_to_file(WEIGHTS.url, str(path), progress=False)
    finally:
        socket.setdefaulttimeout(previous_timeout)


def load_imagenet_state_dict(pretrained: bool | None) -> dict[str, torch.Tensor] | None:
    """Load torchvision's ResNet-18 ImageNet weights from the torch.hub cache, downloading them if needed.

    Args:
        pretrained: True requires the weights, None uses them when they are cached or can
            be downloaded, False skips them.

    Returns:
        The state dict, or None when training starts from scratch.

    Raises:
        RuntimeError: `pretrained` is True and the weights are neither cached nor downloadable.
    """
    global _download_failed, _warned_from_scratch

    if pretrained is False:
        return None

    path = weights_cache_path()
    if not path.is_file() and not _download_failed:
        try:
            _download_weights(path)
        except Exception as error:  # noqa: BLE001 - any failure (DNS, HTTP, timeout, disk) means unavailable
            _download_failed = True
            logger.info("downloading %s to %s failed: %s", WEIGHTS.url, path, error)

    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)

    if pretrained is True:
        raise RuntimeError(
            f"ResNet-18 ImageNet weights not found at {path} and the download from {WEIGHTS.url} failed; "
            f"download that file to {path} (or set TORCH_HOME to a folder holding hub/checkpoints/{path.name}), "
            "or pass pretrained=None to fall back to training from scratch"
        )

    if not _warned_from_scratch:
        _warned_from_scratch = True
        warnings.warn(
            f"ResNet-18 ImageNet weights not found at {path} and not downloadable from {WEIGHTS.url}; "
            "the backbone trains from scratch, which needs far more epochs to reach the published mAP. "
            f"Place the file at {path} to use them.",
            UserWarning,
            stacklevel=3,
        )
    return None


class ResNet18Backbone(nn.Module):
    """torchvision's ResNet-18 without its pooling and classifier, returning C3, C4 and C5.

    Args:
        pretrained: see `load_imagenet_state_dict`.
    """

    out_channels = (128, 256, 512)
    strides = (8, 16, 32)
    # Stages in forward order: `freeze(n)` fixes the first n of them.
    stage_names = ("stem", "layer1", "layer2", "layer3", "layer4")

    def __init__(self, pretrained: bool | None = None) -> None:
        super().__init__()
        model = resnet18(weights=None)
        state_dict = load_imagenet_state_dict(pretrained)
        if state_dict is not None:
            model.load_state_dict(state_dict)
        self.pretrained = state_dict is not None

        self.stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        self.layer1 = model.layer1
        self.layer2 = model.layer2
        self.layer3 = model.layer3
        self.layer4 = model.layer4
        self.frozen_stages = 0

    def freeze(self, stages: int) -> None:
        """Fix the weights and BatchNorm statistics of the first `stages` stages (0 to 5, stem first).

        The stages after them train again, so a later call with a smaller count unfreezes.
        Detectron2's Mask R-CNN R50-FPN configuration freezes the stem and the first
        residual stage of its pretrained ResNet (freeze_at = 2). For ResNet-18 at 160
        pixels those two stages are about a third of the backbone's forward FLOPs, and
        their backward pass is skipped.

        Raises:
            ValueError: `stages` is outside 0 to 5.
        """
        if not 0 <= stages <= len(self.stage_names):
            raise ValueError(f"frozen_stages={stages} is invalid: use 0 (train all) to {len(self.stage_names)} "
                             f"(freeze {', '.join(self.stage_names)})")

        self.frozen_stages = stages
        for index, name in enumerate(self.stage_names):
            getattr(self, name).requires_grad_(index >= stages)
        self.train(self.training)

    def train(self, mode: bool = True) -> ResNet18Backbone:
        """Set training mode, keeping frozen stages in evaluation mode so BatchNorm uses its stored statistics."""
        super().train(mode)
        for name in self.stage_names[:self.frozen_stages]:
            getattr(self, name).eval()
        return self

    def load_torchvision_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a torchvision ResNet-18 state dict (conv1, bn1, layer1 to layer4; fc is ignored).

        Raises:
            RuntimeError: a key is missing or a shape differs.
        """
        stem_names = {"conv1.": "stem.0.", "bn1.": "stem.1."}
        renamed = {}
        for key, value in state_dict.items():
            if key.startswith("fc."):
                continue
            for old, new in stem_names.items():
                if key.startswith(old):
                    key = new + key[len(old):]
            renamed[key] = value
        self.load_state_dict(renamed)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Compute the feature maps at strides 8, 16 and 32.

        Args:
            images: (B, 3, H, W) normalised images.

        Returns:
            C3 (B, 128, H/8, W/8), C4 (B, 256, H/16, W/16) and C5 (B, 512, H/32, W/32).
            Each size rounds up when H or W is not a multiple of the stride.
        """
        x = self.stem(images)
        x = self.layer1(x)
        c3 = self.layer2(x)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return c3, c4, c5
