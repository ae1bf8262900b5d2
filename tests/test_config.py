"""Tests of RunConfig: validation messages, coercion, round trips, run ids and profiles."""

import dataclasses
import hashlib
import json

import pytest

from yolonb.config import (
    EXECUTION_FIELDS,
    FIELD_NAMES,
    PROFILES,
    ConfigError,
    RunConfig,
    apply_overrides,
    get_profile,
)

FINGERPRINT = "0123456789abcdef"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("alpha", 1.5, "RunConfig.alpha: invalid value 1.5; expected a value in [0.0, 1.0]"),
        ("alpha", -0.1, "RunConfig.alpha: invalid value -0.1; expected a value in [0.0, 1.0]"),
        ("gamma", -1.0, "RunConfig.gamma: invalid value -1.0; expected a value in [0.0, 10.0]"),
        ("neck", "fpm", "RunConfig.neck: invalid value 'fpm'; expected one of 'fpn', 'bifpn', 'augfpn', 'single' (did you mean 'fpn'?)"),
        ("cls_loss", "focall", "(did you mean 'focal'?)"),
        ("upsample", "cubic", "RunConfig.upsample: invalid value 'cubic'; expected one of 'nearest', 'bilinear'"),
        ("obj_loss", "l1", "RunConfig.obj_loss: invalid value 'l1'; expected one of 'mse', 'bce'"),
        ("box_loss", "giou", "RunConfig.box_loss: invalid value 'giou'; expected one of 'yolo', 'dfl'"),
        ("assign_rule", "atss", "RunConfig.assign_rule: invalid value 'atss'; expected one of 'center', 'center3'"),
        ("augment", "mosaic", "RunConfig.augment: invalid value 'mosaic'; expected one of 'ssd', 'shapes', 'none'"),
        ("optimizer", "adam", "RunConfig.optimizer: invalid value 'adam'; expected one of 'sgd', 'adamw' (did you mean 'adamw'?)"),
        ("lr_schedule", "linear", "RunConfig.lr_schedule: invalid value 'linear'; expected one of 'step', 'cosine'"),
        ("amp", "fp8", "RunConfig.amp: invalid value 'fp8'; expected one of 'auto', 'off', 'bf16', 'fp16'"),
        ("input_size", 100, "RunConfig.input_size: invalid value 100; expected a multiple of 32 in [32, 2048]"),
        ("input_size", 0, "RunConfig.input_size: invalid value 0; expected a multiple of 32"),
        ("multiscale_sizes", (96, 120), "RunConfig.multiscale_sizes: invalid value 120; expected a multiple of 32"),
        ("epochs", 0, "RunConfig.epochs: invalid value 0; expected a value >= 1"),
        ("batch_size", 0, "RunConfig.batch_size: invalid value 0; expected a value >= 1"),
        ("lr", 0.0, "RunConfig.lr: invalid value 0.0; expected a value in (0.0, 10.0]"),
        ("momentum", 1.0, "RunConfig.momentum: invalid value 1.0; expected a value in [0.0, 1.0)"),
        ("weight_decay", -0.01, "RunConfig.weight_decay: invalid value -0.01; expected a value in [0.0, 1.0]"),
        ("warmup_epochs", -1, "RunConfig.warmup_epochs: invalid value -1.0; expected a value >= 0.0"),
        ("lr_steps", (90, 60), "RunConfig.lr_steps: invalid value (90, 60); expected strictly increasing epoch numbers >= 1"),
        ("lr_steps", (0,), "RunConfig.lr_steps: invalid value (0,)"),
        ("lr_step_factor", 0.0, "RunConfig.lr_step_factor: invalid value 0.0; expected a value in (0.0, 1.0]"),
        ("grad_clip", 0.0, "RunConfig.grad_clip: invalid value 0.0; expected a value > 0.0"),
        ("poly_pow", 0, "RunConfig.poly_pow: invalid value 0.0; expected a value in (0.0, 10.0]"),
        ("reg_max", 0, "RunConfig.reg_max: invalid value 0; expected a value in [1, 64]"),
        ("cls_weight", -1.0, "RunConfig.cls_weight: invalid value -1.0; expected a value >= 0.0"),
        ("neck_channels", 4, "RunConfig.neck_channels: invalid value 4; expected a value in [8, 1024]"),
        ("bifpn_repeats", 0, "RunConfig.bifpn_repeats: invalid value 0; expected a value in [1, 8]"),
        ("seed", -1, "RunConfig.seed: invalid value -1; expected a value >= 0"),
        ("device", "gpu", "RunConfig.device: invalid value 'gpu'; expected 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("workers", -1, "RunConfig.workers: invalid value -1; expected a value in [0, 64]"),
        ("eval_interval", -1, "RunConfig.eval_interval: invalid value -1; expected a value >= 0"),
        ("conf_threshold", 1.0, "RunConfig.conf_threshold: invalid value 1.0; expected a value in [0.0, 1.0)"),
        ("nms_threshold", 0.0, "RunConfig.nms_threshold: invalid value 0.0; expected a value in (0.0, 1.0]"),
        ("max_detections", 0, "RunConfig.max_detections: invalid value 0; expected a value >= 1"),
        ("train_sets", (), "RunConfig.train_sets: invalid value (); expected at least one image set"),
        ("test_sets", ("../test",), "RunConfig.test_sets: invalid image set '../test'; expected 'SPLIT' or 'YEAR/SPLIT'"),
        ("classes", ("a", "a"), "RunConfig.classes: invalid value ('a', 'a'); class names must be unique"),
        ("epochs", "ten", "RunConfig.epochs: invalid value 'ten'; expected an integer"),
        ("epochs", True, "RunConfig.epochs: invalid value True; expected an integer"),
        ("lr", "fast", "RunConfig.lr: invalid value 'fast'; expected a number"),
        ("lr", float("nan"), "RunConfig.lr: invalid value nan; expected a finite number"),
        ("channels_last", "maybe", "RunConfig.channels_last: invalid value 'maybe'; expected true or false"),
        ("neck", None, "RunConfig.neck: invalid value None; expected a string"),
    ],
)
def test_invalid_value_message(field, value, message):
    with pytest.raises(ConfigError) as raised:
        RunConfig(**{field: value})
    assert message in str(raised.value)


