"""Box-aware augmentation and batching with torchvision.transforms.v2.

Pipelines take ``(image, target)`` as produced by ``DetectionDataset``: a uint8
tv_tensors.Image (3, H, W) and a dict whose "boxes" are tv_tensors.BoundingBoxes in
XYXY pixels, with "labels" (N,) and "difficult" (N,) beside them. Every pipeline ends
with a float32 image in [0, 1] of size ``size x size`` (the aspect ratio is not kept,
as in YOLO training), and boxes, labels and difficult flags with equal counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

logger = logging.getLogger(__name__)

AUGMENTATIONS: tuple[str, ...] = ("ssd", "shapes", "none")

# ImageNet mean in uint8 units, used to fill zoom-out padding with an average-looking color.
_MEAN_FILL = (124, 116, 104)


def target_tensors(inputs: Any) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor | None:
    """Return the per-box tensors that must be filtered together with the boxes.

    Used as ``labels_getter`` of ``v2.SanitizeBoundingBoxes``, so a removed box takes its
    label and difficult flag with it. A module-level function (not a lambda) so that
    DataLoader workers can pickle the pipeline.
    """
    target = inputs[1] if isinstance(inputs, (tuple, list)) and len(inputs) > 1 else inputs
    if not isinstance(target, dict) or "labels" not in target:
        return None
    if "difficult" in target:
        return target["labels"], target["difficult"]
    return target["labels"]


def sanitize_boxes() -> v2.Compose:
    """Clamp boxes to the image, then remove boxes under 1 pixel together with their labels and flags.

    Clamping comes first because SanitizeBoundingBoxes also removes boxes that reach past the image.
    """
    return v2.Compose([v2.ClampBoundingBoxes(), v2.SanitizeBoundingBoxes(labels_getter=target_tensors)])


class RandomIoUCropIfBoxes(v2.RandomIoUCrop):
    """SSD's IoU crop, skipped for an image without boxes.

    torchvision's RandomIoUCrop (0.29) cannot find a crop for an image without boxes and
    keeps sampling until it draws its "no crop" option. For a negative image that only
    wastes time, so this class returns the input unchanged.
    """

    def forward(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        flat = [sample] if not isinstance(sample, (tuple, list)) else list(sample)
        target = next((x for x in flat if isinstance(x, dict)), None)
        boxes = target.get("boxes") if target is not None else None
        if isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.shape[0] == 0:
            return sample
        return super().forward(*inputs)


class RandomRotation90(v2.Transform):
    """Rotate by 0, 90, 180 or 270 degrees (counter-clockwise), chosen with equal probability.

    ``F.rotate`` with ``expand=True`` moves every pixel and box corner exactly for these
    angles (checked against ``torch.rot90`` in the tests), so boxes stay tight.
    """

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"quarter_turns": int(torch.randint(0, 4, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["quarter_turns"] == 0:
            return inpt
        return self._call_kernel(F.rotate, inpt, angle=90.0 * params["quarter_turns"], expand=True)


def train_transform(size: int, augment: str = "ssd") -> v2.Transform:
    """Build a training pipeline ending in a ``size x size`` float32 image.

    Args:
        size: output side in pixels.
        augment: "ssd" for photographs such as VOC: photometric distortion, zoom-out, IoU
            crop and horizontal flip. "shapes" for the synthetic data, whose objects have no
            up or down: horizontal and vertical flips, 90-degree rotations, channel shuffle,
            light color and scale jitter. "none": resize only.

    Returns:
        A v2.Compose over ``(image, target)``.
    """
    if size <= 0:
        raise ValueError(f"invalid size {size}: expected a positive number of pixels")

    if augment == "ssd":
        steps = [
            v2.RandomPhotometricDistort(p=0.5),
            v2.RandomZoomOut(fill={tv_tensors.Image: _MEAN_FILL, "others": 0}, side_range=(1.0, 4.0), p=0.5),
            RandomIoUCropIfBoxes(),
            v2.RandomHorizontalFlip(p=0.5),
        ]
    elif augment == "shapes":
        # Resizing first makes every later step work on the small network input, which
        # roughly halves the loader's time per image at 128 pixels. Hue jitter is left
        # out because it costs more than all other steps together, and colours are not
        # permuted because the synthetic classes carry a colour hint.
        steps = [
            v2.Resize((size, size), antialias=True),
            v2.RandomHorizontalFlip(p=0.5),
            v2.RandomVerticalFlip(p=0.5),
            RandomRotation90(),
            v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2),
            v2.RandomAffine(degrees=0.0, translate=(0.05, 0.05), scale=(0.8, 1.2)),
        ]
    elif augment == "none":
        steps = []
    else:
        raise ValueError(f"unknown augmentation {augment!r}: expected one of {', '.join(AUGMENTATIONS)}")

    steps += [v2.Resize((size, size), antialias=True), sanitize_boxes(), v2.ToDtype(torch.float32, scale=True)]
    return v2.Compose(steps)


def eval_transform(size: int) -> v2.Transform:
    """Build the deterministic evaluation pipeline: resize to ``size x size``, float32 in [0, 1].

    No box is removed, so targets keep every ground truth.
    """
    if size <= 0:
        raise ValueError(f"invalid size {size}: expected a positive number of pixels")
    return v2.Compose([v2.Resize((size, size), antialias=True), v2.ToDtype(torch.float32, scale=True)])


def collate_detection(batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
    """Stack images of equal size and keep the targets as a list.

    Args:
        batch: (image (3, S, S), target dict) pairs.

    Returns:
        images: (B, 3, S, S) float tensor.
        targets: the B target dicts, unchanged.

    Raises:
        ValueError: the images differ in size.
    """
    images = [image for image, _ in batch]
    targets = [target for _, target in batch]
    shapes = {tuple(image.shape) for image in images}
    if len(shapes) > 1:
        raise ValueError(
            f"cannot batch images of different sizes {sorted(shapes)}: use train_transform or "
            f"eval_transform (they resize to one size) or MultiScaleCollate"
        )
    return torch.stack([image.as_subclass(torch.Tensor) for image in images]), targets


class MultiScaleCollate:
    """Collate function that resizes each batch to one side chosen from ``sizes``.

    The choice comes from a generator seeded with ``seed``, so the sequence of sizes is
    reproducible. Use it with a transform that already resizes to ``max(sizes)``, so each
    batch is only scaled down.

    NOTE: with DataLoader workers each worker draws from its own generator, seeded with
    ``seed + worker id``, so the sequence depends on the number of workers.

    Args:
        sizes: candidate sides in pixels, e.g. (320, 352, ..., 608).
        seed: seed of the size generator.
    """

    def __init__(self, sizes: Sequence[int], seed: int = 0):
        sizes = tuple(int(s) for s in sizes)
        if not sizes or any(s <= 0 for s in sizes):
            raise ValueError(f"invalid sizes {sizes}: expected one or more positive numbers of pixels")
        self.sizes = sizes
        self.seed = int(seed)
        self._generator: torch.Generator | None = None

    def _next_size(self) -> int:
        if self._generator is None:
            worker = torch.utils.data.get_worker_info()
            self._generator = torch.Generator().manual_seed(self.seed + (worker.id if worker else 0))
        index = int(torch.randint(len(self.sizes), (), generator=self._generator))
        return self.sizes[index]

    def __call__(self, batch: Sequence[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
        size = self._next_size()
        resized = []
        for image, target in batch:
            if tuple(image.shape[-2:]) != (size, size):
                target = dict(target)
                image = F.resize(image, [size, size], antialias=True)
                target["boxes"] = F.resize(target["boxes"], [size, size])
            resized.append((image, target))
        return collate_detection(resized)
