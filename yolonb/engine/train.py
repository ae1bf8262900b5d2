"""One training run: from a RunConfig to a trained, evaluated model and its run folder.

`run_experiment` resolves and checks the data, builds the detector and its loss,
trains with a checkpoint after every epoch, evaluates on the test split and writes
the run folder (see yolonb.engine.runfolder for the files). A folder holding the
checkpoint of the same run id resumes from it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import platform
import re
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
import torchvision
from tqdm.auto import tqdm

import yolonb
from yolonb.config import RunConfig
from yolonb.data import (
    VOC_CLASSES,
    DataError,
    DetectionDataset,
    MultiScaleCollate,
    VOCSplit,
    collate_detection,
    load_voc_splits,
    train_transform,
)
from yolonb.data.synthetic import default_cache_dir, ensure_synthetic
from yolonb.engine import runfolder
from yolonb.engine.distributed import ProcessGroup, process_group
from yolonb.engine.pretrain import pretrained_backbone
from yolonb.engine.evaluate import Evaluation, evaluate_model, make_eval_loader
from yolonb.engine.runtime import Runtime, epoch_seed, resolve_runtime, seed_everything, seed_worker
from yolonb.losses.detection import LossSpec, detection_loss
from yolonb.models import build_detector

logger = logging.getLogger(__name__)

# The cosine schedule decays the learning rate to this fraction of its peak.
COSINE_FINAL_FACTOR = 0.01

LOSS_TERMS = ("obj", "cls", "box", "total")


class NonFiniteLossError(FloatingPointError):
    """A training loss became NaN or infinite; the message names the epoch and the step."""


@dataclass(frozen=True)
class RunData:
    """The resolved data of a run: both splits, their class list and where they came from."""

    name: str
    root: Path
    train: VOCSplit
    test: VOCSplit
    fingerprint: str

    @property
    def classes(self) -> tuple[str, ...]:
        return self.train.classes


# ---------------------------------------------------------------------------
# Data


def resolve_data(config: RunConfig) -> RunData:
    """Load the training and test splits named by the configuration, generating the synthetic data if needed.

    Raises:
        DataError: a missing folder or image set, a malformed annotation, an empty
            training split, or a test split without any non-difficult object.
    """
    if config.data_root is None:
        root = ensure_synthetic(
            seed=config.synthetic_seed,
            n_trainval=config.synthetic_n_trainval,
            n_test=config.synthetic_n_test,
        )
        name = "synthetic"
    else:
        root = Path(config.data_root).expanduser()
        if not root.exists():
            raise DataError(f"data_root {str(root)!r} not found; pass a VOCdevkit or VOC year folder with --data PATH")
        name = _data_set_name(root.resolve())

    train, test, fingerprint = load_voc_splits(root, config.train_sets, config.test_sets, config.classes)
    if not train.records:
        raise DataError(f"the training image sets {list(config.train_sets)} under {root} contain no images")
    if not any((~np.asarray(record.difficult, dtype=bool)).any() for record in test.records):
        raise DataError(
            f"the test image sets {list(config.test_sets)} under {root} contain no non-difficult object, "
            f"so average precision is undefined; choose other test_sets"
        )
    return RunData(name=name, root=Path(root).resolve(), train=train, test=test, fingerprint=fingerprint)


def _data_set_name(root: Path) -> str:
    # ".../traffic-lights-voc/VOCdevkit/VOC2007" is named after the folder above the VOC layout.
    path = root
    while path.parent != path and (path.name == "VOCdevkit" or re.fullmatch(r"VOC\d{4}", path.name)):
        path = path.parent
    return path.name or root.name


def make_train_loader(
    records: Sequence, config: RunConfig, runtime: Runtime, seed: int, group: ProcessGroup | None = None
) -> torch.utils.data.DataLoader:
    """Build the shuffled, augmented training loader of one epoch, its order and augmentation drawn from `seed`.

    In a distributed run each process draws its own share of the images (a
    DistributedSampler shuffled from `seed`) in batches of batch_size / world_size.
    """
    group = group or ProcessGroup()
    if config.multiscale_sizes:
        # The transform resizes to the largest size and the collate scales each batch
        # down to its drawn size, so no batch is upsampled twice.
        transform = train_transform(max(config.multiscale_sizes), config.augment)
        collate = MultiScaleCollate(config.multiscale_sizes, seed=seed)
    else:
        transform = train_transform(config.input_size, config.augment)
        collate = collate_detection
    dataset = DetectionDataset(records, transform=transform)
    batch_size = group.local_batch_size(config.batch_size)
    sampler = None
    if group.enabled:
        sampler = torch.utils.data.distributed.DistributedSampler(
            dataset, num_replicas=group.world_size, rank=group.rank, shuffle=True, seed=seed
        )

    # A last batch of one image would give BatchNorm a batch statistic from a single sample.
    drop_last = (len(sampler) if sampler is not None else len(dataset)) > batch_size
    # Loader workers draw augmentations from this generator, so each rank gets its own stream.
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=drop_last,
        num_workers=runtime.workers,
        collate_fn=collate,
        pin_memory=runtime.pin_memory,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed + group.rank),
    )


# ---------------------------------------------------------------------------
# Optimisation


def build_optimizer(model: torch.nn.Module, config: RunConfig) -> torch.optim.Optimizer:
    """Build SGD or AdamW; biases and normalisation weights get no weight decay.

    The backbone's learning rate is `lr * backbone_lr_factor`: a factor below 1 keeps
    pretrained features while the new neck and heads learn fast.

    Decaying BatchNorm scales and biases pulls them to zero without regularising the
    convolutions, which hurts most with AdamW's large decoupled decay.
    """
    groups = []
    for in_backbone, lr in ((True, config.lr * config.backbone_lr_factor), (False, config.lr)):
        decay, no_decay = [], []
        for name, parameter in model.named_parameters():
            if parameter.requires_grad and name.startswith("backbone.") == in_backbone:
                (no_decay if parameter.ndim <= 1 else decay).append(parameter)
        groups += [
            {"params": decay, "weight_decay": config.weight_decay, "lr": lr},
            {"params": no_decay, "weight_decay": 0.0, "lr": lr},
        ]

    # The fused kernels update all tensors in one pass: 6% faster training steps for the
    # quick profile on a 2-core CPU (torch 2.14), and available on CPU and CUDA.
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=False, fused=True)
    return torch.optim.AdamW(groups, lr=config.lr, betas=(config.momentum, 0.999), fused=True)


class LearningRateFactor:
    """Multiplier of the base learning rate at an optimizer step, for torch.optim.lr_scheduler.LambdaLR.

    Linear warm-up over the first warmup_epochs, then either steps (times
    lr_step_factor at each epoch of lr_steps) or a cosine decay to COSINE_FINAL_FACTOR
    at the last step. A class rather than a lambda, so the scheduler state pickles.
    """

    def __init__(self, config: RunConfig, steps_per_epoch: int):
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = config.epochs * steps_per_epoch
        self.warmup_steps = round(config.warmup_epochs * steps_per_epoch)
        self.schedule = config.lr_schedule
        self.milestones = [epoch * steps_per_epoch for epoch in config.lr_steps]
        self.step_factor = config.lr_step_factor

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps

        if self.schedule == "step":
            passed = sum(step >= milestone for milestone in self.milestones)
            return self.step_factor**passed

        span = max(self.total_steps - 1 - self.warmup_steps, 1)
        progress = min((step - self.warmup_steps) / span, 1.0)
        cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
        return COSINE_FINAL_FACTOR + (1.0 - COSINE_FINAL_FACTOR) * cosine


def _targets_to(targets: list[dict], device: torch.device) -> list[dict]:
    moved = []
    for target in targets:
        target = dict(target)
        for key in ("boxes", "labels", "difficult"):
            target[key] = target[key].to(device, non_blocking=True)
        moved.append(target)
    return moved


def _float_output(output: dict) -> dict:
    # Losses run in float32 outside autocast: bf16 logits lose too much precision in
    # the exponentials and logarithms of the focal terms.
    result = dict(output)
    result["pred"] = output["pred"].float()
    result["aux"] = [aux.float() for aux in output.get("aux") or []]
    return result


def train_one_epoch(
    model: torch.nn.Module,
    loader: torch.utils.data.DataLoader,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler | None,
    spec: LossSpec,
    config: RunConfig,
    runtime: Runtime,
    epoch: int,
    progress: bool = True,
    group: ProcessGroup | None = None,
) -> dict[str, float]:
    """Train for one epoch and return the mean of each loss term over its steps (and over the processes).

    Raises:
        NonFiniteLossError: a loss term is NaN or infinite; nothing is updated from that step.
    """
    group = group or ProcessGroup()
    model.train()
    sums = dict.fromkeys(LOSS_TERMS, 0.0)
    steps = 0
    bar = tqdm(loader, desc=f"epoch {epoch}", leave=False, disable=not progress)
    for step, (images, targets) in enumerate(bar, start=1):
        images = images.to(runtime.device, non_blocking=True).contiguous(memory_format=runtime.memory_format)
        targets = _targets_to(targets, runtime.device)
        with runtime.autocast():
            output = model(images)
        losses = detection_loss(_float_output(output), targets, spec, images.shape[-1])

        # Every process checks the same averaged values, so a non-finite loss on one rank
        # stops all of them at the same step instead of leaving the others waiting.
        local = [float(losses[term].detach()) for term in LOSS_TERMS]
        values = dict(zip(LOSS_TERMS, group.mean(local, runtime.device)))
        if not all(math.isfinite(value) for value in values.values()):
            terms = ", ".join(f"{term}={value:.4g}" for term, value in values.items())
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {epoch}, step {step} ({terms}); "
                f"lower lr (now {config.lr:g}) or set grad_clip, then rerun"
            )

        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(losses["total"]).backward()
            scaler.unscale_(optimizer)
        else:
            losses["total"].backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        scheduler.step()

        for term, value in values.items():
            sums[term] += value
        steps += 1
        bar.set_postfix(loss=f"{values['total']:.3f}", refresh=False)

    return {term: total / max(steps, 1) for term, total in sums.items()}


# ---------------------------------------------------------------------------
# Checkpoints


@contextlib.contextmanager
def _deferred_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C (SIGINT) until the enclosed block ends, then raise KeyboardInterrupt.

    An interrupt inside torch.save leaves a half-written temporary file and a confusing
    RuntimeError from the zip writer; deferring it keeps the checkpoint step whole.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    with _deferred_interrupt():
        runfolder.save_torch(path, state)


def _load_checkpoint(path: Path, run_id: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if state.get("run_id") != run_id:
        raise RuntimeError(
            f"{path} belongs to run {state.get('run_id')!r}, but this configuration is run {run_id!r}; "
            f"choose another output folder, or delete that folder to discard the old run"
        )
    return state


# ---------------------------------------------------------------------------
# Metrics


def _git_commit() -> str | None:
    package_dir = Path(yolonb.__file__).resolve().parent
    try:
        completed = subprocess.run(
            ["git", "-C", str(package_dir), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return completed.stdout.strip() or None


def _per_class(classes: Sequence[str], values: np.ndarray) -> dict[str, float | None]:
    return {name: runfolder.optional_float(value) for name, value in zip(classes, values)}


def _object_count(split: VOCSplit) -> int:
    return int(sum(len(record.labels) for record in split.records))


def build_metrics(
    run_id: str,
    config: RunConfig,
    data: RunData,
    runtime: Runtime,
    evaluation: Evaluation,
    history: list[dict[str, Any]],
    wall_time_s: float,
    images_trained: int,
    world_size: int = 1,
    backbone: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble the metrics.json content of a finished run."""
    result = evaluation.result
    classes = data.classes
    train_time_s = float(sum(row["epoch_time_s"] for row in history))
    last = history[-1]
    return {
        "run_id": run_id,
        "status": "finished",
        "map_voc07": runfolder.optional_float(result.map_voc07),
        "map_area": runfolder.optional_float(result.map_area),
        "per_class_ap": _per_class(classes, result.ap_voc07),
        "per_class_ap_area": _per_class(classes, result.ap_area),
        "n_gt": {name: int(count) for name, count in zip(classes, result.n_gt)},
        "final_losses": {term: last[f"loss_{term}"] for term in LOSS_TERMS},
        "wall_time_s": round(wall_time_s, 3),
        "train_time_s": round(train_time_s, 3),
        "eval_time_s": round(evaluation.seconds, 3),
        "train_images_per_s": round(images_trained / train_time_s, 2) if train_time_s > 0 else None,
        "device": runtime.describe(),
        "world_size": world_size,
        "backbone": backbone or {"init": "scratch", "pretraining": None},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
            "yolonb": yolonb.__version__,
        },
        "git_commit": _git_commit(),
        "config": config.to_dict(),
        "assign_rule": config.assign_rule,
        "data": {
            "name": data.name,
            "root": str(data.root),
            "fingerprint": data.fingerprint,
            "classes": list(classes),
            "n_train_images": len(data.train.records),
            "n_test_images": len(data.test.records),
            "n_train_objects": _object_count(data.train),
            "n_test_objects": _object_count(data.test),
            "is_voc": tuple(classes) == tuple(VOC_CLASSES),
        },
    }