def test_year_image_set_needs_data_root():
    with pytest.raises(ConfigError, match=r"RunConfig.train_sets: image set '2007/trainval' names a VOC year, but data_root is None"):
        RunConfig(train_sets=("2007/trainval",))

    config = RunConfig(data_root="/data/VOCdevkit", train_sets=("2007/trainval",), test_sets=("2007/test",))
    assert config.train_sets == ("2007/trainval",)


def test_lists_become_tuples_and_hashable():
    config = RunConfig(multiscale_sizes=[96, 128], lr_steps=[2, 4], train_sets=["train", "val"], classes=["b", "a"])

    assert config.multiscale_sizes == (96, 128)
    assert config.lr_steps == (2, 4)
    assert config.train_sets == ("train", "val")
    assert config.classes == ("b", "a")
    assert hash(config) == hash(RunConfig(multiscale_sizes=(96, 128), lr_steps=(2, 4), train_sets=("train", "val"), classes=("b", "a")))


def test_numbers_coerced_to_field_type():
    config = RunConfig(lr="2e-3", alpha=1, epochs=5.0, pretrained="none", grad_clip="null", channels_last="false")

    assert config.lr == 0.002 and isinstance(config.lr, float)
    assert config.alpha == 1.0 and isinstance(config.alpha, float)
    assert config.epochs == 5 and isinstance(config.epochs, int)
    assert config.pretrained is None
    assert config.grad_clip is None
    assert config.channels_last is False


def test_path_data_root_stored_as_string(tmp_path):
    config = RunConfig(data_root=tmp_path)

    assert config.data_root == str(tmp_path)


def test_frozen():
    config = RunConfig()

    with pytest.raises(dataclasses.FrozenInstanceError):
        config.lr = 0.1


def test_round_trip_through_json():
    config = get_profile("voc", cls_loss="poly_focal", poly_scale=-1.0, poly_pow=3, classes=("cat", "dog"))

    data = json.loads(json.dumps(config.to_dict()))

    assert data["multiscale_sizes"] == [320, 352, 384, 416, 448, 480, 512, 544, 576, 608]
    assert RunConfig.from_dict(data) == config


def test_to_dict_lists_every_field():
    assert list(RunConfig().to_dict()) == list(FIELD_NAMES)


def test_from_dict_unknown_key_names_closest():
    with pytest.raises(ConfigError, match=r"RunConfig has no field 'alpah'; did you mean 'alpha'\?"):
        RunConfig.from_dict({"alpah": 0.5})


def test_replace_validates_and_rejects_unknown():
    config = RunConfig()

    assert config.replace(alpha=0.5).alpha == 0.5
    with pytest.raises(ConfigError, match="RunConfig.alpha: invalid value 2.0"):
        config.replace(alpha=2.0)
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        config.replace(epoch=3)


def test_run_id_is_hash_of_canonical_json():
    config = RunConfig()
    fields = config.to_dict()
    for name in (*EXECUTION_FIELDS, "data_root"):
        fields.pop(name)
    canonical = json.dumps({"config": fields, "data_fingerprint": FINGERPRINT}, sort_keys=True, separators=(",", ":"))

    expected = hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:12]

    assert config.run_id(FINGERPRINT) == expected


