"""Run configuration: one frozen dataclass per training run, named profiles and run ids.

A `RunConfig` contains every knob of one training run. It is validated on creation, so
a bad value fails before any data is read or any training starts. `to_dict`/`from_dict`
round-trip it through JSON or YAML, and `run_id` hashes it together with the data-set
fingerprint into the short id that names the run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

NECKS = ("fpn", "bifpn", "augfpn", "single")
UPSAMPLE_MODES = ("nearest", "bilinear")
OBJ_LOSSES = ("mse", "bce")
CLS_LOSSES = (
    "ce",
    "focal",
    "focal_softmax_neg",
    "focal_sigmoid_neg",
    "poly_focal",
    "varifocal",
    "quality_focal",
)
BOX_LOSSES = ("yolo", "dfl")
ASSIGN_RULES = ("center", "center3")
AUGMENTATIONS = ("ssd", "shapes", "none")
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("step", "cosine")
AMP_MODES = ("auto", "off", "bf16", "fp16")

# These fields choose where and how fast a run executes, not which experiment it is:
# the same experiment on another device, precision or evaluation interval keeps its id.
EXECUTION_FIELDS = ("device", "workers", "amp", "channels_last", "eval_interval")

# These fields only shape the generated data set, which the data fingerprint already
# identifies. They are left out of the id when data_root names real data.
SYNTHETIC_FIELDS = ("synthetic_n_trainval", "synthetic_n_test", "synthetic_seed")

_IMAGE_SET_PATTERN = re.compile(r"^(\d{4}/)?[A-Za-z0-9_.-]+$")
_DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class ConfigError(ValueError):
    """An invalid run configuration: the message names the field, the value and the valid choices."""


@dataclass(frozen=True)
class RunConfig:
    """Every knob of one training run; the defaults are the `quick` profile.

    Sizes are in pixels, learning rates per optimizer step, epochs count passes over
    the training split. Lists given for tuple fields are stored as tuples, so a
    configuration is hashable.
    """

    # Data. data_root None selects the embedded synthetic data set.
    data_root: str | None = None
    train_sets: tuple[str, ...] = ("trainval",)
    test_sets: tuple[str, ...] = ("test",)
    classes: tuple[str, ...] | None = None
    synthetic_n_trainval: int = 480
    synthetic_n_test: int = 120
    synthetic_seed: int = 0

    # Network.
    neck: str = "fpn"
    upsample: str = "nearest"
    neck_channels: int | None = None  # None: the neck's own default width
    bifpn_repeats: int = 2
    pretrained: bool | None = False
    # Epochs of backbone pretraining on object crops of the training split when no ImageNet
    # weights are loaded (yolonb.engine.pretrain); 0 trains the backbone from scratch.
    crop_pretrain_epochs: int = 8
    # The backbone's learning rate is lr times this; set 1.0 for a backbone from scratch.
    backbone_lr_factor: float = 0.2
    # Leading backbone stages kept fixed, weights and BatchNorm statistics: 0 none, 1 the
    # stem, 2 the stem and layer1 (as Detectron2's Mask R-CNN R50-FPN), up to 5 (all).
    frozen_stages: int = 2

    # Loss, passed on as yolonb.losses.detection.LossSpec.
    obj_loss: str = "mse"
    cls_loss: str = "ce"
    alpha: float = 0.25
    gamma: float = 2.0
    poly_scale: float = 1.0
    poly_pow: float = 1.0
    qfl_beta: float = 2.0
    box_loss: str = "yolo"
    reg_max: int = 16
    dfl_weight: float = 0.25
    giou_weight: float = 2.0
    obj_weight: float = 1.0
    cls_weight: float = 2.0
    box_weight: float = 1.0
    assign_rule: str = "center3"

    # Training.
    augment: str = "shapes"
    input_size: int = 224
    multiscale_sizes: tuple[int, ...] = ()
    epochs: int = 4
    batch_size: int = 16
    optimizer: str = "adamw"
    lr: float = 2e-3
    momentum: float = 0.9  # SGD momentum, or beta1 of AdamW
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    lr_schedule: str = "cosine"
    lr_steps: tuple[int, ...] = ()
    lr_step_factor: float = 0.1
    grad_clip: float | None = 10.0
    seed: int = 0

    # Execution.
    device: str = "auto"
    amp: str = "auto"
    channels_last: bool = True
    workers: int | None = None

    # Evaluation. eval_interval 0 evaluates after the last epoch only.
    eval_interval: int = 0
    conf_threshold: float = 0.01
    nms_threshold: float = 0.5
    max_detections: int = 100

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = _coerce(spec.name, spec.type, getattr(self, spec.name))
            object.__setattr__(self, spec.name, value)
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-ready dict (tuples become lists)."""
        result = {}
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            result[spec.name] = list(value) if isinstance(value, tuple) else value
        return result

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build a configuration from a dict such as `to_dict` writes; unknown keys raise ConfigError."""
        _check_field_names(data.keys())
        return cls(**dict(data))

    def replace(self, **overrides: Any) -> RunConfig:
        """Return a copy with the given fields changed, validated like a new configuration."""
        _check_field_names(overrides.keys())
        return dataclasses.replace(self, **overrides)

    def run_id(self, data_fingerprint: str) -> str:
        """Return 12 hex digits of the SHA-256 of the experiment's fields and the data fingerprint.

        The execution fields (device, workers, amp, channels_last, eval_interval) and
        data_root are left out, so the same experiment gets the same id on any machine.
        The fingerprint identifies the data instead of its path.
        """
        fields = self.to_dict()
        for name in EXECUTION_FIELDS:
            fields.pop(name)
        fields.pop("data_root")
        if self.data_root is not None:
            for name in SYNTHETIC_FIELDS:
                fields.pop(name)

        payload = {"config": fields, "data_fingerprint": data_fingerprint}
        canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]

    def loss_spec_fields(self) -> dict[str, Any]:
        """Return the keyword arguments of yolonb.losses.detection.LossSpec taken from this configuration."""
        return {name: getattr(self, name) for name in LOSS_FIELDS}


LOSS_FIELDS = (
    "obj_loss",
    "cls_loss",
    "alpha",
    "gamma",
    "poly_scale",
    "poly_pow",
    "qfl_beta",
    "box_loss",
    "reg_max",
    "dfl_weight",
    "giou_weight",
    "obj_weight",
    "cls_weight",
    "box_weight",
    "assign_rule",
)

FIELD_NAMES = tuple(spec.name for spec in dataclasses.fields(RunConfig))


# ---------------------------------------------------------------------------
# Coercion: YAML, papermill parameters and the command line pass lists, ints for
# floats, and strings. Each field is converted to one canonical type, so equal
# configurations compare, hash and serialise equally.


def _coerce(name: str, annotation: str, value: Any) -> Any:
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()

    if optional and (value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null", ""))):
        return None
    if value is None:
        raise ConfigError(f"RunConfig.{name}: invalid value None; expected {_describe_type(base)}")

    if base == "str":
        if isinstance(value, Path):
            return str(value)
        if not isinstance(value, str):
            raise ConfigError(f"RunConfig.{name}: invalid value {value!r}; expected a string")
        return value
    if base == "int":
        return _to_int(name, value)
    if base == "float":
        return _to_float(name, value)
    if base == "bool":
        return _to_bool(name, value)
    if base.startswith("tuple["):
        element = base[len("tuple[") : -len(", ...]")]
        items = _to_items(name, value)
        if element == "int":
            return tuple(_to_int(name, item) for item in items)
        return tuple(_coerce(name, "str", item) for item in items)
    raise AssertionError(f"RunConfig.{name}: no coercion for annotation {annotation!r}")


def _describe_type(base: str) -> str:
    return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}.get(
        base, "a list"
    )


def _to_items(name: str, value: Any) -> list:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ConfigError(f"RunConfig.{name}: invalid value {value!r}; expected a list or a comma-separated string")


def _to_int(name: str, value: Any) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"RunConfig.{name}: invalid value {value!r}; expected an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigError(f"RunConfig.{name}: invalid value {value!r}; expected an integer")


def _to_float(name: str, value: Any) -> float:
    # PyYAML reads "1e-3" as a string (YAML 1.1 needs "1.0e-3"), so numeric strings are accepted.
    if isinstance(value, bool):
        raise ConfigError(f"RunConfig.{name}: invalid value {value!r}; expected a number")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise ConfigError(f"RunConfig.{name}: invalid value {value!r}; expected a number") from None
    else:
        raise ConfigError(f"RunConfig.{name}: invalid value {value!r}; expected a number")
    if not math.isfinite(number):
        raise ConfigError(f"RunConfig.{name}: invalid value {value!r}; expected a finite number")
    return number


def _to_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "yes", "on", "1"):
            return True
        if text in ("false", "no", "off", "0"):
            return False
    raise ConfigError(f"RunConfig.{name}: invalid value {value!r}; expected true or false")


# ---------------------------------------------------------------------------
# Validation of ranges, names and combinations.


def _validate(config: RunConfig) -> None:
    _check_choice(config, "neck", NECKS)
    _check_choice(config, "upsample", UPSAMPLE_MODES)
    _check_choice(config, "obj_loss", OBJ_LOSSES)
    _check_choice(config, "cls_loss", CLS_LOSSES)
    _check_choice(config, "box_loss", BOX_LOSSES)
    _check_choice(config, "assign_rule", ASSIGN_RULES)
    _check_choice(config, "augment", AUGMENTATIONS)
    _check_choice(config, "optimizer", OPTIMIZERS)
    _check_choice(config, "lr_schedule", LR_SCHEDULES)
    _check_choice(config, "amp", AMP_MODES)

    _check_image_sets(config, "train_sets")
    _check_image_sets(config, "test_sets")
    if config.classes is not None:
        if not config.classes:
            raise ConfigError("RunConfig.classes: invalid value (); expected None (classes from the data) or class names")
        if len(set(config.classes)) != len(config.classes):
            raise ConfigError(f"RunConfig.classes: invalid value {config.classes!r}; class names must be unique")

    _check_range(config, "synthetic_n_trainval", low=1)
    _check_range(config, "synthetic_n_test", low=1)
    _check_range(config, "synthetic_seed", low=0)
    if config.neck_channels is not None:
        _check_range(config, "neck_channels", low=8, high=1024)
    _check_range(config, "bifpn_repeats", low=1, high=8)

    _check_range(config, "alpha", low=0.0, high=1.0)
    _check_range(config, "gamma", low=0.0, high=10.0)
    _check_range(config, "poly_scale", low=-10.0, high=10.0)
    _check_range(config, "poly_pow", low=0.0, high=10.0, low_open=True)
    _check_range(config, "qfl_beta", low=0.0, high=10.0)
    _check_range(config, "reg_max", low=1, high=64)
    for name in ("dfl_weight", "giou_weight", "obj_weight", "cls_weight", "box_weight"):
        _check_range(config, name, low=0.0)

    _check_multiple_of_32(config, "input_size", config.input_size)
    for size in config.multiscale_sizes:
        _check_multiple_of_32(config, "multiscale_sizes", size)
    _check_range(config, "epochs", low=1)
    _check_range(config, "crop_pretrain_epochs", low=0)
    _check_range(config, "backbone_lr_factor", low=0.0, high=1.0)
    _check_range(config, "frozen_stages", low=0, high=5)
    _check_range(config, "batch_size", low=1)
    _check_range(config, "lr", low=0.0, high=10.0, low_open=True)
    _check_range(config, "momentum", low=0.0, high=1.0, high_open=True)
    _check_range(config, "weight_decay", low=0.0, high=1.0)
    _check_range(config, "warmup_epochs", low=0.0)
    _check_range(config, "lr_step_factor", low=0.0, high=1.0, low_open=True)
    steps = config.lr_steps
    if any(step < 1 for step in steps) or list(steps) != sorted(set(steps)):
        raise ConfigError(
            f"RunConfig.lr_steps: invalid value {steps!r}; expected strictly increasing epoch numbers >= 1"
        )
    if config.grad_clip is not None:
        _check_range(config, "grad_clip", low=0.0, low_open=True)
    _check_range(config, "seed", low=0)

    if not _DEVICE_PATTERN.match(config.device):
        raise ConfigError(f"RunConfig.device: invalid value {config.device!r}; expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if config.workers is not None:
        _check_range(config, "workers", low=0, high=64)

    _check_range(config, "eval_interval", low=0)
    _check_range(config, "conf_threshold", low=0.0, high=1.0, high_open=True)
    _check_range(config, "nms_threshold", low=0.0, high=1.0, low_open=True)
    _check_range(config, "max_detections", low=1)


def _check_choice(config: RunConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value in choices:
        return
    listed = ", ".join(repr(choice) for choice in choices)
    message = f"RunConfig.{name}: invalid value {value!r}; expected one of {listed}"
    close = difflib.get_close_matches(str(value), choices, n=1)
    if close:
        message += f" (did you mean {close[0]!r}?)"
    raise ConfigError(message)


def _check_range(
    config: RunConfig,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    value = getattr(config, name)
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if not (too_low or too_high):
        return

    if high is None:
        expected = f"{'>' if low_open else '>='} {low}"
    else:
        expected = f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    raise ConfigError(f"RunConfig.{name}: invalid value {value!r}; expected a value {expected}")


def _check_multiple_of_32(config: RunConfig, name: str, size: int) -> None:
    # The coarsest feature map has stride 32, so every input side must divide by 32.
    if size < 32 or size > 2048 or size % 32:
        raise ConfigError(
            f"RunConfig.{name}: invalid value {size!r}; expected a multiple of 32 in [32, 2048] "
            f"(the network's largest stride is 32)"
        )


def _check_image_sets(config: RunConfig, name: str) -> None:
    sets = getattr(config, name)
    if not sets:
        raise ConfigError(f"RunConfig.{name}: invalid value (); expected at least one image set such as 'trainval'")
    for image_set in sets:
        if not _IMAGE_SET_PATTERN.match(image_set):
            raise ConfigError(
                f"RunConfig.{name}: invalid image set {image_set!r}; expected 'SPLIT' or 'YEAR/SPLIT', "
                f"e.g. 'trainval' or '2007/trainval'"
            )
        if config.data_root is None and "/" in image_set:
            raise ConfigError(
                f"RunConfig.{name}: image set {image_set!r} names a VOC year, but data_root is None and "
                f"the embedded synthetic data set has no years; set data_root to a VOCdevkit folder "
                f"(--data PATH) or use plain split names"
            )


def _check_field_names(names: Iterable[str]) -> None:
    for name in names:
        if name not in FIELD_NAMES:
            message = f"RunConfig has no field {name!r}"
            close = difflib.get_close_matches(name, FIELD_NAMES, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
            raise ConfigError(message)


# ---------------------------------------------------------------------------
# Overrides given as text, as on the command line: "field=value".


def apply_overrides(config: RunConfig, assignments: Iterable[str]) -> RunConfig:
    """Return `config` with each "field=value" assignment applied.

    Values are text, parsed by the field's type: numbers, true/false, none, and
    comma-separated lists for tuple fields (e.g. "multiscale_sizes=96,128,160").
    """
    overrides: dict[str, str] = {}
    for assignment in assignments:
        name, separator, value = assignment.partition("=")
        if not separator or not name.strip():
            raise ConfigError(f"invalid override {assignment!r}; expected FIELD=VALUE, e.g. epochs=10")
        overrides[name.strip()] = value.strip()
    return config.replace(**overrides)


# ---------------------------------------------------------------------------
# Profiles.

# The defaults of RunConfig: the embedded synthetic data at 224 pixels, AdamW with
# warm-up and a cosine schedule, bf16 autocast on the CPU, and the centre-plus-two-
# neighbours assignment. The epochs are sized so one reference run trains in well under
# a minute on a 2-core CPU (see benchmarks/README.md). From scratch the class loss
# stays near that of predicting the class frequencies alone (mAP 0.12). So the backbone
# is first pretrained on object crops, once per data set, then trained at a fifth of
# the learning rate with its stem and layer1 fixed. Measured on the embedded data, one
# run each: 8 pretraining epochs beat 4, lr 2e-3 beat 1e-3 and 3e-3, and fixing the two
# stages cut a fifth of the training time at the same mAP. The input size then mattered
# most: the images are 128 to 192 pixels, and at 5 epochs the reference run reached mAP
# 0.41 at 160 pixels, 0.51 at 192, 0.59 at 224 and 0.64 at 256. 224 pixels for 4 epochs
# (0.53 and 0.55 over two seeds) beat 160 pixels for 8 epochs (0.51) in less time.
_QUICK = RunConfig()

# The published recipe: VOC2007+2012 trainval, VOC2007 test, 416 pixels, SGD at lr 1e-3
# with steps at epochs 60 and 90, multi-scale training, SSD augmentation, an ImageNet
# backbone and the original centre-cell assignment. data_root is a placeholder relative
# to the working directory; pass the real VOCdevkit folder with --data or data_root=...
_VOC = RunConfig(
    data_root="VOCdevkit",
    train_sets=("2007/trainval", "2012/trainval"),
    test_sets=("2007/test",),
    input_size=416,
    multiscale_sizes=tuple(range(320, 608 + 1, 32)),
    augment="ssd",
    epochs=160,
    batch_size=32,
    optimizer="sgd",
    lr=1e-3,
    momentum=0.9,
    weight_decay=5e-4,
    warmup_epochs=0.0,
    lr_schedule="step",
    lr_steps=(60, 90),
    grad_clip=None,
    pretrained=True,
    assign_rule="center",
    cls_weight=1.0,
    eval_interval=10,
    crop_pretrain_epochs=0,
    backbone_lr_factor=1.0,
    frozen_stages=0,
)

# A few seconds per run, for tests: tiny images, a tiny data set, two epochs.
_SMOKE = _QUICK.replace(
    synthetic_n_trainval=16,
    synthetic_n_test=8,
    input_size=64,
    epochs=2,
    batch_size=8,
    neck_channels=32,
    warmup_epochs=0.5,
    eval_interval=1,
    crop_pretrain_epochs=0,
    backbone_lr_factor=1.0,
    frozen_stages=0,
)

PROFILES: dict[str, RunConfig] = {"quick": _QUICK, "voc": _VOC, "smoke": _SMOKE}


def get_profile(name: str, **overrides: Any) -> RunConfig:
    """Return the named profile ("quick", "voc" or "smoke") with the given fields replaced."""
    if name not in PROFILES:
        listed = ", ".join(repr(profile) for profile in PROFILES)
        message = f"unknown profile {name!r}; expected one of {listed}"
        close = difflib.get_close_matches(name, PROFILES, n=1)
        if close:
            message += f" (did you mean {close[0]!r}?)"
        raise ConfigError(message)
    return PROFILES[name].replace(**overrides)