def prepare_backbone(model: torch.nn.Module, config: RunConfig, data: RunData, runtime: Runtime,
                     progress: bool) -> dict[str, Any]:
    """Load the crop-pretrained backbone into `model` when `crop_pretrain_epochs` > 0 and no ImageNet weights loaded.

    Returns:
        {"init": "imagenet", "crops" or "scratch", "pretraining": info of the crop pretraining or None},
        as metrics.json records it.
    """
    if model.backbone.pretrained:
        return {"init": "imagenet", "pretraining": None}
    if config.crop_pretrain_epochs == 0:
        return {"init": "scratch", "pretraining": None}

    # The pretraining draws from its own seeded generators, so a run gives the same numbers
    # whether the backbone was trained now or loaded from the cache.
    # NOTE: under torchrun every process that misses the cache trains the backbone itself.
    with torch.random.fork_rng(devices=[]):
        result = pretrained_backbone(data.train.records, data.classes, data.fingerprint, config.crop_pretrain_epochs,
                                     default_cache_dir() / "backbones", runtime.device, runtime.amp_dtype, progress,
                                     flips=config.augment != "none")
    model.backbone.load_torchvision_weights(result.state_dict)
    return {"init": "crops", "pretraining": result.info}


def _read_finished(path: Path, run_id: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if metrics.get("status") == "finished" and metrics.get("run_id") == run_id:
        return metrics
    return None


# ---------------------------------------------------------------------------
# The run


def run_experiment(config: RunConfig, out_dir: str | Path, *, progress: bool = True, force: bool = False) -> dict[str, Any]:
    """Train and evaluate one configuration and write its run folder.

    Every check of the configuration and the data happens before training starts.
    When metrics.json in `out_dir` records this run as finished, its metrics are
    returned without training (unless `force`). When checkpoints/last.pt belongs to
    the same run id, training resumes after the last completed epoch.

    Args:
        config: the run configuration.
        out_dir: the run folder; created if missing.
        progress: show progress bars for epochs and batches.
        force: train again even when the folder contains a finished run. An existing
            checkpoint of the run is then ignored and overwritten.

    Returns:
        The metrics dict, as written to out_dir/metrics.json.

    Raises:
        ConfigError: the device or precision is unavailable.
        DataError: the data is missing or invalid.
        NonFiniteLossError: a loss became NaN or infinite; the checkpoint of the last
            completed epoch is kept.
        RuntimeError: out_dir contains a checkpoint of another run.

    Under torchrun (WORLD_SIZE > 1) every process calls this function and trains with
    DistributedDataParallel (see yolonb.engine.distributed); rank 0 alone evaluates and
    writes the run folder, and every rank returns its metrics.
    """
    with process_group(config) as group:
        return _run_experiment(config, Path(out_dir), progress and group.is_main, force, group)


def _run_experiment(config: RunConfig, out_dir: Path, progress: bool, force: bool, group: ProcessGroup) -> dict[str, Any]:
    start = time.perf_counter()
    runtime = group.place(resolve_runtime(config))
    data = resolve_data(config)
    run_id = config.run_id(data.fingerprint)

    metrics_path = out_dir / runfolder.METRICS_FILE
    checkpoint_path = out_dir / runfolder.CHECKPOINT_FILE
    if not force:
        finished = _read_finished(metrics_path, run_id)
        if finished is not None:
            # An mAP that could not be computed is stored as null and shown as nan.
            stored = finished["map_voc07"]
            logger.info("run %s already finished in %s: mAP %.4f", run_id, out_dir,
                        float("nan") if stored is None else stored)
            return finished
    out_dir.mkdir(parents=True, exist_ok=True)
    logger.info(
        "run %s: %s data (%d train, %d test images, %d classes) on %s, %d epochs",
        run_id,
        data.name,
        len(data.train.records),
        len(data.test.records),
        len(data.classes),
        runtime.describe(),
        config.epochs,
    )

    # Everything that can fail on bad settings is built before the first step.
    seed_everything(config.seed)
    spec = LossSpec(**config.loss_spec_fields())
    model = build_detector(
        len(data.classes),
        neck=config.neck,
        upsample=config.upsample,
        pretrained=config.pretrained,
        box_mode=config.box_loss,
        reg_max=config.reg_max,
        neck_channels=config.neck_channels,
        bifpn_repeats=config.bifpn_repeats,
    )
    backbone = prepare_backbone(model, config, data, runtime, progress)
    model.backbone.freeze(config.frozen_stages)
    backbone["frozen_stages"] = config.frozen_stages
    model.to(runtime.device, memory_format=runtime.memory_format)
    optimizer = build_optimizer(model, config)
    steps_per_epoch = len(make_train_loader(data.train.records, config, runtime, config.seed, group))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LearningRateFactor(config, steps_per_epoch))
    scaler = torch.amp.GradScaler(runtime.device.type) if runtime.amp_dtype == torch.float16 else None
    eval_loader = make_eval_loader(data.test.records, config, runtime)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    previous_wall_s = 0.0
    images_trained = 0
    state = None if force else _load_checkpoint(checkpoint_path, run_id)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        history = list(state["history"])
        start_epoch = int(state["epoch"])
        previous_wall_s = float(state["wall_time_s"])
        images_trained = int(state["images_trained"])
        logger.info("run %s: resuming after epoch %d of %d from %s", run_id, start_epoch, config.epochs, checkpoint_path)
    trained_model = group.wrap(model)

    evaluation: Evaluation | None = None
    epoch_bar = tqdm(
        range(start_epoch + 1, config.epochs + 1),
        desc=f"run {run_id}",
        initial=start_epoch,
        total=config.epochs,
        disable=not progress,
    )
    for epoch in epoch_bar:
        # Reseeding per epoch makes the epoch's batches and augmentations a function of
        # (seed, epoch), so a resumed run repeats an uninterrupted one.
        seed = epoch_seed(config.seed, epoch)
        seed_everything(seed + group.rank)
        loader = make_train_loader(data.train.records, config, runtime, seed, group)

        epoch_start = time.perf_counter()
        # The last group contains the neck's and heads' biases, which train at the base lr.
        # The backbone's groups run at lr * backbone_lr_factor.
        lr = optimizer.param_groups[-1]["lr"]
        try:
            losses = train_one_epoch(
                trained_model, loader, optimizer, scheduler, scaler, spec, config, runtime, epoch, progress, group
            )
        except NonFiniteLossError as error:
            if history:
                checkpoint_note = f"the checkpoint of epoch {history[-1]['epoch']} is kept at {checkpoint_path}"
            else:
                checkpoint_note = "no epoch finished, so there is no checkpoint"
            logger.error("run %s stopped: %s; %s", run_id, error, checkpoint_note)
            raise NonFiniteLossError(f"run {run_id}: {error}; {checkpoint_note}") from None
        epoch_time_s = time.perf_counter() - epoch_start
        images_trained += len(loader) * config.batch_size if loader.drop_last else len(loader.dataset)

        row = {
            "epoch": epoch,
            "lr": lr,
            **{f"loss_{term}": value for term, value in losses.items()},
            "map_voc07": None,
            "epoch_time_s": round(epoch_time_s, 3),
        }
        is_last = epoch == config.epochs
        evaluate_now = is_last or (config.eval_interval and epoch % config.eval_interval == 0)
        if evaluate_now and group.is_main:
            evaluation = evaluate_model(
                model, eval_loader, data.test.records, data.classes, spec, config, runtime, progress
            )
            row["map_voc07"] = runfolder.optional_float(evaluation.result.map_voc07)
        history.append(row)
        postfix = {"loss": f"{losses['total']:.3f}"}
        if evaluation is not None:
            postfix["mAP"] = f"{evaluation.result.map_voc07:.3f}"
        epoch_bar.set_postfix(postfix, refresh=False)
        if not group.is_main:
            continue

        _save_checkpoint(
            checkpoint_path,
            {
                "run_id": run_id,
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "history": history,
                "wall_time_s": previous_wall_s + time.perf_counter() - start,
                "images_trained": images_trained,
                "config": config.to_dict(),
            },
        )
        runfolder.write_history(out_dir / runfolder.HISTORY_FILE, history)

    if not group.is_main:
        return group.broadcast(None)

    # A run resumed after its last epoch (killed during the final evaluation) evaluates here.
    if evaluation is None:
        evaluation = evaluate_model(model, eval_loader, data.test.records, data.classes, spec, config, runtime, progress)
        history[-1]["map_voc07"] = runfolder.optional_float(evaluation.result.map_voc07)
        runfolder.write_history(out_dir / runfolder.HISTORY_FILE, history)

    wall_time_s = previous_wall_s + time.perf_counter() - start
    metrics = build_metrics(
        run_id, config, data, runtime, evaluation, history, wall_time_s, images_trained, group.world_size, backbone
    )
    result = evaluation.result
    runfolder.write_json(out_dir / runfolder.PR_CURVES_FILE, runfolder.pr_curves(data.classes, result.precision, result.recall))
    runfolder.write_json(
        out_dir / runfolder.DETECTIONS_FILE, runfolder.detections_sample(data.test.records, evaluation.predictions)
    )
    runfolder.save_torch(
        out_dir / runfolder.MODEL_FILE,
        {"run_id": run_id, "config": config.to_dict(), "classes": list(data.classes), "model": model.state_dict()},
    )
    runfolder.write_json(metrics_path, metrics)

    logger.info(
        "run %s finished: mAP(VOC07) %.4f, mAP(area) %.4f, train %.1f s, total %.1f s, %s",
        run_id,
        result.map_voc07,
        result.map_area,
        metrics["train_time_s"],
        wall_time_s,
        out_dir,
    )
    return group.broadcast(metrics)
