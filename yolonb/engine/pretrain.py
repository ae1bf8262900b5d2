"""Backbone pretraining on object crops of the training split, for runs without ImageNet weights.

The published recipe fine-tunes a ResNet-18 pretrained on ImageNet. Where those weights
cannot be downloaded (an offline machine), a detector trained from scratch for
a few minutes barely starts to tell the classes apart: its class loss stays near
that of predicting the class frequencies alone. The stand-in here follows the same two stages on a small scale. First a
torchvision ResNet-18 learns to classify square crops around the training split's
objects, plus background crops, as C + 1 classes. Its weights then initialise the
detector's backbone. Every run of a grid with the same training split shares one
pretrained backbone, cached on disk like downloaded weights, so the pretraining costs
once per data set.

Only the training split's images and labels are used, never the test split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models import resnet18
from torchvision.ops import box_iou, roi_align
from tqdm.auto import tqdm

from yolonb.data.voc import ImageRecord, read_image
from yolonb.fileio import atomic_write

logger = logging.getLogger(__name__)

# Bump when the crops or the training change, so cached backbones are rebuilt.
PRETRAIN_VERSION = 1

CROP_SIZE = 64
CROPS_PER_OBJECT = 3
BACKGROUND_PER_IMAGE = 3
# Each crop is a square of side max(w, h) times a factor in this range. Its centre
# shifts by up to this fraction of the box size, so the classifier learns from the
# context and the misalignment that a detector cell also meets.
CONTEXT_RANGE = (1.1, 1.8)
CENTRE_JITTER = 0.15
# Background crops overlap every object by at most this IoU.
BACKGROUND_MAX_IOU = 0.1
BATCH_SIZE = 64
LEARNING_RATE = 2e-3
WEIGHT_DECAY = 0.05
VALIDATION_FRACTION = 0.1
# The backbone is a fixed starting point, like downloaded weights: one seed for all runs.
PRETRAIN_SEED = 0

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class PretrainedBackbone:
    """A ResNet-18 state dict (torchvision key names, without `fc.`) and how it was made."""

    state_dict: dict[str, torch.Tensor]
    info: dict[str, Any]


def crop_examples(records: Sequence[ImageRecord], num_classes: int, size: int = CROP_SIZE,
                  seed: int = PRETRAIN_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut labelled square crops around every object and background crops away from them.

    Crops are taken with `torchvision.ops.roi_align` (bilinear, 2 x 2 samples per output
    pixel), so squares reaching past the border read zeros there, as padding would.

    Args:
        records: the training split's images.
        num_classes: C; background crops get label C.
        size: side of each crop in pixels.
        seed: seed of the crop positions.

    Returns:
        crops (N, 3, size, size) uint8 and labels (N,) int64 in [0, C].
    """
    rng = np.random.default_rng(seed)
    all_crops, all_labels = [], []
    for record in records:
        image = torch.from_numpy(np.array(read_image(record.image_path))).permute(2, 0, 1).float()
        height, width = image.shape[1:]
        squares, labels = [], []

        for (x_min, y_min, x_max, y_max), label in zip(record.boxes, record.labels):
            box_w, box_h = x_max - x_min, y_max - y_min
            for _ in range(CROPS_PER_OBJECT):
                side = max(box_w, box_h) * rng.uniform(*CONTEXT_RANGE)
                centre_x = (x_min + x_max) / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER) * box_w
                centre_y = (y_min + y_max) / 2 + rng.uniform(-CENTRE_JITTER, CENTRE_JITTER) * box_h
                squares.append(_square(centre_x, centre_y, side))
                labels.append(int(label))

        objects = torch.as_tensor(record.boxes, dtype=torch.float32).reshape(-1, 4)
        short_side = min(width, height)
        for _ in range(BACKGROUND_PER_IMAGE):
            side = rng.uniform(0.1, 0.5) * short_side
            square = _square(rng.uniform(0, width), rng.uniform(0, height), side)
            if len(objects) and box_iou(torch.tensor([square]), objects).max() > BACKGROUND_MAX_IOU:
                continue
            squares.append(square)
            labels.append(num_classes)

        if squares:
            crops = roi_align(image[None], [torch.tensor(squares, dtype=torch.float32)], output_size=size,
                              sampling_ratio=2, aligned=True)
            all_crops.append(crops.round().clamp(0, 255).to(torch.uint8))
            all_labels.extend(labels)

    if not all_crops:
        raise ValueError("the training split has no image to cut crops from; give it at least one image")
    return torch.cat(all_crops), torch.tensor(all_labels, dtype=torch.int64)


def _square(centre_x: float, centre_y: float, side: float) -> list[float]:
    half = side / 2
    return [centre_x - half, centre_y - half, centre_x + half, centre_y + half]


