"""Training throughput and evaluation time of a profile, for several precision and loader settings.

    python benchmarks/bench_train.py                      # the quick profile, 20 timed steps per row
    python benchmarks/bench_train.py --steps 40 --set neck=bifpn

Each row builds the profile's detector from scratch and trains 3 untimed warm-up
steps. It then times `--steps` steps with the real data loader, so JPEG decoding and
augmentation are included. Some rows also time one evaluation over the whole test
split (inference, NMS and VOC AP). The machine should be otherwise idle: on a 2-core CPU a
second busy process can slow the two torch threads several-fold.
"""

from __future__ import annotations

import argparse
import itertools
import os
import platform
import time

import torch

from yolonb.config import PROFILES, apply_overrides, get_profile
from yolonb.engine.evaluate import evaluate_model, make_eval_loader
from yolonb.engine.runtime import resolve_runtime, seed_everything
from yolonb.engine.train import LearningRateFactor, build_optimizer, make_train_loader, resolve_data, train_one_epoch
from yolonb.losses.detection import LossSpec
from yolonb.models import build_detector

WARMUP_STEPS = 3

# (label, overrides) of each benchmark row.
SETTINGS = (
    ("bf16 autocast, channels_last, workers 0", {"amp": "auto", "channels_last": True, "workers": 0}),
    ("bf16 autocast, channels_last, workers 1", {"amp": "auto", "channels_last": True, "workers": 1}),
    ("float32, contiguous, workers 0", {"amp": "off", "channels_last": False, "workers": 0}),
)


def bench_row(config, data, steps: int, evaluate: bool) -> dict:
    """Time `steps` training steps and, if `evaluate`, one test-split evaluation of `config`."""
    runtime = resolve_runtime(config)
    seed_everything(config.seed)
    spec = LossSpec(**config.loss_spec_fields())
    model = build_detector(
        len(data.classes),
        neck=config.neck,
        upsample=config.upsample,
        pretrained=False,
        box_mode=config.box_loss,
        reg_max=config.reg_max,
        neck_channels=config.neck_channels,
        bifpn_repeats=config.bifpn_repeats,
    )
    model.to(runtime.device, memory_format=runtime.memory_format)
    optimizer = build_optimizer(model, config)
    loader = make_train_loader(data.train.records, config, runtime, seed=config.seed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, LearningRateFactor(config, len(loader)))

    # One iterator for warm-up and timing: the loader cycles, so --steps may exceed one epoch.
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    train_one_epoch(model, itertools.islice(batches, WARMUP_STEPS), optimizer, scheduler, None, spec, config, runtime, 0, False)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)
    start = time.perf_counter()
    train_one_epoch(model, itertools.islice(batches, steps), optimizer, scheduler, None, spec, config, runtime, 1, False)
    if runtime.device.type == "cuda":
        torch.cuda.synchronize(runtime.device)
    train_seconds = time.perf_counter() - start

    row = {"images_per_s": steps * config.batch_size / train_seconds, "eval_s": None, "device": runtime.describe()}
    if evaluate:
        eval_loader = make_eval_loader(data.test.records, config, runtime)
        evaluation = evaluate_model(model, eval_loader, data.test.records, data.classes, spec, config, runtime, progress=False)
        row["eval_s"] = evaluation.seconds
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="quick", choices=sorted(PROFILES), help="profile to time (default: quick)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE", help="override a setting; repeatable")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per row (default: 20)")
    args = parser.parse_args()

    base = apply_overrides(get_profile(args.profile), args.overrides)
    data = resolve_data(base)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} torch threads, load average {os.getloadavg()[0]:.2f}")
    print(f"profile {args.profile}: {base.input_size} px, batch {base.batch_size}, neck {base.neck}, "
          f"{len(data.train.records)} training and {len(data.test.records)} test images, {args.steps} timed steps")
    print()
    print("| setting | device | train images/s | evaluation of the test split (s) |")
    print("|---|---|---|---|")
    for index, (label, overrides) in enumerate(SETTINGS):
        row = bench_row(base.replace(**overrides), data, args.steps, evaluate=index in (0, len(SETTINGS) - 1))
        eval_cell = "-" if row["eval_s"] is None else f"{row['eval_s']:.2f}"
        print(f"| {label} | {row['device']} | {row['images_per_s']:.1f} | {eval_cell} |", flush=True)


if __name__ == "__main__":
    main()
