"""Evaluation of a detector on a test split: detections, then VOC average precision."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from yolonb.config import RunConfig
from yolonb.data import DetectionDataset, ImageRecord, collate_detection, eval_transform
from yolonb.engine.predict import predict
from yolonb.engine.runtime import Runtime
from yolonb.eval import EvalResult, evaluate_records
from yolonb.losses.detection import LossSpec


@dataclass
class Evaluation:
    """An EvalResult with the detections it was computed from and the time it took."""

    result: EvalResult
    predictions: list[dict[str, np.ndarray]]
    seconds: float


def make_eval_loader(records: Sequence[ImageRecord], config: RunConfig, runtime: Runtime) -> torch.utils.data.DataLoader:
    """Build a loader over `records` in their order, resized to config.input_size without augmentation."""
    dataset = DetectionDataset(records, transform=eval_transform(config.input_size))

    # A generator of its own keeps evaluation from drawing on the global random stream,
    # so evaluating between epochs leaves the training run unchanged.
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=runtime.workers,
        collate_fn=collate_detection,
        pin_memory=runtime.pin_memory,
        generator=torch.Generator().manual_seed(0),
    )


def evaluate_model(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    records: Sequence[ImageRecord],
    classes: Sequence[str],
    spec: LossSpec,
    config: RunConfig,
    runtime: Runtime,
    progress: bool = True,
) -> Evaluation:
    """Detect on every test image and compute VOC07 and area AP against `records`.

    Args:
        model: the detector.
        loader: from make_eval_loader over the same `records`.
        records: the test split's records, for ground truth and original sizes.
        classes: the class list, in label order.
        spec: the loss specification the model was trained with.
        config: thresholds for the detections.
        runtime: device and precision.
        progress: show a progress bar.
    """
    start = time.perf_counter()
    was_training = model.training
    predictions = predict(model, loader, spec, config, runtime, progress=progress)
    model.train(was_training)

    if len(predictions) != len(records):
        raise RuntimeError(f"the loader gave {len(predictions)} images for {len(records)} test records")
    result = evaluate_records(records, predictions, tuple(classes))
    return Evaluation(result=result, predictions=predictions, seconds=time.perf_counter() - start)