def test_run_id_stable():
    config = get_profile("quick", cls_loss="focal", alpha=0.5)
    rebuilt = RunConfig.from_dict(json.loads(json.dumps(config.to_dict())))

    assert len(config.run_id(FINGERPRINT)) == 12
    assert rebuilt.run_id(FINGERPRINT) == config.run_id(FINGERPRINT)
    assert RunConfig(lr=1e-3).run_id(FINGERPRINT) == RunConfig(lr="0.001").run_id(FINGERPRINT)


@pytest.mark.parametrize(
    "overrides",
    [
        {"device": "cpu"},
        {"workers": 3},
        {"amp": "off"},
        {"channels_last": False},
        {"eval_interval": 5},
    ],
)
def test_run_id_ignores_execution_fields(overrides):
    config = RunConfig()

    assert config.replace(**overrides).run_id(FINGERPRINT) == config.run_id(FINGERPRINT)


def test_run_id_ignores_data_path():
    first = RunConfig(data_root="/a/VOCdevkit", synthetic_n_trainval=10)
    second = RunConfig(data_root="/b/VOCdevkit", synthetic_n_trainval=20)

    assert first.run_id(FINGERPRINT) == second.run_id(FINGERPRINT)


@pytest.mark.parametrize(
    "overrides",
    [
        {"lr": 3e-3},
        {"frozen_stages": 0},
        {"alpha": 0.5},
        {"neck": "bifpn"},
        {"cls_loss": "focal"},
        {"seed": 1},
        {"epochs": 31},
        {"assign_rule": "center"},
        {"synthetic_seed": 1},
        {"multiscale_sizes": (96, 128)},
    ],
)
def test_run_id_changes_with_experiment(overrides):
    config = RunConfig()

    assert config.replace(**overrides).run_id(FINGERPRINT) != config.run_id(FINGERPRINT)


def test_run_id_changes_with_fingerprint():
    config = RunConfig()

    assert config.run_id(FINGERPRINT) != config.run_id("fedcba9876543210")


def test_quick_profile_is_default():
    quick = get_profile("quick")

    assert quick == RunConfig()
    assert quick.data_root is None
    assert quick.optimizer == "adamw"
    assert quick.lr == 2e-3
    assert quick.frozen_stages == 2
    assert quick.weight_decay == 0.05
    assert quick.lr_schedule == "cosine"
    assert quick.warmup_epochs > 0
    assert quick.batch_size == 16
    assert quick.augment == "shapes"
    assert quick.assign_rule == "center3"
    assert quick.cls_weight == 2.0
    assert quick.pretrained is False
    assert quick.amp == "auto"
    assert quick.channels_last is True


def test_voc_profile_is_published_recipe():
    voc = get_profile("voc")

    assert voc.train_sets == ("2007/trainval", "2012/trainval")
    assert voc.test_sets == ("2007/test",)
    assert voc.input_size == 416
    assert voc.multiscale_sizes == tuple(range(320, 609, 32))
    assert voc.batch_size == 32
    assert voc.optimizer == "sgd"
    assert voc.lr == 1e-3
    assert voc.momentum == 0.9
    assert voc.weight_decay == 5e-4
    assert voc.epochs == 160
    assert voc.lr_schedule == "step"
    assert voc.lr_steps == (60, 90)
    assert voc.augment == "ssd"
    assert voc.pretrained is True
    assert voc.assign_rule == "center"
    assert (voc.obj_loss, voc.cls_loss, voc.box_loss) == ("mse", "ce", "yolo")
    assert voc.cls_weight == 1.0


def test_smoke_profile_is_tiny():
    smoke = get_profile("smoke")

    assert smoke.input_size == 64
    assert smoke.epochs <= 2
    assert smoke.synthetic_n_trainval <= 32


def test_get_profile_overrides_and_unknown_name():
    assert get_profile("smoke", epochs=1).epochs == 1
    assert set(PROFILES) == {"quick", "voc", "smoke"}
    with pytest.raises(ConfigError, match=r"unknown profile 'quik'; expected one of 'quick', 'voc', 'smoke' \(did you mean 'quick'\?\)"):
        get_profile("quik")


def test_apply_overrides_parses_text():
    config = apply_overrides(
        RunConfig(),
        ["epochs=3", "multiscale_sizes=96,128", "grad_clip=none", "pretrained=true", "cls_loss=focal", "lr=5e-4"],
    )

    assert config.epochs == 3
    assert config.multiscale_sizes == (96, 128)
    assert config.grad_clip is None
    assert config.pretrained is True
    assert config.cls_loss == "focal"
    assert config.lr == 5e-4


def test_apply_overrides_rejects_malformed():
    with pytest.raises(ConfigError, match=r"invalid override 'epochs'; expected FIELD=VALUE"):
        apply_overrides(RunConfig(), ["epochs"])
    with pytest.raises(ConfigError, match="did you mean 'input_size'"):
        apply_overrides(RunConfig(), ["inputsize=64"])
