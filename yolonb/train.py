"""Command line: train and evaluate one configuration.

    python -m yolonb.train --profile quick --out reports/runs/quick
    python -m yolonb.train --profile quick --data ../VOCdevkit --set input_size=320 --out runs/lights

Prints the run id, the mAP and the time of the finished run, and the per-class AP.
On several GPUs, start it with torchrun; batch_size stays the global batch:

    torchrun --nproc-per-node 4 -m yolonb.train --profile voc --data /data/VOCdevkit --out runs/voc
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Sequence

from yolonb.config import FIELD_NAMES, PROFILES, ConfigError, apply_overrides, get_profile


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m yolonb.train",
        description="Train and evaluate one detector configuration and write its run folder "
        "(metrics.json, history.csv, pr_curves.json, detections_sample.json, model.pt, checkpoints/). "
        "Rerunning with the same folder resumes an interrupted run.",
    )
    parser.add_argument(
        "--profile",
        default="quick",
        choices=sorted(PROFILES),
        help="named preset of every setting: quick (embedded synthetic data, minutes on a CPU), "
        "voc (the published Pascal VOC recipe), smoke (seconds, for tests); default: quick",
    )
    parser.add_argument(
        "--data",
        metavar="PATH",
        help="a VOCdevkit folder or one VOC year folder; sets data_root (default: the profile's, "
        "which for quick and smoke is the embedded synthetic data set)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override one setting, e.g. --set epochs=10 --set cls_loss=focal --set multiscale_sizes=96,128; "
        "repeatable; see --list-fields",
    )
    parser.add_argument("--out", metavar="DIR", help="run folder to write (required unless --show-config or --list-fields)")
    parser.add_argument("--force", action="store_true", help="train again even if DIR contains a finished run of this configuration")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("--show-config", action="store_true", help="print the resolved configuration as JSON and exit")
    parser.add_argument("--list-fields", action="store_true", help="print the names of all settings and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Under torchrun every process runs this, and only rank 0 (RANK=0) logs progress and
    # prints the table. The variable is read here so that --help does not load torch.
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(level=logging.INFO if main_process else logging.WARNING, format="%(message)s")

    if args.list_fields:
        print("\n".join(FIELD_NAMES))
        return 0

    try:
        config = get_profile(args.profile)
        if args.data is not None:
            config = config.replace(data_root=args.data)
        config = apply_overrides(config, args.overrides)
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    if args.show_config:
        print(json.dumps(config.to_dict(), indent=2))
        return 0
    if not args.out:
        print("error: --out DIR is required to train", file=sys.stderr)
        return 2

    # Imported late so that --help, --list-fields and --show-config do not load torch.
    from yolonb.data import DataError
    from yolonb.engine import NonFiniteLossError, run_experiment

    try:
        metrics = run_experiment(config, args.out, progress=not args.no_progress, force=args.force)
    except (ConfigError, DataError, NonFiniteLossError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\ninterrupted: {args.out} keeps the checkpoint of the last finished epoch; "
            "run the same command again to resume",
            file=sys.stderr,
        )
        return 130

    if main_process:
        print(format_per_class(metrics))
    return 0


def format_per_class(metrics: dict) -> str:
    """Format the per-class AP table of a metrics dict, one class per line, then the means."""
    width = max((len(name) for name in metrics["per_class_ap"]), default=5)
    lines = [f"{'class':<{width}}  {'n_gt':>5}  {'AP07':>6}  {'AP area':>7}"]
    for name, ap in metrics["per_class_ap"].items():
        ap_area = metrics["per_class_ap_area"][name]
        lines.append(f"{name:<{width}}  {metrics['n_gt'][name]:>5}  {_cell(ap):>6}  {_cell(ap_area):>7}")
    lines.append(f"{'mAP':<{width}}  {'':>5}  {_cell(metrics['map_voc07']):>6}  {_cell(metrics['map_area']):>7}")
    lines.append(
        f"run {metrics['run_id']}: mAP {_cell(metrics['map_voc07'])}, training {metrics['train_time_s']:.1f} s, "
        f"total {metrics['wall_time_s']:.1f} s on {metrics['device']}"
    )
    return "\n".join(lines)


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


if __name__ == "__main__":
    sys.exit(main())
