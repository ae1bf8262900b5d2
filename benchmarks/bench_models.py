"""Print, per neck, the parameter count, forward FLOPs at 416 pixels and CPU training speed.

Training speed is measured for full steps (forward, target assignment, detection loss,
backward, and the fused SGD step the engine builds for the `voc` profile) on random
images with three random boxes each. It runs at 128 pixels (batch 16) and 416 pixels
(batch 8) in each requested mode: "fp32"
(float32, NCHW), "fp32-cl" (float32, channels_last) and "bf16" (bfloat16 autocast,
channels_last). The numbers depend on the machine and on whatever else runs on it, so
compare necks from one invocation only.

Usage:
    python benchmarks/bench_models.py [--necks single fpn] [--steps 5] [--precisions fp32 fp32-cl bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from yolonb.config import get_profile
from yolonb.engine.train import build_optimizer
from yolonb.losses.detection import LossSpec, detection_loss
from yolonb.models import build_detector
from yolonb.models.necks import NECKS

NUM_CLASSES = 20
SETTINGS = ((128, 16), (416, 8))  # (image size in pixels, batch size)
PRECISIONS = ("fp32", "fp32-cl", "bf16")


def make_loss_function(box_mode: str):
    """Return a function (output dict, targets, image size) -> scalar loss: the detection
    loss with the original recipe's settings (target assignment included)."""
    spec = LossSpec(box_loss=box_mode)

    def loss_function(output, targets, image_size):
        return detection_loss(output, targets, spec, image_size)["total"]

    return loss_function


def random_targets(batch_size: int, image_size: int, generator: torch.Generator) -> list[dict]:
    """Three boxes per image with random centres and sides between 5 % and 50 % of the image."""
    targets = []
    for _ in range(batch_size):
        centres = torch.rand(3, 2, generator=generator) * image_size
        sides = (0.05 + 0.45 * torch.rand(3, 2, generator=generator)) * image_size
        boxes = torch.cat([centres - sides / 2, centres + sides / 2], dim=1).clamp(0, image_size)
        labels = torch.randint(0, NUM_CLASSES, (3,), generator=generator)
        targets.append({"boxes": boxes, "labels": labels})
    return targets


def count_flops(model: torch.nn.Module, image_size: int) -> int:
    """Forward FLOPs of one image in eval mode (a multiply-add counts as 2)."""
    model.eval()
    images = torch.rand(1, 3, image_size, image_size)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(images)
    return counter.get_total_flops()


def train_speed(model: torch.nn.Module, loss_function, image_size: int, batch_size: int, precision: str,
                steps: int, warmup: int) -> float:
    """Measure training images per second over `steps` SGD steps after `warmup` untimed ones."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(batch_size, 3, image_size, image_size, generator=generator)
    targets = random_targets(batch_size, image_size, generator)

    memory_format = torch.contiguous_format if precision == "fp32" else torch.channels_last
    model = model.to(memory_format=memory_format)
    images = images.contiguous(memory_format=memory_format)
    model.train()
    # The `voc` profile's optimizer as the engine builds it: SGD, momentum 0.9, weight decay 5e-4.
    optimizer = build_optimizer(model, get_profile("voc"))

    def step() -> None:
        if precision == "bf16":
            autocast = torch.autocast("cpu", dtype=torch.bfloat16)
        else:
            autocast = contextlib.nullcontext()
        with autocast:
            output = model(images)
        loss = loss_function(output, targets, image_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(warmup):
        step()

    start = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - start
    return steps * batch_size / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--necks", nargs="+", default=list(NECKS), choices=list(NECKS), help="necks to measure")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=PRECISIONS,
                        help="fp32 (NCHW), fp32-cl (channels_last) or bf16 (autocast, channels_last)")
    parser.add_argument("--box-mode", default="yolo", choices=["yolo", "dfl"], help="box output of the heads")
    parser.add_argument("--neck-channels", type=int, default=None,
                        help="width of the neck outputs and heads (default: each neck's own)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per setting")
    parser.add_argument("--warmup", type=int, default=2, help="untimed training steps before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    loss_function = make_loss_function(args.box_mode)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, box mode {args.box_mode}, "
          "loss yolonb.losses.detection.detection_loss, "
          f"{args.steps} timed steps after {args.warmup} warm-up steps")

    columns = ["neck", "params (M)", "GFLOPs@416"]
    for image_size, batch_size in SETTINGS:
        for precision in args.precisions:
            columns.append(f"img/s {image_size}px b{batch_size} {precision}")
    print(" | ".join(columns))

    for neck in args.necks:
        torch.manual_seed(0)
        model = build_detector(NUM_CLASSES, neck=neck, pretrained=False, box_mode=args.box_mode,
                               neck_channels=args.neck_channels)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gflops = count_flops(model, 416) / 1e9
        row = [neck, f"{params:.2f}", f"{gflops:.2f}"]

        for image_size, batch_size in SETTINGS:
            for precision in args.precisions:
                speed = train_speed(model, loss_function, image_size, batch_size, precision, args.steps, args.warmup)
                row.append(f"{speed:.1f}")
        print(" | ".join(row), flush=True)


if __name__ == "__main__":
    main()