def cache_key(fingerprint: str, classes: Sequence[str], epochs: int, flips: bool = True) -> str:
    """Return the 16-hex-digit key of one pretrained backbone: data, classes, epochs and recipe."""
    recipe = {
        "version": PRETRAIN_VERSION, "fingerprint": fingerprint, "classes": list(classes), "epochs": epochs,
        "flips": flips,
        "crop_size": CROP_SIZE, "crops_per_object": CROPS_PER_OBJECT, "background_per_image": BACKGROUND_PER_IMAGE,
        "batch_size": BATCH_SIZE, "lr": LEARNING_RATE, "weight_decay": WEIGHT_DECAY, "seed": PRETRAIN_SEED,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode("utf-8")).hexdigest()[:16]


def pretrained_backbone(records: Sequence[ImageRecord], classes: Sequence[str], fingerprint: str, epochs: int,
                        cache_dir: Path, device: torch.device | str = "cpu",
                        amp_dtype: torch.dtype | None = None, progress: bool = True,
                        flips: bool = True) -> PretrainedBackbone:
    """Return the crop-pretrained backbone of this training split, training and caching it when missing.

    Args:
        records: the training split's images.
        classes: the class names, in label order.
        fingerprint: the data set's fingerprint (part of the cache key).
        epochs: passes over the crops.
        cache_dir: the folder of cached backbones; the file is `crops-<key>.pt`.
        device: where to train.
        amp_dtype: autocast dtype (bfloat16 on the CPU, float16 on CUDA) or None.
        progress: show a progress bar over the steps.
        flips: augment with flips and quarter turns. Turn it off when they change a
            class (a left arrow becomes a right one).

    Returns:
        The state dict and its info: epochs, validation accuracy, seconds, crops, cache file,
        and `from_cache` (False when this call trained it).
    """
    path = Path(cache_dir) / f"crops-{cache_key(fingerprint, classes, epochs, flips)}.pt"
    if path.is_file():
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            logger.info("backbone pretrained on object crops loaded from %s", path)
            return PretrainedBackbone(saved["state_dict"], {**saved["info"], "cache_file": str(path),
                                                            "from_cache": True})
        except (OSError, RuntimeError, KeyError, ValueError) as error:
            logger.warning("cached backbone %s is unreadable (%s); training it again", path, error)

    result = _train(records, len(classes), epochs, torch.device(device), amp_dtype, progress, flips)
    atomic_write(path, lambda file: torch.save({"state_dict": result.state_dict, "info": result.info}, file))
    logger.info("backbone pretrained on object crops in %.0f s (validation accuracy %.3f), cached at %s",
                result.info["seconds"], result.info["val_accuracy"], path)
    return PretrainedBackbone(result.state_dict, {**result.info, "cache_file": str(path), "from_cache": False})


def _train(records: Sequence[ImageRecord], num_classes: int, epochs: int, device: torch.device,
           amp_dtype: torch.dtype | None, progress: bool, flips: bool) -> PretrainedBackbone:
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(PRETRAIN_SEED)
    crops, labels = crop_examples(records, num_classes)

    # A fixed held-out tenth measures what the backbone learned; it is not used to choose anything.
    order = torch.randperm(len(crops), generator=generator)
    n_val = max(1, int(len(crops) * VALIDATION_FRACTION)) if len(crops) > 1 else 0
    val_index, train_index = order[:n_val], order[n_val:]

    torch.manual_seed(PRETRAIN_SEED)
    model = resnet18(num_classes=num_classes + 1).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY, fused=True)
    steps_per_epoch = math.ceil(len(train_index) / BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE, total_steps=epochs * steps_per_epoch,
                                                    pct_start=0.15)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def normalise(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device).float() / 255
        return ((batch - mean) / std).contiguous(memory_format=torch.channels_last)

    bar = tqdm(total=epochs * steps_per_epoch, desc="pretraining backbone on crops", unit="step", disable=not progress)
    model.train()
    for _ in range(epochs):
        shuffled = train_index[torch.randperm(len(train_index), generator=generator)]
        for first in range(0, len(shuffled), BATCH_SIZE):
            index = shuffled[first:first + BATCH_SIZE]
            images = normalise(crops[index])
            # One random flip and quarter turn per batch, drawn even when unused so the
            # generator's stream does not depend on `flips`.
            flip = torch.rand(1, generator=generator).item() < 0.5
            turns = int(torch.randint(0, 4, (1,), generator=generator))
            if flips:
                images = torch.rot90(images.flip(3) if flip else images, turns, (2, 3))
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
            loss = F.cross_entropy(logits.float(), labels[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            bar.update()
    bar.close()

    accuracy = float("nan")
    if n_val:
        model.eval()
        with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            predicted = torch.cat([model(normalise(crops[val_index[i:i + 256]])).argmax(1).cpu()
                                   for i in range(0, n_val, 256)])
        accuracy = float((predicted == labels[val_index]).float().mean())

    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items() if not key.startswith("fc.")}
    info = {
        "method": "object crops of the training split", "epochs": epochs, "flips": flips, "crops": len(crops),
        "background_crops": int((labels == num_classes).sum()), "val_accuracy": round(accuracy, 4),
        "seconds": round(time.perf_counter() - start, 1), "version": PRETRAIN_VERSION,
    }
    return PretrainedBackbone(state_dict, info)
