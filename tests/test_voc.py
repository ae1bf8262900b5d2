"""VOC reader: layout, errors, class lists, fingerprint, image modes, dataset, CLI, real data."""

import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from torchvision import tv_tensors

from yolonb.data import (
    VOC_CLASSES,
    DataError,
    DetectionDataset,
    available_image_sets,
    eval_transform,
    load_voc,
    load_voc_splits,
    read_image,
)
from yolonb.data.__main__ import main as data_main

REPO_ROOT = Path(__file__).resolve().parents[1]


def box_xml(name, xmin, ymin, xmax, ymax, difficult=0):
    return (
        f"<object><name>{name}</name><difficult>{difficult}</difficult>"
        f"<bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin><xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>"
    )


def annotation_xml(*objects, width=64, height=48):
    size = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"<annotation><filename>x.jpg</filename>{size}{''.join(objects)}</annotation>"


def make_year_folder(root: Path, splits: dict, annotations: dict, name="VOC2007", size=(64, 48)) -> Path:
    """Write a VOC year folder with a JPEG per annotated id.

    Args:
        splits: split name -> list of ids (written to ImageSets/Main/<split>.txt).
        annotations: id -> XML text.
    """
    year = root / name
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (year / sub).mkdir(parents=True, exist_ok=True)
    for image_id, xml in annotations.items():
        (year / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
        PIL.Image.new("RGB", size, (200, 100, 50)).save(year / "JPEGImages" / f"{image_id}.jpg")
    for split, ids in splits.items():
        (year / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return year


@pytest.fixture
def devkit(tmp_path) -> Path:
    """A VOCdevkit with VOC2007 (trainval 000001-000002, test 000003) and VOC2012 (trainval 2012_000001)."""
    root = tmp_path / "VOCdevkit"
    make_year_folder(
        root,
        {"trainval": ["000001", "000002"], "test": ["000003"]},
        {
            "000001": annotation_xml(box_xml("dog", 11, 21, 30, 40), box_xml("person", 1, 1, 5, 9, difficult=1)),
            "000002": annotation_xml(box_xml("cat", 2, 3, 20, 30)),
            "000003": annotation_xml(box_xml("dog", 5, 5, 15, 15)),
        },
    )
    make_year_folder(
        root,
        {"trainval": ["2012_000001"]},
        {"2012_000001": annotation_xml(box_xml("bird", 1, 1, 64, 48))},
        name="VOC2012",
    )
    return root


# --- layout and image sets


def test_load_two_years(devkit):
    split = load_voc(devkit, ["2007/trainval", "2012/trainval"])
    assert [r.image_id for r in split.records] == ["000001", "000002", "2012_000001"]
    assert split.classes == VOC_CLASSES
    assert split.is_voc
    record = split.records[0]
    np.testing.assert_array_equal(record.boxes, [[10, 20, 30, 40], [0, 0, 5, 9]])
    assert record.boxes.dtype == np.float32
    assert record.labels.tolist() == [VOC_CLASSES.index("dog"), VOC_CLASSES.index("person")]
    assert record.labels.dtype == np.int64
    assert record.difficult.tolist() == [False, True]
    assert (record.width, record.height) == (64, 48)
    assert record.annotation_path == devkit / "VOC2007" / "Annotations" / "000001.xml"


def test_bare_split_of_year_folder(devkit):
    split = load_voc(devkit / "VOC2012", "trainval")
    assert [r.image_id for r in split.records] == ["2012_000001"]


def test_year_name_on_year_folder(devkit):
    split = load_voc(devkit / "VOC2007", "2007/test")
    assert [r.image_id for r in split.records] == ["000003"]


def test_folder_above_devkit(devkit):
    split = load_voc(devkit.parent, "2007/test")
    assert [r.image_id for r in split.records] == ["000003"]


def test_bare_split_ambiguous_with_two_years(devkit):
    with pytest.raises(DataError, match=r"ambiguous.*VOC2007, VOC2012.*Fix: name the year, e.g. 2007/trainval"):
        load_voc(devkit, "trainval")


def test_unknown_year(devkit):
    with pytest.raises(DataError, match=r"year folder VOC2010 .* not found \(year folders: VOC2007, VOC2012\)"):
        load_voc(devkit, "2010/trainval")


def test_duplicate_ids_loaded_once(devkit):
    split = load_voc(devkit, ["2007/trainval", "2007/trainval", "2007/test"])
    assert [r.image_id for r in split.records] == ["000001", "000002", "000003"]


def test_available_image_sets(devkit):
    (devkit / "VOC2007" / "ImageSets" / "Main" / "dog_trainval.txt").write_text("000001  1\n")
    assert available_image_sets(devkit) == ["2007/trainval", "2007/test", "2012/trainval"]
    assert available_image_sets(devkit / "VOC2007") == ["trainval", "test"]


def test_class_specific_split_file_first_column(devkit):
    (devkit / "VOC2007" / "ImageSets" / "Main" / "dog_trainval.txt").write_text("000001  1\n000002 -1\n")
    split = load_voc(devkit, "2007/dog_trainval")
    assert [r.image_id for r in split.records] == ["000001", "000002"]


# --- errors


def test_missing_image(devkit):
    (devkit / "VOC2007" / "JPEGImages" / "000002.jpg").unlink()
    with pytest.raises(DataError, match=r"image for id '000002' .* not found: expected .*JPEGImages/000002\.jpg.*Fix"):
        load_voc(devkit, "2007/trainval")


def test_missing_annotation(devkit):
    (devkit / "VOC2007" / "Annotations" / "000002.xml").unlink()
    with pytest.raises(DataError, match=r"annotation file not found: .*Annotations/000002\.xml\. Fix"):
        load_voc(devkit, "2007/trainval")


def test_malformed_xml(devkit):
    (devkit / "VOC2007" / "Annotations" / "000002.xml").write_text("<annotation><object></annotation>")
    with pytest.raises(DataError, match=r"000002\.xml: malformed or truncated XML \(mismatched tag"):
        load_voc(devkit, "2007/trainval")


def test_truncated_xml(devkit):
    path = devkit / "VOC2007" / "Annotations" / "000002.xml"
    path.write_bytes(path.read_bytes()[:60])
    with pytest.raises(DataError, match=r"000002\.xml: malformed or truncated XML"):
        load_voc(devkit, "2007/trainval")


def test_non_numeric_coordinate(devkit):
    xml = annotation_xml(box_xml("dog", "n/a", 1, 5, 5))
    (devkit / "VOC2007" / "Annotations" / "000002.xml").write_text(xml)
    with pytest.raises(DataError, match=r"000002\.xml: object 0: <xmin> is 'n/a', expected a number"):
        load_voc(devkit, "2007/trainval")


def test_missing_bndbox(devkit):
    xml = "<annotation><object><name>dog</name></object></annotation>"
    (devkit / "VOC2007" / "Annotations" / "000002.xml").write_text(xml)
    with pytest.raises(DataError, match=r"000002\.xml: object 0 \('dog'\) has no <bndbox>"):
        load_voc(devkit, "2007/trainval")


def test_missing_image_set_file(devkit):
    with pytest.raises(DataError, match=r"image-set file not found: .*Main/val\.txt\. Image sets present: trainval, test"):
        load_voc(devkit, "2007/val")


def test_empty_split(devkit):
    (devkit / "VOC2007" / "ImageSets" / "Main" / "val.txt").write_text("\n  \n")
    with pytest.raises(DataError, match=r"val\.txt: the image set is empty"):
        load_voc(devkit, "2007/val")


@pytest.mark.parametrize("bad_id", ["../x", "/etc/passwd", "sub/000001", "a\\b", "..", "C:x"])
def test_id_not_plain_file_name(devkit, bad_id):
    (devkit / "VOC2007" / "ImageSets" / "Main" / "val.txt").write_text(f"000001\n{bad_id}\n")
    with pytest.raises(DataError, match=r"val\.txt: invalid image id .* must be a plain file name"):
        load_voc(devkit, "2007/val")


def test_split_name_with_folder_rejected(devkit):
    with pytest.raises(DataError, match=r"invalid image-set name '\.\.'"):
        load_voc(devkit, "2007/..")


def test_unknown_class_with_given_list(devkit):
    with pytest.raises(DataError, match=r"000002\.xml: class name 'cat' is not in the given class list .* Fix: add 'cat'"):
        load_voc(devkit, "2007/trainval", classes=["dog", "person"])


def test_missing_data_folder(tmp_path):
    with pytest.raises(DataError, match=r"data folder not found: .*nowhere"):
        load_voc(tmp_path / "nowhere", "trainval")


def test_folder_without_voc_layout(tmp_path):
    with pytest.raises(DataError, match=r"no VOC year folder found"):
        load_voc(tmp_path, "trainval")


# --- class lists and fingerprint


def test_given_class_order_kept(devkit):
    split = load_voc(devkit, "2007/trainval", classes="person, dog,cat")
    assert split.classes == ("person", "dog", "cat")
    assert split.records[0].labels.tolist() == [1, 0]
    assert not split.is_voc


def test_non_voc_names_discovered_sorted(tmp_path):
    year = make_year_folder(
        tmp_path,
        {"trainval": ["1"], "test": ["2"]},
        {"1": annotation_xml(box_xml("redleft", 1, 1, 5, 5), box_xml("dog", 1, 1, 5, 5)), "2": annotation_xml(box_xml("green", 1, 1, 5, 5))},
    )
    train, test, _ = load_voc_splits(year, "trainval", "test")
    assert train.classes == ("dog", "green", "redleft")
    assert test.classes == train.classes
    assert test.records[0].labels.tolist() == [1]


def test_voc_names_outside_voc_folder_discovered(tmp_path):
    year = make_year_folder(tmp_path, {"trainval": ["1"]}, {"1": annotation_xml(box_xml("dog", 1, 1, 5, 5))}, name="mydata")
    assert load_voc(year, "trainval").classes == ("dog",)


def test_fingerprint_tracks_annotations_and_classes(devkit):
    train, test, fingerprint = load_voc_splits(devkit, "2007/trainval", "2007/test")
    assert len(fingerprint) == 16
    assert int(fingerprint, 16) >= 0
    assert load_voc_splits(devkit, "2007/trainval", "2007/test")[2] == fingerprint

    swapped = load_voc_splits(devkit, "2007/test", "2007/trainval")[2]
    other_classes = load_voc_splits(devkit, "2007/trainval", "2007/test", classes=["person", "dog", "cat"])[2]
    path = devkit / "VOC2007" / "Annotations" / "000003.xml"
    path.write_text(path.read_text().replace("<xmax>15</xmax>", "<xmax>16</xmax>"))
    edited = load_voc_splits(devkit, "2007/trainval", "2007/test")[2]
    assert len({fingerprint, swapped, other_classes, edited}) == 4


# --- images


def make_image(path: Path, mode: str) -> None:
    if mode == "L":
        PIL.Image.new("L", (8, 6), 100).save(path)
    elif mode == "RGBA":
        PIL.Image.new("RGBA", (8, 6), (10, 20, 30, 0)).save(path)
    elif mode == "P":
        image = PIL.Image.new("P", (8, 6), 1)
        image.putpalette([0, 0, 0, 200, 150, 100] + [0] * 762)
        image.save(path)
    elif mode == "CMYK":
        PIL.Image.new("CMYK", (8, 6), (0, 0, 0, 0)).save(path, format="JPEG")
    elif mode == "I;16":
        PIL.Image.new("I;16", (8, 6), 65535).save(path)
    elif mode == "RGB":
        PIL.Image.new("RGB", (8, 6), (1, 2, 3)).save(path)


@pytest.mark.parametrize(
    ("mode", "suffix", "pixel"),
    [
        ("L", ".png", (100, 100, 100)),
        ("RGBA", ".png", (10, 20, 30)),
        ("P", ".png", (200, 150, 100)),
        ("CMYK", ".jpg", (255, 255, 255)),
        ("I;16", ".png", (255, 255, 255)),
        ("RGB", ".png", (1, 2, 3)),
    ],
)
def test_read_image_as_rgb(tmp_path, mode, suffix, pixel):
    path = tmp_path / f"image{suffix}"
    make_image(path, mode)
    image = read_image(path)
    assert image.mode == "RGB"
    assert image.size == (8, 6)
    assert image.getpixel((3, 2)) == pixel


def test_unreadable_image(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.jpg: the image cannot be read"):
        read_image(path)


def test_grayscale_png_in_dataset(devkit):
    path = devkit / "VOC2007" / "JPEGImages" / "000002.jpg"
    path.unlink()
    PIL.Image.new("L", (64, 48), 51).save(path.with_suffix(".png"))
    split = load_voc(devkit, "2007/trainval")
    image, target = DetectionDataset(split.records)[1]
    assert image.shape == (3, 48, 64)
    assert image.dtype == torch.float32
    assert image[:, 0, 0].tolist() == pytest.approx([0.2, 0.2, 0.2])
    assert target["image_id"] == "000002"


# --- dataset


def test_dataset_item(devkit):
    split = load_voc(devkit, "2007/trainval")
    image, target = DetectionDataset(split.records)[0]
    assert isinstance(image, tv_tensors.Image)
    assert image.dtype == torch.float32
    assert image.min() >= 0.0
    assert image.max() <= 1.0
    assert isinstance(target["boxes"], tv_tensors.BoundingBoxes)
    assert target["boxes"].format == tv_tensors.BoundingBoxFormat.XYXY
    assert target["boxes"].canvas_size == (48, 64)
    assert target["boxes"].tolist() == [[10, 20, 30, 40], [0, 0, 5, 9]]
    assert target["labels"].dtype == torch.int64
    assert target["difficult"].tolist() == [False, True]
    assert target["orig_size"] == (48, 64)
    assert target["index"] == 0


def test_dataset_with_eval_transform(devkit):
    split = load_voc(devkit, "2007/trainval")
    image, target = DetectionDataset(split.records, eval_transform(32))[0]
    assert image.shape == (3, 32, 32)
    assert image.dtype == torch.float32
    np.testing.assert_allclose(target["boxes"].tolist(), [[5, 40 / 3, 15, 80 / 3], [0, 0, 2.5, 6]], rtol=1e-6)
    assert target["orig_size"] == (48, 64)


# --- command line


def test_cli_summary_json(devkit, capsys):
    assert data_main(["summary", str(devkit / "VOC2007"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    trainval = summary["splits"]["trainval"]
    assert list(summary["splits"]) == ["trainval", "test"]
    assert (trainval["images"], trainval["objects"], trainval["difficult"]) == (2, 3, 1)
    assert trainval["per_class"]["person"] == {"images": 1, "objects": 1, "difficult": 1}
    assert trainval["per_class"]["dog"] == {"images": 1, "objects": 1, "difficult": 0}
    # Converted boxes have widths 20, 5, 19 and heights 20, 9, 28 pixels.
    assert trainval["box_size"]["width"]["p0"] == 5
    assert trainval["box_size"]["width"]["p50"] == 19
    assert trainval["box_size"]["height"]["p100"] == 28
    assert trainval["box_size"]["area"]["p50"] == 400
    assert summary["splits"]["test"]["objects"] == 1


def test_cli_summary_text_and_classes(devkit, capsys):
    assert data_main(["summary", str(devkit), "--split", "2007/test", "--classes", "dog,cat,person"]) == 0
    out = capsys.readouterr().out
    assert "2007/test" in out
    assert "dog" in out
    assert "aeroplane" not in out


def test_cli_bad_data_exit_code(devkit, capsys):
    (devkit / "VOC2007" / "Annotations" / "000002.xml").write_text("")
    assert data_main(["summary", str(devkit), "--split", "2007/trainval"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert "000002.xml: the annotation file is empty" in err
    assert err.count("\n") == 1


def test_cli_module_exit_status(devkit):
    (devkit / "VOC2012" / "ImageSets" / "Main" / "trainval.txt").write_text("../escape\n")
    result = subprocess.run(
        [sys.executable, "-m", "yolonb.data", "summary", str(devkit), "--split", "2012/trainval"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert result.returncode == 1
    assert "invalid image id '../escape'" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_usage_error_exit_code(capsys):
    with pytest.raises(SystemExit) as exit_info:
        data_main([])
    assert exit_info.value.code == 2


# --- real data


TRAFFIC_LIGHT_COUNTS = {
    "redleft": 335, "green": 303, "red": 255, "redstraight": 249, "redtime": 128, "greentime": 102,
    "redpeople": 92, "greenleft": 68, "greenstraight": 47, "greenpeople": 43, "yellow": 8,
    "yellowtime": 4, "yellowleft": 4, "yellowstraight": 2,
}  # fmt: skip


def test_traffic_lights_counts(traffic_lights_root):
    start = time.perf_counter()
    train, test, fingerprint = load_voc_splits(traffic_lights_root, "trainval", "test")
    elapsed = time.perf_counter() - start

    assert len(train.records) == 501
    assert len(test.records) == 56
    assert train.classes == tuple(sorted(TRAFFIC_LIGHT_COUNTS))
    counts = Counter(train.classes[i] for split in (train, test) for r in split.records for i in r.labels)
    assert counts == TRAFFIC_LIGHT_COUNTS
    assert len(fingerprint) == 16
    # Measured 0.25 s on a shared 2-core machine; the bound only catches a full image decode.
    assert elapsed < 5.0


def test_traffic_lights_train_val_partition(traffic_lights_root):
    ids = {name: {r.image_id for r in load_voc(traffic_lights_root, name).records} for name in ("train", "val", "trainval")}
    assert len(ids["train"]) == 450
    assert len(ids["val"]) == 51
    assert ids["train"] | ids["val"] == ids["trainval"]
