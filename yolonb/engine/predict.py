"""Inference: detections in original-image pixels, and loading a trained model from its run folder."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from yolonb.config import RunConfig
from yolonb.engine.runtime import Runtime
from yolonb.losses.detection import LossSpec
from yolonb.models import build_detector
from yolonb.models.postprocess import postprocess

logger = logging.getLogger(__name__)


def rescale_boxes(boxes: torch.Tensor, input_size: int, orig_size: tuple[int, int]) -> torch.Tensor:
    """Map boxes from the square network input back to the original image.

    The evaluation transform stretches each image to input_size x input_size without
    padding, so x scales by width / input_size and y by height / input_size.

    Args:
        boxes: (K, 4) xyxy in network-input pixels.
        input_size: side of the network input in pixels.
        orig_size: (height, width) of the image file in pixels.

    Returns:
        (K, 4) xyxy in original-image pixels, clipped to the image.
    """
    height, width = orig_size
    scale = boxes.new_tensor([width / input_size, height / input_size, width / input_size, height / input_size])
    scaled = boxes * scale
    scaled[:, 0::2] = scaled[:, 0::2].clamp(0, width)
    scaled[:, 1::2] = scaled[:, 1::2].clamp(0, height)
    return scaled


@torch.inference_mode()
def predict(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    spec: LossSpec,
    config: RunConfig,
    runtime: Runtime,
    progress: bool = True,
) -> list[dict[str, np.ndarray]]:
    """Run the model over a loader of evaluation batches and return detections per image.

    Args:
        model: the detector; it is put in eval mode.
        loader: yields (images (B, 3, S, S), targets) from collate_detection, in record order.
        spec: the loss specification, which decides decoding and scores.
        config: supplies the score threshold, the NMS threshold and max_detections.
        runtime: device, autocast and memory format.
        progress: show a progress bar.

    Returns:
        One dict per image, in loader order: boxes (K, 4) float32 xyxy in original-image
        pixels, scores (K,) float32, labels (K,) int64.
    """
    model.eval()
    predictions: list[dict[str, np.ndarray]] = []
    for images, targets in tqdm(loader, desc="predict", leave=False, disable=not progress):
        images = images.to(runtime.device, non_blocking=True).contiguous(memory_format=runtime.memory_format)
        input_size = images.shape[-1]
        with runtime.autocast():
            output = model(images)

        detections = postprocess(
            output,
            spec,
            input_size,
            conf_threshold=config.conf_threshold,
            nms_threshold=config.nms_threshold,
            max_detections=config.max_detections,
        )
        for detection, target in zip(detections, targets):
            boxes = rescale_boxes(detection["boxes"].float(), input_size, target["orig_size"])
            predictions.append(
                {
                    "boxes": boxes.cpu().numpy().astype(np.float32),
                    "scores": detection["scores"].float().cpu().numpy(),
                    "labels": detection["labels"].cpu().numpy().astype(np.int64),
                }
            )
    return predictions


def load_model(run_dir: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, RunConfig, dict[str, Any]]:
    """Rebuild a trained detector from the model.pt of a run folder.

    Returns:
        (model in eval mode, its RunConfig, the saved metadata: run_id and classes).
    """
    path = Path(run_dir) / "model.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; train the run first (run_experiment writes model.pt when it finishes)")

    saved = torch.load(path, map_location=map_location, weights_only=False)
    config = RunConfig.from_dict(saved["config"])
    classes = tuple(saved["classes"])
    model = build_detector(
        len(classes),
        neck=config.neck,
        upsample=config.upsample,
        pretrained=False,
        box_mode=config.box_loss,
        reg_max=config.reg_max,
        neck_channels=config.neck_channels,
        bifpn_repeats=config.bifpn_repeats,
    )
    model.load_state_dict(saved["model"])
    model.eval()
    return model, config, {"run_id": saved["run_id"], "classes": classes}
